"""Young history (#17 §1, §3): a detector that cannot train yet is "warming up", not a failure; the rules
alert from the first hours without it; the earnings-drop rule uses the best baseline history allows."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd

from earnopt_assets.anomaly.cycle import DetectorWarmingUp, train_detector
from earnopt_assets.anomaly.rules import evaluate_rules
from earnopt_assets.defs.anomalies import DETECTOR_TRAINED_CHECK, alerts, anomalies, anomaly_model
from earnopt_assets_tests.anomaly.test_anomaly_assets import metadata, query, set_alert_settings, write_warehouse

ASSETS = [anomaly_model, anomalies, alerts]


def young_telemetry(catalog, hours: int, seed: int = 4) -> pd.DataFrame:
    from earnopt_assets.simulator import simulate

    frame = simulate(catalog, days=max(1, -(-hours // 24)), seed=seed, end="2026-01-01T00:00", inject_anomalies=False).telemetry
    return frame.loc[frame["ts"] > frame["ts"].max() - pd.Timedelta(hours=hours)].reset_index(drop=True)


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == DETECTOR_TRAINED_CHECK)


def test_four_days_warm_up_green_with_warn_and_rules_still_alert(small_catalog_path, small_catalog, small_resources, data_dir):
    set_alert_settings(small_catalog_path, silent_lag_hours=0)
    frame = young_telemetry(small_catalog, 4 * 24)
    storj_last = (frame["protocol"] == "storj") & (frame["ts"] > frame["ts"].max() - pd.Timedelta(hours=2))
    frame.loc[storj_last, "connection_failures"] = 40  # a rule that needs no model
    write_warehouse(data_dir, small_catalog, frame)

    result = dg.materialize(ASSETS, resources=small_resources, raise_on_error=False)
    assert result.success, "warming up is not a failure"
    meta = metadata(result, "anomaly_model")
    assert meta["status"] == "warming up"
    assert meta["warming_up"].startswith("warming up: 4.0 of 7.")
    assert "169 h of history" in meta["rule"] and "50 complete detection rows" in meta["rule"]
    check = _check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert metadata(result, "anomalies")["status"] == "no detector yet"
    rules = {r for (r,) in query(data_dir, "SELECT DISTINCT rule FROM alerts WHERE protocol = 'storj'")}
    assert "connection_failures" in rules


def test_detector_joins_when_it_has_enough_rows(small_catalog, small_resources, data_dir):
    write_warehouse(data_dir, small_catalog, young_telemetry(small_catalog, 9 * 24))
    result = dg.materialize(ASSETS, resources=small_resources)
    check = _check(result)
    assert check.passed
    assert metadata(result, "anomalies")["rows_scored"] > 0


def test_real_errors_still_fail(small_resources, small_catalog, data_dir):
    """No raw_earnings table at all is a setup error, not a warm-up."""
    result = dg.materialize([anomaly_model], resources=small_resources, raise_on_error=False)
    assert not result.success


def test_warmup_rule_names_the_exact_numbers(small_catalog, tmp_path):
    frame = young_telemetry(small_catalog, 30)
    empty = pd.DataFrame(columns=["device", "protocol", "ts"])
    try:
        train_detector(frame, None, empty, small_catalog, tmp_path)
    except DetectorWarmingUp as warming:
        series = frame.groupby(["device", "protocol"]).ngroups
        assert warming.warmup.history_days == 1.2
        assert abs(warming.warmup.needed_days - (169 + int(np.ceil(50 / series))) / 24) < 1e-9
    else:  # pragma: no cover
        raise AssertionError("30 h of history must not train a detector")


def test_alerts_never_depend_on_the_isolation_forest():
    from earnopt_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    parents = graph.get(dg.AssetKey("alerts")).parent_keys
    assert dg.AssetKey("anomalies") not in parents and dg.AssetKey("anomaly_model") not in parents
    assert dg.AssetKey("raw_earnings") in parents


def test_earnings_drop_steps_through_young_baselines(small_catalog):
    """Day 2: a 90 % drop is caught against yesterday's same hour; hour 5: against the recent level; a 40 %
    drop before 4 days is not reported (only the critical drop is told apart from the daily rhythm)."""
    frame = young_telemetry(small_catalog, 40)
    storj = frame["protocol"] == "storj"
    hours = frame.loc[storj, "ts"].sort_values()
    day2 = hours.iloc[30]
    frame.loc[storj & (frame["ts"] == day2), "earnings_usd"] *= 0.1
    hour6 = hours.iloc[5]
    frame.loc[storj & (frame["ts"] == hour6), "earnings_usd"] *= 0.1
    mild = hours.iloc[34]
    frame.loc[storj & (frame["ts"] == mild), "earnings_usd"] *= 0.6
    found = [a for a in evaluate_rules(frame, small_catalog) if a.rule == "earnings_drop" and a.protocol == "storj"]
    by_hour = {pd.Timestamp(a.hour): a for a in found}
    assert by_hour[day2].evidence["baseline_step"] == "seasonal_naive_24"
    assert by_hour[hour6].evidence["baseline_step"] == "recent_level"
    assert mild not in by_hour
    assert all(a.severity == "warning" for a in found), "a young baseline never degrades a protocol"
