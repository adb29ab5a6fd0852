"""Chaos (#13 §4): kill -9 mid-step, and contention.

    .venv/bin/python benchmarks/chaos.py [--kills 10] [--steps ingestion,training_epoch,training_save,allocation,anomaly_scoring]
                                         [--contention-seconds 120] [--readers 50] [--days 40] [--seed 13]
    # contention alone (setup ~1 min + the run):  --steps '' --contention-seconds 120
    # kills alone:                                 --contention-seconds 0

**kill -9.** Each step runs as the real Dagster asset (``dg.materialize`` of the project's definitions on a
tmp data dir: 2 protocols, ``--days`` simulated days) in a child process, which is SIGKILLed at a uniformly
random moment of the step's window, measured on a clean run:

- ingestion (``raw_earnings`` + ``earnings_features``, 1 new day landed before each kill): asset start .. end;
- training mid-epoch: inside ``EarningsPredictor.fit`` (the epochs), of the real ``earnings_model`` asset
  at a small size (``TINY``: 3 epochs, 16/8 units, 3 holdout and 2 calibration days);
- training mid-save: from the moment the model store stages the new version until the serving decision
  is written (staging, manifest, rename, ``CURRENT``, ``serving/<protocol>.json``), in the real model store;
- the allocation cycle (``resource_allocation``) and anomaly scoring (``anomalies``): asset start .. end.

A kill only counts when the child had not yet printed the window's end marker (else it is "missed", still
verified, and retried). After each kill:

- the warehouse opens read-write;
- row counts reconcile: ``raw_earnings`` holds no more than the landed keys and no fewer than before;
  after the next run exactly the landed keys; every ``optimization_cycles`` row has its ``allocations``
  rows; every ``anomalies`` score is of a stored ``raw_earnings`` hour;
- the last good model, plan and detector load through the product's loaders: ``EarningsPredictor.load``
  of every ``CURRENT`` version and of the champion each serving decision names (manifest and sha256
  checked), ``AnomalyDetector.load``, ``allocation/latest.json``;
- no temp files are left behind (``*.tmp``, ``.staging-*``) once the next run has written;
- the next run succeeds.

**contention** (``--contention-seconds``, 0 skips): ingestion every 10 s, retraining of 2 protocols in
a loop (each followed by the ``earnings_forecast`` it triggers), the allocation job every 15 s (the
15-minute tick, sped up) and ``--readers`` API readers (1 poll/s each: 4 of 5 ``GET /forecasts/{protocol}``,
1 of 5 ``GET /health``) on a real uvicorn, all at once on the same data dir. Prints lock errors (target 0),
failed runs (target 0), reader errors (any non-200, target 0), the readers' p50/p99 (and inside the app,
from the service's own histogram), the load generator's own event-loop delay, the service's CPU per
answer, the retrain workers' niceness and busy threads (catalog ``training: {threads, nice}``), the tick's
wall time alone vs during a retrain, and the load average. Other work on the same cores inflates wall times:
read them with the load average printed beside them.
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
# the real training path at a small size: 3 epochs, a small network, 3 holdout days and 2 calibration days
TINY = {"epochs": 3, "batch_size": 64, "sequence_length": 12, "lstm_units_1": 16, "lstm_units_2": 8, "patience": 2,
        "min_holdout_days": 3, "holdout_fraction": 0.05, "calibration_days": 2}
STEPS = {  # step -> (asset keys, partition, marker the kill window starts at, marker that ends it)
    "ingestion": (["raw_earnings", "earnings_features"], None, "STEP", "DONE"),
    "training_epoch": (["earnings_model"], "honeygain", "FIT", "FITTED"),  # inside EarningsPredictor.fit (the epochs)
    "training_save": (["earnings_model"], "honeygain", "SAVE", "SAVED"),  # version staged -> CURRENT -> serving decision
    "allocation": (["resource_allocation"], None, "STEP", "DONE"),
    "anomaly_scoring": (["anomalies"], None, "STEP", "DONE"),
}
KILLED_STEPS = tuple(STEPS)
STEPS |= {"anomaly_model": (["anomaly_model"], None, "STEP", "DONE"), "forecast": (["earnings_forecast"], None, "STEP", "DONE")}
STEPS |= {f"training_{p}": (["earnings_model"], p, "STEP", "DONE") for p in PROTOCOLS}


# ----------------------------------------------------------------------------- the child


def worker(step: str, data_dir: Path, catalog: Path) -> int:
    """Materialize one step's assets; print STEP when the step starts, SAVE/SAVED around model saves."""
    from contextlib import contextmanager

    import dagster as dg

    from earnopt_assets import modelstore
    from earnopt_assets.definitions import build_definitions
    from earnopt_assets.forecasting import training
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor
    from earnopt_assets.resources import resources_for

    stage, fit, write_decision = modelstore.ModelStore.stage, EarningsPredictor.fit, training.write_serving_decision

    @contextmanager
    def announced_stage(self, *args, **kwargs):
        if self.kind != "anomaly":
            print("SAVE", flush=True)  # the save starts: a version is staged, then CURRENT and the decision move
        with stage(self, *args, **kwargs) as staged:
            yield staged

    def announced_fit(self, *args, **kwargs):
        print("FIT", flush=True)
        try:
            return fit(self, *args, **kwargs)
        finally:
            print("FITTED", flush=True)

    def announced_decision(*args, **kwargs):
        written = write_decision(*args, **kwargs)
        print("SAVED", flush=True)
        return written

    modelstore.ModelStore.stage = announced_stage
    EarningsPredictor.fit = announced_fit
    training.write_serving_decision = announced_decision
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
    """Load, through the product's own loaders (manifest and sha256 checks included), every model CURRENT
    names and the champion each serving decision names, the anomaly detector and the latest plan."""
    from earnopt_assets.anomaly.detector import AnomalyDetector
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor
    from earnopt_assets.forecasting.registry import read_serving_decision

    problems = []
    models = data_dir / "models"
    for protocol in PROTOCOLS:
        versions = set()
        pointer = models / "lstm" / protocol / "CURRENT"
        if pointer.exists():
            versions.add(pointer.read_text().strip())
        decision_file = models / "serving" / f"{protocol}.json"
        if decision_file.exists():
            decision = read_serving_decision(models, protocol)
            if decision is None:
                problems.append(f"{protocol}: serving decision {decision_file.name} does not load")
            elif decision.champion_version:
                versions.add(decision.champion_version)
        for version in sorted(versions):
            try:
                EarningsPredictor.load(models, protocol, version)
            except Exception as exc:
                problems.append(f"{protocol}: model {version} does not load: {type(exc).__name__}: {exc}")
    try:
        AnomalyDetector.load(models / "anomaly")
    except Exception as exc:
        problems.append(f"detector does not load: {type(exc).__name__}: {exc}")
    plan = data_dir / "allocation" / "latest.json"
    try:
        document = json.loads(plan.read_text())
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
    """``kills`` SIGKILLs inside the step's window (start marker .. end marker), each at a uniformly random
    moment of the window measured on a clean run. A kill that came after the end marker (the child had
    already left the window) is verified too but counted as "missed" and retried."""
    import duckdb

    _, _, start_marker, end_marker = STEPS[step]
    survived, missed, failures, delays = 0, 0, [], []
    done = 0
    while done < kills and missed < 3 * kills:
        if step == "ingestion":
            landing.land(1)
        with duckdb.connect(str(data_dir / "earnopt.duckdb")) as conn:
            before = table_count(conn, "raw_earnings")
        expected = landed_keys(data_dir)
        process = spawn(step, env)
        seen = wait_for(process, start_marker)
        if seen is None:
            process.wait()
            missed += 1
            continue
        delay = rng.uniform(0, window_s)
        time.sleep(max(0.0, seen + delay - time.monotonic()))
        if process.poll() is not None:
            process.wait()
            missed += 1
            continue
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        late = end_marker in {line.strip() for line in process.stdout.read().splitlines()}  # printed before the kill
        in_window = not late
        if in_window:
            done += 1
            delays.append(delay)
        else:
            missed += 1
        expected_rows = expected if step == "ingestion" else before
        problems = state_checks(data_dir, step, before, expected_rows, after_next_run=False)
        ok, seen_next = run_to_end(step, env)
        if not ok:
            problems.append(f"the next run failed ({seen_next.get('error', 'no error line')})")
        problems += state_checks(data_dir, step, before, expected_rows, after_next_run=True)
        label = f"kill {done}" if in_window else f"late kill (after {end_marker})"
        if problems:
            failures.append(f"{label}: " + "; ".join(problems))
        elif in_window:
            survived += 1
        print(f"  {step} {label}/{kills} at +{delay * 1000:.0f} ms of {window_s * 1000:.0f} ms (next run {seen_next.get('DONE', float('nan')):.0f} s): "
              f"{'survived' if not problems else 'FAILED: ' + '; '.join(problems)}", flush=True)
    return {"kills": done, "survived": survived, "missed": missed, "failures": failures, "delays": delays}


