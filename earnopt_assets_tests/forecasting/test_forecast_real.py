"""Forecast candidates on real hourly series loaded through the normal landing path:
landing CSV -> ingest_landing -> raw_earnings -> features -> rolling-origin harness.

* the shared series (``../shared/data/real-hourly``; skipped when the folder is absent) on a short slice,
  statistical candidates only;
* the NOAA Seattle temperatures shipped in vega_datasets across the spring DST gap, with a tiny LSTM model
  scored in the same harness.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.candidates import OriginContext, statistical_candidates
from earnopt_assets.forecasting.harness import score_candidates
from earnopt_assets.forecasting.real_data import (
    land_and_build_features,
    load_csv_series,
    load_series,
    shared_series_paths,
)
from earnopt_assets_tests.conftest import DEFAULT_CATALOG

SHARED = shared_series_paths()


def test_csv_loader_names_the_bad_row(tmp_path):
    good = tmp_path / "ok.csv"
    good.write_text("ts,y\n2020-01-01 01:00:00,2\n2020-01-01 00:00:00,1.5\n")
    series = load_csv_series(good)
    assert series["value"].tolist() == [1.5, 2.0] and series["ts"].is_monotonic_increasing
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,y\n2020-01-01 00:00:00,1\n2020-01-01 01:00:00,oops\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 3"):
        load_csv_series(bad)
    (tmp_path / "cols.csv").write_text("time,value\n")
    with pytest.raises(ValueError, match="missing column"):
        load_csv_series(tmp_path / "cols.csv")
    assert shared_series_paths(tmp_path / "absent") == {}
    with pytest.raises(KeyError):
        load_series("nope")


@pytest.mark.skipif(not SHARED, reason="shared real-hourly folder is absent")
def test_shared_series_through_landing_features_and_candidates(tmp_path):
    names = sorted(SHARED)
    days = 30
    _, telemetry, features, report, _ = land_and_build_features(names, tmp_path, DEFAULT_CATALOG, days=days)
    assert report.rows_inserted == len(telemetry) == days * 24 * len(names)
    assert sum(f.rows_quarantined for f in report.files) == 0
    candidates = statistical_candidates()
    for name in names:
        frame = features.loc[features["protocol"] == name]
        raw = load_series(name)
        # the landed values are the file's values (value -> earnings_usd, allocation 1.0)
        merged = frame.merge(raw, on="ts")
        assert len(merged) == len(frame) and np.allclose(merged["earnings_usd"], merged["value"]) and (frame["allocation"] == 1.0).all()
        ctx = OriginContext.from_frame(frame)
        n = len(ctx.ts)
        result = score_candidates(ctx.ts, ctx.earnings, ctx.allocation, n - 2 * 24, candidates)
        assert len(result.origins) == 2
        for cand, score in result.scores.items():
            assert score.n_origins == 2 and np.isfinite(score.predictions).all() and (score.predictions >= 0).all(), (name, cand)
            assert score.mase is not None and np.isfinite(score.mase) and score.mape_pct is not None, (name, cand)
        assert result.best() in candidates


def test_noaa_series_across_the_dst_gap_with_the_lstm_in_the_same_harness(tmp_path):
    pytest.importorskip("vega_datasets")
    series = load_series("seattle_temps")
    assert len(series) == 8759 and series["value"].between(10, 110).all()
    assert (series["ts"].diff().dropna() != pd.Timedelta(hours=1)).sum() == 1  # the spring-forward hour

    _, telemetry, features, _, stats = land_and_build_features(
        ["seattle_temps"], tmp_path, DEFAULT_CATALOG, start="2010-02-01", end="2010-03-31 23:00"
    )
    assert len(telemetry) == 59 * 24 - 1 and stats.missing_hours == 1
    ctx = OriginContext.from_frame(features)
    n = len(ctx.ts)
    assert np.isnan(ctx.earnings).sum() >= 1  # the DST hour (and its feature warm-up) stay missing, not invented
    holdout = n - 2 * 24
    from earnopt_assets.forecasting.model.predictor import EarningsModel

    model = EarningsModel("seattle_temps", lstm_units=(8, 4), epochs=2, timezone="UTC")
    model.fit(features[features["ts"] < pd.Timestamp(ctx.ts[holdout])], validation_hours=7 * 24)
    batch = {"lstm": model.batch_forecaster()}
    result = score_candidates(ctx.ts, ctx.earnings, ctx.allocation, holdout, statistical_candidates(), batch_forecasters=batch)
    naive = result.scores["seasonal_naive_24"]
    assert naive.n_origins == len(result.origins) == 2
    for name, score in result.scores.items():
        assert np.isfinite(score.predictions).all() and (score.predictions > 0).all(), name
        assert score.mape_pct < 10, name  # these temperatures are smooth: every candidate is within a few %
    # the LSTM is not absurd: within 3x the error of the better seasonal naive forecast
    best_naive = min(result.scores[n].mape_pct for n in ("seasonal_naive_24", "seasonal_naive_168"))
    assert result.scores["lstm"].mape_pct < 3 * best_naive
