"""Operations: health, Prometheus metrics and open alerts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from earnopt_assets.forecasting.registry import LSTM_BASE_SOURCE, LSTM_SOURCE
from earnopt_assets.service import reads
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.schemas import Alert, AlertsResponse, ComponentHealth, HealthResponse
from earnopt_assets.service.state import ServiceState

router = APIRouter(tags=["operations"])

# Telemetry arrives hourly; older than this means collectors or ingestion stalled.
STALE_TELEMETRY_SECONDS = 3 * 3600
# Allocation runs every 15 minutes.
STALE_ALLOCATION_SECONDS = 3600
# A writer holds DuckDB for seconds at a time (ingestion, the tick); locked longer than this is worth a "degraded".
STALE_WAREHOUSE_READ_SECONDS = 120


def _version() -> str:
    try:
        return version("earnopt")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


def _age(ts: datetime | None, now: datetime) -> float | None:
    return None if ts is None else max(0.0, (now - ts).total_seconds())


def _statistical_decision(state: ServiceState, protocol: str) -> bool:
    """The protocol's last training run decided that a statistical candidate serves (no LSTM needed)."""
    decision = state.serving.get(protocol)
    return decision is not None and decision.source not in (LSTM_SOURCE, LSTM_BASE_SOURCE)


@router.get("/health", response_model=HealthResponse)
def health(response: Response, state: ServiceState = Depends(get_state)) -> HealthResponse:
    """Models loaded vs expected, the warehouse (read-only), the age of the newest telemetry and allocation.

    ``status``: ``down`` when the warehouse cannot be read or no protocol can be served; ``degraded`` when
    some models are missing, the warehouse is busy, or telemetry/allocations are stale; else ``ok``. A
    ``down`` service answers HTTP 503 so load balancers take it out of rotation. A protocol whose training
    run decided that a statistical candidate serves (its LSTM lost) is served, not missing: only a protocol
    with neither a loaded LSTM nor such a decision counts in ``missing_models``.
    """
    now = datetime.now(UTC)
    expected = state.catalog.enabled_names
    # get() re-checks each model's files (a stat while unchanged), so a model trained since the last
    # request counts at once.
    loaded = {name for name in expected if state.models.get(name).loaded}
    statistical = {name for name in expected if name not in loaded and _statistical_decision(state, name)}
    missing = [name for name in expected if name not in loaded and name not in statistical]
    telemetry_ts = allocation_ts = None
    problems: list[str] = []
    try:  # one read-only connection, and none while the warehouse is unchanged (reads.LAST_GOOD)
        summary = reads.warehouse_summary(state.db_path)
        telemetry_ts, allocation_ts = summary.value
        if summary.stale_for_s is None or summary.stale_for_s < STALE_WAREHOUSE_READ_SECONDS:
            detail = "read-only connection ok" if summary.stale_for_s is None else (
                f"a writer holds the lock; figures from the last read {summary.stale_for_s:.0f} s ago")
            warehouse = ComponentHealth(status="ok", detail=detail)
        else:
            warehouse = ComponentHealth(status="degraded", detail=f"locked by a writer for {summary.stale_for_s:.0f} s")
    except reads.WarehouseMissing as exc:
        warehouse = ComponentHealth(status="down", detail=str(exc))
    except reads.WarehouseBusy as exc:
        warehouse = ComponentHealth(status="degraded", detail=str(exc))
    except Exception as exc:  # a corrupt file, a schema surprise: report, don't crash
        warehouse = ComponentHealth(status="down", detail=f"warehouse query failed: {exc}")
    if allocation_ts is None:
        allocation_ts = _plan_time(state)
    telemetry_age = _age(telemetry_ts, now)
    allocation_age = _age(allocation_ts, now)
    if warehouse.status == "down" or not (loaded or statistical):
        overall = "down"
    else:
        if missing:
            problems.append("models missing")
        if warehouse.status != "ok":
            problems.append("warehouse busy")
        if telemetry_age is None or telemetry_age > STALE_TELEMETRY_SECONDS:
            problems.append("telemetry stale")
        if allocation_age is None or allocation_age > STALE_ALLOCATION_SECONDS:
            problems.append("allocation stale")
        overall = "degraded" if problems else "ok"
    if overall == "down":
        response.status_code = 503
    return HealthResponse(
        status=overall,  # type: ignore[arg-type]
        models_loaded=len(loaded & set(expected)),
        models_expected=len(expected),
        missing_models=missing,
        anomaly_detector_loaded=state.detector.available,
        warehouse=warehouse,
        telemetry_age_seconds=telemetry_age,
        allocation_age_seconds=allocation_age,
        checked_at=now,
        version=_version(),
    )


def _plan_time(state: ServiceState) -> datetime | None:
    plan = state.paths.latest_plan
    try:
        return datetime.fromtimestamp(plan.stat().st_mtime, tz=UTC)
    except OSError:
        return None


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}})
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus exposition: request counts/latencies, model ages, latest forecast per protocol, open alerts."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def metrics_snapshot(state: ServiceState) -> dict[str, Any]:
    """Scrape-time values for :class:`StateCollector`; warehouse parts are skipped while it is busy."""
    snap: dict[str, Any] = {
        "models": {
            name: (entry.trained_at.timestamp() if entry.trained_at else None)
            for name in state.catalog.enabled_names
            if (entry := state.models.get(name)).loaded
        }
    }
    try:
        snap["forecasts"] = reads.latest_forecasts(state.db_path, state.catalog.host.device)
        _available, alerts = reads.open_alerts(state.db_path)
        counts: dict[tuple[str, str], int] = {}
        for alert in alerts:
            key = (str(alert.get("protocol") or "host"), str(alert.get("severity") or "unknown"))
            counts[key] = counts.get(key, 0) + 1
        snap["alerts"] = counts
        telemetry_ts = reads.latest_telemetry_ts(state.db_path)
        if telemetry_ts is not None:
            snap["telemetry_age"] = (datetime.now(UTC) - telemetry_ts).total_seconds()
    except (reads.WarehouseMissing, reads.WarehouseBusy):
        pass
    return snap


@router.get("/alerts", response_model=AlertsResponse)
def alerts(state: ServiceState = Depends(get_state)) -> AlertsResponse:
    """Open alerts from the anomaly pipeline's ``alerts`` table, newest first (``available: false`` until
    that table exists)."""
    try:
        available, rows = reads.open_alerts(state.db_path)
    except reads.WarehouseMissing:
        return AlertsResponse(available=False, alerts=[])
    except reads.WarehouseBusy as exc:
        from earnopt_assets.service.errors import ServiceUnavailable

        raise ServiceUnavailable(str(exc), problem="warehouse-busy") from None
    return AlertsResponse(available=available, alerts=[Alert.model_validate(_alert_fields(row)) for row in rows])


def _alert_fields(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        out[key] = value
    try:
        evidence = json.loads(out.get("evidence") or "{}")
    except ValueError:
        evidence = {"raw": out.get("evidence")}
    out["evidence"] = evidence if isinstance(evidence, dict) else {"value": evidence}
    return out
