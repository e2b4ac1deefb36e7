"""Start and stop real `mlaudit serve` processes for the tests (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
CLIENT_DIR = os.path.join(REPO, "clients", "python")


def mlaudit_bin() -> str:
    """``$MLAUDIT_BIN``, else <repo>/target/release/mlaudit, else target/debug/mlaudit."""
    env = os.environ.get("MLAUDIT_BIN")
    if env:
        return env
    for p in ("target/release/mlaudit", "target/debug/mlaudit"):
        path = os.path.join(REPO, p)
        if os.path.exists(path):
            return path
    raise RuntimeError("no mlaudit binary: set MLAUDIT_BIN or build target/release/mlaudit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(data: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([mlaudit_bin(), "--data", data, *args], capture_output=True, text=True,
                       timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"mlaudit {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


class Server:
    """One data directory, its tokens, and (while running) one `mlaudit serve` process."""

    def __init__(self, data: str, origin: str = "test.example") -> None:
        self.data = data
        out = run_cli(data, "init", "--origin", origin).stdout
        self.verifier_key = open(os.path.join(data, "key", "verifier.key")).read().strip()
        assert self.verifier_key in out
        self.writer = self._token("writer", "w")
        self.reader = self._token("reader", "r")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self._log = open(os.path.join(os.path.dirname(data), "serve.log"), "ab")

    def _token(self, role: str, name: str) -> str:
        return run_cli(self.data, "token", "create", "--role", role, "--name", name) \
            .stdout.strip().splitlines()[-1]

    def start(self, *extra: str) -> "Server":
        assert self.proc is None
        self.proc = subprocess.Popen([mlaudit_bin(), "--data", self.data, "serve", "--listen",
                                      f"127.0.0.1:{self.port}", *extra],
                                     stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlaudit serve exited {self.proc.returncode}; see serve.log")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("mlaudit serve did not become healthy in 20 s")

    def stop(self) -> None:
        """SIGTERM: finish in-flight requests, close cleanly."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: an abrupt crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    # -- reads with the reader token ------------------------------------------------------

    def get(self, path: str, token: Optional[str] = "reader") -> Any:
        req = urllib.request.Request(self.url + path)
        if token == "reader":
            req.add_header("Authorization", f"Bearer {self.reader}")
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def query(self, **params: Any) -> list:
        """Every stored event matching the filters, in seq order (follows cursors)."""
        out, cursor = [], None
        while True:
            q = dict(params, limit=1000)
            if cursor:
                q["cursor"] = cursor
            page = self.get("/v1/events?" + urllib.parse.urlencode(q))
            out.extend(page["events"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def post(self, events: list, token: Optional[str] = None) -> tuple:
        req = urllib.request.Request(self.url + "/v1/events", data=json.dumps(events).encode(),
                                     method="POST", headers={
                                         "Content-Type": "application/json",
                                         "Authorization": f"Bearer {token or self.writer}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


import urllib.parse  # noqa: E402  (used by Server.query)
