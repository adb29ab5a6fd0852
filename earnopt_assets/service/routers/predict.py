"""Earnings forecasts and model evaluation on posted telemetry."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from earnopt_assets.service.errors import ModelUnavailable, ServiceUnavailable, UnprocessableData
from earnopt_assets.service.prediction import (
    HOUR_NS,
    SLOW_SOURCES,
    ParsedRows,
    PredictionJob,
    RequestForecaster,
    cached_copy,
    encode_answer,
)
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.schemas import EvaluationRequest, EvaluationResponse, PredictionResponse
from earnopt_assets.service.state import ServiceState
from earnopt_assets.service.telemetry import hourly_grid, rows_to_frame

router = APIRouter(tags=["predictions"])

ProtocolPath = Annotated[str, Path(description="Protocol name from the catalog.", examples=["honeygain"], max_length=64)]

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown protocol (not in the catalog)."},
    422: {"description": "Invalid telemetry; `errors[].field` names the field."},
    503: {"description": "Nothing decided or usable serves the protocol (ask `fallback: true` for the seasonal-naive baseline)."},
}


def _baseline(frame: pd.DataFrame) -> tuple[pd.DatetimeIndex, np.ndarray]:
    from earnopt_assets.numerics.baselines import fallback_forecast

    return fallback_forecast(frame["ts"], frame["earnings_usd"].to_numpy(dtype=float))


PREDICTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}},
    }
}

LSTM_SOURCES = ("lstm", "lstm_base_only")


@dataclass(frozen=True)
class Plan:
    """How this request is answered: by the loaded champion (``use_model``) or a statistical source."""

    source: str
    reason: str | None
    below_target: bool
    decision: Any  # ServingDecision | None
    use_model: bool


def _plan(protocol: str, entry: Any, decision: Any) -> Plan:
    """The serving rule of the API: the protocol's recorded decision; the model only when it is the decided
    champion (a challenger that failed its check is never CURRENT, and a champion that lost to a statistical
    candidate is not used). Without a decision a loaded model serves only if its recorded check did not fail."""
    if decision is not None:
        if decision.source in LSTM_SOURCES:
            if entry.loaded and entry.version == decision.model_version:
                return Plan(decision.source, decision.reason, decision.below_target, decision, True)
            why = entry.error or f"loaded version {entry.version or 'none'} is not the decided champion {decision.model_version}"
            return Plan("seasonal_naive_fallback", f"decided champion unusable: {why}", True, None, False)
        return Plan(decision.source, decision.reason, decision.below_target, decision, False)
    if entry.loaded:
        from earnopt_assets.service.forecast_adapter import mape_check

        passed, _ = mape_check(entry.metadata, {})
        if passed is not False:
            return Plan("lstm", f"champion {entry.version}; no scored serving decision on record for {protocol}", False, None, True)
        return Plan("seasonal_naive_fallback", f"the model of {protocol} failed its MAPE check and no serving decision is on record", True, None, False)
    return Plan("seasonal_naive_fallback", f"no usable model for {protocol}: {entry.error or 'not loaded'}", True, None, False)


@router.post(
    "/predict/earnings/{protocol}",
    response_model=PredictionResponse,
    responses=PROBLEM_RESPONSES,
    openapi_extra=PREDICTION_BODY,
)
async def predict_earnings(protocol: ProtocolPath, http_request: Request, state: ServiceState = Depends(get_state)) -> Any:
    """Forecast the protocol's next 24 hourly earnings from recent telemetry (body: ``PredictionRequest``).

    The answer comes from the source the protocol's latest training run decided: the LSTM champion, or its
    best statistical candidate (``mstl``, ``ets``, ``seasonal_naive_168``, ...) when that forecasts better.
    ``source`` names it, ``reason`` says why, ``below_target`` flags a source that misses the MAPE target
    (served because nothing meets it) and every hour carries its 80/95 % interval. A model that failed its
    check is never used. With nothing decided or usable the seasonal-naive baseline answers only when asked
    (``fallback: true``), as ``seasonal_naive_fallback``. The LSTM needs ``required_history_hours``
    contiguous hours (see ``GET /models``).

    A forecast is a pure function of (decision, model version, request body), so answers are kept in an LRU
    cache keyed by those (``EARNOPT_PREDICTION_CACHE_SIZE``); a hit says ``cached: true``. Concurrent
    identical requests share one computation; uncached requests of every protocol are micro-batched and
    parsed, forecast and encoded off the event loop in one worker-thread hop
    (:mod:`earnopt_assets.service.prediction`).
    """
    state.protocol(protocol)
    body = await http_request.body()
    entry = state.models.peek(protocol)
    if entry is None:  # a freshness check is due: it may reload a model, which is slow
        entry = await run_in_threadpool(state.models.get, protocol)
    decision = state.serving.get(protocol)
    plan = _plan(protocol, entry, decision)
    decided = decision.decided_at if decision is not None else None
    key = f"{protocol}|{entry.version if entry.loaded else None}|{decided}|{hashlib.sha256(body).hexdigest()}"
    cached = state.predictions.get(key)
    if cached is None:
        source, payload = await state.predictions.compute_once(
            key, lambda: _compute(PredictionJob(protocol, body, entry, plan, state)), encode=lambda r: (r[0], cached_copy(r[1]))
        )
    else:
        source, payload = cached
    state.metrics.predictions.labels(protocol, source).inc()
    return Response(payload, media_type="application/json")


async def _compute(job: PredictionJob) -> tuple[str, bytes]:
    """(source, payload) of one uncached request: in the micro-batcher's thread, or (the sources that fit
    per request) in the threadpool so they do not hold up the batch."""
    from earnopt_assets.service.batcher import BatcherClosed, BatchTimeout

    state = job.state
    if job.plan.source in SLOW_SOURCES and frozen_ets(job) is None:
        outcome = (await run_in_threadpool(state.request_forecaster.forecast, [job]))[0]
    else:
        try:
            outcome = await state.batcher.submit(state.request_forecaster, job)
        except (BatchTimeout, BatcherClosed) as exc:
            raise ServiceUnavailable(str(exc), problem="prediction-unavailable") from None
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def frozen_ets(job: PredictionJob) -> Any | None:
    """The ETS parameters frozen at training that were scored as the served ``ets`` (the serving decision
    carries them, checksummed), or None: the ``ets`` source then refits per request, as it was scored."""
    if job.plan.source != "ets":
        return None
    from earnopt_assets.forecasting.registry import frozen_ets_of

    return frozen_ets_of(job.plan.decision)[0]


def request_forecaster() -> RequestForecaster:
    """The batcher's forecaster of whole requests (see :mod:`earnopt_assets.service.prediction`)."""
    return RequestForecaster(_prepare, _answer_from_model)


