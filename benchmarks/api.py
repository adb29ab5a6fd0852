"""Load benchmark of ``POST /predict/earnings/{protocol}`` on a real ``earnopt serve`` (uvicorn) process.

    .venv/bin/python benchmarks/api.py [--duration 30] [--clients 50] [--uncached-duration 10] [--load wrk|httpx|auto]

Uses the real data dir's models when ``data/models/<protocol>/CURRENT`` exists, else trains a
default-architecture model (LSTM 128/64, window 24, 2 epochs) into a tmp data dir. Loopback only.

Phase 1 (``--duration`` s, target p99 <= 50 ms, 0 errors): ``--clients`` concurrent httpx clients post
one of ``--windows`` distinct telemetry windows (10 days each, ending on consecutive hours) — the
orchestrator's pattern of re-asking for recent windows; repeated windows are answered by the prediction
cache. Phase 2 (``--uncached-duration`` s): the same load on a server started with the cache disabled,
so every request runs the LSTM (24 recursive steps, micro-batched with the requests in flight): the
model's own throughput on this machine.

Open loop (``--open-loop``, #13 §6): Poisson arrivals at a fixed rate (10, 25, 50 req/s, then higher
until p99 > 500 ms), every body unique (sliding 10-day windows plus a per-request perturbation), the
protocols mixed (``--protocols``), on a server with the cache off; latency counts from the scheduled
arrival (no coordinated omission). Prints p50/p99, errors and the server's CPU ms per request (the
shared 2 cores run at load 8-18 from other work, so CPU time says more about the service than wall
time), the highest rate whose p99 <= 500 ms, and the same for ``GET /forecasts/{protocol}``.

    .venv/bin/python benchmarks/api.py --open-loop [--rates 10,25,50] [--rate-duration 15] [--protocols honeygain,grass,earnapp]

Load generator: ``--load wrk`` (C, keeps the client's CPU small on a 2-core box; Debian package ``wrk``)
drives ``--clients`` connections from 2 threads with a Lua script rotating the same bodies and printing
the same figures; ``--load httpx`` is the pure-Python generator; ``auto`` (default) uses wrk when it is
installed, else httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PROTOCOL = "honeygain"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_data_dir(work: Path, protocols: tuple[str, ...] = (PROTOCOL,)) -> tuple[Path, Path, str]:
    """(data_dir, catalog, how): the real data dir if it has the models, else a tmp one with fresh models."""
    from earnopt_assets.settings import default_catalog_path, default_data_dir

    real = default_data_dir()
    if all((real / "models" / p / "CURRENT").exists() for p in protocols):
        return real, default_catalog_path(), f"real data dir {real}"
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.forecasting.training import TrainingSettings, train_protocol
    from earnopt_assets.ingestion.features import build_feature_table
    from earnopt_assets.simulator import simulate

    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    catalog_path = data_dir / "catalog.yaml"
    shutil.copy(REPO / "data" / "catalog.yaml", catalog_path)
    catalog = load_catalog(catalog_path)
    telemetry = simulate(catalog, days=30, seed=3, end="2026-11-20T23:00:00", protocols=list(protocols), inject_anomalies=False).telemetry
    features, _ = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    started = time.perf_counter()
    for protocol in protocols:
        train_protocol(features[features["protocol"] == protocol], protocol, data_dir / "models", TrainingSettings(epochs=2, min_holdout_days=3),
                       timezone=catalog.host.timezone, host_totals=catalog.host.totals())
    return data_dir, catalog_path, f"tmp data dir, {len(protocols)} LSTM 128/64 models trained in {time.perf_counter() - started:.0f}s"


def payloads(catalog_path: Path, windows: int) -> list[bytes]:
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.simulator import simulate

    catalog = load_catalog(catalog_path)
    hours = 10 * 24
    telemetry = simulate(catalog, days=12, seed=9, end="2026-11-25T10:00:00", protocols=[PROTOCOL], inject_anomalies=False).telemetry
    telemetry["ts"] = telemetry["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = json.loads(telemetry.drop(columns=["device", "protocol"]).to_json(orient="records"))
    return [json.dumps({"rows": rows[len(rows) - hours - k : len(rows) - k]}).encode() for k in range(windows)]


class Server:
    def __init__(self, data_dir: Path, catalog: Path, cache_size: int, protocols: tuple[str, ...] = (PROTOCOL,)) -> None:
        self.protocols = protocols
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EARNOPT_DATA_DIR": str(data_dir), "EARNOPT_CATALOG": str(catalog),
               "EARNOPT_PREDICTION_CACHE_SIZE": str(cache_size), "EARNOPT_LOG_LEVEL": "warning", "TF_CPP_MIN_LOG_LEVEL": "2"}
        # stderr to a file, not a pipe: an undrained pipe fills up (client-disconnect tracebacks when the
        # load stops) and blocks the server.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server; closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "earnopt_assets.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=self.log, text=True,
        )

    def wait_ready(self, timeout_s: float = 180.0, require_model: bool = True) -> float:
        """Seconds until the server answers /models; with ``require_model`` one of ``protocols`` must have a
        loaded LSTM (the /predict benchmarks), else any answer will do (readers of stored rows need none)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read()[-4000:]}")
            try:
                models = httpx.get(self.url + "/models", timeout=2).json()
                loaded = {m["protocol"] for m in models["models"] if m["loaded"]}
                self.loaded = tuple(p for p in self.protocols if p in loaded)  # a fit may end unpromoted
                if self.loaded or not require_model:
                    return time.monotonic() - started
                raise RuntimeError(f"none of {self.protocols} has a loaded model: {models}")
            except httpx.TransportError:
                time.sleep(0.3)
        raise TimeoutError("server did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def drive(url: str, bodies: list[bytes], clients: int, duration_s: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    cached = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers={"content-type": "application/json"}) as http:
        # one warm-up request per distinct window is NOT done: cold misses are part of the measurement
        deadline = time.perf_counter() + duration_s

        async def client(index: int) -> None:
            nonlocal cached
            i = index
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += clients
                started = time.perf_counter()
                try:
                    response = await http.post(f"/predict/earnings/{PROTOCOL}", content=body)
                    elapsed = time.perf_counter() - started
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        cached += bool(response.json().get("cached"))
                    else:
                        errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "cached": cached, "wall": wall}


