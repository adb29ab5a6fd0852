"""Chaos (#13 §4): kill -9 mid-step, and contention.

    .venv/bin/python benchmarks/chaos.py [--kills 10] [--steps ingestion,training_epoch,training_save,allocation,anomaly_scoring]
                                         [--contention-seconds 120] [--readers 50]

**kill -9.** Each step runs as the real Dagster asset (``dg.materialize`` of the project's definitions on a
tmp data dir: 2 protocols, 60 simulated days) in a child process, which is SIGKILLed at a random moment
of the step: ingestion (``raw_earnings`` + ``earnings_features``, 2 new days landed before each kill),
training mid-fit (between the start of ``earnings_model`` and its first model save) and mid-save (within
the save, measured on a clean run), the allocation cycle (``resource_allocation``) and anomaly scoring
(``anomalies``). After each kill:

- the warehouse opens read-write;
- row counts reconcile: ``raw_earnings`` holds no more than the landed keys and no fewer than before;
  after the next run exactly the landed keys; every ``optimization_cycles`` row has its ``allocations``
  rows; every ``anomalies`` score is of a stored ``raw_earnings`` hour;
- the last good model (every ``CURRENT`` version's manifest digests), plan (``allocation/latest.json``)
  and detector (``AnomalyDetector.load``) load;
- no temp files are left behind (``*.tmp``, ``.staging-*``) once the next run has written;
- the next run succeeds.

A kill that lands after the child finished is not counted (printed as "missed").

**contention** (``--contention-seconds``, 0 skips): ingestion every 10 s, retraining of 2 protocols in
a loop, the allocation job every 15 s (the 15-minute tick, sped up) and ``--readers`` API readers polling
``GET /forecasts/{protocol}`` and ``/health`` on a real uvicorn, all at once on the same data dir. Prints
lock errors (target 0), failed runs (target 0), the readers' p50/p99 and the tick's wall time alone vs while
a retrain runs (issue #16). The shared 2 cores run at a load of 8-18 from other work: wall times are
printed with the load average, and CPU seconds beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PROTOCOLS = ("honeygain", "grass")
TINY = {"epochs": 3, "batch_size": 64, "sequence_length": 12, "lstm_units_1": 16, "lstm_units_2": 8, "patience": 2, "min_holdout_days": 3}
STEPS = {  # step -> (asset keys, partition, marker the kill clock starts at, marker that ends the kill window)
    "ingestion": (["raw_earnings", "earnings_features"], None, "STEP", "DONE"),
    "training_epoch": (["earnings_model"], "honeygain", "STEP", "SAVE"),
    "training_save": (["earnings_model"], "honeygain", "SAVE", "SAVED"),
    "allocation": (["resource_allocation"], None, "STEP", "DONE"),
    "anomaly_scoring": (["anomalies"], None, "STEP", "DONE"),
}
KILLED_STEPS = tuple(STEPS)
STEPS |= {"anomaly_model": (["anomaly_model"], None, "STEP", "DONE")}
STEPS |= {f"training_{p}": (["earnings_model"], p, "STEP", "DONE") for p in PROTOCOLS}


# ----------------------------------------------------------------------------- the child


def worker(step: str, data_dir: Path, catalog: Path) -> int:
    """Materialize one step's assets; print STEP when the step starts, SAVE/SAVED around model saves."""
    import dagster as dg

    from earnopt_assets import modelstore
    from earnopt_assets.definitions import build_definitions
    from earnopt_assets.resources import resources_for

    original = modelstore.ModelStore.stage

    from contextlib import contextmanager

    @contextmanager
    def announced(self, *args, **kwargs):
        print("SAVE", flush=True)
        with original(self, *args, **kwargs) as staged:
            yield staged
        print("SAVED", flush=True)

    modelstore.ModelStore.stage = announced
    keys, partition, _, _ = STEPS[step]
    defs = build_definitions(resources_for(data_dir, catalog))
    run_config = {"ops": {"earnings_model": {"config": TINY}}} if "earnings_model" in keys else None
    print("STEP", flush=True)
    result = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=dg.AssetSelection.assets(*keys),
                            resources=defs.resources, partition_key=partition, run_config=run_config, raise_on_error=False)
    # a blocking MAPE check may fail a tiny model's run; what matters is that the step's asset materialized
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    ok = set(keys) <= materialized
    print("DONE" if ok else f"FAILED {sorted(set(keys) - materialized)}", flush=True)
    return 0 if ok else 1