def _answer_from_model(job: PredictionJob, device: str, origin: Any, values: np.ndarray) -> tuple[str, bytes]:
    first_target = int(np.datetime64(origin.series.ts[-1], "ns").astype(np.int64)) + HOUR_NS
    return encode_answer(job.protocol, device, job.entry.version, job.plan, first_target, values, job.state.intervals.get(job.plan.decision))


def _prepare(job: PredictionJob, parsed: ParsedRows) -> tuple[str, bytes] | tuple[str, Any]:
    """(device, model origin) for the champion, or the finished statistical answer (source, payload);
    422/503 on bad input."""
    from earnopt_assets.forecasting.batch import prepare_origin, prepare_origin_from_columns
    from earnopt_assets.forecasting.model.predictor import InsufficientHistoryError, SequenceValidationError

    protocol, entry, plan, state = job.protocol, job.entry, job.plan, job.state
    device, ts_ns, columns = parsed.device, parsed.ts_ns, parsed.columns
    fallback_reason: str | None = None
    if plan.use_model:
        try:
            # fast path (no DataFrame) for the usual contiguous series; gaps take the gridding path
            origin = prepare_origin_from_columns(entry.predictor, ts_ns, columns)
            if origin is None:
                origin = prepare_origin(entry.predictor, rows_to_frame(parsed.request().rows, protocol=protocol, default_device=device))
            return device, origin
        except InsufficientHistoryError as exc:
            if not parsed.fallback:
                raise UnprocessableData(str(exc), field="rows", required_history_hours=entry.predictor.required_history_hours) from None
            fallback_reason = f"{plan.source} serves {protocol} but needs more history: {exc}"
        except SequenceValidationError as exc:
            raise UnprocessableData(str(exc), field="rows") from None
    if fallback_reason is None and plan.source != "seasonal_naive_fallback":
        from earnopt_assets.forecasting.candidates import (
            InsufficientHistory,
            OriginContext,
            frozen_ets_forecast,
            statistical_candidates,
        )
        from earnopt_assets.forecasting.model.ets import INIT_HOURS

        # fast path: the posted columns straight onto the hourly grid (no DataFrame), as from_frame does
        gridded = hourly_grid(ts_ns, {"earnings_usd": columns["earnings_usd"], "allocation": columns["allocation"]})
        candidate = statistical_candidates().get(plan.source)
        try:
            if candidate is None:
                raise InsufficientHistory(f"unknown candidate {plan.source!r}")
            if gridded is None:
                context = OriginContext.from_frame(rows_to_frame(parsed.request().rows, protocol=protocol, default_device=device))
            else:
                grid, values = gridded
                context = OriginContext(ts=grid, earnings=values["earnings_usd"], allocation=values["allocation"])
            ets = frozen_ets(job)
            if ets is not None and len(context.earnings) >= INIT_HOURS:
                values = frozen_ets_forecast(context, ets)
            else:
                values = np.asarray(candidate(context), dtype=float)
                if plan.source == "ets":  # served (and scored) as the refit: say why
                    from dataclasses import replace

                    from earnopt_assets.forecasting.registry import frozen_ets_of

                    why = frozen_ets_of(plan.decision)[1] or f"fewer than {INIT_HOURS} posted hours for the frozen ETS: ets refits on them"
                    plan = replace(plan, reason=f"{plan.reason}; {why}")
            first_target = int(np.datetime64(context.ts[-1], "ns").astype(np.int64)) + HOUR_NS
            return encode_answer(protocol, device, None, plan, first_target, values, state.intervals.get(plan.decision))
        except InsufficientHistory as exc:
            if not parsed.fallback:
                raise UnprocessableData(f"{plan.source} serves {protocol} but cannot run on the posted rows: {exc}", field="rows") from None
            fallback_reason = f"{plan.source} serves {protocol} but cannot run on the posted rows: {exc}"
    if fallback_reason is None:
        fallback_reason = plan.reason
        if not parsed.fallback:
            raise ModelUnavailable(
                f"{fallback_reason}; train one with POST /train/{protocol}, or send \"fallback\": true for the seasonal-naive baseline",
                protocol=protocol,
            )
    frame = rows_to_frame(parsed.request().rows, protocol=protocol, default_device=state.catalog.host.device)
    device = str(frame["device"].iloc[0])
    targets, values = _baseline(frame)
    first = pd.DatetimeIndex(targets)
    first_target = int((first.tz_localize("UTC") if first.tz is None else first.tz_convert("UTC")).as_unit("ns").asi8[0])
    return encode_answer(protocol, device, None, Plan("seasonal_naive_fallback", fallback_reason, True, None, False), first_target, values, None)


