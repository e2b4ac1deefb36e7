"""A stand-in for `mlaudit serve` in one thread of the test process, for what a real server
will not do: answer with a given status, a 200 that is not a receipt, a redirect, a log
that was rolled back or forked, a bad consistency proof.

By default it behaves like the real ingest and proof routes: ``POST /v1/events`` appends
each new event id as a leaf of an RFC 9162 tree kept in memory and answers with receipts
and a checkpoint (its signature line is a placeholder: the logger does not check it);
``GET /v1/proof/consistency`` answers with the RFC 9162 §2.1.4.1 proof.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import urllib.parse
from typing import Any, Callable, List, Optional, Tuple

from mlaudit.verify import leaf_hash, node_hash

Answer = Tuple[int, dict, bytes]  # status, headers, body


def mth(hashes: List[bytes]) -> bytes:
    """RFC 9162 MTH over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def consistency_proof(m: int, hashes: List[bytes]) -> List[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) over leaf hashes."""
    return _subproof(m, hashes, True)


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _subproof(m: int, d: List[bytes], complete: bool) -> List[bytes]:
    n = len(d)
    if m == n:
        return [] if complete else [mth(d)]
    k = _split(n)
    if m <= k:
        return _subproof(m, d[:k], complete) + [mth(d[k:])]
    return _subproof(m - k, d[k:], False) + [mth(d[:k])]


def note(origin: str, size: int, root: bytes) -> str:
    sig = base64.b64encode(b"\x00\x01\x02\x03" + bytes(64)).decode()
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n\n\u2014 {origin} {sig}\n"


class FakeLog:
    """The fake server; ``url`` while started. Knobs (set from the test thread):

    * ``post_answer``: ``fn(events, headers) -> Answer or None`` replaces the answer to a
      POST (None: the default answer);
    * ``appending``: False makes POSTs store nothing (receipts say duplicate);
    * ``proof_status``: answer proof requests with this status instead;
    * ``corrupt_proofs``: flip a bit of every proof's first hash.
    """

    def __init__(self, origin: str = "fake.example") -> None:
        self.origin = origin
        self.writer = "mla_" + "5ec7e7" * 10 + "abcd"  # a token, for make_logger
        self.leaves: List[bytes] = []
        self.ids: dict = {}
        self.events: List[dict] = []     # stored events, in seq order
        self.requests: List[Tuple[str, str, str]] = []  # (method, path, Authorization)
        self.post_answer: Optional[Callable[[List[dict], Any], Optional[Answer]]] = None
        self.appending = True
        self.proof_status: Optional[int] = None
        self.corrupt_proofs = False
        self.cv = threading.Condition()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(fake._handle("GET", self.path, b"", self.headers))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(fake._handle("POST", self.path, body, self.headers))

            def _answer(self, answer: Answer) -> None:
                status, headers, body = answer
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "FakeLog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the tree ------------------------------------------------------------------------

    def checkpoint(self, size: Optional[int] = None) -> str:
        size = len(self.leaves) if size is None else size
        return note(self.origin, size, mth(self.leaves[:size]))

    def rewrite_leaf(self, index: int) -> None:
        """Change history: another leaf at ``index``, the same size."""
        with self.cv:
            self.leaves[index] = leaf_hash(b"rewritten")

    def truncate(self, size: int) -> None:
        """Roll back to ``size`` leaves."""
        with self.cv:
            del self.leaves[size:]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        with self.cv:
            return self.cv.wait_for(predicate, timeout)

    def count(self, method: str, path_prefix: str) -> int:
        with self.cv:
            return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # -- requests --------------------------------------------------------------------------

    def _handle(self, method: str, path: str, body: bytes, headers: Any) -> Answer:
        with self.cv:
            self.requests.append((method, path, headers.get("Authorization", "")))
            self.cv.notify_all()
            if method == "POST" and path == "/v1/events":
                events = json.loads(body)
                custom = self.post_answer(events, headers) if self.post_answer else None
                return custom or self._receipts(events)
            if method == "GET" and path.startswith("/v1/proof/consistency?"):
                return self._proof(urllib.parse.parse_qs(path.split("?", 1)[1]), headers)
            return 404, {}, b'{"error": {"code": "not_found", "message": "no such route"}}'

    def _receipts(self, events: List[dict]) -> Answer:
        receipts = []
        for ev in events:
            dup = ev["id"] in self.ids or not self.appending
            if ev["id"] not in self.ids and self.appending:
                self.ids[ev["id"]] = len(self.leaves)
                self.leaves.append(leaf_hash(json.dumps(ev, sort_keys=True).encode()))
                self.events.append(ev)
            receipts.append({"id": ev["id"], "seq": self.ids.get(ev["id"], 0), "duplicate": dup})
        doc = {"events": receipts, "tree_size": len(self.leaves),
               "checkpoint": self.checkpoint()}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def _proof(self, q: dict, headers: Any) -> Answer:
        if self.proof_status is not None:  # (saying what it was sent, as a debug page might)
            said = f"not now for {headers.get('Authorization')}"
            return self.proof_status, {}, json.dumps({"error": {"code": "x", "message": said}}
                                                     ).encode()
        old, new = int(q["from"][0]), int(q["to"][0])
        if not 0 < old <= new <= len(self.leaves):
            return 404, {}, b'{"error": {"code": "not_found", "message": "no checkpoint"}}'
        proof = consistency_proof(old, self.leaves[:new])
        if self.corrupt_proofs and proof:
            proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
        doc = {"from": old, "to": new, "proof": [base64.b64encode(h).decode() for h in proof],
               "from_checkpoint": self.checkpoint(old), "to_checkpoint": self.checkpoint(new)}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()
