"""What an HTTP answer means to the logger (mlaudit._http), against a fake server: a
configuration problem keeps the events, only a receipt for every event counts as delivery,
redirects are not followed, and the token never reaches a log message."""

import json
import logging
import uuid

import pytest

from conftest import make_logger
from mlaudit import AuditLogger

JSON = {"Content-Type": "application/json"}


def errors_saying(caplog, text):
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


def kept_then_delivered(fake, lg, caplog, what, n=5):
    """Log ``n`` events while the fake gives its bad answer: none counts as sent or rejected,
    all are spooled, several attempts are made and ``what`` is logged at error level once;
    once the fake answers normally they are delivered, in order."""
    for i in range(n):
        lg.log({"kind": "x.transport", "attributes": {"i": i}})
    assert lg.flush(15) is False  # the attempts failed; the events wait, durable, in the spool
    assert fake.wait_for(lambda: fake.count("POST", "/v1/events") >= 4)
    st = lg.stats()
    assert (st["sent"], st["rejected"], st["dropped"], st["spooled"]) == (0, 0, 0, n), st
    assert len(errors_saying(caplog, what)) == 1, [r.getMessage() for r in caplog.records]
    fake.post_answer = None
    # (an attempt answered before the switch may still fail after it: wait for delivery)
    assert fake.wait_for(lambda: len(fake.events) == n)
    assert lg.flush(30) is True
    lg.close()
    assert [e["attributes"]["i"] for e in fake.events] == list(range(n))


@pytest.mark.parametrize("status", [404, 405, 415])
def test_404_405_and_415_keep_the_events_and_are_logged_once(fake, tmp_path, caplog, status):
    caplog.set_level(logging.ERROR, logger="mlaudit")
    fake.post_answer = lambda events, headers: (
        status, JSON, b'{"error": {"code": "x", "message": "not the ingest route"}}')
    lg = make_logger(fake, tmp_path / "spool", max_attempts=2)
    kept_then_delivered(fake, lg, caplog, f"HTTP {status}")


def _receipts(events):
    return [{"id": e["id"], "seq": i, "duplicate": False} for i, e in enumerate(events)]


NOT_RECEIPTS = {
    "no events list": lambda evs: json.dumps({"tree_size": 1}).encode(),
    "one receipt short": lambda evs: json.dumps({"events": _receipts(evs)[:-1]}).encode(),
    "other ids": lambda evs: json.dumps({"events": [
        dict(r, id=str(uuid.uuid4())) for r in _receipts(evs)]}).encode(),
    "an HTML page": lambda evs: b"<html><body>Welcome to the proxy</body></html>",
}


@pytest.mark.parametrize("what", sorted(NOT_RECEIPTS))
def test_a_200_without_a_receipt_for_every_event_keeps_them(fake, tmp_path, caplog, what):
    caplog.set_level(logging.ERROR, logger="mlaudit")
    fake.post_answer = lambda events, headers: (200, JSON, NOT_RECEIPTS[what](events))
    lg = make_logger(fake, tmp_path / "spool", max_attempts=2)
    kept_then_delivered(fake, lg, caplog, "not a receipt")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_keeps_the_events(fake, tmp_path, caplog, status):
    caplog.set_level(logging.ERROR, logger="mlaudit")
    fake.post_answer = lambda events, headers: (status, {"Location": "/elsewhere"}, b"")
    lg = make_logger(fake, tmp_path / "spool", max_attempts=2)
    kept_then_delivered(fake, lg, caplog, "redirect")
    assert fake.count("GET", "/elsewhere") == fake.count("POST", "/elsewhere") == 0


def test_the_token_never_appears_in_a_log_message(fake, tmp_path, caplog):
    """Answers that repeat the Authorization header they got (as a debug page or a proxy
    might) in a body, a Location, a 422's reason or a proof request's refusal; a token
    that cannot be sent at all; and an exception swallowed by the decorator that names
    it. Everything the SDK logs, at every level, is free of the token."""
    caplog.set_level(logging.DEBUG, logger="mlaudit")
    token = fake.writer

    def echo(headers):
        return f"you sent {headers.get('Authorization')}"

    answers = [
        lambda evs, h: (404, JSON, json.dumps({"error": {"code": "x", "message": echo(h)}}).encode()),
        lambda evs, h: (500, {}, echo(h).encode()),
        lambda evs, h: (302, {"Location": "/x?" + echo(h).replace(" ", "+")}, b""),
        lambda evs, h: (200, {}, f"<html>{echo(h)}</html>".encode()),
        lambda evs, h: (422, JSON, json.dumps({"error": {"code": "x", "message": echo(h)}}).encode()),
        lambda evs, h: (422, JSON, json.dumps({"error": {"code": "invalid_events", "message": "",
                                                         "details": [{"index": 0, "error": echo(h)}]}}).encode()),
    ]
    fake.post_answer = lambda evs, h: answers.pop(0)(evs, h) if answers else None
    lg = make_logger(fake, tmp_path / "spool", max_attempts=2)
    lg.log({"kind": "x.secret", "attributes": {"i": 0}})  # goes through every answer above
    assert fake.wait_for(lambda: not answers)
    assert lg.flush(30) is True
    assert lg.stats()["rejected"] == 1  # by the last answer

    lg.log({"kind": "x.secret", "attributes": {"i": 1}})
    assert lg.flush(30) is True  # a checkpoint kept
    fake.proof_status = 403  # the proof of the next one is refused, the refusal names the token
    lg.log({"kind": "x.secret", "attributes": {"i": 2}})
    assert lg.flush(30) is True

    @lg.predictions(model="m", version="1", request_id=lambda x: {}[f"key {token}"])
    def predict(x):
        return x

    assert predict(1) == 1
    lg.close()

    unsendable = token + "\nX-Injected: 1"
    lg = AuditLogger(fake.url, unsendable, str(tmp_path / "spool2"), register_atexit=False,
                     actor={"id": "t", "type": "service"}, max_attempts=1)
    lg.log({"kind": "x.secret"})
    assert lg.flush(10) is False
    lg.close(timeout=1)

    said = []
    for r in caplog.records:
        said.append(r.getMessage())
        if r.exc_info:
            said.append(logging.Formatter().formatException(r.exc_info))
    text = "\n".join(said)
    for expected in ("HTTP 404", "HTTP 500", "redirect", "not a receipt", "no event details",
                     "rejected event", "cannot fetch consistency proofs", "KeyError",
                     "could not be sent", "<token>"):
        assert expected in text, expected  # every path above was taken and logged
    secret = token[len("mla_"):]
    assert secret not in text and secret not in caplog.text
