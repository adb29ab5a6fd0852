"""The uncached forecast's fast paths give what the slow ones give.

* the strict column parser (``prediction.parse_fast``) accepts only bodies the contract's model accepts,
  with the same columns; every body it declines is answered by the full model (value or 422);
* the served forecast (``BatchedForecaster``: base in one pass, local hours from a table) equals the
  predictor's own ``forecast_series`` for every origin, across a daylight-saving change;
* an answer encoded as bytes is a valid ``PredictionResponse`` whose cached copy differs only in ``cached``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.exceptions import RequestValidationError

from earnopt_assets.api_schemas import PredictionResponse
from earnopt_assets.service.errors import UnprocessableData
from earnopt_assets.service.prediction import cached_copy, encode_answer, parse_body, parse_fast, parse_full


def _rows(hours: int = 30, start: str = "2026-03-20T00:00:00Z") -> list[dict]:
    first = pd.Timestamp(start)
    return [
        {"ts": f"{first + pd.Timedelta(hours=i):%Y-%m-%dT%H:%M:%SZ}", "earnings_usd": 0.001 * (i % 24 + 1), "cpu_cores": 0.2, "memory_gb": 0.25,
         "bandwidth_mbps": 8.0, "storage_gb": 0.1, "allocation": 0.9, "connection_failures": i % 3, "latency_ms": 40.0}
        for i in range(hours)
    ]


def _body(rows: list[dict], **extra) -> bytes:
    return json.dumps({"rows": rows, **extra}).encode()


def test_the_fast_parser_gives_the_full_models_columns() -> None:
    rows = _rows()
    rows[3]["device"] = "local"  # the default device, spelled out
    rows[4]["protocol"] = "honeygain"
    rows[5]["latency_ms"] = None
    body = _body(list(reversed(rows)), fallback=True)
    fast, full = parse_fast(body, "honeygain", "local"), parse_full(body, "honeygain", "local")
    assert fast is not None and fast.device == full.device == "local" and fast.fallback and full.fallback
    assert np.array_equal(fast.ts_ns, full.ts_ns)
    assert set(fast.columns) == set(full.columns)
    for name in full.columns:
        assert np.array_equal(fast.columns[name], full.columns[name]), name
    assert len(fast.request().rows) == len(rows)


def _changed(change) -> bytes:
    rows = _rows()
    change(rows)
    return _body(rows)


DECLINED = {
    "hour 24": lambda r: r[1].update(ts="2026-03-20T24:00:00Z"),
    "day 31 of a 30-day month": lambda r: r[1].update(ts="2026-04-31T05:00:00Z"),
    "year 0": lambda r: r[1].update(ts="0000-01-01T05:00:00Z"),
    "not on the hour": lambda r: r[1].update(ts="2026-03-20T05:30:00Z"),
    "an offset": lambda r: r[1].update(ts="2026-03-20T07:00:00+02:00"),
    "no zone": lambda r: r[1].update(ts="2026-03-20T05:00:00"),
    "a repeated hour": lambda r: r[2].update(ts=r[1]["ts"]),
    "a number as text": lambda r: r[1].update(earnings_usd="0.5"),
    "a float count": lambda r: r[1].update(connection_failures=1.0),
    "a boolean share": lambda r: r[1].update(allocation=True),
    "a negative value": lambda r: r[1].update(cpu_cores=-1.0),
    "a share above 1": lambda r: r[1].update(allocation=1.5),
    "an unknown field": lambda r: r[1].update(colour="blue"),
    "a missing field": lambda r: r[1].pop("storage_gb"),
    "another protocol": lambda r: r[1].update(protocol="storj"),
    "two devices": lambda r: r[1].update(device="other-host"),
    "too few rows": lambda r: r.__delitem__(slice(5, None)),
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_the_fast_parser_declines_what_it_cannot_vouch_for_and_the_full_model_decides(case: str) -> None:
    body = _changed(DECLINED[case])
    assert parse_fast(body, "honeygain", "local") is None
    try:
        full = parse_full(body, "honeygain", "local")
    except (RequestValidationError, UnprocessableData):
        return  # the contract rejects it: a 422 naming the field, as before
    parsed = parse_body(body, "honeygain", "local")  # accepted by the full model: its values serve
    assert np.array_equal(parsed.ts_ns, full.ts_ns)


def test_a_string_fallback_and_a_body_that_is_not_json_take_the_full_model() -> None:
    assert parse_fast(_body(_rows(), fallback="yes"), "honeygain", "local") is None
    with pytest.raises(RequestValidationError):
        parse_body(b"{not json", "honeygain", "local")


def test_encoded_answers_are_valid_responses_and_the_cached_copy_only_says_so() -> None:
    from earnopt_assets.service.routers.predict import Plan

    plan = Plan("mstl", "mstl holdout MAPE 9% < 15%", False, None, False)
    first = int(pd.Timestamp("2026-03-29T00:00:00").value)
    values = np.r_[np.linspace(0.001, 0.003, 22), np.nan, -1.0]
    source, payload = encode_answer("honeygain", "local", None, plan, first, values, None)
    answer = PredictionResponse.model_validate_json(payload)
    assert source == "mstl" and answer.source == "mstl" and not answer.cached
    assert all(set(p) == {"ts", "earnings_usd", "lower_80", "upper_80", "lower_95", "upper_95"} for p in json.loads(payload)["predictions"])
    assert [p.ts.hour for p in answer.predictions[:3]] == [0, 1, 2] and answer.predictions[0].ts.tzinfo is not None
    assert answer.predictions[-1].earnings_usd == 0.0 and answer.predictions[-2].earnings_usd == 0.0  # NaN, negative -> 0
    assert answer.total_usd == pytest.approx(sum(p.earnings_usd for p in answer.predictions))
    again = PredictionResponse.model_validate_json(cached_copy(payload))
    assert again.cached and again.model_copy(update={"cached": False}) == answer


def test_served_forecasts_equal_the_predictors_across_a_daylight_saving_change(tmp_path, small_catalog) -> None:
    """Europe/Berlin moves its clocks on 2026-03-29: windows ending around it read local hours from the
    table, the base in one pass, and give the predictor's own numbers."""
    from earnopt_assets.forecasting.batch import BatchedForecaster, _LocalHours, prepare_origin
    from earnopt_assets.forecasting.model.forecast import calendar_channels
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor
    from earnopt_assets_tests.service.helpers import simulated, train_tiny_model

    assert small_catalog.host.timezone == "Europe/Berlin"
    train_tiny_model(small_catalog, tmp_path / "models", "honeygain")
    predictor = EarningsPredictor.load(tmp_path / "models", "honeygain")
    assert predictor.config.head == "direct"
    telemetry = simulated(small_catalog, ["honeygain"], 40, end="2026-03-30T12:00:00").sort_values("ts").reset_index(drop=True)
    need = predictor.required_history_hours + 30
    windows = [telemetry.iloc[len(telemetry) - need - k : len(telemetry) - k] for k in (0, 7, 13, 30, 41)]
    origins = [prepare_origin(predictor, w) for w in windows]
    for blend in (1.0, 0.5, 0.0):  # with the network's correction (the one-pass base) and without it
        predictor.state.blend = blend
        served = BatchedForecaster(predictor).forecast(origins)
        expected = predictor.forecast_series([o.series for o in origins], [o.allocation_path for o in origins])
        assert np.allclose(served, expected, rtol=1e-12, atol=1e-15), blend
    # the table's local hours give the zone's calendar across the change
    hours = np.arange(int(pd.Timestamp("2026-03-28").value // 3_600_000_000_000), int(pd.Timestamp("2026-03-31").value // 3_600_000_000_000))
    local = _LocalHours("Europe/Berlin").shift(hours)
    assert np.array_equal(calendar_channels(local, "UTC"), calendar_channels(hours, "Europe/Berlin"))
    assert _LocalHours("Asia/Kolkata").shift(hours) is None  # half-hour offsets: the pandas path serves


def _ets_by_recursion(ets, y: np.ndarray) -> np.ndarray:
    """The recursion of the ETS module's docstring, hour by hour (the reference the matrix must equal)."""
    init, season = 168, 24
    level = float(np.mean(y[:init]))
    seasonal = [float(np.mean(y[k:init:season]) - level) for k in range(season)][::-1]  # s_0 newest .. s_23 next
    trend = 0.0
    for value in y:
        error = value - (level + ets.phi * trend + seasonal[-1])
        level, trend = level + ets.phi * trend + ets.alpha * error, ets.phi * trend + ets.beta * error
        seasonal = [seasonal[-1] + ets.gamma * error, *seasonal[:-1]]
    damp = np.cumsum(ets.phi ** np.arange(1, 25))
    return np.array([level + damp[h - 1] * trend + seasonal[season - h] for h in range(1, 25)])


@pytest.mark.parametrize("hours", [168, 240, 672])
def test_frozen_ets_answers_are_the_recursion_with_the_training_parameters(hours: int) -> None:
    from earnopt_assets.forecasting.candidates import OriginContext, frozen_ets_forecast
    from earnopt_assets.forecasting.model.ets import FrozenETS

    ets = FrozenETS(alpha=0.35, beta=0.02, gamma=0.15, phi=0.95, trend="Ad")
    t = np.arange(700)
    earnings = 2.0 + np.sin(2 * np.pi * t / 24) + 0.001 * t + np.random.default_rng(1).normal(0, 0.05, len(t))
    grid = (np.datetime64("2026-03-01T00:00:00") + t * np.timedelta64(1, "h")).astype("datetime64[ns]")
    ctx = OriginContext(ts=grid[-hours:], earnings=earnings[-hours:], allocation=np.full(hours, 0.5))
    expected = np.clip(_ets_by_recursion(ets, earnings[-hours:]), 0.0, None)
    assert np.allclose(frozen_ets_forecast(ctx, ets), expected, rtol=1e-9, atol=1e-12)
    # with the model's allocation exponent: read at share 1, answered at the held share (0.5 -> 0.5**beta)
    moved = frozen_ets_forecast(ctx, ets, beta=0.5)
    assert np.allclose(moved, np.clip(_ets_by_recursion(ets, earnings[-hours:] / 0.5**0.5), 0.0, None) * 0.5**0.5, rtol=1e-9)


def _ets_service(tmp_path, small_catalog_path, decision):
    from fastapi.testclient import TestClient

    from earnopt_assets.forecasting.registry import write_serving_decision
    from earnopt_assets.service.app import create_app
    from earnopt_assets.service.settings import ServiceSettings

    data_dir = tmp_path / "data"
    write_serving_decision(data_dir / "models", decision)
    return TestClient(create_app(ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, prediction_cache_size=0)))


def _naive_ts(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values("ts")[["ts", "earnings_usd", "allocation"]]
    return frame.assign(ts=frame["ts"].dt.tz_localize(None)) if frame["ts"].dt.tz else frame


def test_an_ets_answer_is_the_frozen_form_the_harness_scored_for_the_same_window(tmp_path, small_catalog_path, small_catalog, monkeypatch) -> None:
    from earnopt_assets.forecasting import candidates
    from earnopt_assets.forecasting.harness import score_candidates
    from earnopt_assets.forecasting.model.ets import FrozenETS
    from earnopt_assets.forecasting.registry import ServingDecision, frozen_ets_block
    from earnopt_assets_tests.service.helpers import rows_payload, simulated

    telemetry = simulated(small_catalog, ["honeygain"], 20, end="2026-11-25T10:00:00")
    frame = _naive_ts(telemetry)
    ets = FrozenETS(alpha=0.3, beta=0.01, gamma=0.1, phi=0.9, trend="Ad")
    # the harness: the frozen form scored at rolling origins; its last origin is the posted window's end
    ctx = candidates.OriginContext.from_frame(frame)
    n = len(ctx.earnings)
    scored = score_candidates(ctx.ts, ctx.earnings, ctx.allocation, n - 24 * 3, {"ets_frozen": candidates.frozen_ets_forecaster(ets)})
    last_origin = scored.origins[-1]
    window = telemetry.sort_values("ts").iloc[: last_origin + 1]

    def refit(ctx):  # the per-request fit must not run while the decision carries frozen parameters
        raise AssertionError("ets refitted per request")

    decision = ServingDecision("honeygain", "ets", "ets holdout MAPE 8% < 15%", False, 8.0, 15.0, None, ets=frozen_ets_block(ets))
    with _ets_service(tmp_path, small_catalog_path, decision) as client:
        monkeypatch.setitem(candidates.statistical_candidates.__globals__, "ets_forecast", refit)
        answer = client.post("/predict/earnings/honeygain", json={"rows": rows_payload(window)})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["source"] == "ets" and data["model_version"] is None
    served = [p["earnings_usd"] for p in data["predictions"]]
    np.testing.assert_allclose(served, scored.scores["ets_frozen"].predictions[-1], rtol=1e-12, atol=1e-12)


def test_an_ets_decision_without_parameters_or_with_tampered_ones_refits_and_says_why(tmp_path, small_catalog_path, small_catalog, monkeypatch) -> None:
    from earnopt_assets.forecasting import candidates
    from earnopt_assets.forecasting.model.ets import FrozenETS
    from earnopt_assets.forecasting.registry import ServingDecision, frozen_ets_block
    from earnopt_assets_tests.service.helpers import rows_payload, simulated

    telemetry = simulated(small_catalog, ["honeygain"], 10, end="2026-11-25T10:00:00")
    calls = []

    def refit(ctx):
        calls.append(len(ctx.earnings))
        return np.full(ctx.horizon, 1.25)

    tampered = frozen_ets_block(FrozenETS(alpha=0.3, beta=0.0, gamma=0.1, phi=1.0, trend="N"))
    tampered["parameters"]["alpha"] = 0.31
    for name, block, why in (("none", None, "carries no frozen ETS parameters"), ("tampered", tampered, "do not match their sha256")):
        decision = ServingDecision("honeygain", "ets", "ets holdout MAPE 8% < 15%", False, 8.0, 15.0, None, ets=block)
        with _ets_service(tmp_path / name, small_catalog_path, decision) as client:
            monkeypatch.setitem(candidates.statistical_candidates.__globals__, "ets_forecast", refit)
            answer = client.post("/predict/earnings/honeygain", json={"rows": rows_payload(telemetry)})
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["source"] == "ets" and [p["earnings_usd"] for p in data["predictions"]] == [1.25] * 24
        assert why in data["reason"] and "refits per request" in data["reason"]
    assert calls == [240, 240]
