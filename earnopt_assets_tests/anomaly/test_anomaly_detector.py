"""IsolationForest detector: features, known anomalies vs normal hours, persistence round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.anomaly.detector import (
    DETECTION_FEATURES,
    AnomalyDetector,
    DetectorError,
    detection_features,
    series_detection_features,
)
from earnopt_assets.anomaly.series import SeriesContext, trailing_stats
from earnopt_assets_tests.anomaly.helpers import TEST_SPEC, flat_series


@pytest.fixture(scope="module")
def simulated():
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    keep = ["honeygain", "storj", "akash", "mysterium", "grass", "pawns"]
    from earnopt_assets.simulator import simulate

    sim = simulate(catalog, days=45, seed=5, end="2026-01-01T00:00", protocols=keep)
    specs = {p.name: p for p in catalog.protocols}
    features = detection_features(sim.telemetry, specs)
    return sim, features


def test_feature_formulas_on_a_hand_made_series():
    frame = flat_series(hours=8 * 24)
    frame.loc[frame.index[-1], ["earnings_usd", "connection_failures", "cpu_cores"]] = [0.5, 3, 2.0]
    ctx = SeriesContext.from_frame(frame, TEST_SPEC)
    feats = series_detection_features(ctx)
    last = feats.iloc[-1]
    assert last["earnings_dev_24h"] == pytest.approx(-0.5)
    assert last["earnings_vs_last_week"] == pytest.approx((0.5 - 1.0) / 0.75)
    # flat cpu history: std 0, floored at 10 % of the mean -> z = (2 - 1) / 0.1
    assert last["resource_zscore"] == pytest.approx(10.0)
    assert last["failure_rate"] == pytest.approx(np.log1p(3))
    assert feats["earnings_vs_last_week"].iloc[:168].isna().all()


def test_trailing_stats_skip_missing_hours_and_exclude_the_current_hour():
    x = np.array([1.0, 3.0, np.nan, 5.0, 100.0])
    mean, std = trailing_stats(x, 4)
    assert np.isnan(mean[3])  # window not full yet
    assert mean[4] == pytest.approx(3.0)  # (1 + 3 + 5) / 3, without the current 100
    assert std[4] == pytest.approx(np.std([1.0, 3.0, 5.0]))


def test_detects_known_anomalies_and_stays_quiet_on_normal_hours(simulated):
    sim, features = simulated
    labelled = set(zip(sim.labels["protocol"], pd.to_datetime(sim.labels["ts"])))
    is_label = np.array([(p, pd.Timestamp(t)) in labelled for p, t in zip(features["protocol"], features["ts"])])
    # Like the asset: fit on hours not already alerted (here: not labelled), small residual contamination.
    detector = AnomalyDetector(contamination=0.002).fit(features.loc[~is_label])
    flags = detector.predict(features)
    kinds = dict(zip(zip(sim.labels["protocol"], pd.to_datetime(sim.labels["ts"])), sim.labels["anomaly_type"]))
    label_kind = np.array([kinds.get((p, pd.Timestamp(t)), "") for p, t in zip(features["protocol"], features["ts"])])
    scores = detector.decision_function(features)
    normal_p05 = np.quantile(scores[~is_label], 0.05)
    # Outages move every feature at once: flagged. The single-feature anomalies rank far below normal
    # hours (the rules, not the forest, are what alert on those; see the benchmark).
    assert flags[label_kind == "outage"].mean() >= 0.8
    for kind in ("failure_burst", "resource_spike", "earnings_drop"):
        mask = label_kind == kind
        assert mask.any()
        assert np.median(scores[mask]) < normal_p05, kind
    # Normal hours: close to the contamination, far below the labelled rate.
    assert flags[~is_label].mean() < 0.005
    assert flags[is_label].mean() > 10 * flags[~is_label].mean()


def test_fit_is_deterministic_and_validates_input(simulated):
    _, features = simulated
    a = AnomalyDetector(contamination=0.02).fit(features).decision_function(features.head(200))
    b = AnomalyDetector(contamination=0.02).fit(features).decision_function(features.head(200))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="contamination"):
        AnomalyDetector(contamination=0.7)
    with pytest.raises(ValueError, match="resource_zscore"):
        AnomalyDetector().fit(features.drop(columns=["resource_zscore"]))
    with pytest.raises(ValueError, match="at least 50"):
        AnomalyDetector().fit(features.head(10))
    with pytest.raises(RuntimeError, match="not fitted"):
        AnomalyDetector().predict(features)


def test_persistence_round_trip(simulated, tmp_path):
    _, features = simulated
    detector = AnomalyDetector(contamination=0.02).fit(features)
    version_dir = detector.save(tmp_path / "anomaly")
    loaded = AnomalyDetector.load(tmp_path / "anomaly")
    np.testing.assert_allclose(loaded.decision_function(features), detector.decision_function(features))
    assert loaded.version == detector.version
    assert loaded.training_window.rows == detector.training_window.rows > 0
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert meta["features"] == list(DETECTION_FEATURES)
    complete = features.loc[AnomalyDetector.complete_rows(features)]
    assert meta["training_window"]["start"] == pd.to_datetime(complete["ts"]).min().isoformat()
    assert meta["training_window"]["rows"] == len(complete)


def test_load_refuses_corrupt_or_mismatched_files(simulated, tmp_path):
    _, features = simulated
    root = tmp_path / "anomaly"
    with pytest.raises(FileNotFoundError):
        AnomalyDetector.load(root)
    detector = AnomalyDetector(contamination=0.02, n_estimators=20).fit(features)
    version_dir = detector.save(root)
    meta_path = version_dir / "metadata.json"
    good_meta = meta_path.read_text()

    meta = json.loads(good_meta)
    meta["features"] = ["something_else"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match="features"):
        AnomalyDetector.load(root)

    meta_path.write_text(good_meta)
    model_path = version_dir / "model.skops"
    payload = model_path.read_bytes()
    model_path.write_bytes(payload[:-10] + b"0123456789")
    with pytest.raises(DetectorError, match="sha256"):
        AnomalyDetector.load(root)

    model_path.write_bytes(payload)
    pointer = root / "detector" / "isolation_forest" / "CURRENT"  # the shared ModelStore's pointer
    pointer.write_text("../../etc\n")
    with pytest.raises(DetectorError, match="version"):
        AnomalyDetector.load(root)


def test_load_refuses_untrusted_types(tmp_path, simulated):
    import hashlib

    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    _, features = simulated
    detector = AnomalyDetector(contamination=0.02, n_estimators=10).fit(features)
    version_dir = detector.save(tmp_path / "anomaly")
    # Swap in a model that needs a type outside the allow-list, with a matching hash.
    evil = sio.dumps(Pipeline([("f", FunctionTransformer(func=np.exp))]))
    (version_dir / "model.skops").write_bytes(evil)
    meta = json.loads((version_dir / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(evil).hexdigest()
    (version_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match="untrusted"):
        AnomalyDetector.load(tmp_path / "anomaly")


def test_save_keeps_the_previous_version_until_latest_is_switched(simulated, tmp_path):
    _, features = simulated
    root = tmp_path / "anomaly"
    first = AnomalyDetector(contamination=0.02, n_estimators=10).fit(features)
    first.save(root)
    for _ in range(4):
        AnomalyDetector(contamination=0.02, n_estimators=10).fit(features).save(root)
    assert len(list((root / "detector" / "isolation_forest" / "versions").iterdir())) == 3  # pruned to the newest 3
    assert AnomalyDetector.load(root).version != first.version
