import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# The package under test is the source next to these tests, installed or not.
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from server import Server  # noqa: E402


@pytest.fixture
def server(tmp_path):
    """A fresh data directory with a running `mlaudit serve` (stopped afterwards)."""
    (tmp_path / "data").mkdir()
    s = Server(str(tmp_path / "data")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a module's tests that only add events (each test uses its own names)."""
    d = tmp_path_factory.mktemp("shared")
    s = Server(str(d / "data")).start()
    yield s
    s.stop()


@pytest.fixture
def offline_server(tmp_path):
    """A data directory and tokens, with the server not started (port chosen, unused)."""
    (tmp_path / "data").mkdir()
    s = Server(str(tmp_path / "data"))
    yield s
    s.stop()


@pytest.fixture
def fake():
    """A fake server in this process (tests/fakelog.py), for answers a real one never gives."""
    from fakelog import FakeLog
    f = FakeLog().start()
    yield f
    f.stop()


@pytest.fixture(params=["thread", "process"])
def delivery(request):
    """Both deliveries: a sender thread in this process, or a child process (the agent)."""
    return request.param


def make_logger(server, spool_dir, **kw):
    from mlaudit import AuditLogger
    kw.setdefault("actor", {"id": "test-suite", "type": "service"})
    kw.setdefault("register_atexit", False)
    kw.setdefault("backoff_cap_s", 0.2)
    kw.setdefault("timeout_s", 5.0)
    return AuditLogger(server.url, server.writer, str(spool_dir), **kw)
