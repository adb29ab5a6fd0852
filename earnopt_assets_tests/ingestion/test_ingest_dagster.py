"""Ingestion assets through real ``dg.materialize``: metadata, snapshots, checks, the landing sensor,
and overlapping writers on one DuckDB file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from earnopt_assets.defs import ingestion
from earnopt_assets.defs.ingestion import (
    earnings_features,
    freshness_lag_hours,
    landing_run_key,
    landing_sensor,
    raw_earnings,
)
from earnopt_assets.ingestion.feature_store import read_feature_snapshot
from earnopt_assets.ingestion.features import FEATURE_COLUMNS
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate_to_dir
from earnopt_assets.warehouse import DUCKDB_POOL

from earnopt_assets_tests.conftest import REPO_ROOT

END = "2026-01-20T23:00:00"
ALL = [*ingestion.assets, *ingestion.asset_checks]


def _materialize(resources: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize(ALL, resources=resources, raise_on_error=True)


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_materialize_ingestion_assets_end_to_end(data_dir, small_catalog, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=10, seed=4, out_dir=paths.landing, end=END, file_format="csv")
    (paths.landing / "bad.csv").write_text(
        "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures\n"
        "storj,2026-01-20T23:00:00Z,-1,1,2,5,600,0.6,0\nmystery,2026-01-20T22:00:00Z,1,1,2,5,600,0.6,0\n"
    )
    (paths.landing / "broken.parquet").write_bytes(b"PAR1 nope")

    result = _materialize(small_resources)
    raw = _metadata(result, "raw_earnings")
    assert raw["rows_read"] == 3 * 240 + 2 and raw["rows_quarantined"] == 2
    assert raw["rows_accepted"] + raw["rows_quarantined"] == raw["rows_read"]
    assert raw["files_rejected"] == 1 and raw["table_rows"] == 720 and raw["table_series"] == 3
    assert "| bad.csv | ingested | csv | earnings | 2 | 0 | 2 |" in raw["per_file"]
    assert "broken.parquet | rejected" in raw["per_file"]
    assert "unknown protocol mystery" in raw["quarantine_reasons"]

    feats = _metadata(result, "earnings_features")
    assert feats["series"] == 3 and feats["rows"] == 3 * (240 - 168)
    assert feats["dropped_warmup_or_gap_rows"] == 3 * 168
    assert "daily_earnings_plot" in feats and "data:image/png;base64," in feats["daily_earnings_plot"]
    assert _checks(result) == {
        "raw_earnings_no_duplicate_keys": True,
        "earnings_features_no_duplicate_keys": True,
        "earnings_features_finite": True,
        "raw_earnings_freshness": True,
    }

    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        table = conn.execute("SELECT * FROM earnings_features ORDER BY device, protocol, ts").df()
    for protocol in small_catalog.names:
        snapshot = read_feature_snapshot(paths.features_dir, protocol, small_catalog)
        expected = table.loc[table["protocol"] == protocol].reset_index(drop=True)
        assert list(snapshot.columns) == ["device", "protocol", "ts", *FEATURE_COLUMNS]
        pd.testing.assert_frame_equal(snapshot[list(FEATURE_COLUMNS)], expected[list(FEATURE_COLUMNS)], check_dtype=False)
    with pytest.raises(FileNotFoundError, match="materialize earnings_features"):
        read_feature_snapshot(paths.features_dir / "elsewhere", "storj", small_catalog)

    # A second run with an empty landing changes nothing and still passes its checks.
    again = _materialize(small_resources)
    assert _metadata(again, "raw_earnings")["files"] == 0 and _metadata(again, "raw_earnings")["table_rows"] == 720
    assert all(_checks(again).values())


def test_freshness_check_fails_when_the_newest_landed_hours_were_rejected(data_dir, small_catalog, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=8, seed=4, out_dir=paths.landing, end=END)
    late = pd.Timestamp(END) + pd.Timedelta(hours=5)
    (paths.landing / "late.csv").write_text(
        "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures\n"
        f"storj,{late:%Y-%m-%dT%H:%M:%S},-3,1,2,5,600,0.6,0\n"
    )
    result = _materialize(small_resources)
    evaluation = [e for e in result.get_asset_check_evaluations() if e.check_name == "raw_earnings_freshness"][0]
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["lag_hours"].value == pytest.approx(5.0)
    assert freshness_lag_hours(None, late) is None


def test_empty_landing_materializes_empty_tables(small_resources):
    result = _materialize(small_resources)
    assert _metadata(result, "raw_earnings")["table_rows"] == 0
    assert _metadata(result, "earnings_features")["rows"] == 0
    checks = _checks(result)
    assert checks["raw_earnings_freshness"] is False  # nothing ingested yet: a warning
    assert checks["earnings_features_finite"] and checks["raw_earnings_no_duplicate_keys"]


def test_landing_sensor_run_keys(data_dir, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    context = dg.build_sensor_context(resources={"earnopt": small_resources["earnopt"]})
    skipped = landing_sensor(context)
    assert isinstance(skipped, dg.SkipReason)

    (paths.landing / ".partial.csv.tmp").write_text("being written")
    assert isinstance(landing_sensor(dg.build_sensor_context(resources={"earnopt": small_resources["earnopt"]})), dg.SkipReason)

    a = paths.landing / "a.csv"
    a.write_text("x")
    os.utime(a, (1_700_000_000, 1_700_000_000))
    first = landing_sensor(dg.build_sensor_context(resources={"earnopt": small_resources["earnopt"]}))
    (request,) = first.run_requests
    assert request.run_key.startswith("landing-") and request.tags["earnopt/landing_files"] == "1"
    assert request.job_name in (None, "ingestion_job")
    # Same names and mtimes -> the same key (Dagster never launches a run key twice).
    again = landing_sensor(dg.build_sensor_context(resources={"earnopt": small_resources["earnopt"]}))
    assert again.run_requests[0].run_key == request.run_key
    # A rewritten file (new mtime) or a new file -> a new key.
    os.utime(a, (1_700_000_100, 1_700_000_100))
    touched = landing_run_key([a])
    assert touched != request.run_key
    (paths.landing / "b.csv").write_text("y")
    assert landing_run_key([a, paths.landing / "b.csv"]) not in (touched, request.run_key)
    assert landing_run_key([paths.landing / "b.csv", a]) == landing_run_key([a, paths.landing / "b.csv"])


def test_sensor_and_job_are_wired_in_definitions():
    from earnopt_assets.definitions import defs

    job = defs.resolve_job_def("ingestion_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {"raw_earnings", "earnings_features"}
    assert defs.resolve_sensor_def("landing_sensor").job_name == "ingestion_job"


def test_every_warehouse_step_shares_the_duckdb_pool_limited_to_one():
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    for definition in ingestion.assets + ingestion.asset_checks:
        assert definition.op.pool == DUCKDB_POOL, definition
    # Project-wide rule: anything that takes the duckdb resource runs in the pool.
    from earnopt_assets.definitions import defs

    for definition in [*defs.assets, *defs.asset_checks]:
        if "duckdb" in definition.required_resource_keys:
            assert definition.op.pool == DUCKDB_POOL, f"{definition} uses duckdb without pool={DUCKDB_POOL}"


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import dagster as dg
    from earnopt_assets.defs import ingestion
    from earnopt_assets.resources import resources_for

    data_dir, catalog, barrier, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    (barrier / f"ready-{me}").touch()
    deadline = time.time() + 120
    while len(list(barrier.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    result = dg.materialize([*ingestion.assets, *ingestion.asset_checks], resources=resources_for(data_dir, catalog),
                            raise_on_error=False)
    print("SUCCESS" if result.success else "FAILED")
    for event in result.all_events:
        if event.is_failure:
            print(event.message)
    """
)


