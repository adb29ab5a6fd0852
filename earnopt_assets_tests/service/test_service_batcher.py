"""The prediction micro-batcher: ordering, error isolation, timeouts and shutdown (real asyncio, real
worker thread; the forecasters are small deterministic stand-ins so each property is checked exactly),
plus concurrent requests through the real app answering with the single-request forecasts."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from earnopt_assets.service.batcher import BatcherClosed, BatchTimeout, PredictionBatcher


class Scaled:
    """forecast(origins) = origin * factor per row; records every batch it was called with."""

    def __init__(self, factor: float, bad: set[int] | None = None, gate: threading.Event | None = None) -> None:
        self.factor = factor
        self.bad = bad or set()
        self.gate = gate
        self.calls: list[list[int]] = []

    def forecast(self, origins):
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(list(origins))
        if self.bad.intersection(origins):
            raise ValueError(f"cannot forecast {sorted(self.bad.intersection(origins))}")
        return np.array([[o * self.factor] * 24 for o in origins], dtype=float)


def run(coro):
    return asyncio.run(coro)


def test_every_request_gets_its_own_row_from_one_shared_batch():
    async def main():
        batcher = PredictionBatcher(max_batch=64, max_wait_s=0.05)
        a, b = Scaled(1.0), Scaled(10.0)
        results = await asyncio.gather(*(batcher.submit(a if i % 2 else b, i) for i in range(20)))
        await batcher.close()
        return batcher, a, b, results

    batcher, a, b, results = run(main())
    for i, row in enumerate(results):
        assert row.shape == (24,) and row[0] == i * (1.0 if i % 2 else 10.0)
    assert batcher.stats.batches == 1 and batcher.stats.largest == 20
    assert len(a.calls) == 1 and len(b.calls) == 1  # one call per model per batch
    assert a.calls[0] == list(range(1, 20, 2))  # arrival order kept inside a model's batch


def test_max_batch_splits_the_queue():
    async def main():
        batcher = PredictionBatcher(max_batch=4, max_wait_s=0.05)
        model = Scaled(1.0)
        results = await asyncio.gather(*(batcher.submit(model, i) for i in range(10)))
        await batcher.close()
        return batcher, model, results

    batcher, model, results = run(main())
    assert [r[0] for r in results] == list(range(10))
    assert max(len(c) for c in model.calls) <= 4 and batcher.stats.requests == 10
    assert batcher.stats.mean_batch == pytest.approx(10 / batcher.stats.batches)


def test_a_failing_origin_only_fails_its_own_request():
    async def main():
        batcher = PredictionBatcher(max_wait_s=0.05)
        model = Scaled(2.0, bad={3})
        results = await asyncio.gather(*(batcher.submit(model, i) for i in range(6)), return_exceptions=True)
        await batcher.close()
        return batcher, results

    batcher, results = run(main())
    assert isinstance(results[3], ValueError) and "cannot forecast [3]" in str(results[3])
    assert [r[0] for i, r in enumerate(results) if i != 3] == [0.0, 2.0, 4.0, 8.0, 10.0]
    assert batcher.stats.isolated_failures == 1


def test_a_single_failing_request_gets_its_error():
    async def main():
        batcher = PredictionBatcher(max_wait_s=0)
        try:
            with pytest.raises(ValueError):
                await batcher.submit(Scaled(1.0, bad={7}), 7)
            assert (await batcher.submit(Scaled(1.0), 8))[0] == 8.0  # the worker keeps going
        finally:
            await batcher.close()

    run(main())


def test_a_request_that_waits_too_long_times_out_and_others_still_complete():
    gate = threading.Event()

    async def main():
        batcher = PredictionBatcher(max_wait_s=0, timeout_s=0.2)
        slow = Scaled(1.0, gate=gate)
        first = asyncio.ensure_future(batcher.submit(slow, 1))
        await asyncio.sleep(0.05)  # the worker is now blocked inside the slow batch
        queued = asyncio.ensure_future(batcher.submit(Scaled(1.0), 2))
        with pytest.raises(BatchTimeout):
            await first
        with pytest.raises(BatchTimeout):
            await queued  # timed out while still queued: dropped, never computed
        gate.set()
        await asyncio.sleep(0.05)
        assert (await batcher.submit(Scaled(3.0), 5))[0] == 15.0
        await batcher.close()
        return slow

    slow = run(main())
    assert slow.calls == [[1]]


@pytest.mark.slow
def test_close_fails_waiting_requests_and_refuses_new_ones():
    gate = threading.Event()

    async def main():
        batcher = PredictionBatcher(max_wait_s=0, timeout_s=10)
        slow = Scaled(1.0, gate=gate)
        inflight = asyncio.ensure_future(batcher.submit(slow, 1))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit(slow, 2))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        gate.set()  # let the worker thread finish so the executor can shut down
        await closing
        for waiter in (inflight, queued):
            with pytest.raises(BatcherClosed):
                await waiter
        with pytest.raises(BatcherClosed):
            await batcher.submit(slow, 3)
        await batcher.close()  # idempotent

    run(main())


def test_settings_are_checked():
    async def main():
        with pytest.raises(ValueError):
            PredictionBatcher(max_batch=0)
        with pytest.raises(ValueError):
            PredictionBatcher(timeout_s=0)

    run(main())


# ----------------------------------------------------------------------------- through the app


def test_concurrent_http_requests_are_batched_and_equal_single_forecasts(tmp_path, small_catalog_path, small_catalog):
    from fastapi.testclient import TestClient

    from earnopt_assets.forecasting.model.predictor import EarningsPredictor
    from earnopt_assets.service.app import create_app
    from earnopt_assets.service.settings import ServiceSettings
    from earnopt_assets_tests.service.helpers import rows_payload, simulated, train_tiny_model

    data_dir = tmp_path / "data"
    train_tiny_model(small_catalog, data_dir / "models", "honeygain")
    predictor = EarningsPredictor.load(data_dir / "models", "honeygain")
    telemetry = simulated(small_catalog, ["honeygain"], 12, end="2026-11-25T10:00:00")
    series = telemetry.sort_values("ts").reset_index(drop=True)
    need = predictor.required_history_hours + 4  # just over the model's minimum history
    windows = [series.iloc[len(series) - need - k : len(series) - k] for k in range(8)]
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, prediction_cache_size=0, predict_batch_wait_ms=1000)
    with TestClient(create_app(settings)) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda w: client.post("/predict/earnings/honeygain", json={"rows": rows_payload(w)}), windows))
        stats = client.app.state.earnopt.batcher.stats
        assert stats.requests == 8 and stats.batches < 8  # some requests shared a batch
        for window, response in zip(windows, responses):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["source"] == "lstm" and not body["cached"]
            got = np.array([p["earnings_usd"] for p in body["predictions"]])
            assert np.allclose(got, predictor.predict_next_24h(window), rtol=1e-5, atol=1e-9)
            assert body["predictions"][0]["ts"].startswith((window["ts"].max() + np.timedelta64(1, "h")).strftime("%Y-%m-%dT%H"))


def test_a_forecast_timeout_is_a_503_problem(tmp_path, small_catalog_path, small_catalog):
    from fastapi.testclient import TestClient

    from earnopt_assets.service.app import create_app
    from earnopt_assets.service.settings import ServiceSettings
    from earnopt_assets_tests.service.helpers import rows_payload, simulated, train_tiny_model

    data_dir = tmp_path / "data"
    train_tiny_model(small_catalog, data_dir / "models", "honeygain")
    telemetry = simulated(small_catalog, ["honeygain"], 10, end="2026-11-25T10:00:00")
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, prediction_cache_size=0, predict_timeout_seconds=0.2)
    gate = threading.Event()
    with TestClient(create_app(settings)) as client:
        entry = client.app.state.earnopt.models.get("honeygain")
        entry.forecaster = Scaled(1.0, gate=gate)  # a model that does not answer in time
        response = client.post("/predict/earnings/honeygain", json={"rows": rows_payload(telemetry)})
        gate.set()
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["type"].endswith("prediction-unavailable") and "within 0.2 s" in body["detail"]
