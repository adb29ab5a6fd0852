"""What earnopt itself costs the host it shares with the earning apps (issue 16 §2 and §4).

    .venv/bin/python benchmarks/footprint.py [--models 20] [--idle-seconds 60] [--requests 40] [--tick-runs 3]

Setup (not measured): a tmp data dir as ``scripts/run.sh`` builds it - a ``--models``-protocol catalog
(the shipped protocols, then renamed copies, as ``benchmarks/tick.py`` does), ``--days`` of simulated
telemetry in landing, ``earnopt demo`` (every asset materialized; each model trained for ``--epochs``
epochs, 1 by default: enough for a footprint, not a usable forecast) and ``deploy/dagster.yaml`` copied
into a tmp ``DAGSTER_HOME``. ``--data-dir`` reuses a data dir made by an earlier ``--keep`` run.

Measured, all against real processes started from the CLI:

1. ``earnopt serve`` (``python -m earnopt_assets.cli serve``): the time from process start to the first
   answer of ``GET /health`` and of the first ``POST /predict/earnings/{protocol}``; its RSS (``VmRSS``)
   once it answers and after the forecasts; the CPU time of one uncached 24-hour forecast = the
   server's utime+stime delta (``/proc/<pid>/stat``) over ``--requests`` sequential requests with
   distinct bodies (each a cache miss) / ``--requests``, after 3 warm-up requests.
2. The idle stack: ``dagster dev -w workspace.yaml`` (webserver, daemon and their code servers) plus the
   same ``earnopt serve``. After ``--settle-seconds``, every process's RSS is sampled every 5 s for
   ``--idle-seconds`` (median printed) and its CPU seconds per minute = CPU delta over the window x 60 /
   window. Schedules and sensors run as they ship (a 15-minute allocation tick may fall in the window:
   the table says so when a process appeared during it).
3. The 15-minute tick (``dagster job execute -m earnopt_assets.definitions -j allocation_job``, the operator's
   command timed by ``benchmarks/tick.py``) ``--tick-runs`` times alone, then the same while a retrain
   runs (``dagster asset materialize --select earnings_model --partition <first protocol>``,
   ``--retrain-epochs`` epochs, relaunched whenever one ends; the ticks start ``--retrain-lead-seconds`` after its
   step worker has loaded TensorFlow). The training workers' nice value, thread count and the retrain's CPU
   use during the ticks are printed: the evidence that training yields.

Targets (issue 16): serve with 20 models RSS <= 300 MB after start; one uncached forecast <= 3 ms CPU;
start to first answer <= 3 s. The suggested ``host.reserved`` block for the catalog is
``memory_gb`` = sum of the idle stack's median RSS, ``cpu_cores`` = (idle CPU s/min + one tick's CPU s / 15)
/ 60, both rounded up (to 0.1 GB and 0.05 core).

CPU is shared with whatever else runs on the machine: the load average is printed with every phase.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TARGET_RSS_MB = 300.0
TARGET_FORECAST_CPU_MS = 3.0
TARGET_FIRST_ANSWER_S = 3.0
TICK_MINUTES = 15
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- /proc readings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    pid: int
    ppid: int
    cpu_s: float  # utime + stime
    nice: int
    threads: int
    rss_mb: float


def read_proc(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is the state
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return ProcSample(
        pid=pid, ppid=int(fields[1]), cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        nice=int(fields[16]), threads=int(fields[17]), rss_mb=rss_kb / 1024,
    )


def thread_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every live thread of ``pid`` (``/proc/<pid>/task/*/schedstat``): fine enough
    to attribute one request's CPU time, which utime/stime's 10 ms ticks are not."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            sample = read_proc(int(entry.name))
            if sample is not None:
                parents.setdefault(sample.ppid, []).append(sample.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def describe(pid: int) -> str:
    """A short name for a process of the stack, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    words = [Path(a).name if i < 2 else a for i, a in enumerate(argv) if a]
    line = " ".join(words)
    for needle, name in (
        ("earnopt_assets.cli serve", "earnopt serve"),
        ("dagster_webserver", "dagster webserver"),
        ("dagster-webserver", "dagster webserver"),
        ("dagster._daemon", "dagster daemon"),
        ("dagster-daemon", "dagster daemon"),
        ("code-server start", "code server proxy (code-server start)"),
        ("api grpc", "code server (dagster api grpc)"),
        ("execute_run", "run worker (dagster api execute_run)"),
        ("dagster dev", "dagster dev"),
    ):
        if needle in line:
            return name
    return line[:60]


