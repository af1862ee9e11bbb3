"""Test helpers (not tests): a real headless Chromium driven over the DevTools protocol, and
apt installs of the programs the tests drive (chromium, tmux) where they are missing.

    with Chromium() as page:
        page.open("file:///.../index.html")
        page.evaluate("document.images.length"); page.errors(); page.screenshot(path)

The protocol runs over a pipe (``--remote-debugging-pipe``: the browser reads fd 3 and writes
fd 4, NUL-separated JSON), so no port and no websocket library are needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def ensure_installed(program: str, package: str) -> str:
    """The path of ``program``, installing Debian's ``package`` through apt when missing."""
    found = shutil.which(program)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{program} is missing; install it (apt-get install {package})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr}")
    found = shutil.which(program)
    if not found:
        raise RuntimeError(f"apt installed {package} but {program} is still not on PATH")
    return found


class Chromium:
    """One headless Chromium with one page; runs as root (--no-sandbox)."""

    def __init__(self, width: int = 1250, height: int = 900) -> None:
        exe = ensure_installed("chromium", "chromium")
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:  # in the child: the protocol's fds 3 (in) and 4 (out)
            read_end = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)  # clear of 3 and 4
            write_end = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer, self.events, self.last_id = b"", [], 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", page=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, page: bool = False, timeout: float = 60, **params: Any) -> dict:
        """Send one protocol command (to the page's session if ``page``) and wait for its answer."""
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if page:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def open(self, url: str, timeout: float = 60) -> None:
        """Load ``url`` as a new document and wait for its load event (every image fetched or
        failed). The page goes to about:blank first: a URL that differs from the page's only
        in its fragment would otherwise be a same-document navigation, which a redirect that
        the last page had under way (a single-page app's) can undo."""
        deadline = time.monotonic() + timeout
        for target in ("about:blank", url):
            seen = len(self.events)
            self.call("Page.navigate", page=True, url=target)
            while not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
                self.events.append(self._read(deadline))

    def evaluate(self, expression: str) -> Any:
        found = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True)
        return found["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        out = []
        for event in self.events:
            method, p = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out

    def screenshot(self, path: Path) -> None:
        """The whole page, as PNG."""
        size = self.call("Page.getLayoutMetrics", page=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", page=True, format="png", clip=clip, captureBeyondViewport=True
        )
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select(
                [self._from_child], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (it exited)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)
