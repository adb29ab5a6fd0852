"""One actuation run with its I/O: read the restart budget, act on the plan file (no connection held while
Docker works), record every action, raise an alert on rollback, and sample the containers' use."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from earnopt_assets.actuation import store
from earnopt_assets.actuation.actuator import ActuationOutcome, Mode, Step, actuate
from earnopt_assets.catalog import Catalog

logger = logging.getLogger("earnopt.actuation")

MODE_ENV = "EARNOPT_ACTUATION_MODE"
ROLLBACK_RULE = "actuation_rollback"


def effective_mode(catalog: Catalog, environ: Mapping[str, str] | None = None) -> Mode:
    """``EARNOPT_ACTUATION_MODE`` if set (off | dry_run | apply), else the catalog's ``actuation.mode``."""
    value = (environ if environ is not None else os.environ).get(MODE_ENV, "").strip()
    if not value:
        return catalog.actuation.mode
    if value not in ("off", "dry_run", "apply"):
        raise ValueError(f"{MODE_ENV}={value!r}: expected off, dry_run or apply")
    return value  # type: ignore[return-value]


def read_plan(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the plan file {path}: {exc}") from None


def run_actuation(
    open_connection: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    catalog: Catalog,
    plan: Mapping[str, Any],
    runtime: Any,
    mode: Mode,
    *,
    now: datetime,
    before_step: Callable[[Step], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ActuationOutcome:
    """Act on ``plan`` and record it; on a rollback record and deliver a critical alert."""
    device = str(plan["device"])
    with open_connection() as conn:
        store.ensure_actuation_tables(conn)
        restarts = store.restarts_since(conn, device, store.day_ago(now))
    outcome = actuate(plan, catalog, runtime, mode, now=now, restarts_today=restarts, before_step=before_step)
    with open_connection() as conn:
        store.write_actuations(conn, outcome.records)
    if outcome.failure is not None:
        raise_rollback_alert(open_connection, catalog, outcome, now, environ)
    return outcome


def raise_rollback_alert(open_connection: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]], catalog: Catalog,
                         outcome: ActuationOutcome, now: datetime, environ: Mapping[str, str] | None = None) -> str:
    """Record a critical ``actuation_rollback`` alert through the anomaly store and deliver it to the
    configured channels (same path, cooldown and bookkeeping as every other alert). Returns its id."""
    from earnopt_assets.anomaly import store as alert_store
    from earnopt_assets.anomaly.notify import Notifier
    from earnopt_assets.anomaly.rules import make_alert

    rolled = ", ".join(outcome.rolled_back) or "nothing (no container had changed yet)"
    alert = make_alert(
        outcome.device, outcome.failed_protocol or "host", ROLLBACK_RULE, "critical", pd.Timestamp(now).floor("h").to_pydatetime(),
        f"Applying plan {outcome.cycle_id} failed and was rolled back: {outcome.failure}. Rolled back: {rolled}.",
        {"actuation_id": outcome.actuation_id, "cycle_id": outcome.cycle_id, "failure": outcome.failure, "rolled_back": rolled},
    )
    with open_connection() as conn:
        result = alert_store.record_alerts(conn, [alert], {}, catalog.alerts, now=now)
    notified = result.to_notify
    try:
        notifier = Notifier.from_settings(catalog.alerts, environ)
    except ValueError as exc:
        logger.warning("alert channels misconfigured, rollback alert recorded only: %s", exc)
        notifier = Notifier([])
    with notifier:
        attempts = notifier.deliver_all(notified)
    with open_connection() as conn:
        alert_store.record_deliveries(conn, notified, attempts, now=now)
    return alert.id


def sample_usage(open_connection: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]], catalog: Catalog,
                 runtime: Any, *, now: datetime) -> pd.DataFrame:
    """Read the Docker stats of every mapped, running container once and fold it into ``resource_usage``."""
    targets = []
    for name in catalog.enabled_names:
        found, _ = runtime.resolve(name, catalog.actuation)
        if len(found) == 1:
            targets.append(found[0])

    def one(container: Any) -> dict[str, Any] | None:
        limits = runtime.inspect(container)
        if not limits.running:
            return None
        use = runtime.stats(container)
        return {"protocol": container.protocol, "container": container.name, "ts": now, **use,
                "cpu_limit_cores": limits.cpu_cores or None, "memory_limit_mb": limits.memory_mb or None}

    with ThreadPoolExecutor(max_workers=4) as pool:  # each stats read waits ~1 s for its second sample
        rows = [r for r in pool.map(one, targets) if r is not None]
    samples = pd.DataFrame(rows, columns=["protocol", "container", "ts", "cpu_cores", "memory_mb", "cpu_limit_cores", "memory_limit_mb"])
    if len(samples):
        with open_connection() as conn:
            store.record_usage_samples(conn, catalog.host.device, samples, now)
    return samples
