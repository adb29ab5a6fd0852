"""The forecaster on a real hourly series (NOAA Seattle temperatures shipped in vega_datasets), loaded
through the normal landing path: landing CSV -> ingest_landing -> raw_earnings -> features -> model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vega_datasets")

from earnopt_assets.ingestion.feature_store import load_raw_for_features  # noqa: E402
from earnopt_assets.ingestion.features import build_feature_table  # noqa: E402
from earnopt_assets.forecasting.real_data import load_series, real_series_catalog, write_landing_file  # noqa: E402
from earnopt_assets.forecasting.training import TrainingSettings, forecast_protocol, train_protocol  # noqa: E402
from earnopt_assets.ingestion.run import ingest_landing  # noqa: E402
from earnopt_assets.settings import EarnoptPaths  # noqa: E402
from earnopt_assets.warehouse import connect  # noqa: E402
from earnopt_assets_tests.conftest import DEFAULT_CATALOG  # noqa: E402


def test_real_series_ships_with_its_dst_gap():
    series = load_series("seattle_temps")
    assert len(series) == 8759 and series["value"].between(10, 110).all()
    steps = series["ts"].diff().dropna()
    assert (steps != pd.Timedelta(hours=1)).sum() == 1  # the spring-forward hour is missing
    with pytest.raises(KeyError):
        load_series("nope")


def test_real_series_through_landing_train_and_forecast(tmp_path):
    catalog = real_series_catalog(DEFAULT_CATALOG, tmp_path / "catalog.yaml")
    paths = EarnoptPaths(tmp_path / "data").ensure()
    # 35 days around the DST change: the missing hour must be survived, not papered over
    write_landing_file("seattle_temps", paths.landing, catalog.host.device, start="2010-02-24", end="2010-03-31 23:00")
    with connect(paths.warehouse) as conn:
        report = ingest_landing(conn, paths, catalog)
        telemetry = load_raw_for_features(conn)
    assert report.rows_accepted == len(telemetry) == 36 * 24 - 1 and report.rows_quarantined == 0
    features, stats = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    assert stats.missing_hours == 1

    result = train_protocol(
        features, "seattle_temps", paths.models, TrainingSettings(epochs=2, lstm_units=(8, 4)), timezone="UTC", host_totals=catalog.host.totals()
    )
    evaluation = result.evaluation
    assert evaluation["origins"] >= 6
    for name in ("model", "seasonal_naive_24", "seasonal_naive_168"):
        assert np.isfinite(evaluation[name]["mape"]) and evaluation[name]["n"] > 100
    # a temperature model that is not absurd: within 3x the error of "same hour yesterday"
    assert evaluation["model"]["mape"] < 3 * evaluation["seasonal_naive_24"]["mape"]

    series = telemetry.loc[telemetry["protocol"] == "seattle_temps"]
    forecast = forecast_protocol(series, "seattle_temps", paths.models)
    assert len(forecast.values) == 24 and np.isfinite(forecast.values).all() and (forecast.values > 0).all()
    assert forecast.targets[0] == pd.Timestamp("2010-04-01 00:00")
