"""Readers while a writer holds DuckDB (#13 §4): the last good answer, never a 503 once one was read.

A real second process holds the warehouse's write connection (as a Dagster step does) after committing a
write, so the warehouse stamp has changed and no read-only connection can open.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from earnopt_assets.service import reads
from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import seed_warehouse, simulated

# writes (the stamp changes), then keeps the write lock until stdin closes
_WRITER = textwrap.dedent(
    """
    import sys, duckdb
    conn = duckdb.connect(sys.argv[1])
    conn.execute("CREATE TABLE IF NOT EXISTS writer_was_here (x INTEGER)")
    conn.execute("INSERT INTO writer_was_here VALUES (1)")
    print("locked", flush=True)
    sys.stdin.read()
    conn.close()
    """
)


class HeldWriter:
    def __init__(self, db) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def warehouse(data_dir, small_catalog):
    reads.LAST_GOOD.clear()
    db = data_dir / "earnopt.duckdb"
    seed_warehouse(db, small_catalog, simulated(small_catalog, ["honeygain", "storj"], 3), forecast_time=datetime(2026, 11, 20, 23, 30))
    yield db
    reads.LAST_GOOD.clear()


def test_readers_get_the_last_good_answer_while_a_writer_holds_the_warehouse(warehouse, data_dir, small_catalog_path) -> None:
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, model_reload_seconds=0)
    with TestClient(create_app(settings)) as client:
        before = client.get("/forecasts/honeygain")
        health_before = client.get("/health").json()
        assert before.status_code == 200 and health_before["warehouse"]["status"] == "ok"
        stamp = reads.warehouse_stamp(warehouse)
        writer = HeldWriter(warehouse)
        try:
            assert reads.warehouse_stamp(warehouse) != stamp  # the remembered answer is no longer known current
            started = time.monotonic()
            during = client.get("/forecasts/honeygain")
            waited = time.monotonic() - started
            health = client.get("/health")
        finally:
            writer.release()
        assert during.status_code == 200, during.text
        assert during.json() == before.json()
        assert waited < reads.READ_LOCK_TIMEOUT_S  # a short bounded retry, not the cold read's full wait
        assert health.json()["warehouse"]["status"] == "ok"  # (the service is "down" here only for want of a model)
        assert "a writer holds the lock" in health.json()["warehouse"]["detail"]
        assert health.json()["telemetry_age_seconds"] is not None  # the figures of the last good read
        after = client.get("/health").json()
        assert after["warehouse"]["detail"] == "read-only connection ok"  # re-read once the writer is gone


def test_a_first_read_while_a_writer_holds_the_warehouse_is_a_503(warehouse, data_dir, small_catalog_path) -> None:
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, model_reload_seconds=0)
    writer = HeldWriter(warehouse)
    try:
        with TestClient(create_app(settings)) as client:
            answer = client.get("/forecasts/storj")
    finally:
        writer.release()
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/problem+json"
    assert "warehouse-busy" in answer.json()["type"]


def test_an_unchanged_warehouse_is_not_opened_again_and_a_write_is_seen(warehouse) -> None:
    opened: list[float] = []

    def read(timeout_s: float) -> int:
        opened.append(timeout_s)
        with reads.read_connection(warehouse, timeout_s) as conn:
            return int(conn.execute("SELECT count(*) FROM forecasts").fetchone()[0])

    first = reads.LAST_GOOD.read(warehouse, "count", read)
    again = reads.LAST_GOOD.read(warehouse, "count", read)
    assert first.value == again.value and again.stale_for_s is None and len(opened) == 1
    writer = HeldWriter(warehouse)
    try:
        stale = reads.LAST_GOOD.read(warehouse, "count", read)
    finally:
        writer.release()
    assert stale.value == first.value and stale.stale_for_s is not None and opened[-1] == reads.STALE_READ_TIMEOUT_S
    fresh = reads.LAST_GOOD.read(warehouse, "count", read)
    assert fresh.stale_for_s is None and len(opened) == 3
