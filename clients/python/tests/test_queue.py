"""The logger with a queue URL: NATS JetStream against the machine's real nats-server (started
by scripts/nats-test-setup.sh if it is down) and a real `mlaudit serve --ingest`; Kafka against
librdkafka's mock cluster (no Kafka broker can be installed on the test machine)."""

import os
import subprocess
import threading
import time
import uuid

import pytest

from server import REPO, Server

NATS = "nats://127.0.0.1:4222"


@pytest.fixture(scope="module", autouse=True)
def nats_server():
    subprocess.run(["bash", os.path.join(REPO, "scripts", "nats-test-setup.sh")], check=True)


def _logger(url, spool, **kw):
    from mlaudit import AuditLogger
    kw.setdefault("actor", {"id": "scorer", "type": "service"})
    return AuditLogger(url, spool_dir=str(spool), register_atexit=False, linger_s=0.01,
                       backoff_cap_s=0.2, max_attempts=2, **kw)


def _wait(what, limit, done):
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ready(server):
    """Whether /readyz answers 200 (503 while the queue consumer is not connected)."""
    try:
        return server.get("/readyz", token=None)["status"] == "ready"
    except OSError:  # urllib's HTTPError for the 503
        return False


def test_nats_events_reach_the_log_once_and_spool_until_the_stream_exists(tmp_path):
    tag = uuid.uuid4().hex[:12]
    url = f"{NATS}/PY_{tag}?subject=py.{tag}.events"
    (tmp_path / "data").mkdir()
    server = Server(str(tmp_path / "data"))
    logger = _logger(url, tmp_path / "spool", timeout_s=1.0)
    try:
        # No stream takes the subject yet: nothing acknowledges, the events are spooled.
        for n in range(30):
            logger.log({"kind": "x.py_queued", "attributes": {"n": n}})
        assert not logger.flush(timeout=4)
        assert logger.stats()["spooled"] >= 30
        # The server's consumer creates the stream; the spool drains into it.
        server.start("--ingest", url)
        for n in range(30, 40):
            logger.log({"kind": "x.py_queued", "attributes": {"n": n}})
        _wait("40 events in the log", 60,
              lambda: len(server.query(kind="x.py_queued")) >= 40)
        assert logger.flush(timeout=20)
        assert logger.close(timeout=10)
        assert logger.stats()["dropped"] == 0
        # close() released the connection and the publishing loop's thread.
        assert not [t for t in threading.enumerate() if t.name == "mlaudit-nats"]
        events = server.query(kind="x.py_queued")
        assert sorted(e["event"]["attributes"]["n"] for e in events) == list(range(40))
        assert {e["event"]["principal"] for e in events} == {f"nats:PY_{tag}"}
    finally:
        server.stop()


def test_kafka_events_are_acknowledged_by_the_mock_cluster(tmp_path):
    pytest.importorskip("confluent_kafka")
    logger = _logger("kafka://127.0.0.1:1/audit.events", tmp_path / "spool", timeout_s=10.0,
                     kafka_config={"test.mock.num.brokers": 3})
    for n in range(20):
        logger.log({"kind": "x.py_queued", "attributes": {"n": n}})
    assert logger.flush(timeout=30)
    assert logger.close(timeout=10)
    stats = logger.stats()
    assert (stats["sent"], stats["dropped"]) == (20, 0), stats


def test_kafka_unreachable_spools(tmp_path):
    pytest.importorskip("confluent_kafka")
    logger = _logger("kafka://127.0.0.1:1/audit.events", tmp_path / "spool", timeout_s=1.0)
    for n in range(5):
        logger.log({"kind": "x.py_queued", "attributes": {"n": n}})
    assert not logger.flush(timeout=6)
    logger.close(timeout=1)
    stats = logger.stats()
    assert stats["sent"] == 0 and stats["dropped"] == 0, stats
    assert stats["spooled"] >= 5, stats


def test_nats_with_process_delivery(tmp_path):
    tag = uuid.uuid4().hex[:12]
    url = f"{NATS}/PYP_{tag}?subject=pyp.{tag}.events"
    (tmp_path / "data").mkdir()
    server = Server(str(tmp_path / "data")).start("--ingest", url)
    try:
        _wait("the consumer", 20, lambda: _ready(server))
        logger = _logger(url, tmp_path / "spool", timeout_s=5.0, delivery="process")
        for n in range(10):
            logger.log({"kind": "x.py_process", "attributes": {"n": n}})
        assert logger.flush(timeout=30)
        assert logger.close(timeout=10)
        _wait("10 events", 30, lambda: len(server.query(kind="x.py_process")) == 10)
    finally:
        server.stop()