# ----------------------------------------------------------------------------- contention


def proc_stat(pid: int) -> tuple[int, int, float] | None:
    """(nice, threads, CPU seconds) of a live process from /proc, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[16]), int(fields[17]), (int(fields[11]) + int(fields[12])) / tick


def busy_threads(pid: int, before: dict[int, float], interval_s: float) -> int:
    """Threads of ``pid`` that used more than 20 % of a core since the last call (``before`` is updated)."""
    tick, busy = os.sysconf("SC_CLK_TCK"), 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        tid = int(task.name)
        if tid in before and cpu - before[tid] > 0.2 * interval_s:
            busy += 1
        before[tid] = cpu
    return busy


def server_latency_quantile(metrics_text: str, route: str, q: float) -> float:
    """Upper bucket bound holding quantile ``q`` of the service's own request latency histogram for ``route``
    (time inside the app: queueing for a worker thread and the handler; not the socket nor the client)."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith("earnopt_http_request_duration_seconds_bucket") and f'route="{route}"' in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets:
        return float("nan")
    buckets.sort()
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= q * total)


def quantiles_ms(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return float("nan"), float("nan"), float("nan")
    q = statistics.quantiles(sorted(values), n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000, max(values) * 1000


SLOW_ANSWER_S = 0.5


def contention(seconds: float, readers: int, env: dict[str, str], data_dir: Path, catalog: Path, landing: Landing) -> None:
    """Ingestion every 10 s, 2 protocols retraining in a loop, the allocation tick every 15 s and ``readers``
    API readers, all at once; see the module docstring."""
    import httpx

    from benchmarks.api import Server

    lock_errors = 0
    failed: dict[str, int] = {}
    failures: list[str] = []
    runs: dict[str, int] = {}
    ticks: list[tuple[float, bool, float]] = []  # (wall s, a retrain was running, cpu s)
    training_pids: set[int] = set()
    trained_at: list[float] = []  # when each retrain ended (the service reloads a promoted model then)
    training_seen: list[tuple[int, int, int]] = []  # (nice, threads, busy threads) samples of retrain workers
    loads: list[float] = []
    training = threading.Event()
    stop = time.monotonic() + seconds + 3600  # set when the load starts
    lock_words = ("Could not set lock", "Conflicting lock", "database is locked")

    def run(step: str) -> tuple[bool, float, float]:
        started = time.monotonic()
        before = os.times()
        with tempfile.TemporaryFile(mode="w+") as err_file:
            process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", step], env=env, cwd=str(REPO),
                                       stdout=subprocess.DEVNULL, stderr=err_file, text=True)
            if step.startswith("training_"):
                training_pids.add(process.pid)
            process.wait()
            training_pids.discard(process.pid)
            err_file.seek(0)
            err = err_file.read()
        after = os.times()
        nonlocal lock_errors
        if any(w in err for w in lock_words):
            lock_errors += 1
        runs[step] = runs.get(step, 0) + 1
        if process.returncode:
            failed[step] = failed.get(step, 0) + 1
            lines = [line.strip() for line in err.splitlines() if "Error" in line or "error" in line]
            failures.append(f"{step}: {(lines[-1] if lines else err.strip()[-200:])[:200]}")
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
            trained_at.append(time.monotonic())
            training.clear()
            run("forecast")  # the eager earnings_forecast a finished retrain triggers

    def tick_loop() -> None:
        while time.monotonic() < stop:
            during = training.is_set()
            _, wall, cpu = run("allocation")
            ticks.append((wall, during or training.is_set(), cpu))
            time.sleep(15)

    def sample_loop() -> None:
        """Every 2 s: the load average, and each running retrain worker's niceness and thread use."""
        history: dict[int, dict[int, float]] = {}
        while time.monotonic() < stop:
            loads.append(os.getloadavg()[0])
            for pid in list(training_pids):
                stat = proc_stat(pid)
                if stat is not None:
                    busy = busy_threads(pid, history.setdefault(pid, {}), 2.0)
                    training_seen.append((stat[0], stat[1], busy))
            time.sleep(2.0)

    server = Server(data_dir, catalog, 2048, PROTOCOLS)
    latencies: dict[str, list[float]] = {"/forecasts": [], "/health": []}
    loop_lag: list[float] = []
    slow: list[tuple[float, str]] = []  # (when, endpoint) of answers slower than SLOW_ANSWER_S
    reader_errors: dict[str, int] = {}
    try:
        server.wait_ready(require_model=False)  # readers poll stored rows; the champion may be statistical
        server_cpu_before = proc_stat(server.process.pid)

        async def readers_loop() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=readers)) as http:
                async def reader(i: int) -> None:
                    await asyncio.sleep(i / readers)  # spread the first polls over a second
                    while time.monotonic() < stop:
                        kind = "/health" if i % 5 == 0 else "/forecasts"
                        path = "/health" if kind == "/health" else f"/forecasts/{PROTOCOLS[i % len(PROTOCOLS)]}"
                        started = time.perf_counter()
                        try:
                            answer = await http.get(path)
                            if answer.status_code == 200:
                                latencies[kind].append(time.perf_counter() - started)
                                if time.perf_counter() - started > SLOW_ANSWER_S:
                                    slow.append((time.monotonic(), kind))
                            else:
                                name = f"{kind} {answer.status_code}"
                                reader_errors[name] = reader_errors.get(name, 0) + 1
                        except httpx.HTTPError as exc:
                            reader_errors[type(exc).__name__] = reader_errors.get(type(exc).__name__, 0) + 1
                        await asyncio.sleep(1.0)

                async def lag_probe() -> None:  # the load generator's own delay, which its latencies include
                    while time.monotonic() < stop:
                        started = time.perf_counter()
                        await asyncio.sleep(0.1)
                        loop_lag.append(time.perf_counter() - started - 0.1)

                await asyncio.gather(lag_probe(), *(reader(i) for i in range(readers)))

        _, wall, cpu = run("allocation")  # the tick alone first, nothing else of earnopt running
        ticks.append((wall, False, cpu))
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=ingest_loop), threading.Thread(target=tick_loop), threading.Thread(target=sample_loop)]
        threads += [threading.Thread(target=train_loop, args=(p,)) for p in PROTOCOLS]
        for t in threads:
            t.start()
        asyncio.run(readers_loop())
        server_cpu_after = proc_stat(server.process.pid)
        metrics_text = httpx.get(server.url + "/metrics", timeout=10).text
        for t in threads:
            t.join()
    finally:
        server.stop()
    answers = sum(len(v) for v in latencies.values())
    p50, p99, worst = quantiles_ms(latencies["/forecasts"] + latencies["/health"])
    print(f"\n== contention: {seconds:.0f} s, ingestion every 10 s, retraining of {len(PROTOCOLS)} protocols in a loop, "
          f"the allocation tick every 15 s, {readers} API readers (1 req/s each; 4 of 5 GET /forecasts/{{protocol}}, 1 of 5 GET /health)")
    print(f"runs: {runs}")
    print(f"lock errors: {lock_errors} (target 0)")
    print(f"failed runs: {sum(failed.values())} {failed or ''} (target 0)")
    for failure in failures[:5]:
        print(f"    {failure}")
    print(f"readers: {answers} answers, errors {sum(reader_errors.values())} {reader_errors or ''} (target 0); "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.0f} ms")
    for kind, values in latencies.items():
        k50, k99, kmax = quantiles_ms(values)
        route = "/forecasts/{protocol}" if kind == "/forecasts" else kind
        print(f"  {kind:<11} n {len(values):>5}  p50 {k50:7.1f} ms  p99 {k99:7.1f} ms  max {kmax:6.0f} ms; inside the app p99 <= "
              f"{server_latency_quantile(metrics_text, route, 0.99) * 1000:.0f} ms")
    after_retrain = sum(1 for when, _ in slow if any(0 <= when - t <= 15 for t in trained_at))
    print(f"  answers slower than {SLOW_ANSWER_S * 1000:.0f} ms: {len(slow)} ({', '.join(f'{k} {sum(1 for _, x in slow if x == k)}' for k in latencies)}); "
          f"{after_retrain} of them within 15 s after one of the {len(trained_at)} retrains ended")
    lag50, lag99, lagmax = quantiles_ms(loop_lag)
    print(f"  load generator's own event-loop delay (in every latency above): p50 {lag50:.1f} ms, p99 {lag99:.1f} ms, max {lagmax:.0f} ms")
    if server_cpu_before and server_cpu_after and answers:
        print(f"  service CPU {server_cpu_after[2] - server_cpu_before[2]:.1f} s for {answers} answers "
              f"({(server_cpu_after[2] - server_cpu_before[2]) / answers * 1000:.2f} ms per answer), nice {server_cpu_after[0]}")
    if training_seen:
        nices = sorted({n for n, _, _ in training_seen})
        busy = [b for _, _, b in training_seen]
        print(f"retrain workers (catalog training: threads/nice): nice seen {nices} (the benchmark runs at nice {os.nice(0)}); "
              f"threads {max(t for _, t, _ in training_seen)}, of them busy (>20 % of a core) median {statistics.median(busy):.0f}, max {max(busy)}")
    alone = [w for w, during, _ in ticks if not during]
    busy_ticks = [w for w, during, _ in ticks if during]
    cpu = [c for _, _, c in ticks]
    print(f"15-minute tick (allocation_job's asset, own process incl. imports): alone median {statistics.median(alone) if alone else float('nan'):.1f} s "
          f"(n={len(alone)}), while a retrain runs median {statistics.median(busy_ticks) if busy_ticks else float('nan'):.1f} s (n={len(busy_ticks)}); "
          f"tick CPU median {statistics.median(cpu) if cpu else float('nan'):.1f} s")
    print(f"load average (1 min) during the run: min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f}; "
          f"now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kills", type=int, default=10, help="kills per step (fewer for a quick run)")
    parser.add_argument("--steps", default=",".join(KILLED_STEPS))
    parser.add_argument("--contention-seconds", type=float, default=120.0)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--days", type=int, default=40, help="simulated days landed before the kills (the LSTM needs 25)")
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
        landing.land(args.days)
        windows: dict[str, float] = {}
        started = time.monotonic()
        for step in ("ingestion", "training_epoch", *[f"training_{p}" for p in PROTOCOLS[1:]], "forecast", "allocation", "anomaly_model",
                     "anomaly_scoring"):
            ok, seen = run_to_end(step, env)
            if not ok:
                print(f"setup: a clean {step} run failed; stopping")
                return 1
            for killed in KILLED_STEPS:
                _, _, start_marker, end_marker = STEPS[killed]
                if STEPS[killed][:2] == STEPS[step][:2] and start_marker in seen and end_marker in seen:
                    windows[killed] = max(0.001, seen[end_marker] - seen[start_marker])
        champion = (data_dir / "models" / "lstm" / PROTOCOLS[0] / "CURRENT").exists()
        print(f"setup ({args.days} days landed, ingested, models, forecasts, plan, detector, scores) in {time.monotonic() - started:.0f} s; "
              f"{PROTOCOLS[0]} {'has a CURRENT model' if champion else 'has no CURRENT model (statistical candidates serve)'}; "
              f"kill windows ms: {', '.join(f'{k} {v * 1000:.0f}' for k, v in windows.items())}", flush=True)
        results = {}
        for step in steps:
            step_started = time.monotonic()
            results[step] = kill_trials(step, args.kills, env, data_dir, landing, windows[step], rng)
            results[step]["seconds"] = time.monotonic() - step_started
        if results:
            print(f"\n== kill -9 mid-step ({args.kills} per step, random moments of each window; "
                  f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})")
            print(f"{'step':<18} {'kills':>6} {'survived':>9} {'missed':>7}  {'kill moments (ms into the window)':<40} wall s")
            for step, r in results.items():
                moments = ", ".join(f"{d * 1000:.0f}" for d in sorted(r["delays"]))
                print(f"{step:<18} {r['kills']:>6} {r['survived']:>9} {r['missed']:>7}  {moments[:40]:<40} {r['seconds']:.0f}")
                for failure in r["failures"]:
                    print(f"    {failure}")
        if args.contention_seconds > 0:
            contention(args.contention_seconds, args.readers, env, data_dir, catalog, landing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
