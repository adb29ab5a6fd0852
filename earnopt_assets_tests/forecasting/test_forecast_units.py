"""Metrics, baselines, holdout split, the MAPE rule, the forecasts store, fallback paths and retraining."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.numerics.baselines import fallback_forecast, seasonal_naive
from earnopt_assets.numerics.metrics import forecast_metrics
from earnopt_assets.forecasting.model.predictor import SequenceValidationError
from earnopt_assets.forecasting.registry import MapeCheckOutcome, check_passed, judge_mape, read_model_summary, record_mape_check
from earnopt_assets.forecasting.retrain import retrain_requests
from earnopt_assets.forecasting.store import (
    ensure_forecasts_table,
    forecast_rows,
    latest_forecasts,
    read_recent_telemetry,
    realised_mape,
    write_forecasts,
)
from earnopt_assets.forecasting.training import TrainingSettings, forecast_protocol, holdout_plot_markdown, metrics_table, split_holdout, train_protocol
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.forecasting.helpers import simulated

TINY = TrainingSettings(epochs=2, lstm_units=(8, 4))


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


# ----------------------------------------------------------------------------- training, fallback, retrain


@pytest.fixture(scope="module")
def trained_storj(tmp_path_factory):
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    telemetry, features = simulated(catalog, ["storj"], days=21)
    models = tmp_path_factory.mktemp("models")
    report = train_protocol(features, "storj", models, TINY, timezone=catalog.host.timezone, host_totals=catalog.host.totals())
    return catalog, telemetry, features, models, report


def test_train_protocol_reports_and_saves(trained_storj):
    _, _, _, models, report = trained_storj
    assert report.version_dir is not None and report.version_dir.exists()
    assert report.holdout_rows == 7 * 24 and report.evaluation["origins"] == 7
    summary = read_model_summary(models, "storj")
    assert summary["mape_check"]["passed"] == report.check.passed
    assert summary["holdout_rows"] == 168 and summary["settings"]["lstm_units"] == [8, 4]
    table = metrics_table(report.evaluation)
    assert table.count("\n") == 4 and "seasonal_naive_168" in table
    assert holdout_plot_markdown(report.predictor.last_evaluation, "storj").startswith("![storj")
    assert holdout_plot_markdown(None, "storj").startswith("_no holdout")


def test_forecast_uses_lstm_only_after_a_passed_check(trained_storj):
    catalog, telemetry, _, models, report = trained_storj
    version = report.predictor.version
    record_mape_check(models, "storj", version, MapeCheckOutcome(True, 5.0, "seasonal_naive_24", 9.0, 15.0, ()))
    cache: dict = {}
    result = forecast_protocol(telemetry, "storj", models, cache)
    assert result.source == "lstm" and result.reason is None and result.model_version == version
    assert len(result.values) == 24 and "storj" in cache
    np.testing.assert_allclose(result.values, report.predictor.predict_next_24h(telemetry))
    # data too short for the window + lag history -> fallback with the reason
    short = forecast_protocol(telemetry.iloc[-100:], "storj", models, cache)
    assert short.source == "seasonal_naive_fallback" and short.reason.startswith("data_too_short")
    gap = forecast_protocol(telemetry.drop(index=telemetry.index[-10]), "storj", models, cache)
    assert gap.source == "seasonal_naive_fallback"
    assert len(gap.values) == 24 and np.isfinite(gap.values).all()


def test_a_deliberately_bad_model_fails_the_check_and_falls_back(trained_storj, tmp_path):
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor

    catalog, telemetry, features, models, _ = trained_storj
    predictor = EarningsPredictor.load(models, "storj")  # a private copy: the fixture's model stays intact
    predictor.model_dir = tmp_path
    dense = predictor.model.get_layer("residual")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + 8.0])  # +8 standard deviations of residual on every hour
    predictor._compiled = None
    train, holdout = split_holdout(features)
    evaluation = predictor.evaluate(holdout, context=train)
    outcome = judge_mape(evaluation)
    assert not outcome.passed and any("worse than" in r for r in outcome.reasons)
    predictor.save(extra_metadata={"mape_check": outcome.to_json()})
    result = forecast_protocol(telemetry, "storj", tmp_path)
    assert result.source == "seasonal_naive_fallback" and result.reason.startswith("check_failed")


def test_no_model_means_fallback(tmp_path, small_catalog):
    telemetry, _ = simulated(small_catalog, ["akash"], days=3)
    result = forecast_protocol(telemetry, "akash", tmp_path)
    assert result.source == "seasonal_naive_fallback" and result.reason.startswith("no_model")
    with pytest.raises(ValueError):
        forecast_protocol(telemetry.iloc[:0], "akash", tmp_path)


def test_retrain_requests_for_failed_checks_and_drift(trained_storj, tmp_path):
    catalog, telemetry, _, models, report = trained_storj
    paths = EarnoptPaths(tmp_path)
    import shutil

    shutil.copytree(models, paths.models)
    version = report.predictor.version
    now = datetime.now(timezone.utc)
    holdout_mape = report.evaluation["model"]["mape"]

    record_mape_check(paths.models, "storj", version, MapeCheckOutcome(False, 30.0, "seasonal_naive_24", 9.0, 15.0, ("too high",)))
    assert check_passed(read_model_summary(paths.models, "storj")) is False
    assert retrain_requests(catalog, paths, now) == []  # the failed model is brand new: no tight loop
    later = retrain_requests(catalog, paths, now + timedelta(hours=7))
    assert [(r.protocol, r.reason) for r in later] == [("storj", "check_failed")]
    assert later[0].run_key == f"retrain:storj:{version}:check_failed"

    record_mape_check(paths.models, "storj", version, MapeCheckOutcome(True, holdout_mape, "seasonal_naive_24", 99.0, 15.0, ()))
    assert retrain_requests(catalog, paths, now) == []  # no warehouse yet
    last = pd.Timestamp(telemetry["ts"].max())
    actual = telemetry.set_index("ts")["earnings_usd"]
    with connect(paths.warehouse) as conn:
        ensure_raw_earnings(conn)
        raw = telemetry.assign(source_file="test", ingested_at=pd.Timestamp("2026-07-01"))
        conn.register("raw", raw)
        conn.execute("INSERT INTO raw_earnings SELECT * FROM raw")
        ensure_forecasts_table(conn)
        targets = pd.date_range(last - pd.Timedelta(hours=47), last, freq="h")
        good = actual.loc[targets].to_numpy() * (1 + holdout_mape / 100)
        write_forecasts(conn, forecast_rows(datetime(2026, 6, 28), "local", "storj", targets[0] - pd.Timedelta(hours=1), targets, good, "lstm", version, None))
        live, pairs = realised_mape(conn, "local", "storj", version)
    assert pairs == 48 and live == pytest.approx(holdout_mape, rel=1e-6)
    assert retrain_requests(catalog, paths, now) == []  # live error == holdout error: no drift

    with connect(paths.warehouse) as conn:
        bad = actual.loc[targets].to_numpy() * (1 + 2 * holdout_mape / 100 + 0.05)
        write_forecasts(conn, forecast_rows(datetime(2026, 6, 29), "local", "storj", targets[0] - pd.Timedelta(hours=1), targets, bad, "lstm", version, None))
    drift = retrain_requests(catalog, paths, now)
    assert [(r.protocol, r.reason) for r in drift] == [("storj", "drift")]
    assert "> 1.5 x holdout" in drift[0].detail


def test_retrain_sensor_turns_requests_into_partition_runs(trained_storj, tmp_path, monkeypatch):
    import shutil

    from earnopt_assets.defs import forecasting
    from earnopt_assets.resources import EarnoptResource

    catalog, _, _, models, report = trained_storj
    data_dir = tmp_path / "data"
    shutil.copytree(models, data_dir / "models")
    catalog_path = tmp_path / "catalog.yaml"
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    shutil.copy(DEFAULT_CATALOG, catalog_path)
    resource = EarnoptResource(data_dir=str(data_dir), catalog_path=str(catalog_path))
    version = report.predictor.version
    record_mape_check(data_dir / "models", "storj", version, MapeCheckOutcome(True, 5.0, "seasonal_naive_24", 9.0, 15.0, ()))
    context = dg.build_sensor_context(resources={"earnopt": resource})
    assert isinstance(forecasting.model_retrain_sensor(context), dg.SkipReason)

    metadata_path = data_dir / "models" / "storj" / "versions" / version / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["trained_at"] = "2020-01-01T00:00:00Z"
    metadata["mape_check"]["passed"] = False
    metadata_path.write_text(json.dumps(metadata))
    result = forecasting.model_retrain_sensor(dg.build_sensor_context(resources={"earnopt": resource}))
    assert [r.partition_key for r in result.run_requests] == ["storj"]
    assert result.run_requests[0].tags["earnopt/retrain"] == "check_failed"