def spawn(step: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", step], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)


def wait_for(process: subprocess.Popen, marker: str, timeout_s: float = 600.0) -> float | None:
    """Read the child's lines until ``marker``; the time it was seen, or None if the child ended first."""
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if not line:
                return None
            if line.strip() == marker:
                return time.monotonic()
        elif process.poll() is not None:
            return None
    return None


def run_to_end(step: str, env: dict[str, str]) -> tuple[bool, dict[str, float]]:
    """A clean run; (succeeded, time each marker was seen relative to the start). A failed run's last
    error line is kept under ``seen["error"]`` (as text) for the report."""
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as err_file:  # a file: an undrained stderr pipe would block the child
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", step], env=env, cwd=str(REPO),
                                   stdout=subprocess.PIPE, stderr=err_file, text=True, bufsize=1)
        seen: dict = {}
        assert process.stdout is not None
        for line in process.stdout:  # markers timed as they arrive
            seen.setdefault(line.strip().split(" ")[0], time.monotonic() - started)
        process.wait()
        if process.returncode:
            err_file.seek(0)
            err = err_file.read()
            errors = [line.strip() for line in err.splitlines() if "Error" in line or "error" in line]
            seen["error"] = (errors[-1] if errors else err.strip()[-300:])[:300]
    return process.returncode == 0, seen


# ----------------------------------------------------------------------------- the checks


def landed_keys(data_dir: Path) -> int:
    import pandas as pd

    frames = [pd.read_parquet(f, columns=["device", "protocol", "ts"]) for f in (data_dir / "archive").rglob("*.parquet")]
    frames += [pd.read_parquet(f, columns=["device", "protocol", "ts"]) for f in (data_dir / "landing").glob("*.parquet")]
    return len(pd.concat(frames).drop_duplicates()) if frames else 0


def table_count(conn, table: str) -> int:
    from earnopt_assets.warehouse import table_exists

    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) if table_exists(conn, table) else 0


def state_checks(data_dir: Path, step: str, before_rows: int, expected_rows: int, after_next_run: bool) -> list[str]:
    """What must hold after a kill (and after the next run); the failures, named."""
    import duckdb

    from earnopt_assets.warehouse import table_exists

    problems = []
    try:
        conn = duckdb.connect(str(data_dir / "earnopt.duckdb"))
    except Exception as exc:
        return [f"warehouse does not open: {type(exc).__name__}: {exc}"]
    try:
        rows = table_count(conn, "raw_earnings")
        if after_next_run and rows != expected_rows:
            problems.append(f"raw_earnings {rows} rows != {expected_rows} landed keys after the next run")
        if not before_rows <= rows <= expected_rows:
            problems.append(f"raw_earnings {rows} rows outside [{before_rows}, {expected_rows}]")
        if table_exists(conn, "optimization_cycles") and table_exists(conn, "allocations"):
            orphan = conn.execute("SELECT count(*) FROM optimization_cycles c WHERE NOT EXISTS "
                                  "(SELECT 1 FROM allocations a WHERE a.cycle_id = c.cycle_id)").fetchone()[0]
            if orphan:
                problems.append(f"{orphan} optimization_cycles rows without allocations")
        if table_exists(conn, "anomalies") and table_exists(conn, "raw_earnings"):
            stray = conn.execute("SELECT count(*) FROM anomalies a WHERE NOT EXISTS (SELECT 1 FROM raw_earnings r "
                                 "WHERE r.device = a.device AND r.protocol = a.protocol AND r.ts = a.ts)").fetchone()[0]
            if stray:
                problems.append(f"{stray} anomaly scores of hours not in raw_earnings")
    finally:
        conn.close()
    problems += last_good_loads(data_dir)
    if after_next_run:
        temps = [str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]
        if temps:
            problems.append(f"temp files left: {', '.join(temps[:4])}")
    return problems


