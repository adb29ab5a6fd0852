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


def prepare_data_dir(work: Path) -> tuple[Path, Path, str]:
    """(data_dir, catalog, how): the real data dir if it has a model, else a tmp one with a fresh model."""
    from earnopt_assets.settings import default_catalog_path, default_data_dir

    real = default_data_dir()
    if (real / "models" / PROTOCOL / "CURRENT").exists():
        return real, default_catalog_path(), f"real data dir {real}"
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.ingestion.features import build_feature_table
    from earnopt_assets.forecasting.training import TrainingSettings, train_protocol
    from earnopt_assets.simulator import simulate

    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    catalog_path = data_dir / "catalog.yaml"
    shutil.copy(REPO / "data" / "catalog.yaml", catalog_path)
    catalog = load_catalog(catalog_path)
    telemetry = simulate(catalog, days=30, seed=3, end="2026-11-20T23:00:00", protocols=[PROTOCOL], inject_anomalies=False).telemetry
    features, _ = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    started = time.perf_counter()
    train_protocol(features, PROTOCOL, data_dir / "models", TrainingSettings(epochs=2, min_holdout_days=3),
                   timezone=catalog.host.timezone, host_totals=catalog.host.totals())
    return data_dir, catalog_path, f"tmp data dir, LSTM 128/64 trained in {time.perf_counter() - started:.0f}s"


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
    def __init__(self, data_dir: Path, catalog: Path, cache_size: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EARNOPT_DATA_DIR": str(data_dir), "EARNOPT_CATALOG": str(catalog),
               "EARNOPT_PREDICTION_CACHE_SIZE": str(cache_size), "EARNOPT_LOG_LEVEL": "warning", "TF_CPP_MIN_LOG_LEVEL": "2"}
        # stderr to a file, not a pipe: an undrained pipe fills up (client-disconnect tracebacks when the
        # load stops) and blocks the server.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "earnopt_assets.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=self.log, text=True,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read()[-4000:]}")
            try:
                models = httpx.get(self.url + "/models", timeout=2).json()
                if any(m["protocol"] == PROTOCOL and m["loaded"] for m in models["models"]):
                    return time.monotonic() - started
                raise RuntimeError(f"{PROTOCOL} model not loaded: {models}")
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
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRK ")), None)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--windows", type=int, default=24, help="distinct telemetry windows the clients rotate through")
    parser.add_argument("--uncached-duration", type=float, default=10.0, help="0 skips phase 2")
    parser.add_argument("--load", choices=("auto", "wrk", "httpx"), default="auto", help="load generator (auto: wrk if installed)")
    args = parser.parse_args()
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
