"""``AuditLogger(..., delivery="process")``: what the delivery agent adds to the guarantees
the shared tests (test_delivery.py, test_decorator.py, parametrized over both deliveries)
already check."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import make_logger
from mlaudit.agent import MAX_FRAME, ProcessAuditLogger, read_frame, write_frame
from server import CLIENT_DIR


def seq_of(events):
    return [e["event"]["attributes"]["i"] for e in events]


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_handed_to_the_agent_survive_the_serving_process_being_killed(offline_server,
                                                                            tmp_path):
    """The serving process logs 2,000 events while the server is down, waits until its
    queue is empty and the agent has answered a question asked after the last event
    (everything handed over), and is SIGKILLed: no atexit, no close.
    The agent sees the pipe end, spools what it holds and exits; a later logger delivers
    all 2,000 in order."""
    srv, spool = offline_server, tmp_path / "spool"
    script = textwrap.dedent(f"""
        import os, signal, time, mlaudit
        lg = mlaudit.AuditLogger({srv.url!r}, {srv.writer!r}, {str(spool)!r},
                                 actor={{"id": "killed", "type": "service"}},
                                 backoff_cap_s=0.2, delivery="process")
        for i in range(2000):
            lg.log({{"kind": "x.agent-kill", "attributes": {{"i": i}}}})
        while lg._buf or lg._overflow:
            time.sleep(0.01)
        # stats() forwards anything queued, then asks the agent: once it answers, the agent
        # has queued every event written before the question.
        st = lg.stats()
        assert st["agent_pid"] and st["mode"] != "unknown", st  # the agent answered
        print(st["agent_pid"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=CLIENT_DIR)
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    agent_pid = int(p.stdout.split()[0])
    wait_until(lambda: not os.path.exists(f"/proc/{agent_pid}"), 30)

    srv.start()
    lg = make_logger(srv, spool)
    assert lg.flush(30) is True
    lg.close()
    assert seq_of(srv.query(kind="x.agent-kill")) == list(range(2000))


def test_a_killed_agent_is_replaced_loudly_and_later_events_are_delivered(server, tmp_path,
                                                                          caplog):
    lg = make_logger(server, tmp_path / "spool", delivery="process")
    for i in range(100):
        lg.log({"kind": "x.agent-replaced", "attributes": {"i": i}})
    assert lg.flush(30) is True
    first = lg.stats()["agent_pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: lg._proc.poll() is not None)
    with caplog.at_level(logging.ERROR, logger="mlaudit"):
        for i in range(100, 200):
            lg.log({"kind": "x.agent-replaced", "attributes": {"i": i}})
        assert lg.flush(30) is True
    st = lg.stats()
    assert st["agent_restarts"] == 1 and st["agent_pid"] not in (0, first), st
    assert "delivery agent" in caplog.text and "LOST" in caplog.text
    assert lg.close() is True
    assert seq_of(server.query(kind="x.agent-replaced")) == list(range(200))


def test_close_reports_the_agents_final_counts_and_ends_it(offline_server, tmp_path):
    lg = make_logger(offline_server, tmp_path / "spool", delivery="process")
    for i in range(50):
        lg.log({"kind": "x.agent-close", "attributes": {"i": i}})
    proc = lg._proc
    assert lg.close(timeout=5) is False  # server down: spooled, not delivered
    st = lg.stats()
    assert (st["spooled"], st["sent"], st["queued"]) == (50, 0, 0), st
    assert proc.poll() == 0


def test_an_agent_that_cannot_start_is_a_clear_error(offline_server, tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(Exception) as err:
        make_logger(offline_server, tmp_path / "not-a-dir" / "spool", delivery="process")
    assert "delivery agent did not start" in str(err.value)


def test_a_forked_child_of_a_process_delivery_refuses_and_the_parent_delivers(shared_server,
                                                                             tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    lg = make_logger(shared_server, tmp_path / "spool", delivery="process")
    lg.log({"kind": "x.agent-fork", "attributes": {"i": 0}})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy is closed, and has let go of the pipe to the agent
        code = 5
        try:
            try:
                lg.log({"kind": "x.agent-fork", "attributes": {"i": -1}})
                code = 3
            except Exception:
                code = 0 if lg._proc is None and lg.flush(1) is True else 4
            os.write(w, bytes([code]))
            time.sleep(30)  # alive, holding whatever it did not let go of
        finally:
            os._exit(code)
    os.close(w)
    try:
        import select
        assert select.select([r], [], [], 10)[0], "the child did not answer"
        assert os.read(r, 1) == b"\0"
        lg.log({"kind": "x.agent-fork", "attributes": {"i": 1}})
        assert lg.flush(30) is True
        # End the pipe from the parent's side only: the agent sees its end (and exits after
        # delivering) only if the living child holds no copy of it.
        proc = lg._proc
        proc.stdin.close()
        proc.wait(10)
        assert proc.returncode == 0
        proc.stdout.close()
        lg._proc = None  # gone: close() has nothing to ask
        lg.close(timeout=1)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    assert seq_of(shared_server.query(kind="x.agent-fork")) == [0, 1]


def test_frames_round_trip_and_bad_frames_are_errors():
    r, w = os.pipe()
    try:
        write_frame(w, ("events", [({"kind": "k"}, 1)]))
        assert read_frame(r) == ("events", [({"kind": "k"}, 1)])
        os.write(w, (MAX_FRAME + 1).to_bytes(4, "little"))
        with pytest.raises(ValueError, match="limit"):
            read_frame(r)
        os.write(w, (3).to_bytes(4, "little") + b"\xff\xff\xff")
        with pytest.raises(ValueError, match="does not decode"):
            read_frame(r)
        os.write(w, (10).to_bytes(4, "little") + b"abc")
        os.close(w)
        w = -1
        assert read_frame(r) is None  # end of file in the middle of a frame
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_the_process_delivery_is_an_audit_logger(offline_server, tmp_path):
    from mlaudit import AuditLogger
    lg = make_logger(offline_server, tmp_path / "spool", delivery="process")
    assert isinstance(lg, AuditLogger) and isinstance(lg, ProcessAuditLogger)
    lg.close(timeout=1)
    with pytest.raises(ValueError, match="delivery"):
        make_logger(offline_server, tmp_path / "spool2", delivery="carrier-pigeon")


def test_only_values_marshal_reads_back_unchanged_are_marshalled():
    import array
    from mlaudit.agent import _plain
    assert _plain({"a": [1, 2.5, None, True, b"x", ("t", frozenset({1}))], 2: {"k": "v"}})
    assert not _plain({"a": array.array("d", [1.5])})  # marshal would make it bytes
    assert not _plain([object()])
    deep = cur = []
    for _ in range(30):
        cur.append([])
        cur = cur[0]
    assert not _plain(deep)


def test_a_buffer_object_is_recorded_as_its_values(shared_server, tmp_path, delivery):
    import array
    lg = make_logger(shared_server, tmp_path / "spool", delivery=delivery)
    model = f"agent-buffer-{delivery}"

    @lg.predictions(model=model, version="1")
    def predict(features, request_id):
        return {"ok": True}

    predict(array.array("d", [1.5, 2.5]), request_id="buf-1")
    assert lg.flush(30) is True
    lg.close()
    (ev,) = shared_server.query(model=model)
    assert ev["event"]["attributes"]["inputs"]["args"] == [[1.5, 2.5]]


def test_concurrent_flushes_each_get_their_own_answer(shared_server, tmp_path):
    import threading
    lg = make_logger(shared_server, tmp_path / "spool", delivery="process")
    results = []

    def worker(t):
        for i in range(200):
            lg.log({"kind": "x.agent-flushes", "attributes": {"t": t, "i": i}})
            if i % 50 == 49:
                results.append(lg.flush(30))

    ws = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for w in ws:
        w.start()
    for w in ws:
        w.join(60)
    assert results == [True] * 16
    assert lg.close() is True
    assert len(shared_server.query(kind="x.agent-flushes")) == 800


def test_events_queued_after_the_close_request_are_counted_as_dropped(server, tmp_path):
    """A log() that passed its closing check just before close() began can queue after the
    close request was written: the agent reads nothing more, so the event is counted as
    dropped, not written into a pipe nobody reads (or handed to a new agent)."""
    lg = make_logger(server, tmp_path / "spool", delivery="process")
    lg.log({"kind": "x.agent-late", "attributes": {"i": 0}})
    answer = lg._request("close", 10, timeout=30)  # what close() asks first
    assert answer and answer[0] is True
    lg._proc.wait(10)
    with lg._spool_lock:  # the late event, handed over as the forwarder would
        lg._spool_items([({"kind": "x.agent-late", "attributes": {"i": 1}}, 0, 1)], False)
    assert lg._counts["dropped"] == 1 and lg._restarts == 0
    lg.close(timeout=1)
    assert [e["event"]["attributes"]["i"] for e in server.query(kind="x.agent-late")] == [0]


def test_a_failed_restart_is_not_retried_for_a_while(offline_server, tmp_path, monkeypatch,
                                                     caplog):
    """A start that fails after its whole timeout (30 s, simulated by the clock) is not
    retried for every chunk that follows: one try, then the back-off counts from its end."""
    import mlaudit.agent as agent
    lg = make_logger(offline_server, tmp_path / "spool", delivery="process")
    clock = [1000.0]
    monkeypatch.setattr(agent, "_now", lambda: clock[0])
    starts = []

    def failing_start():
        starts.append(1)
        clock[0] += agent._START_TIMEOUT_S
        raise agent.AgentError("no agent today")

    monkeypatch.setattr(lg, "_start_agent", failing_start)
    os.kill(lg._proc.pid, signal.SIGKILL)
    lg._proc.wait(10)
    with caplog.at_level(logging.ERROR, logger="mlaudit"):
        for i in range(5):
            with lg._spool_lock:
                lg._spool_items([({"kind": "x.agent-restart", "attributes": {"i": i}}, 0, i)],
                                False)
    assert len(starts) == 1
    assert lg.stats()["dropped"] == 5
    assert caplog.text.count("is gone") == 1 and "no agent today" in caplog.text
    lg.close(timeout=1)
