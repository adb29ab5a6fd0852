"""Simulated CashPilot telemetry in a real local Prometheus: for the tests and ``benchmarks/ingest.py``.

:func:`render_openmetrics` turns simulator rows (``earnopt_assets.simulator``) into CashPilot-named
OpenMetrics samples, one per hour boundary ``t`` carrying hour ``t - 1 h``:

- ``cashpilot_earnings_balance_usd{platform}`` = the USD earned since the last payout, up to ``t``;
  a payout at boundary ``p`` pays the balance out just after ``p - 1 h``, so the sample at ``p`` holds
  only hour ``p - 1 h``'s earnings (a drop = reset, and the hour still reconciles exactly);
- ``cashpilot_container_cpu_percent{service,node}`` = cores x 100; ``cashpilot_container_memory_mb`` = GB x 1024;
- ``cashpilot_health_score{service}`` = 100 minus 10 per connection failure.

Boundaries in ``gaps`` get no sample (a scrape gap). :class:`LocalPrometheus` backfills such a file with
``promtool tsdb create-blocks-from openmetrics`` and runs Debian's ``prometheus`` on a free loopback port
(optionally scraping live exporters), stopping it on exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

HOUR = pd.Timedelta(hours=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cashpilot_balance(earnings: np.ndarray, payout_at: Iterable[int] = ()) -> np.ndarray:
    """Balance at boundaries 1..n (after hours 0..n-1) with payouts: a payout at boundary ``p`` (index
    into hours) leaves only hour ``p - 1``'s earnings. Boundary 0 holds 0."""
    payouts = set(payout_at)
    balance, level = [0.0], 0.0
    for hour, earned in enumerate(earnings, start=1):
        level = earned if hour in payouts else level + earned
        balance.append(level)
    return np.asarray(balance)


def render_openmetrics(
    telemetry: pd.DataFrame,
    platforms: Mapping[str, str],
    node: str = "node-1",
    payouts: Mapping[str, Iterable[int]] | None = None,
    gaps: Mapping[str, Iterable[int]] | None = None,
    start_balance: float = 0.0,
) -> str:
    """OpenMetrics text for the simulator rows of the protocols in ``platforms`` (protocol -> CashPilot
    platform/service name). ``payouts``/``gaps``: boundary indexes (1 = end of the first hour)."""
    families: dict[str, list[str]] = {name: [] for name in (
        "cashpilot_earnings_balance_usd", "cashpilot_container_cpu_percent", "cashpilot_container_memory_mb", "cashpilot_health_score")}
    for protocol, name in platforms.items():
        rows = telemetry.loc[telemetry["protocol"] == protocol].sort_values("ts")
        if rows.empty:
            continue
        earnings = rows["earnings_usd"].to_numpy(float)
        balance = cashpilot_balance(earnings, (payouts or {}).get(protocol, ())) + start_balance
        skip = set((gaps or {}).get(protocol, ()))
        first = pd.Timestamp(rows["ts"].iloc[0])
        cpu = np.concatenate([[rows["cpu_cores"].iloc[0]], rows["cpu_cores"].to_numpy(float)])
        memory = np.concatenate([[rows["memory_gb"].iloc[0]], rows["memory_gb"].to_numpy(float)])
        failures = np.concatenate([[0], rows["connection_failures"].to_numpy(int)])
        for k in range(len(balance)):
            if k in skip:
                continue
            unix = int((first + k * HOUR).timestamp())
            families["cashpilot_earnings_balance_usd"].append(f'cashpilot_earnings_balance_usd{{platform="{name}"}} {float(balance[k])!r} {unix}')
            families["cashpilot_container_cpu_percent"].append(f'cashpilot_container_cpu_percent{{service="{name}",node="{node}"}} {float(cpu[k]) * 100!r} {unix}')
            families["cashpilot_container_memory_mb"].append(f'cashpilot_container_memory_mb{{service="{name}",node="{node}"}} {float(memory[k]) * 1024!r} {unix}')
            families["cashpilot_health_score"].append(f'cashpilot_health_score{{service="{name}"}} {max(0, 100 - 10 * int(failures[k]))} {unix}')
    lines: list[str] = []
    for family, samples in families.items():
        lines.append(f"# TYPE {family} gauge")
        lines.extend(samples)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def binaries_available() -> bool:
    return shutil.which("prometheus") is not None and shutil.which("promtool") is not None


class LocalPrometheus:
    """A real Prometheus on ``127.0.0.1:<free port>`` over a backfilled TSDB (and live scrape targets)."""

    def __init__(self, openmetrics: str | None = None, scrape_targets: Iterable[str] = (), workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="earnopt-prom-"))
        self.data = self.workdir / "tsdb"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.backfill_seconds = 0.0
        if openmetrics is not None:
            source = self.workdir / "backfill.om"
            source.write_text(openmetrics)
            started = time.monotonic()
            done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.data)],
                           check=False, capture_output=True, text=True)
            if done.returncode != 0:
                if workdir is None:
                    shutil.rmtree(self.workdir, ignore_errors=True)  # nothing to keep from a failed backfill
                raise RuntimeError(f"promtool create-blocks-from openmetrics failed: {(done.stderr or done.stdout)[-2000:]}")
            self.backfill_seconds = time.monotonic() - started
        targets = list(scrape_targets)
        config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        if targets:
            config += "scrape_configs:\n  - job_name: exporter\n    scrape_interval: 1s\n    static_configs:\n      - targets: [" + ", ".join(f'"{t}"' for t in targets) + "]\n"
        (self.workdir / "prometheus.yml").write_text(config)

    def start(self, timeout_s: float = 30.0) -> LocalPrometheus:
        with open(self.workdir / "prometheus.log", "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=3650d", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus on {self.url} not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def wait_for(self, query: str, timeout_s: float = 20.0) -> None:
        """Until the instant ``query`` returns a series (a live target was scraped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2.0).json()
            if body.get("data", {}).get("result"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"no sample for {query} after {timeout_s} s")

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
