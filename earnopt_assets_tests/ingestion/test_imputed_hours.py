"""Imputed hours (earnings spread over a balance-poll gap) as the anomaly rules see them: a collector
outage is neither an earnings drop nor a degradation, while the same values measured still fire."""

from __future__ import annotations

import numpy as np
import pandas as pd

from earnopt_assets.anomaly.rules import evaluate_rules
from earnopt_assets.catalog import load_catalog


def _series(imputed_hours: slice | None) -> pd.DataFrame:
    ts = pd.date_range("2026-01-01", periods=24 * 10, freq="h")
    earnings = np.full(len(ts), 0.30)
    earnings[-5:] = 0.02  # a deep dip in the last 5 hours
    frame = pd.DataFrame({"device": "local", "protocol": "honeygain", "ts": ts, "earnings_usd": earnings, "cpu_cores": 0.1,
                          "memory_gb": 0.2, "bandwidth_mbps": 2.0, "storage_gb": 0.1, "allocation": 0.5,
                          "connection_failures": 0, "latency_ms": np.nan, "imputed": False})
    if imputed_hours is not None:
        frame.loc[frame.index[imputed_hours], "imputed"] = True
    return frame


def test_earnings_rules_skip_imputed_hours():
    catalog = load_catalog()
    settings = catalog.alerts.model_copy(update={"silent_lag_hours": 0})
    measured = {a.rule for a in evaluate_rules(_series(None), catalog, settings)}
    assert {"earnings_drop", "performance_degradation"} <= measured  # the dip is real when measured
    spread = {a.rule for a in evaluate_rules(_series(slice(-5, None)), catalog, settings)}
    assert "earnings_drop" not in spread and "performance_degradation" not in spread
    without_column = {a.rule for a in evaluate_rules(_series(None).drop(columns="imputed"), catalog, settings)}
    assert without_column == measured  # callers that do not read the quality column are unchanged
