"""Shared helpers of the anomaly tests: synthetic series and a real local HTTP receiver."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd

from earnopt_assets.catalog import ProtocolSpec

TEST_SPEC = ProtocolSpec(name="testapp", kind="bandwidth", cpu_cores=1.0, memory_gb=1.0, bandwidth_mbps=10.0, storage_gb=1.0)
START = pd.Timestamp("2026-01-01 00:00")


def flat_series(hours: int = 9 * 24, protocol: str = "testapp", device: str = "local", earnings: float = 1.0,
                allocation: float = 1.0, spec: ProtocolSpec = TEST_SPEC, latency: float = 100.0) -> pd.DataFrame:
    """A perfectly steady series: usage exactly at the allocated share, no failures."""
    ts = pd.date_range(START, periods=hours, freq="h")
    return pd.DataFrame(
        {
            "device": device,
            "protocol": protocol,
            "ts": ts,
            "earnings_usd": earnings,
            "cpu_cores": allocation * spec.cpu_cores,
            "memory_gb": allocation * spec.memory_gb,
            "bandwidth_mbps": allocation * spec.bandwidth_mbps,
            "storage_gb": allocation * spec.storage_gb,
            "allocation": allocation,
            "connection_failures": np.zeros(hours, dtype=np.int64),
            "latency_ms": latency,
        }
    )


@dataclass
class Receiver:
    """A local HTTP server answering from a script: 200, 500 or "hang" (never answers in time)."""

    script: list = field(default_factory=list)
    default: object = 200
    requests: list = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                action = receiver.script.pop(0) if receiver.script else receiver.default
                if action == "hang":
                    receiver.release.wait(10)
                    return
                self.send_response(int(action))
                payload = b"ok" if int(action) < 300 else b"boom"
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"

    def json_bodies(self) -> list:
        return [json.loads(r["body"]) for r in self.requests]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
