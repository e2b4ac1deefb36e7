"""Exceptions the SDK catches instead of raising are never silent: each is counted in
``stats()["errors"]``, the first of each kind is logged at error level, later ones of that
kind are only counted. And a decorator that could never record a call is refused."""

import logging
import threading

import pytest

from conftest import make_logger


def errors_saying(caplog, text):
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


def test_a_decorator_on_a_logger_without_actor_raises_at_decoration(offline_server, tmp_path):
    lg = make_logger(offline_server, tmp_path / "spool", actor=None)
    try:
        with pytest.raises(ValueError, match="actor"):
            lg.predictions(model="m", version="1")
        # An actor given to the decorator is enough.
        lg.predictions(model="m", version="1", actor={"id": "scorer", "type": "service"})
    finally:
        lg.close(timeout=1)


def test_the_decorators_errors_are_logged_once_per_kind_and_all_counted(offline_server,
                                                                        tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="mlaudit")
    lg = make_logger(offline_server, tmp_path / "spool")

    def bad_request_id(x):
        if x == "zero":
            return 1 / 0
        return {}[x]

    @lg.predictions(model="m", version="1", request_id=bad_request_id)
    def predict(x):
        return x

    try:
        for _ in range(3):
            assert predict("zero") == "zero"
        assert lg.stats()["errors"] == 3
        assert len(errors_saying(caplog, "ZeroDivisionError")) == 1
        for _ in range(2):
            assert predict("missing") == "missing"  # another kind: logged once too
        assert lg.stats()["errors"] == 5
        assert len(errors_saying(caplog, "KeyError")) == 1
        assert len(errors_saying(caplog, "ZeroDivisionError")) == 1
    finally:
        lg.close(timeout=1)


def test_the_senders_errors_are_logged_once_and_counted(offline_server, tmp_path, caplog,
                                                        monkeypatch):
    from mlaudit import AuditLogger
    caplog.set_level(logging.ERROR, logger="mlaudit")
    calls = []
    third = threading.Event()

    def broken_post(self, bodies):
        calls.append(1)
        if len(calls) >= 3:
            third.set()
        raise RuntimeError("a bug in sending")

    monkeypatch.setattr(AuditLogger, "_post", broken_post)
    lg = make_logger(offline_server, tmp_path / "spool", linger_s=0.01)
    try:
        lg.log({"kind": "x.bug"})
        assert third.wait(30)  # the sender went through two errors and started a third
        assert lg.stats()["errors"] >= 2
        assert len(errors_saying(caplog, "RuntimeError: a bug in sending")) == 1
    finally:
        lg.close(timeout=1)


def test_unencodable_events_are_logged_once_per_kind_and_counted(shared_server, tmp_path,
                                                                 monkeypatch, caplog):
    import mlaudit.logger as ml
    real = ml.dumps

    def dumps(ev):
        if ev.get("attributes", {}).get("i") in (2, 5):
            raise RuntimeError("cannot encode this one")
        return real(ev)

    monkeypatch.setattr(ml, "dumps", dumps)
    caplog.set_level(logging.ERROR, logger="mlaudit")
    lg = make_logger(shared_server, tmp_path / "spool")
    for i in range(8):
        lg.log({"kind": "x.unencodable-twice", "attributes": {"i": i}})
    assert lg.flush(30) is True
    lg.close()
    st = lg.stats()
    assert (st["rejected"], st["errors"], st["sent"]) == (2, 2, 6)
    assert len(errors_saying(caplog, "could not be encoded")) == 1
