"""Posted telemetry rows → the DataFrame shapes the predictor, detector and landing path expect."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from earnopt_assets.service.errors import UnprocessableData
from earnopt_assets.service.schemas import TelemetryRow

FRAME_COLUMNS = (
    "device", "protocol", "ts", "earnings_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb",
    "allocation", "connection_failures", "latency_ms",
)


def rows_to_frame(rows: Sequence[TelemetryRow], *, protocol: str | None, default_device: str, single_device: bool = True) -> pd.DataFrame:
    """One row per posted hour, ``ts`` as naive UTC ``datetime64``, sorted by (device, protocol, ts).

    ``protocol`` (from the path) is stamped on every row; a row naming another protocol is a 422 that
    names the row. ``single_device`` refuses a mix of devices (a forecast is for one series).
    """
    records = []
    for index, row in enumerate(rows):
        if protocol is not None and row.protocol is not None and row.protocol != protocol:
            raise UnprocessableData(
                f"row {index} is for protocol {row.protocol!r} but the path says {protocol!r}", field=f"rows.{index}.protocol"
            )
        record = row.model_dump()
        record["device"] = row.device or default_device
        record["protocol"] = protocol if protocol is not None else row.protocol
        record["ts"] = row.ts.astimezone(UTC).replace(tzinfo=None)
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(FRAME_COLUMNS))
    if single_device and frame["device"].nunique() > 1:
        raise UnprocessableData(
            f"rows mix devices {sorted(frame['device'].unique())}; post one device's series per request", field="rows"
        )
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    frame["connection_failures"] = frame["connection_failures"].astype("int64")
    return frame.sort_values(["device", "protocol", "ts"]).reset_index(drop=True)


COLUMN_FIELDS = ("earnings_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb", "allocation", "connection_failures")


def rows_to_columns(rows: Sequence[TelemetryRow], *, protocol: str, default_device: str) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    """(device, ts as UTC epoch ns, telemetry columns) of one device's posted rows: the forecast fast path.

    Same checks as :func:`rows_to_frame` (a row for another protocol or a second device is a 422 naming
    it) without building a DataFrame. Rows keep their posted order; the consumer sorts by ``ts``.
    """
    devices = set()
    for index, row in enumerate(rows):
        if row.protocol is not None and row.protocol != protocol:
            raise UnprocessableData(
                f"row {index} is for protocol {row.protocol!r} but the path says {protocol!r}", field=f"rows.{index}.protocol"
            )
        devices.add(row.device or default_device)
    if len(devices) > 1:
        raise UnprocessableData(f"rows mix devices {sorted(devices)}; post one device's series per request", field="rows")
    # ts is validated UTC-aware on whole hours: integer seconds are exact
    ts_ns = np.fromiter((int(row.ts.timestamp()) for row in rows), dtype=np.int64, count=len(rows)) * 1_000_000_000
    columns = {name: np.fromiter((getattr(row, name) for row in rows), dtype=float, count=len(rows)) for name in COLUMN_FIELDS}
    return (devices.pop() if devices else default_device), ts_ns, columns


def rows_to_jsonl(rows: Sequence[TelemetryRow], *, protocol: str, default_device: str) -> str:
    """Landing-file text (JSON Lines, one object per hour) in the columns ingestion validates."""
    lines = []
    for row in rows:
        record = row.model_dump(exclude_none=True)
        record["protocol"] = protocol
        record["device"] = row.device or default_device
        record["ts"] = row.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(json.dumps(record, sort_keys=True))
    return "\n".join(lines) + "\n"


def utc_now() -> datetime:
    return datetime.now(UTC)


HOUR_NS = 3_600_000_000_000


def hourly_grid(ts_ns: np.ndarray, values: dict[str, np.ndarray], *, max_span_factor: int = 4) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The posted columns (unique whole-hour ``ts_ns``, any order) on their contiguous hourly grid, missing
    hours NaN: what ``OriginContext.from_frame`` builds, without pandas. None when the rows are empty or so
    sparse that the grid would exceed ``max_span_factor`` x the rows (the frame path then decides)."""
    if len(ts_ns) == 0:
        return None
    start = int(ts_ns.min())
    slots = (ts_ns - start) // HOUR_NS
    length = int(slots.max()) + 1
    if length > max_span_factor * len(ts_ns):
        return None
    grid = (start + np.arange(length, dtype=np.int64) * HOUR_NS).astype("datetime64[ns]")
    out = {}
    for name, column in values.items():
        full = np.full(length, np.nan)
        full[slots] = column
        out[name] = full
    return grid, out
