"""Headless Debian chromium driven over the Chrome DevTools Protocol (not a test module).

Used by the browser test and ``scripts/screenshots.py``. Plain websockets instead of Selenium/Playwright:
no driver binary and no browser download, only ``/usr/bin/chromium`` (``scripts/install_chromium.sh``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
# Text the Dagster UI shows while it is still loading; a page showing only this is not done.
LOADING_MARKERS = ("Loading", "loading…", "Loading…")


def chromium_binary() -> str | None:
    """``$CHROMIUM`` or the Debian package's binary, if installed."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class PageTimeout(AssertionError):
    """The page did not show the expected content in time (the message says what it showed)."""


class Page:
    """One browser tab: navigate, wait for text, read text, capture a PNG."""

    def __init__(self, socket: ClientConnection, width: int, height: int):
        self._socket = socket
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, expected: Sequence[str], timeout_s: float = 45, settle_s: float = 1.0) -> str:
        """Wait until the page shows every string of ``expected`` and no loading indicator; returns the text."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            spinning = self.evaluate("document.querySelectorAll('[class*=\"Spinner\"], [role=\"progressbar\"]').length") or 0
            missing = [item for item in expected if item not in text]
            if not missing and not spinning:
                time.sleep(settle_s)  # let charts and the graph layout finish drawing
                return self.text()
            time.sleep(0.5)
        missing = [item for item in expected if item not in text]
        raise PageTimeout(f"after {timeout_s:.0f}s the page lacks {missing}; it shows: {text[:1500]!r}")

    def click_button(self, label: str) -> bool:
        """Click the first button whose text is ``label``; False when there is none."""
        return bool(self.evaluate(
            "(() => { const b = [...document.querySelectorAll('button')].find(e => e.innerText.trim() === "
            + json.dumps(label) + "); if (b) { b.click(); return true; } return false; })()"
        ))

    def press(self, key: str, code: str, key_code: int, *, alt: bool = False) -> None:
        """A real key press (keyDown + keyUp), e.g. the UI's keyboard shortcuts."""
        event = {"key": key, "code": code, "windowsVirtualKeyCode": key_code, "modifiers": 1 if alt else 0}
        self.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **event})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **event})

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def headless_chromium(width: int = 1600, height: int = 1000, timeout_s: float = 30) -> Iterator[Page]:
    """Start headless chromium with a throwaway profile; yields a :class:`Page`; stops it afterwards."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium is not installed: run scripts/install_chromium.sh")
    profile = Path(tempfile.mkdtemp(prefix="earnopt-chromium-"))
    log = (profile.parent / f"{profile.name}.log").open("wb")
    process = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        with connect(page_url, max_size=64 * 1024 * 1024, open_timeout=timeout_s) as socket:
            yield Page(socket, width, height)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
        Path(log.name).unlink(missing_ok=True)
