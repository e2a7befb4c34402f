"""Headless Chromium screenshots for the viewer / GLB tests (Chrome DevTools Protocol over a websocket).

`chromium_path()` finds Debian's `chromium` (or Chrome); `ensure_chromium()` installs it with apt-get
when it is missing and we are root (CI), else returns None so tests can skip with the reason.
`screenshot(url, ready_js)` opens the page with software WebGL (SwiftShader), waits until `ready_js`
evaluates true (and `settle_s` more), and returns the PNG as an (H, W, 3) uint8 array.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import numpy as np

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """(path, reason): the browser, installing Debian's `chromium` with apt-get when missing (root only)."""
    found = chromium_path()
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed (run `make browser` or `apt-get install chromium`)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            return None, f"could not install chromium: {' '.join(cmd)} failed: {result.stderr.strip()[-200:]}"
    found = chromium_path()
    return found, "" if found else "chromium still not on PATH after apt-get install"


class Browser:
    """One headless Chromium with a DevTools websocket to its first page."""

    def __init__(self, binary: str, size: tuple[int, int] = (1280, 800)) -> None:
        self.profile = tempfile.mkdtemp(prefix="st4r-chromium-")
        args = [binary, "--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
                "--disable-dev-shm-usage", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist", "--enable-webgl", "--remote-debugging-port=0",
                "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                f"--window-size={size[0]},{size[1]}", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.time() + 30
        while time.time() < deadline and port is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                port = int(found.group(1))
        if port is None:
            self.close()
            raise RuntimeError("chromium did not start (no DevTools port)")
        pages = []
        while not pages and time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                pages = [p for p in json.load(response) if p.get("type") == "page"]
            time.sleep(0.1)
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, url: str, ready_js: str = "true", timeout_s: float = 60, settle_s: float = 1.0
                   ) -> np.ndarray:
        from PIL import Image

        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                if self.evaluate(ready_js):
                    break
            except RuntimeError:
                pass
            time.sleep(0.25)
        else:
            raise TimeoutError(f"page never became ready: {ready_js}")
        time.sleep(settle_s)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
