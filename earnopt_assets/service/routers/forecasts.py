"""``GET /forecasts/{protocol}``: the newest stored forecast, straight from the ``forecasts`` table.

What an orchestrator polling every 15 minutes should call: no model runs, no body to parse; the rows
(with their intervals) are read through the table's owner, ``forecasting.store.latest_forecast_of``.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends

from earnopt_assets.api_schemas import HourlyPrediction, StoredForecastResponse
from earnopt_assets.service import reads
from earnopt_assets.service.errors import NotFound, ServiceUnavailable
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.state import ServiceState

router = APIRouter(tags=["predictions"])
# (warehouse, protocol, device) -> (warehouse stamp, answer): the built answer while the warehouse is unchanged
# (reads.LAST_GOOD remembers the rows; this saves rebuilding the response from them on every poll).
_ANSWERS: dict[tuple[str, str, str], tuple[tuple, StoredForecastResponse]] = {}
_LOCK = threading.Lock()


def _utc(value: Any) -> datetime:
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)).to_pydatetime()


def _amount(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else max(0.0, float(value))


@router.get(
    "/forecasts/{protocol}",
    response_model=StoredForecastResponse,
    responses={404: {"description": "Unknown protocol, or no forecast stored for it yet."},
               503: {"description": "The warehouse has been locked by a writer since before the service first read this "
                                     "forecast, for longer than the read timeout (later, the last good answer is served)."}},
)
def stored_forecast(protocol: str, state: ServiceState = Depends(get_state)) -> StoredForecastResponse:
    """The newest ``earnings_forecast`` rows of ``protocol`` on this host's device, with their 80/95 %
    intervals, exactly as the pipeline stored them."""
    if protocol not in state.catalog:
        raise NotFound(f"unknown protocol {protocol!r}; the catalog knows: {', '.join(state.catalog.names)}")
    device = state.catalog.host.device
    stamp = reads.warehouse_stamp(state.db_path)
    with _LOCK:
        known = _ANSWERS.get((str(state.db_path), protocol, device))
    if known is not None and known[0] == stamp and stamp[0] is not None:
        return known[1]
    try:
        reading = reads.latest_forecast_rows(state.db_path, protocol, device)
    except reads.WarehouseMissing:
        reading = reads.Reading(pd.DataFrame())
    except reads.WarehouseBusy as exc:  # locked since before this process ever read it
        raise ServiceUnavailable(str(exc), problem="warehouse-busy") from None
    if reading.stale_for_s is not None and known is not None:
        return known[1]  # a writer holds the warehouse: the last good answer
    rows = reading.value
    if rows.empty:
        raise NotFound(f"no forecast stored for {protocol} on {device} yet; materialize earnings_forecast first")
    first = rows.iloc[0]
    predictions = [
        HourlyPrediction(ts=_utc(r.target_ts), earnings_usd=max(0.0, float(r.value)), lower_80=_amount(r.lower_80),
                         upper_80=_amount(r.upper_80), lower_95=_amount(r.lower_95), upper_95=_amount(r.upper_95))
        for r in rows.itertuples(index=False)
    ]
    answer = StoredForecastResponse(
        protocol=protocol, device=device, forecast_time=_utc(first.forecast_time), origin_ts=_utc(first.origin_ts),
        source=str(first.source), model_version=None if pd.isna(first.model_version) else str(first.model_version),
        reason=None if pd.isna(first.reason) else str(first.reason), below_target=bool(first.below_target),
        predictions=predictions, total_usd=sum(p.earnings_usd for p in predictions),
    )
    if reading.stale_for_s is None:
        with _LOCK:
            _ANSWERS[(str(state.db_path), protocol, device)] = (stamp, answer)
    return answer
