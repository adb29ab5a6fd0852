"""The frozen-parameter ETS term of the base: one matrix equals the recursion, it reads only the past,
it survives save/load, and versions saved before it still load and forecast as they did."""

from __future__ import annotations

import json

import numpy as np
import pytest

from earnopt_assets.forecasting.model.base import (
    COMPONENTS,
    LEGACY_COMPONENTS,
    StatisticalBase,
    causal_fill,
    components,
)
from earnopt_assets.forecasting.model.ets import ETS_WINDOW_HOURS, FrozenETS
from earnopt_assets.forecasting.model.forecast import COMBINATION_KINDS, FittedState
from earnopt_assets_tests.forecasting.helpers import simulated, tiny_predictor


def recursion_forecast(ets: FrozenETS, y: np.ndarray) -> np.ndarray:
    """The module docstring's recursion written out step by step (the reference for the matrix)."""
    level = y[:168].mean()
    trend = 0.0
    season = np.array([y[23 - j : 168 : 24].mean() - level for j in range(24)])  # season[j] = s_j
    for value in y:
        error = value - (level + ets.phi * trend + season[23])
        level, trend = level + ets.phi * trend + ets.alpha * error, ets.phi * trend + ets.beta * error
        season = np.r_[season[23] + ets.gamma * error, season[:23]]
    damp = np.cumsum(ets.phi ** np.arange(1, 25))
    return np.array([level + damp[h - 1] * trend + season[24 - h] for h in range(1, 25)])


@pytest.mark.parametrize("trend", ["N", "A", "Ad"])
def test_the_forecast_matrix_equals_the_state_recursion(trend):
    rng = np.random.default_rng(3)
    t = np.arange(ETS_WINDOW_HOURS)
    y = 5 + 2 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, len(t)) + np.cumsum(rng.normal(0, 0.05, len(t)))
    ets = FrozenETS(alpha=0.2, beta=0.01, gamma=0.05, phi=0.95, trend=trend)
    np.testing.assert_allclose(ets.forecast(y), recursion_forecast(ets, y), rtol=1e-10, atol=1e-10)
    assert ets.matrix().shape == (24, ETS_WINDOW_HOURS)


def test_fit_keeps_statsforecast_parameters_and_refuses_what_it_cannot_fit():
    rng = np.random.default_rng(4)
    t = np.arange(ETS_WINDOW_HOURS + 100)
    y = 5 + 2 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, len(t))
    ets = FrozenETS.fit(y)
    assert ets is not None and ets.trend in ("N", "A", "Ad") and ets.method.startswith("ETS(")
    assert FrozenETS.from_json(json.loads(json.dumps(ets.to_json()))) == ets
    # its forecast of a clean daily cycle follows the cycle (about the next day's values)
    assert np.mean(np.abs(ets.forecast(y[-ETS_WINDOW_HOURS:]) - (5 + 2 * np.sin(2 * np.pi * (t[-1] + np.arange(1, 25)) / 24)))) < 0.5
    assert FrozenETS.fit(y[:200]) is None  # shorter than its window
    assert FrozenETS.fit(np.full(ETS_WINDOW_HOURS, 2.0)) is None  # flat
    with pytest.raises(ValueError, match="window"):
        FrozenETS.from_json({**ets.to_json(), "window_hours": 24})
    with pytest.raises(ValueError, match="out of range"):
        FrozenETS(alpha=1.5, beta=0.0, gamma=0.1, phi=1.0, trend="N")


def test_the_ets_component_reads_only_the_past_and_falls_back_before_its_window():
    rng = np.random.default_rng(5)
    z = causal_fill(5 + np.sin(2 * np.pi * np.arange(1200) / 24) + rng.normal(0, 0.1, 1200))
    ets = FrozenETS(alpha=0.1, beta=0.0, gamma=0.05, phi=1.0, trend="N")
    origins = np.array([400, 900, 1000])
    before = components(z[None, :], np.zeros(3, dtype=np.int64), origins, ets=ets)
    column = COMPONENTS.index("ets")
    np.testing.assert_allclose(before[1, :, column], ets.forecast(z[900 - ETS_WINDOW_HOURS + 1 : 901]))
    assert np.array_equal(before[0, :, column], before[0, :, COMPONENTS.index("day_level")])  # window before the start
    changed = z.copy()
    changed[901:] = 1e6
    after = components(changed[None, :], np.zeros(1, dtype=np.int64), np.array([900]), ets=ets)
    np.testing.assert_allclose(after[0], before[1], rtol=1e-12)  # equal up to BLAS batch rounding


