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
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from earnopt_assets.service.errors import ModelUnavailable, ServiceUnavailable, UnprocessableData
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.schemas import (
    EvaluationRequest,
    EvaluationResponse,
    HourlyPrediction,
    PredictionRequest,
    PredictionResponse,
)
from earnopt_assets.service.state import ServiceState
from earnopt_assets.service.telemetry import hourly_grid, rows_to_columns, rows_to_frame, utc_now

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
    identical requests share one computation; LSTM forecasts are micro-batched with the other requests in
    flight, off the event loop.
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
    if cached is not None:
        source, payload = cached
        state.metrics.predictions.labels(protocol, source).inc()
        return Response(payload, media_type="application/json")
    try:
        request = PredictionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None
    response = await state.predictions.compute_once(
        key,
        lambda: _predict(protocol, request, entry, plan, state),
        encode=lambda r: (r.source, r.model_copy(update={"cached": True}).model_dump_json().encode()),
    )
    state.metrics.predictions.labels(protocol, response.source).inc()
    return response


async def _predict(protocol: str, request: PredictionRequest, entry: Any, plan: Plan, state: ServiceState) -> PredictionResponse:
    """Prepare in the threadpool; if the champion answers, wait for its row of a shared batch."""
    from earnopt_assets.service.batcher import BatcherClosed, BatchTimeout

    prepared = await run_in_threadpool(_prepare, protocol, request, entry, plan, state)
    if isinstance(prepared, PredictionResponse):
        return prepared
    device, origin = prepared
    try:
        values = await state.batcher.submit(entry.forecaster, origin)
    except (BatchTimeout, BatcherClosed) as exc:
        raise ServiceUnavailable(str(exc), problem="prediction-unavailable") from None
    targets = pd.date_range(origin.origin_ts + pd.Timedelta(hours=1), periods=len(values), freq="h")
    return _response(protocol, device, entry.version, plan, targets, values)


def _prepare(protocol: str, request: PredictionRequest, entry: Any, plan: Plan, state: ServiceState) -> PredictionResponse | tuple[str, Any]:
    """(device, model origin) for the batcher, or the finished statistical answer; 422/503 on bad input."""
    from earnopt_assets.forecasting.batch import prepare_origin, prepare_origin_from_columns
    from earnopt_assets.forecasting.model.predictor import InsufficientHistoryError, SequenceValidationError

    fallback_reason: str | None = None
    if plan.use_model:
        try:
            # fast path (no DataFrame) for the usual contiguous series; gaps take the gridding path
            device, ts_ns, columns = rows_to_columns(request.rows, protocol=protocol, default_device=state.catalog.host.device)
            origin = prepare_origin_from_columns(entry.predictor, ts_ns, columns)
            if origin is None:
                origin = prepare_origin(entry.predictor, rows_to_frame(request.rows, protocol=protocol, default_device=device))
            return device, origin
        except InsufficientHistoryError as exc:
            if not request.fallback:
                raise UnprocessableData(str(exc), field="rows", required_history_hours=entry.predictor.required_history_hours) from None
            fallback_reason = f"{plan.source} serves {protocol} but needs more history: {exc}"
        except SequenceValidationError as exc:
            raise UnprocessableData(str(exc), field="rows") from None
    if fallback_reason is None and plan.source != "seasonal_naive_fallback":
        from earnopt_assets.forecasting.candidates import InsufficientHistory, OriginContext, statistical_candidates

        # fast path: the posted columns straight onto the hourly grid (no DataFrame), as from_frame does
        device, ts_ns, columns = rows_to_columns(request.rows, protocol=protocol, default_device=state.catalog.host.device)
        gridded = hourly_grid(ts_ns, {"earnings_usd": columns["earnings_usd"], "allocation": columns["allocation"]})
        candidate = statistical_candidates().get(plan.source)
        try:
            if candidate is None:
                raise InsufficientHistory(f"unknown candidate {plan.source!r}")
            if gridded is None:
                context = OriginContext.from_frame(rows_to_frame(request.rows, protocol=protocol, default_device=device))
            else:
                grid, values = gridded
                context = OriginContext(ts=grid, earnings=values["earnings_usd"], allocation=values["allocation"])
            values = np.asarray(candidate(context), dtype=float)
            return _response(protocol, device, None, plan, pd.DatetimeIndex(context.target_ts), values)
        except InsufficientHistory as exc:
            if not request.fallback:
                raise UnprocessableData(f"{plan.source} serves {protocol} but cannot run on the posted rows: {exc}", field="rows") from None
            fallback_reason = f"{plan.source} serves {protocol} but cannot run on the posted rows: {exc}"
    if fallback_reason is None:
        fallback_reason = plan.reason
        if not request.fallback:
            raise ModelUnavailable(
                f"{fallback_reason}; train one with POST /train/{protocol}, or send \"fallback\": true for the seasonal-naive baseline",
                protocol=protocol,
            )
    frame = rows_to_frame(request.rows, protocol=protocol, default_device=state.catalog.host.device)
    device = str(frame["device"].iloc[0])
    targets, values = _baseline(frame)
    return _response(protocol, device, None, Plan("seasonal_naive_fallback", fallback_reason, True, None, False), targets, values)


def _response(protocol: str, device: str, version: str | None, plan: Plan, targets: pd.DatetimeIndex, values: np.ndarray) -> PredictionResponse:
    from earnopt_assets.forecasting.intervals import ConformalIntervals

    index = pd.DatetimeIndex(targets)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    clean = np.clip(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=0.0), 0.0, None)
    bands: dict[str, np.ndarray] = {}
    if plan.decision is not None and plan.decision.intervals:
        try:
            bands = ConformalIntervals.from_json(plan.decision.intervals).apply(clean)
        except (ValueError, KeyError, TypeError):
            bands = {}
    hours = []
    for i, (t, v) in enumerate(zip(index, clean)):
        bounds = {k: float(bands[k][i]) for k in ("lower_80", "upper_80", "lower_95", "upper_95") if k in bands}
        hours.append(HourlyPrediction(ts=t.to_pydatetime(), earnings_usd=float(v), **bounds))
    return PredictionResponse(
        protocol=protocol,
        device=device,
        model_version=version,
        source=plan.source,
        reason=plan.reason,
        below_target=plan.below_target,
        generated_at=utc_now(),
        predictions=hours,
        total_usd=float(clean.sum()),
    )


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