@router.post("/evaluate/{protocol}", response_model=EvaluationResponse, responses=PROBLEM_RESPONSES)
def evaluate_model(protocol: ProtocolPath, request: EvaluationRequest, state: ServiceState = Depends(get_state)) -> EvaluationResponse:
    """Score the stored model on posted telemetry with known outcomes (rolling-origin, 24 h forecasts).

    The first ``168 + sequence_length`` hours are history; every later hour is a forecast target. Metrics
    are those of training: MSE, MAE, RMSE, MAPE (zero actuals skipped), R², plus both seasonal-naive
    baselines on the same hours.
    """
    from earnopt_assets.forecasting.model.predictor import SequenceValidationError
    from earnopt_assets.ingestion.features import WARMUP_HOURS, series_features, to_hourly_grid

    state.protocol(protocol)
    frame = rows_to_frame(request.rows, protocol=protocol, default_device=state.catalog.host.device)
    entry = state.models.get(protocol)
    if not entry.loaded:
        raise ModelUnavailable(f"no usable model for {protocol}: {entry.error or 'not loaded'}; train one with POST /train/{protocol}")
    predictor = entry.predictor
    needed = WARMUP_HOURS + predictor.sequence_length + 1
    if len(frame) < needed:
        raise UnprocessableData(
            f"{len(frame)} hourly rows posted; evaluation needs at least {needed} "
            f"({WARMUP_HOURS} h feature warm-up + {predictor.sequence_length} h window + 1 target)",
            field="rows",
        )
    # Features on the full hourly grid, warm-up rows included: their earnings are the history the lag
    # features and the seasonal base read, even where a 168 h feature is not defined yet.
    series = frame[["ts", "earnings_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb", "allocation", "connection_failures"]]
    gridded, _ = to_hourly_grid(series)
    features = series_features(gridded, state.catalog.host.totals(), state.catalog.host.timezone)
    split = WARMUP_HOURS + predictor.sequence_length
    context, holdout = features.iloc[:split], features.iloc[split:]
    # evaluate() records its result on the predictor; score a shallow copy so the served model keeps its
    # training-time metrics (and concurrent requests do not see each other's results).
    scorer = copy.copy(predictor)
    try:
        result = scorer.evaluate(holdout, context=context)
    except SequenceValidationError as exc:
        raise UnprocessableData(str(exc), field="rows") from None
    model_metrics = {k: float(v) for k, v in (result.get("model") or {}).items() if isinstance(v, (int, float))}
    from earnopt_assets.forecasting.registry import DEFAULT_MAPE_TARGET_PCT, judge_mape
    from earnopt_assets.service.forecast_adapter import mape_check

    _, threshold = mape_check(entry.metadata, predictor.metrics or {})
    threshold = threshold if threshold is not None else DEFAULT_MAPE_TARGET_PCT
    outcome = judge_mape(result, threshold)
    details = {key: value for key, value in result.items() if key != "model"}
    details["mape_check_reasons"] = list(outcome.reasons)
    return EvaluationResponse(
        protocol=protocol,
        model_version=entry.version,
        metrics=model_metrics,
        n_samples=int(model_metrics.get("n", 0)),
        passed_mape_check=outcome.passed,
        mape_threshold=threshold,
        details=_json_safe(details),
    )


def _json_safe(obj: Any) -> Any:
    import math

    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