def test_a_base_saved_before_the_ets_and_median_terms_loads_with_their_weights_zero():
    weights = np.random.default_rng(6).uniform(0, 0.3, (24, len(LEGACY_COMPONENTS)))
    old = StatisticalBase.from_json({"components": list(LEGACY_COMPONENTS), "weights": weights.tolist(), "weighting": "squared"})
    assert old.ets is None and old.weights.shape == (24, len(COMPONENTS)) and (old.weights[:, len(LEGACY_COMPONENTS) :] == 0).all()
    z = causal_fill(5 + np.sin(2 * np.pi * np.arange(900) / 24))
    origins = np.array([500, 800])
    legacy = np.einsum("nhc,hc->nh", components(z[None, :], np.zeros(2, dtype=np.int64), origins)[..., : len(LEGACY_COMPONENTS)], weights)
    np.testing.assert_allclose(old.predict(z[None, :], np.zeros(2, dtype=np.int64), origins), np.maximum(legacy, 0.0))
    with pytest.raises(ValueError, match="components"):
        StatisticalBase.from_json({"components": ["lag_24"], "weights": [[1.0]] * 24})


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A tiny model on 50 simulated days: long enough for the 4-week ETS window before its validation."""
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    telemetry, _ = simulated(catalog, ["storj"], days=50)
    model_dir = tmp_path_factory.mktemp("models")
    predictor = tiny_predictor(catalog, "storj", model_dir, epochs=1)
    predictor.fit(telemetry.iloc[:-48])
    return predictor, telemetry, model_dir


def test_a_trained_model_uses_ets_and_forecasts_the_same_after_save_and_load(long_model):
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor

    predictor, telemetry, model_dir = long_model
    assert predictor.state.base.ets is not None
    history = predictor.training.validation_mape_by_naive_weight
    assert {key.split()[0] for key in history} == set(COMBINATION_KINDS)  # ETS offered as a combination partner
    predictor.save(model_dir, promote=True)
    loaded = EarningsPredictor.load(model_dir, "storj")
    assert loaded.state.base.ets == predictor.state.base.ets
    recent = telemetry.iloc[:-48]
    np.testing.assert_allclose(loaded.predict_next_24h(recent), predictor.predict_next_24h(recent), rtol=1e-12)


def test_an_ets_combination_without_ets_parameters_is_refused(long_model):
    predictor, _, _ = long_model
    data = predictor.state.to_json()
    data["naive_kind"] = "ets"
    data["base"] = {**data["base"], "ets": None}
    with pytest.raises(ValueError, match="ETS"):
        FittedState.from_json(data)


def test_the_weekly_median_term_skips_lags_before_the_history():
    from earnopt_assets.forecasting.model.base import _lag_median

    Z = np.random.default_rng(7).normal(size=(1, 1000))
    index = np.array([[700, 300, 200]])
    expected = [np.median([Z[0, i - 168 * k] for k in range(1, 5) if i - 168 * k >= 0]) for i in index[0]]
    np.testing.assert_allclose(_lag_median(Z, np.zeros((1, 1), dtype=np.int64), index, 168, 4)[0], expected)
    assert np.isnan(_lag_median(Z, np.zeros((1, 1), dtype=np.int64), np.array([[100]]), 168, 4)[0, 0])


def test_the_absolute_relative_weighting_fits_the_mape_better_than_least_squares():
    """IRLS towards the MAPE's own loss: its in-sample relative error is below the plain and relative fits'."""
    rng = np.random.default_rng(8)
    hours = np.arange(24 * 70)
    z = causal_fill(np.maximum(0.2, 3 + 2 * np.sin(2 * np.pi * hours / 24) + rng.standard_t(2, len(hours)) * 0.4))
    origins = np.arange(700, len(hours) - 24)
    targets = z[origins[:, None] + np.arange(1, 25)[None, :]]
    rows = np.zeros(len(origins), dtype=np.int64)
    comps = components(z[None, :], rows, origins)

    def mape(weighting: str) -> float:
        fitted = StatisticalBase.fit(z[None, :], rows, origins, targets, weighting, comps=comps)
        return float(np.mean(np.abs(targets - fitted.predict_components(comps)) / targets))

    assert mape("absolute_relative") < min(mape("squared"), mape("relative"))


def test_a_version_saved_in_format_3_still_loads_and_forecasts_as_it_did(long_model, tmp_path, monkeypatch):
    """A format-3 version (8 base components, no ETS parameters) loads through the normal loader."""
    import copy

    from earnopt_assets.forecasting.model import persistence
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor

    predictor, telemetry, _ = long_model
    old = copy.deepcopy(predictor)
    old.state.base.weights[:, len(LEGACY_COMPONENTS) :] = 0.0
    old.state.base.ets = None
    old.state.naive_kind = "last_week" if old.state.naive_kind == "ets" else old.state.naive_kind
    legacy_json = StatisticalBase.to_json

    def format_3(base):
        data = legacy_json(base)
        data.pop("ets")
        return {**data, "components": list(LEGACY_COMPONENTS), "weights": base.weights[:, : len(LEGACY_COMPONENTS)].tolist()}

    monkeypatch.setattr(StatisticalBase, "to_json", format_3)
    monkeypatch.setattr(persistence, "MODEL_FORMAT_VERSION", 3)
    old.save(tmp_path, promote=True)
    monkeypatch.undo()
    saved = json.loads((persistence.model_store(tmp_path).current_path("storj") / "state.json").read_text())
    assert saved["base"]["components"] == list(LEGACY_COMPONENTS) and "ets" not in saved["base"]
    loaded = EarningsPredictor.load(tmp_path, "storj")
    recent = telemetry.iloc[:-48]
    np.testing.assert_allclose(loaded.predict_next_24h(recent), old.predict_next_24h(recent), rtol=1e-12)


def _components_per_origin(Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int, ets: FrozenETS | None) -> np.ndarray:
    """The base components as computed before the per-column pass: every lag gathered per origin and hour."""
    from earnopt_assets.forecasting.model.base import _gather, _lag_mean, _lag_median, _level, ets_path

    r2 = rows[:, None]
    targets = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    recent = origins[:, None] - np.arange(23, -1, -1)[None, :]
    week, day = _lag_mean(Z, r2, targets, 168, 4), _lag_mean(Z, r2, targets, 24, 7)
    z_recent = _gather(Z, r2, recent)
    level_sum = np.nansum(z_recent, axis=1)
    week_recent = _lag_mean(Z, r2, recent, 168, 4)
    lam_week, lam_day = _level(level_sum, week_recent), _level(level_sum, _lag_mean(Z, r2, recent, 24, 7))
    lam_6 = _level(np.nansum(z_recent[:, -6:], axis=1), week_recent[:, -6:])
    older = origins[:, None] - np.arange(71, -1, -1)[None, :]
    lam_72 = _level(np.nansum(_gather(Z, r2, older), axis=1), _lag_mean(Z, r2, older, 168, 4))
    median = _lag_median(Z, r2, targets, 168, 4)
    columns = [
        _gather(Z, r2, targets - 24), _gather(Z, r2, targets - 168), week, lam_week[:, None] * week, day, lam_day[:, None] * day,
        lam_6[:, None] * week, lam_72[:, None] * week, ets_path(Z, rows, origins, horizon, ets), median, lam_week[:, None] * median,
    ]
    out = np.stack(columns, axis=-1)
    for c, fallback in ((1, 0), (2, 4), (3, 5), (6, 5), (7, 5), (8, 5), (9, 4), (10, 5)):
        out[..., c] = np.where(np.isfinite(out[..., c]), out[..., c], out[..., fallback])
    return np.nan_to_num(out, nan=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_per_column_components_equal_the_per_origin_gathers_bitwise(seed):
    rng = np.random.default_rng(seed)
    m, T = int(rng.integers(1, 4)), int(rng.integers(30, 1300))
    Z = rng.gamma(2.0, 1.0, (m, T))
    Z[rng.random((m, T)) < 0.05] = np.nan  # gaps inside, and origins before a week / four weeks of history
    rows, origins = rng.integers(0, m, 80), rng.integers(0, T, 80)
    ets = FrozenETS(alpha=0.2, beta=0.01, gamma=0.05, phi=0.95, trend="Ad") if seed % 2 else None
    got = components(Z, rows, origins, 24, ets)
    np.testing.assert_array_equal(got, _components_per_origin(Z, rows, origins, 24, ets))
    # terms a base weights 0 everywhere are left 0; the base they feed is the same number
    needed = np.ones(len(COMPONENTS), dtype=bool)
    needed[[7, 8, 9, 10]] = False
    skipped = components(Z, rows, origins, 24, ets, needed)
    np.testing.assert_array_equal(skipped[..., needed], got[..., needed])
    assert (skipped[..., ~needed] == 0).all()
    weights = rng.random((24, len(COMPONENTS))) * needed
    base = StatisticalBase(weights, ets=ets)
    np.testing.assert_array_equal(base.predict(Z, rows, origins), base.predict_components(got))


def test_the_sorted_median_equals_numpys_nanmedian_bitwise():
    from earnopt_assets.forecasting.model.base import median_of

    rng = np.random.default_rng(4)
    for _ in range(50):
        stacked = rng.gamma(2.0, 1.0, (int(rng.integers(1, 30)), int(rng.integers(2, 5))))
        stacked[rng.random(stacked.shape) < 0.3] = np.nan
        expected = np.full(len(stacked), np.nan)
        finite = np.isfinite(stacked).any(axis=1)
        expected[finite] = np.nanmedian(stacked[finite], axis=1)
        np.testing.assert_array_equal(median_of(stacked, stacked.shape[1]), expected)