WRK_SCRIPT = r"""
local bodies = {}
local n = 0
for line in io.lines(os.getenv("EARNOPT_BENCH_BODIES")) do
  n = n + 1
  bodies[n] = line
end
counter = 0  -- globals: done() reads each thread's through thread:get
cached = 0
local responses = {}

setup = function(thread)
  table.insert(responses, thread)
  thread:set("id", #responses)
end

init = function(args)
  counter = (id or 0) * 7
  cached = 0
end

request = function()
  counter = counter + 1
  return wrk.format("POST", os.getenv("EARNOPT_BENCH_PATH"), {["Content-Type"] = "application/json"}, bodies[(counter % n) + 1])
end

response = function(status, headers, body)
  if status == 200 and string.find(body, '"cached":true', 1, true) then
    cached = cached + 1
  end
end

done = function(summary, latency, requests)
  local total_cached = 0
  for _, thread in ipairs(responses) do
    total_cached = total_cached + (thread:get("cached") or 0)
  end
  local e = summary.errors
  io.write(string.format("WRK requests=%d duration_us=%d p50_us=%d p95_us=%d p99_us=%d max_us=%d mean_us=%.1f connect=%d read=%d write=%d status=%d timeout=%d cached=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout, total_cached))
end
"""


def drive_wrk(url: str, bodies: list[bytes], clients: int, duration_s: float, work: Path) -> dict:
    """The same load through wrk; the result has the summary figures instead of every latency."""
    body_file = work / "bodies.jsonl"
    body_file.write_bytes(b"\n".join(bodies) + b"\n")
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "EARNOPT_BENCH_BODIES": str(body_file), "EARNOPT_BENCH_PATH": f"/predict/earnings/{PROTOCOL}"}
    threads = max(1, min(2, clients))
    command = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(duration_s))}s", "--timeout", "30s", "-s", str(script), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration_s + 120)
    line = next((row for row in done.stdout.splitlines() if row.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout} {done.stderr}")
    fields = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
    errors = {name: int(fields[name]) for name in ("connect", "read", "write", "status", "timeout") if fields[name]}
    return {"wrk": fields, "errors": errors, "wall": fields["duration_us"] / 1e6, "cached": int(fields["cached"])}


def report_wrk(title: str, result: dict, clients: int, target_ms: float | None) -> None:
    f = result["wrk"]
    errors = sum(result["errors"].values())
    ok = int(f["requests"]) - result["errors"].get("status", 0)
    print(f"\n== {title} [wrk]")
    print(f"clients {clients}, duration {result['wall']:.1f}s, requests {int(f['requests'])}, ok {ok}, errors {errors} {result['errors'] or ''}")
    print(f"throughput {ok / result['wall']:.1f} req/s, cache hits {100 * result['cached'] / max(ok, 1):.1f}%")
    p99 = f["p99_us"] / 1000
    print(f"latency ms: p50 {f['p50_us'] / 1000:.1f}  p95 {f['p95_us'] / 1000:.1f}  p99 {p99:.1f}  max {f['max_us'] / 1000:.1f}  mean {f['mean_us'] / 1000:.1f}")
    if target_ms is not None:
        verdict = "MET" if p99 <= target_ms and not errors else "NOT MET"
        print(f"target p99 <= {target_ms:g} ms with 0 errors: {verdict}")


def report(title: str, result: dict, clients: int, target_ms: float | None) -> None:
    lat = sorted(result["latencies"])
    total = len(lat) + sum(result["errors"].values())
    print(f"\n== {title}")
    if not lat:
        print(f"no successful requests; errors {result['errors']}")
        return
    q = statistics.quantiles(lat, n=100, method="inclusive")
    p50, p95, p99 = q[49] * 1000, q[94] * 1000, q[98] * 1000
    print(f"clients {clients}, duration {result['wall']:.1f}s, requests {total}, ok {len(lat)}, errors {sum(result['errors'].values())} {result['errors'] or ''}")
    print(f"throughput {len(lat) / result['wall']:.1f} req/s, cache hits {100 * result['cached'] / len(lat):.1f}%")
    print(f"latency ms: p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f}  max {lat[-1] * 1000:.1f}  mean {statistics.fmean(lat) * 1000:.1f}")
    if target_ms is not None:
        verdict = "MET" if p99 <= target_ms and not result["errors"] else "NOT MET"
        print(f"target p99 <= {target_ms:g} ms with 0 errors: {verdict}")


def unique_payloads(catalog_path: Path, protocols: tuple[str, ...], count: int) -> list[tuple[str, bytes]]:
    """``count`` (protocol, body) pairs, protocols interleaved; every body differs (its own 10-day window
    of a 60-day series, and its last hour's earnings nudged by the request index)."""
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.simulator import simulate

    catalog = load_catalog(catalog_path)
    hours = 10 * 24
    telemetry = simulate(catalog, days=60, seed=9, end="2026-11-25T10:00:00", protocols=list(protocols), inject_anomalies=False).telemetry
    telemetry["ts"] = telemetry["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = {p: json.loads(g.drop(columns=["device", "protocol"]).to_json(orient="records")) for p, g in telemetry.groupby("protocol")}
    out = []
    for i in range(count):
        protocol = protocols[i % len(protocols)]
        series = rows[protocol]
        end = len(series) - (i // len(protocols)) % (len(series) - hours)
        window = [dict(r) for r in series[end - hours:end]]
        window[-1]["earnings_usd"] = round(window[-1]["earnings_usd"] + 1e-9 * (i + 1), 12)
        out.append((protocol, json.dumps({"rows": window}).encode()))
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_loop(url: str, requests: list[tuple[str, str, bytes | None]], rate: float, seed: int = 1) -> dict:
    """Poisson arrivals at ``rate`` req/s: request k is sent at its scheduled time whatever the earlier
    ones are doing; its latency counts from that schedule, so a slow server cannot slow the offered load."""
    import random

    rng = random.Random(seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers={"content-type": "application/json"}) as http:
        start = time.perf_counter() + 0.2
        due = start
        tasks = []

        async def one(method: str, path: str, body: bytes | None, scheduled: float) -> None:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await http.request(method, path, content=body)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - scheduled)
                else:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        for method, path, body in requests:
            due += rng.expovariate(rate)
            tasks.append(asyncio.create_task(one(method, path, body, due)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "wall": wall}


def _quantiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        return (latencies[0] * 1000, latencies[0] * 1000) if latencies else (float("nan"), float("nan"))
    q = statistics.quantiles(sorted(latencies), n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


def sweep(server: Server, title: str, make: Callable[[int], list[tuple[str, str, bytes | None]]], rates: list[float],
          duration_s: float, ceiling_ms: float = 500.0, max_rate: float = 400.0) -> None:
    """The given rates, then x1.5 steps until p99 > ``ceiling_ms`` or errors; prints a row per rate."""
    print(f"\n== open loop: {title}")
    print(f"{'rate req/s':>10} {'sent':>6} {'ok':>6} {'errors':>8} {'p50 ms':>8} {'p99 ms':>8} {'server cpu ms/req':>18} "
          f"{'client cpu ms/req':>18} {'load avg':>9}")
    best = None
    outcomes: dict[float, tuple[float, int]] = {}
    planned = list(rates)
    index = 0
    while index < len(planned):
        rate = planned[index]
        index += 1
        requests = make(int(rate * duration_s))
        cpu_before, client_before = _cpu_seconds(server.process.pid), time.process_time()
        result = asyncio.run(open_loop(server.url, requests, rate))
        cpu, client = _cpu_seconds(server.process.pid) - cpu_before, time.process_time() - client_before
        p50, p99 = _quantiles(result["latencies"])
        errors = sum(result["errors"].values())
        print(f"{rate:>10.0f} {len(requests):>6} {len(result['latencies']):>6} {errors:>8} {p50:>8.1f} {p99:>8.1f} "
              f"{1000 * cpu / max(1, len(requests)):>18.2f} {1000 * client / max(1, len(requests)):>18.2f} {os.getloadavg()[0]:>9.1f}"
              + (f"  {result['errors']}" if errors else ""))
        outcomes[rate] = (p99, errors)
        good = p99 <= ceiling_ms and errors == 0
        if good:
            best = rate if best is None else max(best, rate)
        if index == len(planned) and good and rate * 1.5 <= max_rate:
            planned.append(round(rate * 1.5))
    print(f"highest rate with p99 <= {ceiling_ms:g} ms and 0 errors: {best if best is not None else 'none'} req/s"
          + (" (the sweep's cap)" if best is not None and best * 1.5 > max_rate else ""))
    if 50 in outcomes:
        p99, errors = outcomes[50]
        print(f"target p99 <= 50 ms at 50 req/s with 0 errors: {'MET' if p99 <= 50 and errors == 0 else 'NOT MET'} "
              f"(p99 {p99:.1f} ms, {errors} errors; 1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def seed_forecasts(data_dir: Path, catalog_path: Path, protocols: tuple[str, ...]) -> None:
    """A stored forecast per protocol (24 rows with intervals) for ``GET /forecasts``, through the table's owner."""
    import duckdb
    import pandas as pd

    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.forecasting.store import ensure_forecasts_table, write_forecasts

    device = load_catalog(catalog_path).host.device
    origin = pd.Timestamp("2026-11-25T10:00:00")
    rows = [{"forecast_time": origin + pd.Timedelta(minutes=5), "device": device, "protocol": p, "origin_ts": origin,
             "target_ts": origin + pd.Timedelta(hours=h), "horizon_hours": h, "value": 0.01, "lower_80": 0.008, "upper_80": 0.012,
             "lower_95": 0.006, "upper_95": 0.014, "model_version": None, "source": "mstl", "reason": "benchmark", "below_target": False}
            for p in protocols for h in range(1, 25)]
    with duckdb.connect(str(data_dir / "earnopt.duckdb")) as conn:
        ensure_forecasts_table(conn)
        write_forecasts(conn, pd.DataFrame(rows))


def run_open_loop(args: argparse.Namespace) -> int:
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="earnopt-api-open-") as tmp:
        data_dir, catalog, how = prepare_data_dir(Path(tmp), protocols)
        if data_dir != Path(tmp) / "data":  # never write benchmark forecasts into a real warehouse
            shutil.copytree(data_dir, Path(tmp) / "data", dirs_exist_ok=True)
            data_dir = Path(tmp) / "data"
        seed_forecasts(data_dir, catalog, protocols)
        pool = unique_payloads(catalog, protocols, int(max(rates) * 1.5 ** 4 * args.rate_duration) + 10)
        print(f"model: {how}; protocols {', '.join(protocols)}; {len(pool)} unique bodies of {len(pool[0][1]) / 1024:.0f} KiB; "
              f"cpu cores {os.cpu_count()}; httpx open-loop generator on the same machine; "
              f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        server = Server(data_dir, catalog, 0, protocols)
        try:
            print(f"server (cache off) ready in {server.wait_ready():.1f}s at {server.url}; models loaded for {', '.join(server.loaded)}")
            if server.loaded != protocols:
                pool = [(p, body) for p, body in pool if p in server.loaded]
                print(f"no promoted model for {', '.join(sorted(set(protocols) - set(server.loaded)))}: its requests are left out")
            cursor = 0

            def predict_requests(n: int) -> list[tuple[str, str, bytes | None]]:
                nonlocal cursor
                chosen = [pool[(cursor + i) % len(pool)] for i in range(n)]
                cursor += n  # every request of the whole run has its own body (until the pool wraps)
                return [("POST", f"/predict/earnings/{p}", body) for p, body in chosen]

            sweep(server, "POST /predict/earnings/{protocol}, unique bodies, protocols mixed, cache off", predict_requests, rates, args.rate_duration)
            sweep(server, "GET /forecasts/{protocol} (stored rows), protocols mixed",
                  lambda n: [("GET", f"/forecasts/{protocols[i % len(protocols)]}", None) for i in range(n)], rates, args.rate_duration)
        finally:
            server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--windows", type=int, default=24, help="distinct telemetry windows the clients rotate through")
    parser.add_argument("--uncached-duration", type=float, default=10.0, help="0 skips phase 2")
    parser.add_argument("--load", choices=("auto", "wrk", "httpx"), default="auto", help="load generator (auto: wrk if installed)")
    parser.add_argument("--open-loop", action="store_true", help="Poisson arrivals at fixed rates, unique bodies, mixed protocols")
    parser.add_argument("--rates", default="10,25,50", help="open loop: req/s to measure (then x1.5 until p99 > 500 ms)")
    parser.add_argument("--rate-duration", type=float, default=15.0, help="open loop: seconds per rate")
    parser.add_argument("--protocols", default="honeygain,grass,earnapp", help="open loop: protocols mixed round-robin")
    args = parser.parse_args()
    if args.open_loop:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return run_open_loop(args)
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    if args.load == "wrk" and shutil.which("wrk") is None:
        parser.error("--load wrk: wrk is not installed (apt-get install wrk)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="earnopt-api-bench-") as tmp:
        data_dir, catalog, how = prepare_data_dir(Path(tmp))
        bodies = payloads(catalog, args.windows)
        print(f"model: {how}; payload {len(bodies[0]) / 1024:.0f} KiB ({10 * 24} hourly rows), {len(bodies)} distinct windows; "
              f"cpu cores {os.cpu_count()}; load generator {'wrk' if use_wrk else 'httpx'} on the same machine; "
              f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        phases = [("phase 1: predict/earnings, prediction cache on (2048)", 2048, args.duration, 50.0)]
        if args.uncached_duration > 0:
            phases.append(("phase 2: predict/earnings, cache off (every request runs the LSTM)", 0, args.uncached_duration, 500.0))
        for title, cache_size, duration, target in phases:
            server = Server(data_dir, catalog, cache_size)
            try:
                ready = server.wait_ready()
                print(f"\nserver ready in {ready:.1f}s at {server.url}")
                if use_wrk:
                    result = drive_wrk(server.url, bodies, args.clients, duration, Path(tmp))
                    single = drive_wrk(server.url, bodies, 1, 3.0, Path(tmp))
                else:
                    result = asyncio.run(drive(server.url, bodies, args.clients, duration))
                    single = asyncio.run(drive(server.url, bodies, 1, 3.0))
            finally:
                server.stop()
            show = report_wrk if use_wrk else report
            show(title, result, args.clients, target)
            show("  same server, 1 client for 3 s (latency without queueing)", single, 1, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
