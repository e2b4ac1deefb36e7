"""Delivery against real `mlaudit serve` processes: exactly once, order across outages,
spooling instead of blocking, spool hand-over between processes, torn tails, limits."""

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import make_logger
from mlaudit import AuditLogger, LoggerClosedError, SpoolInUseError
from server import CLIENT_DIR


def seq_of(events, kind):
    """The ``i`` attribute of each stored event of ``kind``, in server seq order."""
    return [e["event"]["attributes"]["i"] for e in events if e["event"]["kind"] == kind]


def test_delivers_in_order_with_time_id_and_actor(server, tmp_path, delivery):
    lg = make_logger(server, tmp_path / "spool", delivery=delivery)
    for i in range(1200):
        lg.log({"kind": "x.basic", "attributes": {"i": i}})
    assert lg.flush(30) is True
    st = lg.stats()
    assert (st["sent"], st["spooled"], st["dropped"], st["rejected"]) == (1200, 0, 0, 0)
    events = server.query(kind="x.basic")
    assert seq_of(events, "x.basic") == list(range(1200))
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    ev = events[0]["event"]
    assert ev["actor"] == {"id": "test-suite", "type": "service"}
    # (the server shows the entry's time, trailing zeros of the fraction dropped)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", ev["time"]), ev["time"]
    assert len({e["event"]["id"] for e in events}) == 1200
    # The payload is the JSON the SDK sent: time with microseconds, as stamped by log().
    bundle = server.get(f"/v1/proof/inclusion/{ev['id']}")
    sent = json.loads(base64.b64decode(bundle["payload"]))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", sent["time"]), sent
    assert sent["id"] == ev["id"] and sent["attributes"] == {"i": 0}
    assert lg.close() is True
    with pytest.raises(LoggerClosedError):
        lg.log({"kind": "x.basic"})


def test_resend_after_cursor_rollback_is_idempotent(offline_server, tmp_path):
    """Ids are fixed before the first attempt and kept in the spool: replaying a spool that
    was already delivered (as after a crash before the cursor was persisted) yields
    duplicate:true for every event and no second copy."""
    srv, spool = offline_server, tmp_path / "spool"
    lg = make_logger(srv, spool)
    for i in range(300):
        lg.log({"kind": "x.replay", "attributes": {"i": i}})
    assert lg.close(timeout=10) is False  # server down: spooled
    assert lg.stats()["spooled"] == 300
    shutil.copytree(spool, tmp_path / "spool-copy")

    srv.start()
    lg = make_logger(srv, spool)
    assert lg.flush(30) is True
    assert (lg.stats()["sent"], lg.stats()["duplicates"]) == (300, 0)
    lg.close()

    shutil.rmtree(spool)
    shutil.copytree(tmp_path / "spool-copy", spool)  # the cursor rolled back to the start
    lg = make_logger(srv, spool)
    assert lg.flush(30) is True
    assert (lg.stats()["sent"], lg.stats()["duplicates"]) == (300, 300)
    lg.close()
    events = srv.query(kind="x.replay")
    assert seq_of(events, "x.replay") == list(range(300))


def test_server_killed_and_restarted_mid_stream_loses_nothing_keeps_order(offline_server,
                                                                          tmp_path, delivery):
    """One thread logs 3,000 numbered events; the server is SIGKILLed after the 1,000th and
    restarted (same port and data) after the 2,000th. Every event arrives exactly once and
    the server's seq order is the log() order."""
    srv = offline_server
    srv.start()
    lg = make_logger(srv, tmp_path / "spool", batch_size=100, linger_s=0.01, delivery=delivery)
    n = 3000
    for i in range(n):
        lg.log({"kind": "x.order", "attributes": {"i": i}})
        if i % 50 == 49:
            time.sleep(0.005)
        if i == 1000:
            srv.kill()
        if i == 2000:
            time.sleep(0.3)  # let the sender hit the outage
            srv.start()
    assert lg.flush(60) is True
    st = lg.stats()
    lg.close()
    assert st["spooled"] > 0 and st["retried"] > 0, st  # the outage was seen
    assert seq_of(srv.query(kind="x.order"), "x.order") == list(range(n))