def last_good_loads(data_dir: Path) -> list[str]:
    from earnopt_assets.anomaly.detector import AnomalyDetector
    from earnopt_assets.modelstore import MANIFEST_FILE, sha256_file

    problems = []
    for pointer in (data_dir / "models").rglob("CURRENT"):
        version = pointer.read_text().strip()
        directory = pointer.parent / "versions" / version
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
            files = manifest.get("files", {})
            bad = [name for name, meta in files.items()
                   if isinstance(meta, dict) and meta.get("sha256") and not meta.get("mutable") and sha256_file(directory / name) != meta["sha256"]]
            if bad:
                problems.append(f"{pointer.parent.name} {version}: digest mismatch {bad}")
        except Exception as exc:
            problems.append(f"{pointer.parent.name}: CURRENT {version} does not load: {type(exc).__name__}: {exc}")
    try:
        AnomalyDetector.load(data_dir / "models" / "anomaly")
    except Exception as exc:
        problems.append(f"detector does not load: {type(exc).__name__}: {exc}")
    plan = data_dir / "allocation" / "latest.json"
    candidates = [plan] if plan.exists() else list(data_dir.rglob("latest.json"))
    try:
        document = json.loads(candidates[0].read_text())
        if "allocations" not in document:
            problems.append("latest plan has no allocations")
    except Exception as exc:
        problems.append(f"latest plan does not load: {type(exc).__name__}: {exc}")
    return problems


# ----------------------------------------------------------------------------- setup


