"""The logger's HTTP side (urllib from the standard library): one ``POST /v1/events`` and
what its answer means for the batch, and the ``GET`` of a consistency proof.

What each answer means (the same rules as the Rust SDK's transport):

* 200 with a receipt for every event sent (``{"events": [{"id", "seq", "duplicate"}...],
  "tree_size", "checkpoint"}``, as many receipts as events, the same ids in the same
  order): DELIVERED. A 200 without them is not an acknowledgement: RETRY (configuration).
* 422 naming events by index: INVALID (those are rejected, the rest sent again).
* 400, 413: SPLIT (send the batch in halves until the culprit is alone; a single event
  refused that way is rejected). A 400 is how the server answers an event it cannot
  parse, so one such event must not hold up every other.
* No answer (refused, reset, timeout), 408, 425, 429, 5xx: RETRY (transient).
* Anything else (401, 403, 404, 405, 415, a 422 without event details, any 1xx, other
  2xx or 3xx, other 4xx) and a request that cannot be sent at all: RETRY (configuration:
  it will not go away by itself; the logger says so at error level).

Redirects are never followed: a batch counts as delivered only on the server's own 200,
and the token is not sent anywhere else. No text this module returns contains the token.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

DELIVERED, INVALID, SPLIT, RETRY = "delivered", "invalid", "split", "retry"

#: How much of an answer is read (a receipt of 10,000 events is about 700 KB).
MAX_ANSWER_BYTES = 16 << 20
_TRANSIENT = frozenset((408, 425, 429))


class Outcome(NamedTuple):
    """What a POST made of a batch. ``doc``: the 200's receipt document (DELIVERED);
    ``invalid``: index -> the server's reason (INVALID); ``reason``: why (RETRY, SPLIT);
    ``config``: a RETRY that will not go away by itself."""
    kind: str
    doc: Any = None
    invalid: Optional[Dict[int, str]] = None
    reason: str = ""
    config: bool = False
    status: Optional[int] = None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None  # urllib then raises HTTPError with the 3xx status


class Transport:
    """The requests of one logger: its base URL, its token and its timeout."""

    def __init__(self, base_url: str, token: Optional[str], timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._secrets = _forms(token) if token else []
        self._opener = urllib.request.build_opener(_NoRedirects())

    def close(self) -> None:
        """Nothing to release: each request opens and closes its own connection."""

    def redact(self, text: str) -> str:
        """``text`` with every spelling of the token (plain, escaped as by ``repr``)
        replaced by ``<token>``."""
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "<token>")
        return text

    def request(self, method: str, path: str, data: Optional[bytes] = None,
                timeout: Optional[float] = None) -> Tuple[Optional[int], bytes, str]:
        """One request: ``(status, body, error text)``; ``status`` is None when no HTTP
        answer came (``error`` then says why, starting with :data:`REQUEST_ERROR` when
        the request could not even be sent)."""
        headers = self._headers if data is not None else {
            k: v for k, v in self._headers.items() if k != "Content-Type"}
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers,
                                     method=method)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read(MAX_ANSWER_BYTES), ""
        except urllib.error.HTTPError as e:
            try:
                raw = e.read(MAX_ANSWER_BYTES)
            except Exception:
                raw = b""
            where = e.headers.get("Location") if 300 <= e.code < 400 and e.headers else None
            why = f" to {where}" if where else ""
            return e.code, raw or b"", self.redact(why)
        except (urllib.error.URLError, OSError, socket.timeout,
                http.client.HTTPException) as e:
            return None, b"", self.redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
        except Exception as e:  # a malformed URL, a token that cannot be a header value...
            return None, b"", self.redact(f"{REQUEST_ERROR} ({type(e).__name__}: {e})")

    def post_events(self, bodies: List[bytes]) -> Outcome:
        """POST ``[body, body, ...]`` and classify the answer (module docstring)."""
        status, raw, err = self.request("POST", "/v1/events", b"[" + b",".join(bodies) + b"]")
        if status is None:
            return Outcome(RETRY, reason=err, config=err.startswith(REQUEST_ERROR))
        doc = _json(raw)
        if status == 200:
            why = receipts_problem(doc, bodies)
            if why:
                return Outcome(RETRY, reason=f"HTTP 200 that is not a receipt: {why}",
                               config=True, status=200)
            return Outcome(DELIVERED, doc=doc, status=200)
        reason = f"HTTP {status}{err}: {self.redact(_message(doc, raw))[:300]}"
        if status == 422:
            bad = _bad_indices(doc, len(bodies))
            if bad:
                bad = {i: self.redact(why)[:1000] for i, why in bad.items()}
                return Outcome(INVALID, invalid=bad, status=422)
            return Outcome(RETRY, reason=f"{reason} (no event details)", config=True,
                           status=422)
        if status in (400, 413):
            return Outcome(SPLIT, reason=reason, status=status)
        if status in _TRANSIENT or 500 <= status < 600:
            return Outcome(RETRY, reason=reason, status=status)
        if 300 <= status < 400:
            reason = f"HTTP {status}{err} (a redirect, not followed)"
        return Outcome(RETRY, reason=reason, config=True, status=status)

    def get_json(self, path: str) -> Tuple[Optional[int], Any, str]:
        """GET ``path``: ``(status, parsed JSON or None, error text)``."""
        status, raw, err = self.request("GET", path)
        doc = _json(raw)
        if status is not None and status != 200:
            err = f"HTTP {status}{err}: {self.redact(_message(doc, raw))[:300]}"
        return status, doc, err


#: How the error text of a request that could not even be sent (a configuration error,
#: not the network) begins.
REQUEST_ERROR = "the request could not be sent"


def receipts_problem(doc: Any, bodies: List[bytes]) -> str:
    """Why ``doc`` is not a receipt for every event of ``bodies`` ("" when it is)."""
    events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        return "no 'events' list"
    if len(events) != len(bodies):
        return f"{len(events)} receipts for {len(bodies)} events"
    for i, (receipt, body) in enumerate(zip(events, bodies)):
        rid = receipt.get("id") if isinstance(receipt, dict) else None
        if not isinstance(rid, str) or not _has_id(body, rid):
            return f"receipt {i} names {str(rid)[:40]!r}, not the event sent"
    return ""


def _has_id(body: bytes, rid: str) -> bool:
    """Whether the event ``body`` has the id ``rid`` (the server answers canonical
    lower-case UUIDs). The common case is a byte search of the SDK's compact JSON."""
    if b'"id":"' + rid.encode("utf-8") + b'"' in body:
        return True
    try:
        sent = json.loads(body).get("id")
        return isinstance(sent, str) and sent.strip().lower() == rid.lower()
    except (ValueError, AttributeError):
        return False


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _message(doc: Any, raw: bytes) -> str:
    """What an error answer says, up to 4 KiB (redact it before cutting it shorter: a
    token cut in two would survive redaction)."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return f"{doc['error'].get('code')}: {doc['error'].get('message')}"[:4096]
    return raw[:4096].decode("utf-8", "replace")


def _bad_indices(doc: Any, n: int) -> Dict[int, str]:
    out: Dict[int, str] = {}
    try:
        for d in doc["error"]["details"]:
            i = d.get("index")
            if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n:
                out[i] = str(d.get("error"))[:4096]
    except (KeyError, TypeError, AttributeError):
        pass
    return out


def _forms(token: str) -> List[str]:
    """The token as it may appear in text: as is, and escaped by ``repr`` of the string
    or of its bytes (http.client names a header value it refuses by its bytes' repr)."""
    forms = {token, repr(token)[1:-1], ascii(token)[1:-1]}
    for enc in ("utf-8", "latin-1"):
        forms.add(repr(token.encode(enc, "backslashreplace"))[2:-1])
    return sorted((f for f in forms if f), key=len, reverse=True)