def test_full_queue_spools_instead_of_blocking(offline_server, tmp_path, delivery):
    """queue_size=10 and nothing listening: 10,000 log() calls return without waiting for
    the network (a loose bound), everything is spooled, then delivered in order."""
    srv, spool = offline_server, tmp_path / "spool"
    lg = make_logger(srv, spool, queue_size=10, batch_size=5, delivery=delivery)
    t0 = time.monotonic()
    for i in range(10_000):
        lg.log({"kind": "x.full", "attributes": {"i": i}})
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, f"10,000 log() calls took {elapsed:.2f} s with the server down"
    assert lg.close(timeout=10) is False
    st = lg.stats()
    assert (st["spooled"], st["dropped"], st["sent"]) == (10_000, 0, 0)

    srv.start()
    lg = make_logger(srv, spool)
    assert lg.flush(60) is True
    lg.close()
    assert seq_of(srv.query(kind="x.full"), "x.full") == list(range(10_000))


def test_a_later_process_delivers_what_an_earlier_one_left(offline_server, tmp_path, delivery):
    """A child process logs 500 events while the server is down and exits (atexit closes
    the logger). A new logger on the same spool_dir delivers them first, then its own."""
    srv, spool = offline_server, tmp_path / "spool"
    script = textwrap.dedent(f"""
        import mlaudit
        lg = mlaudit.AuditLogger({srv.url!r}, {srv.writer!r}, {str(spool)!r},
                                 actor={{"id": "batch-job", "type": "service"}},
                                 backoff_cap_s=0.2, delivery={delivery!r})
        for i in range(500):
            lg.log({{"kind": "x.handover", "attributes": {{"i": i}}}})
        # no close(): the atexit hook spools what is left
    """)
    env = dict(os.environ, PYTHONPATH=CLIENT_DIR)
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert any(n.startswith("seg-") for n in os.listdir(spool))

    srv.start()
    lg = make_logger(srv, spool, delivery=delivery)
    for i in range(500, 600):
        lg.log({"kind": "x.handover", "attributes": {"i": i}})
    assert lg.flush(30) is True
    lg.close()
    events = srv.query(kind="x.handover")
    assert seq_of(events, "x.handover") == list(range(600))
    assert events[0]["event"]["actor"]["id"] == "batch-job"


@pytest.mark.parametrize("damage", ["cut", "zeros", "garbage"])
def test_torn_spool_tail_is_skipped(offline_server, tmp_path, caplog, damage):
    """A spool whose last record was torn (process died mid-write; the size reached the
    disk before the data; garbage): the intact records are delivered, the torn one is
    skipped with a warning, and new events follow in order."""
    srv, spool = offline_server, tmp_path / "spool"
    lg = make_logger(srv, spool)
    for i in range(100):
        lg.log({"kind": "x.torn", "attributes": {"i": i}})
    lg.close(timeout=10)
    segs = sorted(n for n in os.listdir(spool) if n.startswith("seg-"))
    last = os.path.join(spool, segs[-1])
    size = os.path.getsize(last)
    with open(last, "r+b") as f:
        if damage == "cut":
            f.truncate(size - 5)
        elif damage == "zeros":
            f.seek(size)
            f.write(b"\0" * 64)
        else:
            f.seek(size - 3)
            f.write(b"\xff\xfe\xfd")
    expected = list(range(100)) if damage == "zeros" else list(range(99))

    srv.start()
    caplog.set_level(logging.WARNING, logger="mlaudit")
    lg = make_logger(srv, spool)
    for i in range(100, 110):
        lg.log({"kind": "x.torn", "attributes": {"i": i}})
    assert lg.flush(30) is True
    lg.close()
    assert seq_of(srv.query(kind="x.torn"), "x.torn") == expected + list(range(100, 110))
    assert "torn or damaged record" in caplog.text