@pytest.mark.slow
def test_overlapping_writers_do_not_fail_on_the_duckdb_lock(data_dir, small_catalog, small_catalog_path, tmp_path):
    """Two processes materialize ingestion on the same DuckDB file at the same moment. DuckDB lets one
    process write at a time: DuckDBResource retries the lock (in Dagster the pool queues the steps) and
    the landing flock stops a file from being read by both. Both runs succeed; every file loads once."""
    paths = EarnoptPaths(data_dir).ensure()
    for i in range(4):
        simulate_to_dir(small_catalog, days=3, seed=i, out_dir=paths.landing / f"tmp{i}", labels_dir=tmp_path / f"l{i}",
                        end=f"2026-01-{10 + 3 * i:02d}T23:00:00", file_format="csv")
        for f in (paths.landing / f"tmp{i}").iterdir():
            f.rename(paths.landing / f"{i}_{f.name}")
        (paths.landing / f"tmp{i}").rmdir()
    files = sorted(p.name for p in paths.landing.iterdir() if p.is_file())
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "EARNOPT_DATA_DIR": str(data_dir), "EARNOPT_CATALOG": str(small_catalog_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(data_dir), str(small_catalog_path), str(barrier), str(n)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
        for n in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0 and "SUCCESS" in output, output[-3000:]
    assert "lock" not in "".join(o for o in outputs if "FAILED" in o).lower()
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        ingested = conn.execute("SELECT source_file, count(*) FROM ingested_files GROUP BY source_file").fetchall()
        raw_rows = conn.execute("SELECT count(*) FROM raw_earnings").fetchone()[0]
        feature_rows = conn.execute("SELECT count(*) FROM earnings_features").fetchone()[0]
    assert sorted(name for name, _ in ingested) == files
    assert all(count == 1 for _, count in ingested)  # no file ingested twice
    assert raw_rows == 4 * 3 * 72 and feature_rows == 3 * (4 * 72 - 168)  # 12 contiguous days per series
    assert sorted(p.name for p in paths.archive.iterdir()) == files


_HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    conn = duckdb.connect(sys.argv[1])
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.close()
    """
)


@pytest.mark.slow
def test_warehouse_connect_waits_for_another_process_then_times_out(tmp_path):
    """Outside Dagster (API, CLI, benchmarks) ``warehouse.connect`` retries while another process holds
    the DuckDB file, and gives up with the lock error after its timeout."""
    from earnopt_assets.warehouse import connect

    db = tmp_path / "w.duckdb"
    with pytest.raises(FileNotFoundError, match="does not exist yet"):
        with connect(db, read_only=True):
            pass
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with connect(db, timeout_s=60) as conn:  # blocks until the holder exits, then works
        conn.execute("INSERT INTO t VALUES (1)")
    holder.wait(timeout=30)

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(duckdb.IOException, match="lock"):
            with connect(db, timeout_s=0.3):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
