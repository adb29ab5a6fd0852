"""A protocol that is off is judged on the basis a running one is: no hourly flip-flop (issue 12, seed 3)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from earnopt_assets.allocation.plan import assemble_inputs, compute_plan, potential_from_running_hours
from earnopt_assets.catalog import load_catalog
from earnopt_assets.numerics.response import learn_response_curve

HOURS = 30 * 24
DROP_HOURS = 7 * 24  # both protocols' price falls to DROP of its level for the last week
DROP = 0.3
FULL_USD_PER_HOUR = {"golem": 0.04, "filecoin": 0.012}  # at full share, before the drop; r(x) = x
SHARES = (0.25, 0.5, 0.75, 1.0)
NOW = datetime(2026, 1, 31)


@pytest.fixture
def two_protocols(data_dir):
    """golem (4 cores) and filecoin (2 cores) on 4 usable cores: golem 1.0, or filecoin 1.0 + golem 0.5."""
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in FULL_USD_PER_HOUR]
    raw["host"]["cpu_cores"] = 4.0 + raw["host"].get("reserved", {}).get("cpu_cores", 0.05)
    path = data_dir / "two.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_catalog(path)


def _history(last: dict[str, float]) -> dict[str, pd.DataFrame]:
    """30 days of telemetry: each protocol cycles through SHARES in 48 h runs, then holds ``last`` for the
    final 72 h; earnings = full x share x price (x DROP in the last week) x 2 % noise."""
    rng = np.random.default_rng(7)
    ts = pd.date_range(end=pd.Timestamp(NOW) - pd.Timedelta(hours=1), periods=HOURS, freq="h")
    price = np.where(np.arange(HOURS) >= HOURS - DROP_HOURS, DROP, 1.0)
    out = {}
    for offset, (name, full) in enumerate(FULL_USD_PER_HOUR.items()):
        shares = np.array([SHARES[(h // 48 + offset) % len(SHARES)] for h in range(HOURS)])
        shares[-72:] = last[name]
        earnings = full * shares * price * rng.lognormal(0.0, 0.02, HOURS)
        out[name] = pd.DataFrame({"ts": ts, "earnings_usd": earnings, "allocation": shares})
    return out


def _forecasts(history: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """A seasonal naive 24 at the share in force (what the loop serves): the last 24 hours repeated."""
    targets = pd.date_range(NOW, periods=24, freq="h")
    return {n: pd.DataFrame({"target_ts": targets, "value": h["earnings_usd"].to_numpy()[-24:], "source": "seasonal_naive_24_alloc",
                             "forecast_time": NOW, "origin_ts": h["ts"].iloc[-1]}) for n, h in history.items()}


def _plan(catalog, last: dict[str, float]):
    history = _history(last)
    inputs = assemble_inputs(catalog, NOW, history=history, forecasts=_forecasts(history), state={}, degraded={})
    return inputs, compute_plan(inputs, catalog)


def test_the_off_potential_is_its_last_running_hours_on_the_curve() -> None:
    history = _history({"golem": 1.0, "filecoin": 0.0})["filecoin"]
    curve = learn_response_curve(history["ts"], history["allocation"].to_numpy(), history["earnings_usd"].to_numpy())
    potential, detail = potential_from_running_hours(history, curve)
    # its last running hours were in the drop: ~DROP x full on the curve's scale, not the 30-day level k
    ran = history.iloc[:-72]
    running = ran[ran["allocation"].diff().fillna(0.0).abs() <= 0.001].tail(24)  # the first hour of a run: a restart
    expected = float(np.mean(running["earnings_usd"] / curve.at_share(running["allocation"].to_numpy())))
    assert potential == pytest.approx(expected)
    assert potential < 0.8 * curve.scale_usd_per_hour
    assert "running hours" in detail
    assert potential_from_running_hours(history.assign(allocation=0.0), curve) is None  # never ran: the caller uses k


def test_a_protocol_that_is_off_does_not_look_better_for_being_off(two_protocols) -> None:
    """Seed 3's flip-flop on a small case: after a price drop the running protocol's potential f / r(a)
    shows it, while the one that is off was priced at its 30-day level k, so from either state the other
    looked better and the plan alternated every hour. On one basis golem 1.0 stays and filecoin 1.0 +
    golem 0.5 moves to golem 1.0 (golem earns more per core before and after the drop)."""
    inputs, plan = _plan(two_protocols, {"golem": 1.0, "filecoin": 0.0})
    filecoin = inputs.protocols["filecoin"]
    assert filecoin.current_allocation == 0.0
    assert filecoin.potential_usd_per_hour == pytest.approx(DROP * FULL_USD_PER_HOUR["filecoin"], rel=0.05)
    assert inputs.protocols["golem"].potential_usd_per_hour == pytest.approx(DROP * FULL_USD_PER_HOUR["golem"], rel=0.05)
    assert not plan.applied, plan.decision.reasons
    assert plan.protocols["golem"].target == pytest.approx(1.0) and plan.protocols["filecoin"].target == pytest.approx(0.0)

    _, back = _plan(two_protocols, {"golem": 0.5, "filecoin": 1.0})
    assert back.applied
    assert back.protocols["golem"].target == pytest.approx(1.0) and back.protocols["filecoin"].target == pytest.approx(0.0, abs=1e-6)
