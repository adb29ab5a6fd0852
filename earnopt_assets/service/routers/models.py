"""What the service knows about the trained forecasting models."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from earnopt_assets.service import forecast_adapter
from earnopt_assets.service.errors import ModelUnavailable
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.routers.predict import PROBLEM_RESPONSES, ProtocolPath
from earnopt_assets.service.schemas import ModelInfo, ModelMetricsResponse, ModelsResponse
from earnopt_assets.service.state import LoadedModel, ServiceState

router = APIRouter(tags=["models"])


def _scores(entry: LoadedModel) -> dict:
    """The holdout scores of the training run that produced this version: the model (``lstm``) and every
    statistical candidate on the same origins (``mape_pct``, ``mase``, ``mae_usd``, ...); the model's own
    metrics when the version has none recorded."""
    scores = entry.metadata.get("scores") if isinstance(entry.metadata, dict) else None
    if isinstance(scores, dict) and scores:
        return dict(scores)
    predictor = entry.predictor
    return dict(getattr(predictor, "metrics", None) or {}) if predictor is not None else {}


def _info(entry: LoadedModel) -> ModelInfo:
    predictor = entry.predictor
    metrics = _scores(entry)
    passed, _ = forecast_adapter.mape_check(entry.metadata, metrics)
    return ModelInfo(
        protocol=entry.protocol,
        version=entry.version,
        trained_at=entry.trained_at,
        loaded=entry.loaded,
        metrics=metrics,
        passed_mape_check=passed,
        required_history_hours=predictor.required_history_hours if predictor is not None else None,
        error=entry.error,
    )


@router.get("/models", response_model=ModelsResponse)
def list_models(state: ServiceState = Depends(get_state)) -> ModelsResponse:
    """Every enabled protocol's model: version, training time, holdout scores (the model and every statistical
    candidate on the same origins) and the MAPE check result.

    Protocols without a trained model are listed with ``loaded: false`` and the reason in ``error``.
    """
    names = state.catalog.enabled_names
    return ModelsResponse(models=[_info(state.models.get(name)) for name in names], expected=names)


@router.get("/models/{protocol}/metrics", response_model=ModelMetricsResponse, responses=PROBLEM_RESPONSES)
def model_metrics(protocol: ProtocolPath, state: ServiceState = Depends(get_state)) -> ModelMetricsResponse:
    """Latest holdout metrics, a training-history summary and the last training time of one model."""
    state.protocol(protocol)
    entry = state.models.get(protocol)
    if not entry.loaded:
        raise ModelUnavailable(f"no trained model for {protocol}: {entry.error or 'not loaded'}")
    predictor = entry.predictor
    metrics = _scores(entry)
    passed, _ = forecast_adapter.mape_check(entry.metadata, metrics)
    return ModelMetricsResponse(
        protocol=protocol,
        version=entry.version,
        trained_at=entry.trained_at,
        metrics=metrics,
        passed_mape_check=passed,
        history=forecast_adapter.history_summary(predictor.history or {}, predictor.epochs_run, predictor.training_seconds),
    )
