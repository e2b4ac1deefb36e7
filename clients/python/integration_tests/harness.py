"""Helpers of the integration tests: a real `mlaudit serve` started with a config file, raw
HTTP requests, polling, and the `mlaudit import` CLI. Built on ../tests/server.py."""

from __future__ import annotations

import gzip
import http.client
import importlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_DIR = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CLIENT_DIR, "tests"))

from server import Server, free_port, mlaudit_bin, run_cli  # noqa: E402,F401

import pytest  # noqa: E402


def need(module: str):
    """Imports ``module`` (a tool under test), or skips the calling module without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("MLAUDIT_INTEGRATIONS_REQUIRED") == "1":
            raise
        pytest.skip(f"{module} is not installed ({e}); see integration_tests/requirements.txt",
                    allow_module_level=True)


class ConfiguredServer(Server):
    """A `Server` (data directory, writer and reader tokens) whose `mlaudit serve` runs with
    `--config <data>/../mlaudit.toml` holding ``config``."""

    def __init__(self, data: str, config: str = "", env: Optional[Mapping[str, str]] = None,
                 origin: str = "integrations.test") -> None:
        os.makedirs(data, exist_ok=True)
        super().__init__(data, origin=origin)
        self.config_path = os.path.join(os.path.dirname(data), "mlaudit.toml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.env = dict(os.environ, **(env or {}))
        self.log_path = os.path.join(os.path.dirname(data), "serve.log")

    def start(self) -> "ConfiguredServer":
        assert self.proc is None
        self.proc = subprocess.Popen(
            [mlaudit_bin(), "--data", self.data, "serve", "--listen", f"127.0.0.1:{self.port}",
             "--config", self.config_path],
            stdout=self._log, stderr=self._log, env=self.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlaudit serve exited {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mlaudit serve did not become healthy in 20 s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # -- reads -----------------------------------------------------------------------------

    def events(self, **filters: Any) -> List[Dict[str, Any]]:
        """Every stored event matching the filters (the event objects, each with its seq)."""
        return [item["event"] for item in self.query(**filters)]

    def wait_events(self, predicate: Callable[[Dict[str, Any]], bool], count: int = 1,
                    timeout: float = 30.0, **filters: Any) -> List[Dict[str, Any]]:
        """Polls until at least ``count`` stored events match ``filters`` and ``predicate``;
        returns them (fails the test on timeout, showing what is there)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(**filters) if predicate(e)]
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(found) >= count, (
            f"expected {count} events matching {filters} within {timeout} s, found "
            f"{len(found)}: {json.dumps(found)[:3000]}")
        return found

    def count(self) -> int:
        """How many events the log holds, leaving out the `governance.audit_accessed` that
        the server writes for every read (these very queries among them)."""
        return sum(1 for item in self.query()
                   if item["event"]["kind"] != "governance.audit_accessed")

    def lineage(self, event_id: str) -> Dict[str, Any]:
        return self.get(f"/v1/lineage/{event_id}")


def request(method: str, url: str, body: Optional[bytes] = None,
            headers: Optional[Mapping[str, str]] = None,
            timeout: float = 30.0) -> Tuple[int, Any, Dict[str, str]]:
    """One HTTP request, sent as given (http.client: no header is added, not even a
    Content-Type): (status, the JSON body or the text, headers), for any status."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=dict(headers or {}))
        r = conn.getresponse()
        status, raw, hdrs = r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = raw.decode("utf-8", "replace")
    return status, doc, hdrs


def post_json(url: str, value: Any, token: Optional[str] = None,
              headers: Optional[Mapping[str, str]] = None, gzip_body: bool = False,
              raw: Optional[bytes] = None) -> Tuple[int, Any]:
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    body = raw if raw is not None else json.dumps(value).encode()
    if gzip_body:
        body = gzip.compress(body)
        h["Content-Encoding"] = "gzip"
    status, doc, _ = request("POST", url, body, h)
    return status, doc


def error_code(doc: Any) -> Optional[str]:
    return doc.get("error", {}).get("code") if isinstance(doc, dict) else None


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- `mlaudit import` --------------------------------------------------------------------

SUMMARY = re.compile(r"imported: (\d+) new events?, (\d+) already present")


class ImportResult:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.proc = proc
        self.stdout, self.stderr, self.returncode = proc.stdout, proc.stderr, proc.returncode
        m = SUMMARY.search(proc.stdout or "")
        self.new = int(m.group(1)) if m else None
        self.present = int(m.group(2)) if m else None

    def __repr__(self) -> str:
        return (f"ImportResult(rc={self.returncode}, stdout={self.stdout[-2000:]!r}, "
                f"stderr={self.stderr[-2000:]!r})")


def mlaudit_import(data: str, *args: str, timeout: float = 120.0,
                   env: Optional[Mapping[str, str]] = None) -> ImportResult:
    """`mlaudit --data DATA import ARGS...` (no server may run on DATA meanwhile); the test
    fails unless it exits 0 with its summary line on stdout."""
    proc = subprocess.run([mlaudit_bin(), "--data", data, "import", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    result = ImportResult(proc)
    assert proc.returncode == 0 and result.new is not None, (
        f"`mlaudit import {' '.join(args)}` did not succeed with an "
        f"'imported: N new events, M already present' summary on stdout: {result!r}")
    return result


def by_kind(events: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for e in events:
        out.setdefault(e["kind"], []).append(e)
    return out
