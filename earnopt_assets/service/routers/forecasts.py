"""``GET /forecasts/{protocol}``: the newest stored forecast, straight from the ``forecasts`` table.

What an orchestrator polling every 15 minutes should call: no model runs, no body to parse; the rows
(with their intervals) are read through the table's owner, ``forecasting.store.latest_forecast_of``.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends

from earnopt_assets.api_schemas import HourlyPrediction, StoredForecastResponse
from earnopt_assets.service import reads
from earnopt_assets.service.errors import NotFound, ServiceUnavailable
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.state import ServiceState

router = APIRouter(tags=["predictions"])
# (warehouse, protocol, device) -> (warehouse stamp, answer). Opening DuckDB costs ~15-20 ms of CPU per poll; the
# stored forecast can only change when the warehouse file or its WAL changes, so an unchanged stamp
# serves the same rows without opening it. A held read connection is no option: it would lock writers out.
_ANSWERS: dict[tuple[str, str, str], tuple[tuple, StoredForecastResponse]] = {}
_LOCK = threading.Lock()


def warehouse_stamp(db_path: Path) -> tuple:
    """(mtime_ns, size) of the DuckDB file and of its WAL: any committed write changes one of them."""
    stamp: list[tuple[int, int] | None] = []
    for path in (db_path, db_path.with_name(db_path.name + ".wal")):
        try:
            stat = path.stat()
            stamp.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


def _utc(value: Any) -> datetime:
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)).to_pydatetime()


def _amount(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else max(0.0, float(value))


@router.get(
    "/forecasts/{protocol}",
    response_model=StoredForecastResponse,
    responses={404: {"description": "Unknown protocol, or no forecast stored for it yet."},
               503: {"description": "The warehouse is locked by a writer for longer than the read timeout."}},
)
def stored_forecast(protocol: str, state: ServiceState = Depends(get_state)) -> StoredForecastResponse:
    """The newest ``earnings_forecast`` rows of ``protocol`` on this host's device, with their 80/95 %
    intervals, exactly as the pipeline stored them."""
    from earnopt_assets.forecasting.store import latest_forecast_of

    if protocol not in state.catalog:
        raise NotFound(f"unknown protocol {protocol!r}; the catalog knows: {', '.join(state.catalog.names)}")
    device = state.catalog.host.device
    stamp = warehouse_stamp(state.db_path)
    with _LOCK:
        known = _ANSWERS.get((str(state.db_path), protocol, device))
    if known is not None and known[0] == stamp and stamp[0] is not None:
        return known[1]
    try:
        with reads.read_connection(state.db_path) as conn:
            rows = latest_forecast_of(conn, protocol, device)
    except reads.WarehouseMissing:
        rows = pd.DataFrame()
    except reads.WarehouseBusy as exc:
        raise ServiceUnavailable(str(exc), problem="warehouse-busy") from None
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
    with _LOCK:
        _ANSWERS[(str(state.db_path), protocol, device)] = (stamp, answer)
    return answer