def test_spool_limit_drops_loudly(offline_server, tmp_path, caplog):
    srv = offline_server
    caplog.set_level(logging.ERROR, logger="mlaudit")
    lg = make_logger(srv, tmp_path / "spool", queue_size=10, spool_max_bytes=20_000)
    with pytest.warns(RuntimeWarning, match="dropped"):
        for i in range(1000):
            lg.log({"kind": "x.limit", "attributes": {"i": i, "pad": "p" * 100}})
    lg.close(timeout=10)
    st = lg.stats()
    assert st["dropped"] > 0 and st["spooled"] > 0
    assert st["dropped"] + st["spooled"] == 1000
    assert "DROPPED" in caplog.text

    srv.start()
    lg = make_logger(srv, tmp_path / "spool")
    assert lg.flush(30) is True
    lg.close()
    assert len(srv.query(kind="x.limit")) == st["spooled"]


def test_one_logger_per_spool_dir(offline_server, tmp_path, delivery):
    lg = make_logger(offline_server, tmp_path / "spool", delivery=delivery)
    with pytest.raises(SpoolInUseError):
        make_logger(offline_server, tmp_path / "spool", delivery=delivery)
    lg.close(timeout=5)
    make_logger(offline_server, tmp_path / "spool").close(timeout=5)  # released


def test_invalid_events_are_rejected_and_the_rest_delivered(shared_server, tmp_path, caplog):
    """A 422 names the bad indices: those are dropped (counted, logged at error level)
    and the rest of the batch is resent."""
    caplog.set_level(logging.ERROR, logger="mlaudit")
    lg = make_logger(shared_server, tmp_path / "spool", linger_s=0.2)
    bad_id = "00000000-0000-4000-8000-00000000bad1"
    for i in range(20):
        lg.log({"kind": "x.reject", "attributes": {"i": i}})
        if i == 7:
            lg.log({"id": bad_id, "kind": "registry.approval_granted",
                    "subject": {"model": "m", "version": "1"}, "attributes": {"reason": "ok"}})
    assert lg.flush(30) is True
    st = lg.stats()
    lg.close()
    assert (st["rejected"], st["sent"]) == (1, 20)
    assert seq_of(shared_server.query(kind="x.reject"), "x.reject") == list(range(20))
    assert bad_id in caplog.text and "attributes.approver is required" in caplog.text


@pytest.mark.parametrize("token, kind, message", [
    ("mla_not_a_token", "x.auth", "refused the token"),  # the server answers 401
    ("mla_\u200btoken", "x.unsendable", "could not be sent"),  # not Latin-1: never sent
])
def test_a_misconfigured_token_spools_until_a_valid_logger_delivers(server, tmp_path, caplog,
                                                                   token, kind, message):
    """A token the server refuses (401) and one that cannot go in an HTTP header at all are
    configuration errors, logged at error level: the events stay in the spool (never
    dropped), close() returns within its timeout with the sender stopped, and a logger with
    a valid token delivers them."""
    caplog.set_level(logging.ERROR, logger="mlaudit")
    lg = AuditLogger(server.url, token, str(tmp_path / "spool"),
                     actor={"id": "t", "type": "service"}, register_atexit=False,
                     backoff_cap_s=0.2)
    for i in range(50):
        lg.log({"kind": kind, "attributes": {"i": i}})
    assert lg.flush(15) is False
    t0 = time.monotonic()
    assert lg.close(timeout=1) is False
    assert time.monotonic() - t0 < 5 and not lg._thread.is_alive()
    st = lg.stats()
    assert (st["dropped"], st["rejected"], st["sent"], st["spooled"], st["queued"]) == \
        (0, 0, 0, 50, 0)
    assert message in caplog.text

    lg = make_logger(server, tmp_path / "spool")
    assert lg.flush(30) is True
    lg.close()
    assert seq_of(server.query(kind=kind), kind) == list(range(50))


