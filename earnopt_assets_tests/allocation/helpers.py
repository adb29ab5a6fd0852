"""Shared setup for the allocation tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.warehouse import connect


def load_telemetry(db: Path, frame: pd.DataFrame) -> None:
    """Simulated telemetry straight into raw_earnings (the tests start from a filled warehouse, not from landing)."""
    with connect(db) as conn:
        ensure_raw_earnings(conn)
        conn.register("telemetry", frame)
        conn.execute(
            "INSERT INTO raw_earnings (device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb,"
            " allocation, connection_failures, latency_ms) SELECT device, protocol, ts,"
            " earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms FROM telemetry"
        )