def setup(work: Path) -> tuple[Path, Path, dict[str, str], object]:
    import yaml

    from earnopt_assets.catalog import load_catalog

    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "data" / "catalog.yaml").read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in PROTOCOLS]
    raw.setdefault("alerts", {})["silent_lag_hours"] = 0  # a replay ends in the past
    raw["alerts"]["channels"] = []
    catalog = data_dir / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "EARNOPT_DATA_DIR": str(data_dir), "EARNOPT_CATALOG": str(catalog), "DAGSTER_HOME": str(work / "dagster"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    (work / "dagster").mkdir()
    return data_dir, catalog, env, load_catalog(catalog)


class Landing:
    """Lands 2 new simulated days before each ingestion run (and 30 at the start)."""

    def __init__(self, data_dir: Path, catalog) -> None:
        import pandas as pd

        self.data_dir, self.catalog = data_dir, catalog
        # far enough back that 10 kills x 2 days and the contention's landings stay in the past: future
        # hours fail the hour-grid check, which is the data's fault, not the crash's
        self.end = pd.Timestamp.now().floor("h") - pd.Timedelta(days=150)
        self.seed = 0

    def land(self, days: int) -> None:
        import pandas as pd

        from earnopt_assets.simulator import simulate_to_dir

        self.end += pd.Timedelta(days=days)
        self.seed += 1
        simulate_to_dir(self.catalog, days=days, seed=self.seed, out_dir=self.data_dir / "landing",
                        labels_dir=self.data_dir.parent / "labels", end=self.end)


def kill_trials(step: str, kills: int, env: dict[str, str], data_dir: Path, landing: Landing, window_s: float, rng: random.Random) -> dict:
    import duckdb

    _, _, start_marker, _ = STEPS[step]
    survived, missed, failures = 0, 0, []
    done = 0
    while done < kills and missed < 3 * kills:
        if step == "ingestion":
            landing.land(2)
        with duckdb.connect(str(data_dir / "earnopt.duckdb")) as conn:
            before = table_count(conn, "raw_earnings")
        expected = landed_keys(data_dir)
        process = spawn(step, env)
        seen = wait_for(process, start_marker)
        if seen is None:
            process.wait()
            missed += 1
            continue
        time.sleep(rng.uniform(0, window_s))
        if process.poll() is not None:
            process.wait()
            missed += 1
            continue
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        done += 1
        problems = state_checks(data_dir, step, before, expected if step == "ingestion" else before, after_next_run=False)
        ok, seen = run_to_end(step, env)
        if not ok:
            problems.append(f"the next run failed ({seen.get('error', 'no error line')})")
        problems += state_checks(data_dir, step, before, expected if step == "ingestion" else before, after_next_run=True)
        if problems:
            failures.append(f"kill {done}: " + "; ".join(problems))
        else:
            survived += 1
        print(f"  {step} kill {done}/{kills}: {'survived' if not problems else 'FAILED: ' + '; '.join(problems)}", flush=True)
    return {"kills": done, "survived": survived, "missed": missed, "failures": failures}


# ----------------------------------------------------------------------------- contention


def contention(seconds: float, readers: int, env: dict[str, str], data_dir: Path, catalog: Path, landing: Landing) -> None:
    import httpx

    from benchmarks.api import Server

    lock_errors = 0
    failed: dict[str, int] = {}
    runs: dict[str, int] = {}
    ticks: list[tuple[float, bool, float]] = []  # (wall s, a retrain was running, cpu s)
    training = threading.Event()
    stop = time.monotonic() + seconds + 3600  # set when the load starts
    lock_words = ("lock", "Could not set lock", "Conflicting lock")

    def run(step: str) -> tuple[bool, float, float]:
        started = time.monotonic()
        before = os.times()
        process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", step], env=env, cwd=str(REPO),
                                 capture_output=True, text=True)
        after = os.times()
        nonlocal lock_errors
        if any(w in process.stderr for w in lock_words) and process.returncode:
            lock_errors += 1
        runs[step] = runs.get(step, 0) + 1
        if process.returncode:
            failed[step] = failed.get(step, 0) + 1
        return process.returncode == 0, time.monotonic() - started, (after.children_user + after.children_system) - (before.children_user + before.children_system)

    def ingest_loop() -> None:
        while time.monotonic() < stop:
            landing.land(1)
            run("ingestion")
            time.sleep(10)

    def train_loop(protocol: str) -> None:
        while time.monotonic() < stop:
            training.set()
            run(f"training_{protocol}")
            training.clear()

    def tick_loop() -> None:
        while time.monotonic() < stop:
            during = training.is_set()
            _, wall, cpu = run("allocation")
            ticks.append((wall, during or training.is_set(), cpu))
            time.sleep(15)

    server = Server(data_dir, catalog, 2048, PROTOCOLS)
    latencies: list[float] = []
    reader_errors: dict[str, int] = {}
    try:
        server.wait_ready()

        async def readers_loop() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                async def reader(i: int) -> None:
                    while time.monotonic() < stop:
                        path = "/health" if i % 5 == 0 else f"/forecasts/{PROTOCOLS[i % len(PROTOCOLS)]}"
                        started = time.perf_counter()
                        try:
                            answer = await http.get(path)
                            if answer.status_code in (200, 404) or (path == "/health" and answer.status_code == 503):
                                latencies.append(time.perf_counter() - started)
                            else:
                                reader_errors[str(answer.status_code)] = reader_errors.get(str(answer.status_code), 0) + 1
                        except httpx.HTTPError as exc:
                            reader_errors[type(exc).__name__] = reader_errors.get(type(exc).__name__, 0) + 1
                        await asyncio.sleep(1.0)
                await asyncio.gather(*(reader(i) for i in range(readers)))

        _, wall, cpu = run("allocation")  # the tick alone first, nothing else of earnopt running
        ticks.append((wall, False, cpu))
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=ingest_loop), threading.Thread(target=tick_loop)]
        threads += [threading.Thread(target=train_loop, args=(p,)) for p in PROTOCOLS]
        for t in threads:
            t.start()
        asyncio.run(readers_loop())
        for t in threads:
            t.join()
    finally:
        server.stop()
    q = statistics.quantiles(sorted(latencies), n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    print(f"\n== contention: {seconds:.0f} s, ingestion every 10 s, retraining of {len(PROTOCOLS)} protocols in a loop, "
          f"the allocation tick every 15 s, {readers} API readers (1 req/s each)")
    print(f"runs: {runs}")
    print(f"lock errors: {lock_errors} (target 0)")
    print(f"failed runs: {sum(failed.values())} {failed or ''} (target 0)")
    print(f"readers: {len(latencies)} answers, errors {sum(reader_errors.values())} {reader_errors or ''}, "
          f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms")
    alone = [w for w, during, _ in ticks if not during]
    busy = [w for w, during, _ in ticks if during]
    cpu = [c for _, _, c in ticks]
    print(f"15-minute tick (allocation_job's asset, own process incl. imports): alone median {statistics.median(alone) if alone else float('nan'):.1f} s "
          f"(n={len(alone)}), while a retrain runs median {statistics.median(busy) if busy else float('nan'):.1f} s (n={len(busy)}); "
          f"tick CPU median {statistics.median(cpu) if cpu else float('nan'):.1f} s; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kills", type=int, default=10, help="kills per step (fewer for a quick run)")
    parser.add_argument("--steps", default=",".join(KILLED_STEPS))
    parser.add_argument("--contention-seconds", type=float, default=120.0)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if args.worker:
        data_dir, catalog = Path(os.environ["EARNOPT_DATA_DIR"]), Path(os.environ["EARNOPT_CATALOG"])
        return worker(args.worker, data_dir, catalog)
    rng = random.Random(args.seed)
    steps = [s for s in args.steps.split(",") if s]
    print(f"chaos: {args.kills} kills per step; cpu cores {os.cpu_count()}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="earnopt-chaos-") as tmp:
        data_dir, catalog, env, catalog_obj = setup(Path(tmp))
        landing = Landing(data_dir, catalog_obj)
        landing.land(60)
        windows: dict[str, float] = {}
        started = time.monotonic()
        for step in ("ingestion", "training_epoch", *[f"training_{p}" for p in PROTOCOLS[1:]], "allocation", "anomaly_model", "anomaly_scoring"):
            ok, seen = run_to_end(step, env)
            if not ok:
                print(f"setup: a clean {step} run failed; stopping")
                return 1
            if step == "training_epoch":
                windows["training_epoch"] = seen.get("SAVE", seen["DONE"]) - seen["STEP"]
                windows["training_save"] = max(0.05, seen.get("SAVED", seen["DONE"]) - seen.get("SAVE", seen["DONE"]))
            elif step in KILLED_STEPS:
                windows[step] = seen["DONE"] - seen["STEP"]
        print(f"setup (60 days landed, ingested, model, plan, detector, scores) in {time.monotonic() - started:.0f} s; "
              f"kill windows s: {', '.join(f'{k} {v:.2f}' for k, v in windows.items())}", flush=True)
        results = {}
        for step in steps:
            results[step] = kill_trials(step, args.kills, env, data_dir, landing, windows[step], rng)
        print(f"\n== kill -9 mid-step ({args.kills} per step, random moments; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})")
        print(f"{'step':<18} {'kills':>6} {'survived':>9} {'missed':>7}")
        for step, r in results.items():
            print(f"{step:<18} {r['kills']:>6} {r['survived']:>9} {r['missed']:>7}")
            for failure in r["failures"]:
                print(f"    {failure}")
        if args.contention_seconds > 0:
            contention(args.contention_seconds, args.readers, env, data_dir, catalog, landing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
