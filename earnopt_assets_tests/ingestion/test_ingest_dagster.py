"""Ingestion assets through real ``dg.materialize``: metadata, snapshots, checks, the landing sensor,
and overlapping writers on one DuckDB file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from earnopt_assets.defs import ingestion
from earnopt_assets.defs.ingestion import (
    FreshnessConfig,
    earnings_features_finite,
    earnings_features_no_duplicate_keys,
    landing_run_key,
    landing_sensor,
    raw_earnings_freshness,
    raw_earnings_hour_grid,
    raw_earnings_rows_accounted,
)
from earnopt_assets.ingestion.feature_store import read_feature_snapshot, replace_feature_table
from earnopt_assets.ingestion.features import FEATURE_COLUMNS
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate_to_dir
from earnopt_assets.warehouse import DUCKDB_POOL
from earnopt_assets_tests.conftest import REPO_ROOT

# Freshness is measured against the wall clock: the simulated telemetry ends one hour before now.
END_TS = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("h") - pd.Timedelta(hours=1)
END = f"{END_TS:%Y-%m-%dT%H:%M:%S}"
ALL = [*ingestion.assets, *ingestion.asset_checks]


def _materialize(resources: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize(ALL, resources=resources, raise_on_error=True)


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _records(table) -> list[dict]:
    """The rows of a TableMetadataValue as plain dicts."""
    return [dict(record.data) for record in table.records]


def test_materialize_ingestion_assets_end_to_end(data_dir, small_catalog, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=10, seed=4, out_dir=paths.landing, end=END, file_format="csv")
    (paths.landing / "bad.csv").write_text(
        "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures\n"
        f"storj,{END}Z,-1,1,2,5,600,0.6,0\nmystery,{END_TS - pd.Timedelta(hours=1):%Y-%m-%dT%H:%M:%S}Z,1,1,2,5,600,0.6,0\n"
    )
    (paths.landing / "broken.parquet").write_bytes(b"PAR1 nope")

    result = _materialize(small_resources)
    raw = _metadata(result, "raw_earnings")
    assert raw["rows_read"] == 3 * 240 + 2 and raw["rows_quarantined"] == 2
    assert raw["rows_accepted"] + raw["rows_quarantined"] == raw["rows_read"]
    assert raw["files_rejected"] == 1 and raw["table_rows"] == 720 and raw["table_series"] == 3
    per_file = {row["file"]: row for row in _records(raw["per_file"])}
    assert {k: per_file["bad.csv"][k] for k in ("status", "format", "kind", "read_rows", "stored_rows", "quarantined_rows")} == {
        "status": "ingested", "format": "csv", "kind": "earnings", "read_rows": 2, "stored_rows": 0, "quarantined_rows": 2}
    assert per_file["broken.parquet"]["status"] == "rejected"
    assert any("unknown protocol mystery" in row["reason"] for row in _records(raw["quarantine_reasons"]))
    assert raw["rows_stored"] + raw["rows_superseded"] + raw["rows_quarantined"] == raw["rows_read"]
    latest = _records(raw["per_series_latest"])
    assert len(latest) == 3 and {row["latest_hour_utc"] for row in latest} == {f"{END_TS:%Y-%m-%d %H:%M}"}
    assert all(1.0 <= row["lag_h"] < 2.5 for row in latest)

    feats = _metadata(result, "earnings_features")
    assert feats["series"] == 3 and feats["rows"] == 3 * (240 - 168)
    assert feats["dropped_warmup_or_gap_rows"] == 3 * 168
    assert "daily_earnings_plot" in feats and "data:image/png;base64," in feats["daily_earnings_plot"]
    assert _checks(result) == {
        "raw_earnings_hour_grid": True,
        "raw_earnings_rows_accounted": True,
        "earnings_features_no_duplicate_keys": True,
        "earnings_features_finite": True,
        "raw_earnings_freshness": True,
    }

    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        table = conn.execute("SELECT * FROM earnings_features ORDER BY device, protocol, ts").df()
    for protocol in small_catalog.names:
        snapshot = read_feature_snapshot(paths.features_dir, protocol, small_catalog)
        expected = table.loc[table["protocol"] == protocol].reset_index(drop=True)
        assert list(snapshot.columns) == ["device", "protocol", "ts", *FEATURE_COLUMNS, "imputed"]  # the flag rides along (#14 §6)
        pd.testing.assert_frame_equal(snapshot[list(FEATURE_COLUMNS)], expected[list(FEATURE_COLUMNS)], check_dtype=False)
    with pytest.raises(FileNotFoundError, match="materialize earnings_features"):
        read_feature_snapshot(paths.features_dir / "elsewhere", "storj", small_catalog)

    # A second run with an empty landing changes nothing and still passes its checks.
    again = _materialize(small_resources)
    assert _metadata(again, "raw_earnings")["files"] == 0 and _metadata(again, "raw_earnings")["table_rows"] == 720
    assert all(_checks(again).values())


def test_freshness_check_warns_naming_series_behind_the_wall_clock(data_dir, small_catalog, small_resources):
    """Telemetry that ended 6 h ago is stale at the default 3 h; a configured 24 h lag accepts it. The
    newest landed hour being quarantined does not make it fresh."""
    paths = EarnoptPaths(data_dir).ensure()
    old_end = END_TS - pd.Timedelta(hours=5)
    simulate_to_dir(small_catalog, days=8, seed=4, out_dir=paths.landing, end=f"{old_end:%Y-%m-%dT%H:%M:%S}")
    (paths.landing / "late.csv").write_text(
        "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures\n"
        f"storj,{END},-3,1,2,5,600,0.6,0\n"
    )
    result = _materialize(small_resources)
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "raw_earnings_freshness")
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["stale_series"].value == 3 and evaluation.metadata["max_lag_h"].value == 3.0
    assert 6.0 <= evaluation.metadata["worst_lag_h"].value < 7.5
    stale = _records(evaluation.metadata["stale"].value)
    assert {(row["device"], row["protocol"]) for row in stale} == {(small_catalog.host.device, p) for p in small_catalog.names}
    assert "/storj" in evaluation.description

    relaxed = dg.materialize(
        ALL, resources=small_resources, raise_on_error=True,
        run_config={"ops": {"raw_earnings_raw_earnings_freshness": {"config": {"max_lag_hours": 24.0}}}},
    )
    assert _checks(relaxed)["raw_earnings_freshness"] is True


def test_freshness_check_names_a_catalog_protocol_without_telemetry(data_dir, small_catalog, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=2, seed=4, out_dir=paths.landing, end=END)
    for path in paths.landing.glob("*honeygain*"):
        path.unlink()
    _materialize(small_resources)
    result = raw_earnings_freshness(config=FreshnessConfig(), earnopt=small_resources["earnopt"], duckdb=small_resources["duckdb"])
    assert result.passed is False and "honeygain" in result.description
    (row,) = _records(result.metadata["stale"])
    assert row["protocol"] == "honeygain" and row["latest_hour_utc"] == "" and row["lag_h"] is None


def test_empty_landing_materializes_empty_tables(small_resources):
    result = _materialize(small_resources)
    assert _metadata(result, "raw_earnings")["table_rows"] == 0
    assert _metadata(result, "earnings_features")["rows"] == 0
    checks = _checks(result)
    assert checks["raw_earnings_freshness"] is False  # nothing ingested yet: a warning
    assert checks["raw_earnings_hour_grid"] and checks["raw_earnings_rows_accounted"]
    finite = next(e for e in result.get_asset_check_evaluations() if e.check_name == "earnings_features_finite")
    assert finite.passed is False and finite.severity == dg.AssetCheckSeverity.WARN  # zero rows never pass silently
    assert finite.description == "earnings_features has no rows"


def test_hour_grid_check_fails_on_future_off_hour_and_negative_rows(data_dir, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    future = END_TS + pd.Timedelta(hours=6)
    (paths.landing / "future.csv").write_text(
        "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures\n"
        f"storj,{END},0.1,1,2,5,600,0.6,0\nstorj,{future:%Y-%m-%dT%H:%M:%S},0.1,1,2,5,600,0.6,0\n"
    )
    result = dg.materialize([*ingestion.assets, raw_earnings_hour_grid], resources=small_resources, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed is False and evaluation.metadata["future_rows"].value == 1
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR  # blocking: downstream stops

    # Rows no ingestion can produce (written behind the store's back) fail it too.
    with duckdb.connect(str(paths.warehouse)) as conn:
        conn.execute("INSERT INTO raw_earnings SELECT device, protocol, ts + INTERVAL 30 MINUTE, earnings_usd, cpu_cores, memory_gb, "
                     "bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms, source_file, ingested_at "
                     "FROM raw_earnings WHERE ts = ?", [END_TS.to_pydatetime()])
        conn.execute("UPDATE raw_earnings SET earnings_usd = -1 WHERE ts = ?", [END_TS.to_pydatetime()])
    check = raw_earnings_hour_grid(duckdb=small_resources["duckdb"])
    assert check.passed is False
    assert {k: check.metadata[k].value for k in ("off_hour_rows", "future_rows", "negative_or_non_finite_rows")} == {
        "off_hour_rows": 1, "future_rows": 1, "negative_or_non_finite_rows": 1}
    assert {row["problem"] for row in _records(check.metadata["examples"])} == {"off_hour", "future", "negative_or_non_finite"}


def test_rows_accounted_check_fails_naming_the_file(data_dir, small_catalog, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=1, seed=4, out_dir=paths.landing, end=END)
    _materialize(small_resources)
    assert raw_earnings_rows_accounted(duckdb=small_resources["duckdb"]).passed is True
    with duckdb.connect(str(paths.warehouse)) as conn:
        broken = conn.execute("SELECT min(source_file) FROM ingested_files").fetchone()[0]
        conn.execute("UPDATE ingested_files SET rows_stored = rows_stored - 1 WHERE source_file = ?", [broken])
    check = raw_earnings_rows_accounted(duckdb=small_resources["duckdb"])
    assert check.passed is False and broken in check.description
    assert [row["file"] for row in _records(check.metadata["files"])] == [broken]


def test_feature_checks_fail_on_duplicate_keys_and_non_finite_values(data_dir, small_catalog, small_resources):
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=8, seed=4, out_dir=paths.landing, end=END)
    _materialize(small_resources)
    with duckdb.connect(str(paths.warehouse)) as conn:
        table = conn.execute("SELECT * FROM earnings_features ORDER BY device, protocol, ts").df()
    broken = table.copy()
    broken.loc[0, "lag_24"] = float("nan")
    broken.loc[1, "ma_24h"] = float("inf")
    with duckdb.connect(str(paths.warehouse)) as conn:
        replace_feature_table(conn, pd.concat([broken, broken.head(2)], ignore_index=True))
    duplicates = earnings_features_no_duplicate_keys(duckdb=small_resources["duckdb"])
    assert duplicates.passed is False and duplicates.metadata["duplicate_keys"].value == 2
    finite = earnings_features_finite(duckdb=small_resources["duckdb"])
    assert finite.passed is False and finite.metadata["non_finite_values"].value == 4  # 2 bad cells, each twice
    assert {row["feature"] for row in _records(finite.metadata["bad_columns"])} == {"lag_24", "ma_24h"}


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
    with pytest.raises(FileNotFoundError, match="does not exist yet"), connect(db, read_only=True):
        pass
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with connect(db, timeout_s=60) as conn:  # blocks until the holder exits, then works
        conn.execute("INSERT INTO t VALUES (1)")
    holder.wait(timeout=30)

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(duckdb.IOException, match="lock"), connect(db, timeout_s=0.3):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_failed_landing_runs_are_retried_a_bounded_number_of_times_then_alerted(data_dir, small_resources):
    import uuid

    from earnopt_assets.defs.ingestion import INGESTION_FAILED_RULE, LANDING_KEY_TAG, LANDING_MAX_ATTEMPTS
    from earnopt_assets.warehouse import connect

    paths = EarnoptPaths(data_dir).ensure()
    (paths.landing / "a.csv").write_text("x")
    earnopt = small_resources["earnopt"]
    with dg.instance_for_test() as instance:
        def evaluate(cursor=None):
            return landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"earnopt": earnopt}))

        def record(request, status):
            instance.add_run(dg.DagsterRun(job_name="ingestion_job", run_id=str(uuid.uuid4()), status=status,
                                           tags={**request.tags, "dagster/run_key": request.run_key}))

        first = evaluate().run_requests[0]
        landing_key = first.tags[LANDING_KEY_TAG]
        assert first.run_key == landing_key
        record(first, dg.DagsterRunStatus.STARTED)
        assert evaluate().run_requests[0].run_key == landing_key  # in flight: the same key, nothing new
        instance.delete_run(instance.get_runs()[0].run_id)
        record(first, dg.DagsterRunStatus.FAILURE)
        keys = [first.run_key]
        for _ in range(LANDING_MAX_ATTEMPTS - 1):
            retry = evaluate().run_requests[0]
            assert retry.run_key not in keys and retry.tags[LANDING_KEY_TAG] == landing_key
            keys.append(retry.run_key)
            record(retry, dg.DagsterRunStatus.FAILURE)
        gave_up = evaluate()
        assert isinstance(gave_up, dg.SkipReason) or not gave_up.run_requests
        with connect(paths.warehouse) as conn:
            alerts = conn.execute("SELECT rule, severity, message FROM alerts").fetchall()
        assert len(alerts) == 1 and alerts[0][:2] == (INGESTION_FAILED_RULE, "critical") and "a.csv" in alerts[0][2]