def test_an_error_in_the_sender_spools_what_it_held(offline_server, tmp_path, monkeypatch):
    """An unexpected exception while sending (a bug, not the network) must not keep the
    events the sender took from the queue in memory: they go to the spool, and close()
    stops the sender within its timeout."""
    def broken_post(self, bodies):
        raise RuntimeError("a bug in sending")

    monkeypatch.setattr(AuditLogger, "_post", broken_post)
    lg = make_logger(offline_server, tmp_path / "spool", linger_s=0.01)
    for i in range(10):
        lg.log({"kind": "x.bug", "attributes": {"i": i}})
    assert lg.flush(5) is False
    assert lg.close(timeout=1) is False
    assert not lg._thread.is_alive()
    st = lg.stats()
    assert (st["dropped"], st["sent"], st["spooled"], st["queued"]) == (0, 0, 10, 0)


def test_an_event_that_cannot_be_encoded_is_rejected_and_the_rest_delivered(
        shared_server, tmp_path, monkeypatch, caplog):
    """Encoding is not expected to fail; if it does for one event, that event is reported
    (error log, ``rejected``) and the events taken with it are still delivered."""
    import mlaudit.logger as ml
    real = ml.dumps

    def dumps(ev):
        if ev.get("attributes", {}).get("i") == 3:
            raise RuntimeError("cannot encode this one")
        return real(ev)

    monkeypatch.setattr(ml, "dumps", dumps)
    caplog.set_level(logging.ERROR, logger="mlaudit")
    lg = make_logger(shared_server, tmp_path / "spool")
    for i in range(10):
        lg.log({"kind": "x.unencodable", "attributes": {"i": i}})
    assert lg.flush(30) is True
    lg.close()
    assert seq_of(shared_server.query(kind="x.unencodable"), "x.unencodable") == \
        [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert lg.stats()["rejected"] == 1
    assert "could not be encoded" in caplog.text


def test_log_validates_its_input(offline_server, tmp_path):
    lg = make_logger(offline_server, tmp_path / "spool", actor=None)
    with pytest.raises(ValueError, match="actor"):
        lg.log({"kind": "x.a"})
    with pytest.raises(ValueError, match="kind"):
        lg.log({"actor": {"id": "a", "type": "user"}})
    with pytest.raises(ValueError):
        lg.log(["not", "a", "dict"])
    with pytest.raises(ValueError):
        AuditLogger(offline_server.url, spool_dir=str(tmp_path / "s2"),
                    actor={"id": "a", "type": "robot"}, register_atexit=False)
    lg.close(timeout=5)


def test_flush_is_not_starved_by_other_threads_logging(shared_server, tmp_path):
    """flush() waits for the events logged before it, not for a queue that other threads
    keep filling."""
    import threading
    lg = make_logger(shared_server, tmp_path / "spool")
    stop = threading.Event()

    def chatter():
        i = 0
        while not stop.is_set():
            lg.log({"kind": "x.chatter", "attributes": {"i": i}})
            i += 1
            time.sleep(0.0001)  # a steady few thousand events/s: the queue is never empty

    t = threading.Thread(target=chatter)
    t.start()
    try:
        time.sleep(0.2)
        for i in range(100):
            lg.log({"kind": "x.flush-target", "attributes": {"i": i}})
        assert lg.flush(5) is True  # (loose: it takes a batch or two)
        assert seq_of(shared_server.query(kind="x.flush-target"), "x.flush-target") == \
            list(range(100))
    finally:
        stop.set()
        t.join()
        lg.close()


def test_many_threads_small_queue_outage_keeps_each_threads_order(offline_server, tmp_path,
                                                                 delivery):
    """Four threads log through a tiny queue (hand-offs and spills on the callers' threads)
    while the server is down, then up: every event arrives once, each thread's in order."""
    import threading
    srv = offline_server
    lg = make_logger(srv, tmp_path / "spool", queue_size=50, batch_size=40, linger_s=0.005,
                     delivery=delivery)
    n, threads = 1500, 4
    started = threading.Barrier(threads + 1)

    def worker(t):
        started.wait()
        for i in range(n):
            lg.log({"kind": "x.threads", "attributes": {"t": t, "i": i}})
            if i == n // 3 and t == 0:
                srv.start()  # the server comes up while everyone is logging

    ws = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in ws:
        w.start()
    started.wait()
    for w in ws:
        w.join()
    assert lg.flush(60) is True
    st = lg.stats()
    lg.close()
    events = [e["event"]["attributes"] for e in srv.query(kind="x.threads")]
    assert len(events) == n * threads
    for t in range(threads):
        assert [e["i"] for e in events if e["t"] == t] == list(range(n)), t
    assert st["spooled"] > 0


def spy_on_finalize(monkeypatch, describe):
    """Records ``describe(items, pause)`` for every encoding of a batch; returns the list."""
    import mlaudit.logger as ml
    seen = []
    real = ml._finalize_many

    def spy(items, pause, failed):
        seen.append(describe(items, pause))
        return real(items, pause, failed)

    monkeypatch.setattr(ml, "_finalize_many", spy)
    return seen


def test_the_sender_pauses_for_the_gil_only_while_it_keeps_up(shared_server, tmp_path,
                                                              monkeypatch):
    """A batch with less than a batch queued behind it is encoded in slices with GIL pauses
    (a waking prediction waits for one slice, not the batch); with a full batch or more
    behind it (a backlog) it is encoded without them, so that a busy caller cannot hold the
    sender to a slice per switch interval and push everything into the spool."""
    seen = spy_on_finalize(monkeypatch, lambda items, pause: (len(items), pause))
    lg = make_logger(shared_server, tmp_path / "spool", batch_size=40, linger_s=5.0)
    try:
        # 400 events logged back to back (the sender gets the GIL at the end, or at a switch
        # interval): batches with others queued behind them, then the last ones alone.
        for i in range(400):
            lg.log({"kind": "x.pause", "attributes": {"i": i}})
        assert lg.flush(30) is True
        backlog = len(seen)
        for i in range(5):
            lg.log({"kind": "x.pause", "attributes": {"i": 400 + i}})
        assert lg.flush(30) is True
    finally:
        lg.close()
    assert any(not pause for _, pause in seen[:backlog]), seen
    # The last five, alone (in one chunk, or more if this thread stalled between them).
    assert sum(n for n, _ in seen[backlog:]) == 5 and all(p for _, p in seen[backlog:]), seen
    assert lg.stats()["spooled"] == 0


def test_a_callers_own_spill_never_pauses(offline_server, tmp_path, monkeypatch):
    """With the server down and a queue smaller than a batch, log() spills on the caller's
    thread; that encoding must not sleep for the GIL (it would only delay the caller)."""
    import threading
    seen = spy_on_finalize(monkeypatch, lambda items, pause: (
        threading.current_thread() is threading.main_thread(), pause))
    lg = make_logger(offline_server, tmp_path / "spool", queue_size=10, batch_size=500)
    try:
        for i in range(100):
            lg.log({"kind": "x.spill", "attributes": {"i": i}})
    finally:
        lg.close(timeout=1)
    on_caller = [pause for is_main, pause in seen if is_main]
    assert on_caller and not any(on_caller), seen


def test_finalize_pauses_after_each_slice_only_when_asked(monkeypatch):
    import mlaudit.logger as ml
    slept = []
    real_time = ml.time

    class OnlySleepRecorded:  # the module's other clocks stay real (other threads use them)
        sleep = staticmethod(slept.append)

        def __getattr__(self, name):
            return getattr(real_time, name)

    monkeypatch.setattr(ml, "time", OnlySleepRecorded())
    items = [({"kind": "x.k", "id": f"id-{i}", "time": "2026-11-27T00:00:00Z"}, 0, i)
             for i in range(40)]
    monkeypatch.setattr(ml, "_GIL_SLICE_NS", 0)  # every event is a slice
    assert len(ml._finalize_many(items, True, [])) == 40
    assert len(slept) == 39  # between events, never before the first
    ml._finalize_many(items, False, [])
    assert len(slept) == 39
    monkeypatch.setattr(ml, "_GIL_SLICE_NS", 10**12)  # one slice for the whole chunk
    ml._finalize_many(items, True, [])
    assert len(slept) == 39
