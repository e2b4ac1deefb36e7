"""A logger copied into a forked child refuses to log there (its spool and queue belong to
the parent) instead of corrupting the spool or losing events silently; the parent's logger
is unaffected and still delivers everything it queued, including what was queued at the
moment of the fork."""

import os

import pytest

from conftest import make_logger
from mlaudit import LoggerClosedError


def event(i):
    return {"kind": "prediction.served",
            "subject": {"model": "fork-model", "version": "1", "request": f"fork-{i}"},
            "attributes": {"inputs": {"x": i}, "outputs": {"y": i}}}


def child_checks(lg) -> int:
    """Runs in the child; returns the exit status (0 when every check held)."""
    try:
        lg.log(event(999))
        return 10  # must have raised
    except LoggerClosedError as e:
        if "fork" not in str(e) or str(os.getpid()) not in str(e):
            return 11
    predict = lg.predictions(model="fork-model", version="1")(lambda x, request_id: x + 1)
    if predict(1, request_id="fork-child") != 2:
        return 12
    st = lg.stats()
    if st["errors"] != 1 or st["queued"] != 0 or st["sent"] != 0:  # this process's counts
        return 13
    if lg.flush(1) is not True or lg.close(1) is not True:
        return 14
    return 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_refuses_and_the_parent_delivers(shared_server, tmp_path):
    lg = make_logger(shared_server, tmp_path / "spool", linger_s=0.5)
    broken = lg.predictions(model="fork-model", version="1", request_id=lambda: 1 / 0)(lambda: 0)
    broken()  # the parent's own error count is 1 at the fork
    for i in range(50):
        lg.log(event(i))  # queued (the sender lingers) when the fork happens
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(hold_w)
            status = child_checks(lg)
            os.read(hold_r, 1)  # stay alive until the parent has reopened the spool
        finally:
            os._exit(status)
    os.close(hold_r)
    try:
        for i in range(50, 60):
            lg.log(event(i))
        assert lg.flush(30) is True
        lg.close()
        # The child is still alive and must not hold the spool's lock.
        again = make_logger(shared_server, tmp_path / "spool")
        again.log(event(60))
        assert again.flush(30) is True
        again.close()
    finally:
        os.close(hold_w)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    got = sorted(e["event"]["subject"]["request"] for e in shared_server.query(model="fork-model"))
    assert got == sorted(f"fork-{i}" for i in range(61))
