"""Shared helpers of the ingestion tests: a landing CSV header, a good row, and small query/write helpers."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from earnopt_assets.settings import EarnoptPaths

HEADER = "device,protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures,latency_ms"
GOOD = "local,honeygain,2026-01-01T{h:02d}:00:00Z,0.01,0.1,0.2,3,0.1,0.5,0,50"


def query(paths: EarnoptPaths, sql: str, params=None):
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def write(paths: EarnoptPaths, name: str, text: str, mtime: float | None = None) -> Path:
    path = paths.landing / name
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def good_lines(hours) -> list[str]:
    return [GOOD.format(h=h) for h in hours]


def quarantine_reason(paths, row_number: int, file: str = "bad.csv") -> str:
    rows = query(paths, "SELECT reason FROM quarantine WHERE source_file = ? AND row_number = ?", [file, row_number])
    assert len(rows) == 1, rows
    return rows[0][0]


def poll(ts: str, balance: float, protocol: str = "honeygain") -> dict:
    return {"device": "local", "protocol": protocol, "ts": ts, "balance_usd": balance, "cpu_cores": 0.1,
            "memory_gb": 0.2, "bandwidth_mbps": 2, "storage_gb": 0.1, "allocation": 0.5, "connection_failures": 0}
