"""Anomaly scoring of posted telemetry with the stored IsolationForest detector."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends

from earnopt_assets.service.errors import ModelUnavailable, UnprocessableData
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.schemas import AnomalyDetectionRequest, AnomalyDetectionResponse, AnomalyScore
from earnopt_assets.service.state import ServiceState
from earnopt_assets.service.telemetry import rows_to_frame

router = APIRouter(tags=["anomalies"])


@router.post(
    "/detect/anomalies",
    response_model=AnomalyDetectionResponse,
    responses={422: {"description": "Invalid rows or an unknown protocol (field named)."}, 503: {"description": "No detector trained yet."}},
)
def detect_anomalies(request: AnomalyDetectionRequest, state: ServiceState = Depends(get_state)) -> AnomalyDetectionResponse:
    """Score every posted hour with the stored detector.

    Detection features (relative deviation from the 24 h mean, change vs last week, resource activity
    z-score vs the trailing 7 days, log failures) are computed per (device, protocol) series from the posted
    rows, so post at least a week of history for the full features; hours whose features cannot be computed
    yet take neutral values. ``score = -decision_function``: above 0 is anomalous at the detector's
    contamination.
    """
    from earnopt_assets.anomaly.detector import DETECTION_FEATURES, detection_features

    for index, row in enumerate(request.rows):
        if row.protocol not in state.catalog:
            raise UnprocessableData(
                f"unknown protocol {row.protocol!r}; the catalog knows: {', '.join(state.catalog.names)}",
                field=f"rows.{index}.protocol",
            )
    detector = state.detector.get()
    if detector is None:
        raise ModelUnavailable(f"{state.detector.error or 'no anomaly detector loaded'}; materialize the anomaly_model asset first")
    frame = rows_to_frame(request.rows, protocol=None, default_device=state.catalog.host.device, single_device=False)
    if frame.duplicated(subset=["device", "protocol", "ts"]).any():
        first = int(np.argmax(frame.duplicated(subset=["device", "protocol", "ts"]).to_numpy()))
        raise UnprocessableData(f"duplicate (device, protocol, ts) at {frame.loc[first, 'ts']}", field="rows")
    specs = {spec.name: spec for spec in state.catalog.protocols}
    features = detection_features(frame, specs)
    scores = -detector.decision_function(features) if len(features) else np.zeros(0)
    results = []
    for (_, row), score in zip(features.iterrows(), scores):
        values = {name: (float(row[name]) if math.isfinite(float(row[name])) else None) for name in DETECTION_FEATURES}
        results.append(
            AnomalyScore(
                device=str(row["device"]),
                protocol=str(row["protocol"]),
                ts=pd.Timestamp(row["ts"]).tz_localize("UTC").to_pydatetime(),
                score=float(score),
                is_anomaly=bool(score > 0),
                features=values,
            )
        )
    return AnomalyDetectionResponse(
        detector_version=detector.version,
        threshold=0.0,
        scored=len(results),
        anomalies=sum(r.is_anomaly for r in results),
        results=results,
    )
