"""Young series (#17 §2, §5): the forecast improves in steps as the clock advances through the warm-up,
prior -> recent_level -> seasonal_naive_24 -> statistical -> the LSTM (tiny) once its minimum history is
met, with intervals that are wider the shorter the history; earnings_model warms up green until then."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting import warmup
from earnopt_assets.forecasting.candidates import STATISTICAL_NAMES
from earnopt_assets.forecasting.training import forecast_all
from earnopt_assets.settings import EarnoptPaths

END = pd.Timestamp("2026-03-01T00:00")
TINY = {"epochs": 1, "lstm_units_1": 4, "lstm_units_2": 2}


def telemetry(catalog, days: int) -> pd.DataFrame:
    from earnopt_assets.simulator import simulate

    return simulate(catalog, days=days, seed=9, end=END, protocols=["storj"], inject_anomalies=False).telemetry


def first_hours(frame: pd.DataFrame, hours: int) -> pd.DataFrame:
    return frame.loc[frame["ts"] < frame["ts"].min() + pd.Timedelta(hours=hours)]


def served(frame: pd.DataFrame, catalog, models_dir, hours: int) -> pd.DataFrame:
    young = first_hours(frame, hours)
    now = (young["ts"].max() if len(young) else frame["ts"].min()) + pd.Timedelta(minutes=5)
    priors = {p.name: p.prior_expected_usd_per_hour for p in catalog.enabled}
    run = forecast_all(young, ["storj"], models_dir, {}, now, catalog.host.device, priors=priors)
    return run.rows


def test_minimum_history_is_derived_from_features_training_and_holdout():
    # features warm-up + the model's lag history + 48 origins + target + 3-day validation + 3-day holdout
    assert warmup.LSTM_MIN_HISTORY_HOURS == 168 + 216 + 48 + 24 + 72 + 72 == 25 * 24
    assert "25 days" in warmup.LSTM_MIN_HISTORY_RULE and "lag-168" in warmup.LSTM_MIN_HISTORY_RULE
    readiness = warmup.TrainingReadiness(4.2 * 24)
    assert not readiness.ready and readiness.summary == "warming up: 4.2 of 25 days"
    assert warmup.TrainingReadiness(25 * 24).ready
    # the young holdout: 3 days at the minimum, 7 days once the feature rows leave 360 training hours besides
    assert warmup.young_holdout_days(360 + 72, 7) == 3
    assert warmup.young_holdout_days(360 + 120, 7) == 5
    assert warmup.young_holdout_days(360 + 168, 7) == 7


def test_widening_shrinks_as_history_grows():
    factors = [warmup.widening_factor(h) for h in (1, 24, 72, 168, 336, 672, 2000)]
    assert factors == sorted(factors, reverse=True)
    assert factors[0] == warmup.MAX_WIDENING and factors[-1] == 1.0 and warmup.widening_factor(168) == pytest.approx(2.0)


def test_steps_switch_as_the_clock_advances(small_catalog, data_dir):
    """prior (no rows) -> recent_level (6 h) -> seasonal_naive_24 (2 days) -> statistical (10 days), each with
    intervals, the relative 80 % width shrinking from step to step."""
    frame = telemetry(small_catalog, 10)
    models = EarnoptPaths(data_dir).ensure().models
    steps = {}
    for hours in (0, 6, 48, 240):
        rows = served(frame, small_catalog, models, hours)
        assert len(rows) == 24 and rows[["lower_80", "upper_80", "lower_95", "upper_95"]].notna().all().all()
        assert (rows["lower_95"] <= rows["lower_80"]).all() and (rows["upper_80"] <= rows["upper_95"]).all()
        steps[hours] = (set(rows["source"]), float(((rows["upper_80"] - rows["lower_80"]) / rows["value"]).mean()))
    assert steps[0][0] == {"prior"}
    assert steps[6][0] == {"recent_level"}
    assert steps[48][0] == {"seasonal_naive_24_level_blend"}
    assert steps[240][0] <= set(STATISTICAL_NAMES)
    widths = [steps[h][1] for h in (0, 6, 48, 240)]
    assert widths == sorted(widths, reverse=True), widths  # every step narrower than the one before
    prior_rows = served(frame, small_catalog, models, 0)
    assert prior_rows["value"].iloc[0] == pytest.approx(small_catalog.require("storj").prior_expected_usd_per_hour)


@pytest.mark.slow
def test_the_lstm_trains_without_a_click_once_the_minimum_is_met(small_catalog, small_resources, data_dir):
    """earnings_model warms up green (WARN check) at 10 days; at 26 days the same daily run trains the tiny
    LSTM, the champion rule judges it on the young holdout and forecasts come from the decided source."""
    from earnopt_assets.defs import forecasting
    from earnopt_assets.forecasting.registry import read_serving_decision
    from earnopt_assets.ingestion.feature_store import build_and_publish_features

    paths = EarnoptPaths(data_dir).ensure()
    full = telemetry(small_catalog, 26)
    run_config = {"ops": {"earnings_model": {"config": TINY}}}

    build_and_publish_features(first_hours(full, 240), small_catalog, paths.features_dir, lambda table: None)
    young = dg.materialize([forecasting.earnings_model, forecasting.mape_within_target], partition_key="storj",
                           resources=small_resources, run_config=run_config)
    assert young.success
    meta = young.asset_materializations_for_node("earnings_model")[0].metadata
    assert meta["warming_up"].value == "warming up: 10.0 of 25 days"
    check = young.get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert read_serving_decision(paths.models, "storj") is None

    build_and_publish_features(full, small_catalog, paths.features_dir, lambda table: None)
    grown = dg.materialize([forecasting.earnings_model, forecasting.mape_within_target], partition_key="storj",
                           resources=small_resources, run_config=run_config, raise_on_error=False)
    assert grown.success or any(not e.passed for e in grown.get_asset_check_evaluations())  # a losing LSTM may fail its check
    decision = read_serving_decision(paths.models, "storj")
    assert decision is not None and decision.training.get("challenger_version"), "the LSTM was trained and judged"
    rows = served(full, small_catalog, paths.models, 26 * 24)
    assert set(rows["source"]) == {decision.source}
    assert decision.source in {"lstm", "lstm_base_only", *STATISTICAL_NAMES}
    assert np.isfinite(rows["value"]).all()