def stop_group(process: subprocess.Popen, first: int = signal.SIGINT, wait_s: float = 30.0) -> None:
    """Stop a process this benchmark started in its own session, then anything it left behind."""
    if process.poll() is None:
        process.send_signal(first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- setup --------------------------------------------------------------------------------------------


def build_catalog(path: Path, models: int) -> list[str]:
    """The shipped catalog with ``models`` protocols: the shipped ones, then renamed copies (``-b``, ...)."""
    raw = yaml.safe_load((REPO_ROOT / "data" / "catalog.yaml").read_text())
    shipped = raw["protocols"]
    protocols = []
    for index in range(models):
        spec = dict(shipped[index % len(shipped)])
        copy = index // len(shipped)
        if copy:
            spec["name"] = f"{spec['name']}-{'bcdefgh'[copy - 1]}"
            spec["min_allocation"] = 0.0
        protocols.append(spec)
    raw["protocols"] = protocols
    # room for every protocol's minimum share, as benchmarks/tick.py does
    raw["host"] = {**raw["host"], "cpu_cores": 12, "memory_gb": 24}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return [p["name"] for p in protocols]


def base_env(data_dir: Path, catalog: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "EARNOPT_DATA_DIR": str(data_dir),
        "EARNOPT_CATALOG": str(catalog),
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONWARNINGS": "ignore",
    }
    return env


def prepare(work: Path, models: int, days: int, epochs: int) -> tuple[Path, Path]:
    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    catalog = data_dir / "catalog.yaml"
    build_catalog(catalog, models)
    dagster_home = data_dir / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**base_env(data_dir, catalog), "DAGSTER_HOME": str(dagster_home)}
    code = (
        "import sys; from pathlib import Path; from earnopt_assets.demo import run_demo; "
        f"sys.exit(run_demo(Path({str(data_dir)!r}), days={days}, model_config={{'epochs': {epochs}}}))"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    steps = [line for line in done.stdout.splitlines() if line.startswith("==>")]
    failed = [line for line in steps if "FAILED" in line]
    print(f"setup: earnopt demo with {models} protocols, {days} days, {epochs} epoch(s) per model: "
          f"{time.monotonic() - started:.0f} s, {len(steps)} steps, {len(failed)} failed or with failing checks")
    for line in failed:
        print("   ", line[:200])
    if not (data_dir / "models").exists():
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit("setup produced no models")
    return data_dir, catalog


def prediction_bodies(catalog_path: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct (protocol, body) pairs: 10-day windows ending on different hours, rotating protocols."""
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.simulator import simulate

    catalog = load_catalog(catalog_path)
    names = catalog.enabled_names
    per_protocol = math.ceil(count / len(names))
    hours = 10 * 24
    telemetry = simulate(catalog, days=11 + per_protocol // 24 + 1, seed=9, inject_anomalies=False).telemetry
    telemetry["ts"] = telemetry["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows_by_protocol = {
        name: json.loads(group.drop(columns=["device", "protocol"]).to_json(orient="records"))
        for name, group in telemetry.groupby("protocol")
    }
    bodies = []
    for i in range(count):
        name, k = names[i % len(names)], i // len(names)
        rows = rows_by_protocol[name]
        bodies.append((name, json.dumps({"rows": rows[len(rows) - hours - k : len(rows) - k]}).encode()))
    return bodies


# --- phase 1: earnopt serve ---------------------------------------------------------------------------


def measure_serve(data_dir: Path, catalog: Path, requests: int) -> tuple[subprocess.Popen, dict]:
    bodies = prediction_bodies(catalog, requests + 4)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env(data_dir, catalog), "EARNOPT_LOG_LEVEL": "warning"}
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - outlives this function with the server; read on failure
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "earnopt_assets.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        return server, _measure_started_server(server, log, started, url, bodies, requests)
    except BaseException:
        stop_group(server)
        raise


def _measure_started_server(server: subprocess.Popen, log, started: float, url: str, bodies: list, requests: int) -> dict:
    out: dict = {"pid": server.pid}
    http = httpx.Client(base_url=url, timeout=120)
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"earnopt serve exited: {log.read()[-3000:]}")
        if time.monotonic() - started > 1200:
            raise SystemExit("earnopt serve did not answer within 1200 s")
        try:
            health = http.get("/health", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    out["health_s"] = time.monotonic() - started
    out["health_cpu_s"] = read_proc(server.pid).cpu_s  # the start's own CPU: contention stretches wall time, not this
    out["health_status"] = f"{health.status_code} {health.json().get('status', '')}"
    protocol, body = bodies[0]
    first = http.post(f"/predict/earnings/{protocol}", content=body, headers={"content-type": "application/json"})
    out["first_forecast_s"] = time.monotonic() - started
    out["first_source"] = first.json().get("source") if first.status_code == 200 else f"HTTP {first.status_code}"
    out["rss_start_mb"] = read_proc(server.pid).rss_mb
    models = http.get("/models").json().get("models", [])
    out["models_loaded"] = sum(1 for m in models if m.get("loaded"))
    out["models_listed"] = len(models)
    for protocol, body in bodies[1:4]:  # warm-up
        http.post(f"/predict/earnings/{protocol}", content=body, headers={"content-type": "application/json"})
    sources: dict[str, int] = {}
    walls = []
    cpu_before = read_proc(server.pid).cpu_s
    cpu_by_source: dict[str, list[float]] = {}
    for protocol, body in bodies[4:]:
        t0, ns0 = time.perf_counter(), thread_cpu_ns(server.pid)
        answer = http.post(f"/predict/earnings/{protocol}", content=body, headers={"content-type": "application/json"})
        cpu_ms = (thread_cpu_ns(server.pid) - ns0) / 1e6
        walls.append(time.perf_counter() - t0)
        data = answer.json()
        label = f"{data.get('source')}{' (cached!)' if data.get('cached') else ''}" if answer.status_code == 200 else f"HTTP {answer.status_code}"
        sources[label] = sources.get(label, 0) + 1
        cpu_by_source.setdefault(label, []).append(cpu_ms)
    out["cpu_per_forecast_ms"] = (read_proc(server.pid).cpu_s - cpu_before) / requests * 1000
    out["wall_median_ms"] = statistics.median(walls) * 1000
    out["sources"] = sources
    out["cpu_by_source"] = cpu_by_source
    out["rss_after_mb"] = read_proc(server.pid).rss_mb
    hwm = next(line for line in Path(f"/proc/{server.pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    out["rss_peak_mb"] = int(hwm.split()[1]) / 1024
    http.close()
    return out


def report_serve(out: dict, requests: int) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    print(f"\n== earnopt serve (pid {out['pid']}): {out['models_loaded']}/{out['models_listed']} models loaded; load average {load_average()}")
    print(f"{'figure':<48} {'value':>10}  target")
    print(f"{'start -> first GET /health answer (s)':<48} {out['health_s']:>10.2f}  <= {TARGET_FIRST_ANSWER_S:g} s: "
          f"{verdict(out['health_s'] <= TARGET_FIRST_ANSWER_S)} (answered {out['health_status']})")
    print(f"{'  CPU time the server spent until then (s)':<48} {out['health_cpu_s']:>10.2f}  (wall time above stretches with the machine's load; this does not)")
    print(f"{'start -> first POST /predict/earnings answer (s)':<48} {out['first_forecast_s']:>10.2f}  <= {TARGET_FIRST_ANSWER_S:g} s: "
          f"{verdict(out['first_forecast_s'] <= TARGET_FIRST_ANSWER_S)} (source {out['first_source']})")
    print(f"{'RSS after start (MB, after the first forecast)':<48} {out['rss_start_mb']:>10.0f}  <= {TARGET_RSS_MB:g} MB: "
          f"{verdict(out['rss_start_mb'] <= TARGET_RSS_MB)}")
    print(f"{'RSS after the forecasts (MB)':<48} {out['rss_after_mb']:>10.0f}")
    print(f"{'RSS peak, VmHWM (MB)':<48} {out['rss_peak_mb']:>10.0f}")
    print(f"{'CPU per uncached 24 h forecast (ms)':<48} {out['cpu_per_forecast_ms']:>10.2f}  <= {TARGET_FORECAST_CPU_MS:g} ms: "
          f"{verdict(out['cpu_per_forecast_ms'] <= TARGET_FORECAST_CPU_MS)} (mean of {requests} sequential distinct requests)")
    print(f"{'wall per request, client side (ms, median)':<48} {out['wall_median_ms']:>10.1f}")
    print(f"answers by source: {', '.join(f'{k} {v}' for k, v in out['sources'].items())}")
    print("server CPU per request by answering source (schedstat, ms): " + "; ".join(
        f"{k} median {statistics.median(v):.2f}, mean {statistics.fmean(v):.2f} (n={len(v)})" for k, v in sorted(out["cpu_by_source"].items())))


# --- phase 2: the idle stack --------------------------------------------------------------------------


def measure_idle(data_dir: Path, catalog: Path, serve_pid: int, idle_s: float, settle_s: float) -> dict:
    port = free_port()
    env = {**base_env(data_dir, catalog), "DAGSTER_HOME": str(data_dir / "dagster_home")}
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as dagster dev; read on failure
    dev = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        started = time.monotonic()
        while True:
            if dev.poll() is not None:
                log.seek(0)
                raise SystemExit(f"dagster dev exited: {log.read()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > 240:
                raise SystemExit("dagster dev did not answer within 240 s")
            time.sleep(0.5)
        ui_s = time.monotonic() - started
        time.sleep(settle_s)

        def stack() -> list[int]:
            return [serve_pid, *descendants(dev.pid)]

        first = {pid: read_proc(pid) for pid in stack()}
        names = {pid: describe(pid) for pid in first}
        rss: dict[int, list[float]] = {pid: [] for pid in first}
        appeared: set[int] = set()
        t0 = time.monotonic()
        while True:
            for pid in stack():
                sample = read_proc(pid)
                if sample is None:
                    continue
                if pid not in first:
                    appeared.add(pid)
                    names.setdefault(pid, describe(pid))
                    continue
                rss[pid].append(sample.rss_mb)
            elapsed = time.monotonic() - t0
            if elapsed >= idle_s:
                break
            time.sleep(min(5.0, idle_s - elapsed))
        window = time.monotonic() - t0
        last = {pid: read_proc(pid) for pid in first}
        rows = []
        for pid, before in first.items():
            after = last[pid]
            if before is None or after is None or not rss[pid]:
                continue
            rows.append((names[pid], pid, statistics.median(rss[pid]), (after.cpu_s - before.cpu_s) * 60 / window))
        return {"ui_s": ui_s, "rows": rows, "window": window, "appeared": sorted({names[p] for p in appeared})}
    finally:
        stop_group(dev)


def report_idle(idle: dict, settle_s: float) -> None:
    print(f"\n== idle stack: dagster dev (UI answered {idle['ui_s']:.1f} s after start) + earnopt serve; "
          f"window {idle['window']:.0f} s after {settle_s:.0f} s settling; load average {load_average()}")
    print(f"{'process':<36} {'pid':>7} {'RSS_MB (median)':>16} {'CPU_s_per_min':>14}")
    for name, pid, rss, cpu in sorted(idle["rows"], key=lambda r: -r[2]):
        print(f"{name:<36} {pid:>7} {rss:>16.0f} {cpu:>14.2f}")
    dagster = [r for r in idle["rows"] if r[0] != "earnopt serve"]
    print(f"{'dagster processes, total':<36} {'':>7} {sum(r[2] for r in dagster):>16.0f} {sum(r[3] for r in dagster):>14.2f}")
    print(f"{'whole idle stack, total':<36} {'':>7} {sum(r[2] for r in idle['rows']):>16.0f} {sum(r[3] for r in idle['rows']):>14.2f}"
          f"   (= {sum(r[3] for r in idle['rows']) / 60 * 100:.1f} % of one core)")
    if idle["appeared"]:
        print(f"processes that started during the window (not in the totals): {', '.join(idle['appeared'])}")


# --- phase 3: the tick, alone and while a retrain runs --------------------------------------------------


def tick_env(data_dir: Path, catalog: Path) -> dict[str, str]:
    env = base_env(data_dir, catalog)
    env.pop("DAGSTER_HOME", None)  # ephemeral instance, as benchmarks/tick.py
    return env


def run_ticks(data_dir: Path, catalog: Path, runs: int) -> tuple[list[float], list[float]]:
    command = [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "earnopt_assets.definitions", "-j", "allocation_job"]
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, env=tick_env(data_dir, catalog), capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-3000:])
            raise SystemExit(f"allocation tick failed with exit code {done.returncode}")
    return walls, cpus


def wait_for_training(process: subprocess.Popen, timeout_s: float) -> float | None:
    """Seconds until a process of ``process``'s tree has TensorFlow mapped (the retrain's step worker is
    past its imports), or None when it never does within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and process.poll() is None:
        for pid in descendants(process.pid):
            try:
                if "tensorflow" in Path(f"/proc/{pid}/maps").read_text():
                    return time.monotonic() - started
            except OSError:
                continue
        time.sleep(1.0)
    return None


RETRAIN_LOOP = """
import subprocess, sys
while True:  # one retrain after another, so training runs through every tick of the window
    subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


class TreeSampler(threading.Thread):
    """Samples a process tree every second: CPU seconds used inside the window (a process born during
    it counts whole) and the nice value / thread count of the processes that run TensorFlow."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop_event = threading.Event()
        self.last: dict[int, float] = {}
        self.cpu_s = 0.0
        self.trainers: dict[int, tuple[int, int]] = {}  # pid -> (nice, max threads seen)
        self._checked: set[int] = set()

    def sample(self, first: bool = False) -> None:
        for pid in descendants(self.root):
            proc = read_proc(pid)
            if proc is None:
                continue
            if not first:
                self.cpu_s += proc.cpu_s - self.last.get(pid, 0.0)
            self.last[pid] = proc.cpu_s
            if pid not in self._checked:
                self._checked.add(pid)
                try:
                    if "tensorflow" in Path(f"/proc/{pid}/maps").read_text():
                        self.trainers[pid] = (proc.nice, proc.threads)
                except OSError:
                    pass
            elif pid in self.trainers:
                self.trainers[pid] = (proc.nice, max(proc.threads, self.trainers[pid][1]))

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.sample()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def measure_tick(data_dir: Path, catalog: Path, runs: int, protocol: str, retrain_epochs: int, lead_s: float) -> dict:
    alone = run_ticks(data_dir, catalog, runs)
    load_alone = load_average()
    config = {"ops": {"earnings_model": {"config": {"epochs": retrain_epochs}}}}
    command = [
        str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "earnopt_assets.definitions",
        "--select", "earnings_model", "--partition", protocol, "--config-json", json.dumps(config),
    ]
    retrain = subprocess.Popen([sys.executable, "-c", RETRAIN_LOOP, *command], cwd=REPO_ROOT, env=tick_env(data_dir, catalog),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        training_since = wait_for_training(retrain, timeout_s=300)
        time.sleep(lead_s)
        sampler = TreeSampler(retrain.pid)
        sampler.sample(first=True)
        sampler.start()
        t0 = time.monotonic()
        busy = run_ticks(data_dir, catalog, runs)
        window = time.monotonic() - t0
        sampler.finish()
    finally:
        stop_group(retrain, first=signal.SIGTERM, wait_s=5)
    retrain_info = {
        "training_started_s": training_since,
        "cores_used": sampler.cpu_s / window if window else 0.0,
        "nice": sorted({n for n, _ in sampler.trainers.values()}),
        "threads": max((t for _, t in sampler.trainers.values()), default=0),
        "workers": len(sampler.trainers),
    }
    return {"alone": alone, "busy": busy, "retrain": retrain_info, "load_alone": load_alone, "load_busy": load_average(),
            "protocol": protocol, "epochs": retrain_epochs, "lead_s": lead_s}


def report_tick(tick: dict) -> None:
    print(f"\n== 15-minute tick (dagster job execute -j allocation_job), {len(tick['alone'][0])} runs each")
    print(f"{'condition':<34} {'wall_s (median)':>15} {'min':>6} {'max':>6} {'tick CPU_s (median)':>20}  load average after")
    for label, (walls, cpus), load in (("alone", tick["alone"], tick["load_alone"]),
                                       ("while a retrain runs", tick["busy"], tick["load_busy"])):
        print(f"{label:<34} {statistics.median(walls):>15.2f} {min(walls):>6.2f} {max(walls):>6.2f} {statistics.median(cpus):>20.2f}  {load}")
    ratio = statistics.median(tick["busy"][0]) / statistics.median(tick["alone"][0])
    r = tick["retrain"]
    print(f"tick wall while retraining / alone: {ratio:.2f}x")
    started = r["training_started_s"]
    if started is None:
        print("retrain: TensorFlow never loaded (the retrain did not reach training: no contention was measured)")
        return
    print(f"retrain ({tick['protocol']}, {tick['epochs']} max epochs, relaunched whenever it ends): TensorFlow loaded {started:.0f} s "
          f"after launch, ticks from {tick['lead_s']:g} s later; {r['workers']} training worker(s) during the ticks, "
          f"nice {', '.join(str(n) for n in r['nice'])}, up to {r['threads']} threads each, "
          f"{r['cores_used']:.2f} cores used by the retrain during the ticks")


def suggest_reserve(idle: dict | None, tick: dict | None) -> None:
    if idle is None:
        return
    rss_gb = sum(r[2] for r in idle["rows"]) / 1024
    cpu_s_per_min = sum(r[3] for r in idle["rows"])
    tick_cpu = statistics.median(tick["alone"][1]) if tick else 0.0
    cores = (cpu_s_per_min + tick_cpu / TICK_MINUTES) / 60
    print(f"\nsuggested catalog host.reserved: memory_gb {math.ceil(rss_gb * 10) / 10:.1f} "
          f"(idle stack RSS {rss_gb:.2f} GB), cpu_cores {math.ceil(cores * 20) / 20:.2f} "
          f"(idle {cpu_s_per_min:.2f} CPU s/min + tick {tick_cpu:.1f} CPU s every {TICK_MINUTES} min = {cores:.3f} cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=20, help="protocols in the catalog, each with a trained model")
    parser.add_argument("--days", type=int, default=28, help="days of simulated telemetry for the setup")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per model in the setup")
    parser.add_argument("--requests", type=int, default=40, help="sequential uncached forecasts timed")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--settle-seconds", type=float, default=20.0, help="wait after dagster dev answers before sampling")
    parser.add_argument("--tick-runs", type=int, default=3, help="0 skips the tick phase")
    parser.add_argument("--retrain-epochs", type=int, default=60)
    parser.add_argument("--retrain-lead-seconds", type=float, default=10.0, help="TensorFlow loaded in the retrain -> first tick")
    parser.add_argument("--phases", default="serve,idle,tick", help="comma-separated subset of serve, idle, tick (idle needs serve)")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse a data dir kept by an earlier --keep run")
    parser.add_argument("--keep", action="store_true", help="keep the tmp data dir and print where it is")
    args = parser.parse_args()

    import earnopt_assets

    print(f"earnopt_assets from {Path(earnopt_assets.__file__).parent}; git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()}; "
          f"load average {load_average()}")
    work = Path(tempfile.mkdtemp(prefix="earnopt-footprint-")) if args.data_dir is None else None
    try:
        if args.data_dir is not None:
            data_dir, catalog = args.data_dir, args.data_dir / "catalog.yaml"
            print(f"setup: reusing {data_dir}")
        else:
            data_dir, catalog = prepare(work, args.models, args.days, args.epochs)
        phases = set(args.phases.split(","))
        idle = tick = None
        if "serve" in phases:
            server, serve = measure_serve(data_dir, catalog, args.requests)
            try:
                report_serve(serve, args.requests)
                if "idle" in phases:
                    idle = measure_idle(data_dir, catalog, server.pid, args.idle_seconds, args.settle_seconds)
                    report_idle(idle, args.settle_seconds)
            finally:
                stop_group(server)
        if "tick" in phases and args.tick_runs > 0:
            from earnopt_assets.catalog import load_catalog

            protocol = load_catalog(catalog).enabled_names[0]
            tick = measure_tick(data_dir, catalog, args.tick_runs, protocol, args.retrain_epochs, args.retrain_lead_seconds)
            report_tick(tick)
        suggest_reserve(idle, tick)
    finally:
        if args.keep and args.data_dir is None:
            print(f"\nkept {work}")
        elif args.data_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
