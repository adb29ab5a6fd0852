"""Metrics, baselines, holdout split, the MAPE rule, the forecasts store, fallback paths and retraining."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.defs import render
from earnopt_assets.forecasting.model.predictor import SequenceValidationError
from earnopt_assets.forecasting.registry import (
    ServingDecision,
    current_version,
    judge_mape,
    read_model_summary,
    read_serving_decision,
    version_dir,
    write_serving_decision,
)
from earnopt_assets.forecasting.retrain import retrain_plan, retrain_requests
from earnopt_assets.forecasting.store import (
    ensure_forecasts_table,
    forecast_rows,
    latest_forecasts,
    read_recent_telemetry,
    realised_mape,
    write_forecasts,
)
from earnopt_assets.forecasting.training import TrainingSettings, forecast_protocol, split_holdout, train_protocol
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.numerics.baselines import fallback_forecast, seasonal_naive
from earnopt_assets.numerics.metrics import forecast_metrics
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.forecasting.helpers import simulated

TINY = TrainingSettings(epochs=2, lstm_units=(8, 4), model_options={"min_validation_hours": 48, "train_threads": 2})


# ----------------------------------------------------------------------------- metrics & baselines


def test_metrics_skip_zero_actuals_for_mape_and_count_them():
    actual = np.array([0.0, 2.0, 4.0, 0.0, 5.0])
    predicted = np.array([1.0, 1.0, 5.0, 0.0, 5.0])
    m = forecast_metrics(actual, predicted)
    assert m["mape_skipped"] == 2 and m["n"] == 5
    assert m["mape"] == pytest.approx(100 * (0.5 + 0.25 + 0.0) / 3)
    assert m["mae"] == pytest.approx(3 / 5)
    assert m["mse"] == pytest.approx(3 / 5) and m["rmse"] == pytest.approx(np.sqrt(3 / 5))
    sst = np.sum((actual - actual.mean()) ** 2)
    assert m["r2"] == pytest.approx(1 - 3 / sst)
    assert forecast_metrics(np.zeros(3), np.ones(3))["mape"] is None
    assert forecast_metrics(np.ones(3), np.ones(3))["r2"] is None
    assert forecast_metrics([], [])["n"] == 0
    with pytest.raises(ValueError):
        forecast_metrics([1.0, np.nan], [1.0, 1.0])
    with pytest.raises(ValueError):
        forecast_metrics([1.0], [1.0, 2.0])


def test_seasonal_naive_uses_the_value_one_season_earlier():
    e = np.arange(200, dtype=float)
    assert seasonal_naive(e, 24).tolist() == list(range(176, 200))
    assert seasonal_naive(e, 168)[0] == 200 - 168
    with pytest.raises(ValueError):
        seasonal_naive(e, 12)
    with pytest.raises(ValueError):
        seasonal_naive(e[:100], 168)


def test_fallback_tolerates_gaps_and_never_returns_nan_or_negative():
    ts = pd.date_range("2026-06-01", periods=72, freq="h")
    e = np.arange(72, dtype=float)
    e[60] = np.nan  # the hour whose "same hour yesterday" the first target would use... is 48 -> fine
    targets, values = fallback_forecast(ts, e)
    assert targets[0] == ts[-1] + pd.Timedelta(hours=1) and len(values) == 24
    assert values[0] == 48.0  # 24 h before the first target
    drop = pd.Series(e, index=ts).drop(ts[48])  # missing yesterday -> the day before
    _, values = fallback_forecast(drop.index, drop.to_numpy())
    assert values[0] == 24.0
    _, short = fallback_forecast(ts[:5], np.array([1.0, 2.0, 3.0, -1.0, 5.0]))
    assert (short >= 0).all() and np.isfinite(short).all()
    with pytest.raises(ValueError):
        fallback_forecast(ts[:2], np.array([np.nan, np.nan]))


def test_holdout_is_the_most_recent_fifth_but_at_least_a_week(small_catalog):
    _, features = simulated(small_catalog, ["storj"], days=60)
    train, holdout = split_holdout(features)
    assert train["ts"].max() < holdout["ts"].min()
    assert len(holdout) == round(len(features) * 0.2)
    _, short = simulated(small_catalog, ["storj"], days=22)
    train, holdout = split_holdout(short)
    assert len(holdout) == 7 * 24
    with pytest.raises(SequenceValidationError, match="ingest more history"):
        split_holdout(short.iloc[-200:])


def test_mape_rule_needs_target_and_baseline():
    def evaluation(model, naive24, naive168):
        return {"model": {"mape": model}, "seasonal_naive_24": {"mape": naive24}, "seasonal_naive_168": {"mape": naive168}}

    ok = judge_mape(evaluation(8.0, 9.0, 12.0))
    assert ok.passed and ok.baseline == "seasonal_naive_24" and ok.baseline_mape == 9.0
    too_high = judge_mape(evaluation(16.0, 30.0, 20.0))
    assert not too_high.passed and "not below the 15%" in too_high.reasons[0]
    loses = judge_mape(evaluation(10.0, 12.0, 9.5))
    assert not loses.passed and "worse than seasonal_naive_168" in loses.reasons[0]
    assert judge_mape(evaluation(10.0, 12.0, 9.5), threshold_pct=5).reasons[0].startswith("holdout MAPE 10.00% is not below")
    assert not judge_mape(evaluation(None, 1.0, 1.0)).passed


# ----------------------------------------------------------------------------- store


def test_forecasts_store_round_trip_and_latest(tmp_path):
    with connect(tmp_path / "w.duckdb") as conn:
        ensure_forecasts_table(conn)
        targets = pd.date_range("2026-06-02", periods=24, freq="h")
        for minute, value in ((0, 1.0), (5, 2.0)):
            rows = forecast_rows(datetime(2026, 6, 1, 23, minute), "local", "storj", pd.Timestamp("2026-06-01 23:00"), targets, np.full(24, value), "lstm", "v1", None)
            assert write_forecasts(conn, rows) == 24
        latest = latest_forecasts(conn)
        assert len(latest) == 24 and (latest["value"] == 2.0).all()
        with pytest.raises(ValueError, match="source"):
            write_forecasts(conn, rows.assign(source="Not a name; DROP"))
        with pytest.raises(ValueError, match="nested"):
            write_forecasts(conn, rows.assign(lower_80=3.0, upper_80=2.0, lower_95=0.0, upper_95=4.0))
        with pytest.raises(ValueError, match="non-negative"):
            write_forecasts(conn, rows.assign(value=-1.0))
        assert write_forecasts(conn, rows.iloc[:0]) == 0
        # every served source is written under its own name, with its intervals and the below-target flag
        bands = {"lower_95": np.full(24, 0.5), "lower_80": np.full(24, 1.0), "upper_80": np.full(24, 4.0), "upper_95": np.full(24, 5.0)}
        ets = forecast_rows(datetime(2026, 6, 1, 23, 10), "other", "storj", pd.Timestamp("2026-06-01 23:00"), targets, np.full(24, 3.0), "ets", None, "below target: ets best", bands, below_target=True)
        write_forecasts(conn, ets)
        mine = latest_forecasts(conn, "local")
        assert set(mine["source"]) == {"lstm"} and mine["lower_80"].isna().all()
        theirs = latest_forecasts(conn, "other")
        assert set(theirs["source"]) == {"ets"} and theirs["below_target"].all() and (theirs["upper_95"] == 5.0).all()
        assert set(latest_forecasts(conn)["device"]) == {"local", "other"}
    with connect(tmp_path / "empty.duckdb") as conn:
        assert latest_forecasts(conn).empty
        assert realised_mape(conn, "local", "storj", "v1") == (None, 0)
        assert read_recent_telemetry(conn, "local", ["storj"], 24).empty


def test_forecasts_table_of_the_earlier_layout_is_migrated_keeping_rows(tmp_path):
    with connect(tmp_path / "w.duckdb") as conn:
        conn.execute(
            """CREATE TABLE forecasts (forecast_time TIMESTAMP NOT NULL, device VARCHAR NOT NULL, protocol VARCHAR NOT NULL,
            origin_ts TIMESTAMP NOT NULL, target_ts TIMESTAMP NOT NULL, horizon_hours INTEGER NOT NULL, value DOUBLE NOT NULL,
            model_version VARCHAR, source VARCHAR NOT NULL CHECK (source IN ('lstm', 'seasonal_naive_fallback')), reason VARCHAR,
            PRIMARY KEY (forecast_time, device, protocol, target_ts))"""
        )
        conn.execute("INSERT INTO forecasts VALUES ('2026-06-01 23:00', 'local', 'storj', '2026-06-01 23:00', '2026-06-02 00:00', 1, 1.5, 'v1', 'lstm', NULL)")
        ensure_forecasts_table(conn)
        old = latest_forecasts(conn, "local")
        assert len(old) == 1 and old["value"].iloc[0] == 1.5 and not old["below_target"].iloc[0]
        rows = forecast_rows(datetime(2026, 6, 2), "local", "storj", pd.Timestamp("2026-06-01 23:00"), pd.date_range("2026-06-02", periods=24, freq="h"), np.ones(24), "mstl", None, "best")
        assert write_forecasts(conn, rows) == 24  # the old CHECK on two source names is gone


# ----------------------------------------------------------------------------- training, serving, retrain


@pytest.fixture(scope="module")
def trained_storj(tmp_path_factory):
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    telemetry, features = simulated(catalog, ["storj"], days=42)
    models = tmp_path_factory.mktemp("models")
    report = train_protocol(features, "storj", models, TINY, timezone=catalog.host.timezone, host_totals=catalog.host.totals())
    return catalog, telemetry, features, models, report


@pytest.mark.slow
def test_train_protocol_scores_every_candidate_and_records_the_decision(trained_storj):
    _, _, _, models, report = trained_storj
    assert report.holdout_rows == 7 * 24
    decision = read_serving_decision(models, "storj")
    assert decision == report.decision
    assert set(decision.scores) >= {"seasonal_naive_24", "seasonal_naive_168", "mstl", "ets", "lstm"}
    assert all(row["n_origins"] == 7 for row in decision.scores.values())
    assert decision.training["challenger_version"] == report.challenger_version
    assert (version_dir(models, "storj", report.challenger_version) / "metadata.json").exists()
    # the challenger is saved either way; CURRENT names it only when the verdict promoted it
    assert (current_version(models, "storj") == report.challenger_version) == report.verdict.promote
    summary = read_model_summary(models, "storj", report.challenger_version)
    assert summary["mape_check"]["passed"] == report.check.passed and summary["settings"]["lstm_units"] == [8, 4]
    assert decision.intervals is not None and decision.intervals["levels"].keys() == {"80", "95"}
    assert report.scores["serves"].sum() == 1
    scores = render.forecast_scores_frame(report.scores)
    assert list(scores.columns[:4]) == ["candidate", "role", "serves", "mape_%"] and scores["mape_%"].is_monotonic_increasing
    assert {"lower_80", "upper_95", "actual", "mstl"} <= set(report.holdout.columns)
    assert render.forecast_holdout_plot(report.holdout, "storj", decision.source, report.served_column).startswith("![storj")
    assert render.forecast_holdout_plot(pd.DataFrame(), "storj", "mstl").startswith("_no holdout")


def test_forecast_serves_the_decided_source_with_its_intervals(trained_storj, tmp_path):
    from earnopt_assets.forecasting.candidates import OriginContext, statistical_candidates

    _, telemetry, _, models, report = trained_storj
    decision = report.decision
    result = forecast_protocol(telemetry, "storj", models, {})
    assert result.source == decision.source and result.reason == decision.reason
    assert result.below_target == decision.below_target and len(result.values) == 24
    bands = result.intervals
    assert bands is not None and (bands["lower_95"] <= bands["lower_80"]).all() and (bands["upper_80"] <= bands["upper_95"]).all()

    # the same protocol decided for a statistical candidate serves that candidate, under its name
    shutil.copytree(models, tmp_path / "m")
    statistical = replace(decision, source="seasonal_naive_168", model_version=None, reason="seasonal_naive_168 best")
    write_serving_decision(tmp_path / "m", statistical)
    weekly = forecast_protocol(telemetry, "storj", tmp_path / "m")
    assert weekly.source == "seasonal_naive_168" and weekly.model_version is None and weekly.reason == "seasonal_naive_168 best"
    expected = statistical_candidates()["seasonal_naive_168"](OriginContext.from_frame(telemetry))
    np.testing.assert_allclose(weekly.values, expected)
    # too little history for the decided source: the gap-tolerant fallback serves and says why
    short = forecast_protocol(telemetry.iloc[-100:], "storj", tmp_path / "m")
    assert short.source == "seasonal_naive_fallback" and short.reason.startswith("data_too_short: seasonal_naive_168")
    assert short.below_target and short.intervals is None

    # a decided LSTM champion: its forecast, its version; too short data falls back with the reason
    write_serving_decision(tmp_path / "m", replace(decision, source="lstm", model_version=current_version(models, "storj") or report.challenger_version))
    if current_version(models, "storj"):
        lstm = forecast_protocol(telemetry, "storj", tmp_path / "m")
        assert lstm.source == "lstm" and lstm.model_version == current_version(models, "storj")
        short = forecast_protocol(telemetry.iloc[-100:], "storj", tmp_path / "m")
        assert short.source == "seasonal_naive_fallback" and short.reason.startswith("data_too_short: lstm")


def test_no_decision_means_fallback(tmp_path, small_catalog):
    telemetry, _ = simulated(small_catalog, ["akash"], days=3)
    result = forecast_protocol(telemetry, "akash", tmp_path)
    # no training run yet on 3 days (#17): the warm-up step, with its intervals
    assert result.source == "seasonal_naive_24_level_blend" and result.reason.startswith("no training run yet")
    assert result.intervals is not None
    with pytest.raises(ValueError):
        forecast_protocol(telemetry.iloc[:0], "akash", tmp_path)


def decided(models, protocol: str, *, passed: bool, trained_at: datetime, source: str = "lstm", version: str = "v1", mape: float = 5.0) -> ServingDecision:
    decision = ServingDecision(
        protocol, source, f"{source} best", False, mape, 15.0, version if source == "lstm" else None, version,
        training={"check": {"passed": passed, "reasons": [] if passed else ["holdout MAPE 30.00% is not below the 15% target"]},
                  "challenger_version": "v2", "promoted": passed, "trained_at": trained_at.strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    write_serving_decision(models, decision)
    return decision


def test_retrain_plan_for_failed_checks_and_drift(small_catalog, tmp_path, data_dir):
    paths = EarnoptPaths(data_dir).ensure()
    now = datetime.now(UTC)
    decided(paths.models, "storj", passed=False, trained_at=now - timedelta(hours=2.1))
    plan = retrain_plan(small_catalog, paths, now)
    assert plan.requests == []  # the failed run is recent: no tight loop, and the reason says so
    assert plan.waiting["storj"].startswith("storj failed its check (holdout MAPE 30.00% is not below the 15% target)")
    assert "trained 2.1 h ago; retrain waits until 6 h" in plan.waiting["storj"]
    assert plan.waiting["akash"] == "akash has no training run yet (the daily schedule trains it)"
    later = retrain_requests(small_catalog, paths, now + timedelta(hours=4))
    assert [(r.protocol, r.reason, r.run_key) for r in later] == [("storj", "check_failed", "retrain:storj:v2:check_failed")]

    decided(paths.models, "storj", passed=True, trained_at=now, mape=5.0)
    decided(paths.models, "honeygain", passed=True, trained_at=now, source="mstl")
    plan = retrain_plan(small_catalog, paths, now)
    assert plan.requests == [] and plan.waiting["storj"] == "storj passed its check; no warehouse yet to measure live drift"
    assert "mstl serves (live drift is tracked for LSTM champions only)" in plan.waiting["honeygain"]

    telemetry, _ = simulated(small_catalog, ["storj"], days=10)
    last = pd.Timestamp(telemetry["ts"].max())
    actual = telemetry.set_index("ts")["earnings_usd"]
    targets = pd.date_range(last - pd.Timedelta(hours=47), last, freq="h")
    with connect(paths.warehouse) as conn:
        ensure_raw_earnings(conn)
        conn.register("raw", telemetry.assign(source_file="test", ingested_at=pd.Timestamp("2026-07-01")))
        conn.execute("INSERT INTO raw_earnings SELECT * FROM raw")
        few = actual.loc[targets[-10:]].to_numpy()
        write_forecasts(conn, forecast_rows(datetime(2026, 6, 27), "local", "storj", targets[-11], targets[-10:], few, "lstm", "v1", None))
    assert retrain_plan(small_catalog, paths, now).waiting["storj"] == "storj passed its check; only 10 live forecast hours (drift needs 24)"
    with connect(paths.warehouse) as conn:
        good = actual.loc[targets].to_numpy() * 1.05
        write_forecasts(conn, forecast_rows(datetime(2026, 6, 28), "local", "storj", targets[0] - pd.Timedelta(hours=1), targets, good, "lstm", "v1", None))
        live, pairs = realised_mape(conn, "local", "storj", "v1")
    # every (forecast, actual) pair of the version counts: the 10 exact ones and the 48 at 5 %
    assert pairs == 58 and live == pytest.approx(5.0 * 48 / 58, rel=1e-6)
    plan = retrain_plan(small_catalog, paths, now)
    assert plan.requests == [] and plan.waiting["storj"] == "storj passed its check; live MAPE 4.14% over 58 h is within 1.5 x holdout 5.00%"
    with connect(paths.warehouse) as conn:
        bad = actual.loc[targets].to_numpy() * 1.2
        write_forecasts(conn, forecast_rows(datetime(2026, 6, 29), "local", "storj", targets[0] - pd.Timedelta(hours=1), targets, bad, "lstm", "v1", None))
    drift = retrain_requests(small_catalog, paths, now)
    assert [(r.protocol, r.reason) for r in drift] == [("storj", "drift")] and "> 1.5 x holdout 5.00%" in drift[0].detail


def test_retrain_sensor_skip_reason_is_specific_and_requests_become_runs(small_resources, data_dir):
    from earnopt_assets.defs import forecasting

    paths = EarnoptPaths(data_dir).ensure()
    now = datetime.now(UTC)
    decided(paths.models, "akash", passed=False, trained_at=now - timedelta(hours=2.1))
    context = dg.build_sensor_context(resources={"earnopt": small_resources["earnopt"]})
    skip = forecasting.model_retrain_sensor(context)
    assert isinstance(skip, dg.SkipReason)
    assert "akash failed its check" in skip.skip_message and "retrain waits until 6 h" in skip.skip_message
    assert "every model passed" not in skip.skip_message

    decided(paths.models, "akash", passed=False, trained_at=now - timedelta(hours=7))
    result = forecasting.model_retrain_sensor(dg.build_sensor_context(resources={"earnopt": small_resources["earnopt"]}))
    assert [r.partition_key for r in result.run_requests] == ["akash"]
    assert result.run_requests[0].tags["earnopt/retrain"] == "check_failed"


def test_the_decision_carries_the_frozen_ets_scored_in_the_harness_and_the_forecast_applies_it(trained_storj, tmp_path):
    from earnopt_assets.forecasting.candidates import OriginContext, ets_forecast, frozen_ets_forecaster
    from earnopt_assets.forecasting.registry import FROZEN_ETS_KEY, frozen_ets_of

    _, telemetry, _, models, report = trained_storj
    decision = report.decision
    # the refit stays the peer; the frozen form is scored beside it on the same origins
    assert {"ets", FROZEN_ETS_KEY} <= set(decision.scores) and decision.scores[FROZEN_ETS_KEY]["n_origins"] == 7
    frozen, why = frozen_ets_of(decision)
    assert frozen is not None and why is None and decision.ets["sha256"]
    shutil.copytree(models, tmp_path / "m")
    write_serving_decision(tmp_path / "m", replace(decision, source="ets", model_version=None, reason="ets best"))
    served = forecast_protocol(telemetry, "storj", tmp_path / "m")
    assert served.source == "ets" and served.reason == "ets best"
    np.testing.assert_array_equal(served.values, frozen_ets_forecaster(frozen)(OriginContext.from_frame(telemetry)))
    # a decision without the parameters serves the refit, and says so
    write_serving_decision(tmp_path / "m", replace(decision, source="ets", model_version=None, reason="ets best", ets=None))
    refit = forecast_protocol(telemetry, "storj", tmp_path / "m")
    assert refit.source == "ets" and refit.reason.startswith("ets best; the serving decision carries no frozen ETS parameters")
    np.testing.assert_allclose(refit.values, ets_forecast(OriginContext.from_frame(telemetry)))


def test_the_frozen_ets_is_fitted_only_on_hours_before_the_calibration_window():
    from earnopt_assets.forecasting.training import fit_frozen_ets

    t = np.arange(60 * 24)
    rng = np.random.default_rng(3)
    earnings = 5 + 2 * np.sin(2 * np.pi * t / 24) + 0.02 * t / 24 + rng.normal(0, 0.2, len(t))
    holdout, calibration = 50 * 24, 14 * 24
    ets, note = fit_frozen_ets(earnings, holdout, calibration)
    later = earnings.copy()
    later[holdout - calibration :] *= 3.0  # the calibration window and the holdout: never seen by the fit
    assert ets is not None and note is None and fit_frozen_ets(later, holdout, calibration)[0] == ets
    earlier = earnings.copy()
    earlier[holdout - calibration - 1] += 50.0
    assert fit_frozen_ets(earlier, holdout, calibration)[0] != ets
    short, why = fit_frozen_ets(earnings[: 20 * 24], 20 * 24, calibration)
    assert short is None and "refits per request" in why
