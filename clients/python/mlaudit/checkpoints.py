"""Rollback and fork detection: the latest checkpoint a logger received from the log, kept
in its spool directory, and the check of every newer one against it.

Each 200 answer to a batch carries the log's checkpoint after that batch: a C2SP signed
note whose body is ``<origin>\\n<size>\\n<base64 root>\\n`` (docs/FORMAT.md §3). The
logger keeps the latest one that passed in ``<spool_dir>/checkpoint`` (the note as
received, replaced atomically: temp file, fsync, rename, fsync of the directory; mode
0600) and checks each one that differs from it:

* another origin: a checkpoint of another log;
* a smaller size: ROLLBACK (the log no longer has entries it signed for);
* the same size and another root: FORK (two different trees under one size);
* a larger size: the log's consistency proof between the two sizes, fetched with
  ``GET /v1/proof/consistency?from=<kept size>&to=<new size>`` and verified with RFC 9162
  §2.1.4.2 (:func:`mlaudit.verify.verify_consistency`). A proof that does not verify, or
  a log that cannot prove it (404: it has no checkpoint at a size it signed), fails.

A failure is logged at error level and counted (``stats()["consistency_failures"]``); the
kept checkpoint stays the trusted one, and the same failing checkpoint is not reported
twice in a row. A proof that cannot be fetched now (no answer, 5xx, 429, a token the
proof route refuses) is not a failure: the check is made again on a later receipt.

Signatures are not checked here (that needs the log's verifier key and ``cryptography``;
see :mod:`mlaudit.verify`): this catches a log that shows this client a history that
shrinks or changes. To trust a log that was deliberately re-created, delete the file.
Only the sender thread calls :meth:`CheckpointMonitor.check`; the spool's lock keeps
other processes out of the directory.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from typing import Any, Callable, List, NamedTuple, Optional

from .spool import create_private

log = logging.getLogger("mlaudit")


def _verify():
    """:mod:`mlaudit.verify`, imported when first needed, not with the package: ``python -m
    mlaudit.verify`` imports the package first, which must not import the module it runs."""
    from . import verify
    return verify

FILE = "checkpoint"
_TRANSIENT = frozenset((408, 425, 429))


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes
    note: str


def parse_note(note: Any) -> Checkpoint:
    """The checkpoint in a signed note (its signatures are not checked); raises
    :class:`mlaudit.verify.VerificationError`."""
    v = _verify()
    if not isinstance(note, str):
        raise v.VerificationError("the checkpoint is not a string")
    i = note.find("\n\n")
    if i < 0:
        raise v.VerificationError("the checkpoint has no blank line before its signatures")
    origin, size, root = v.parse_checkpoint_body(note[: i + 1].encode("utf-8"))
    return Checkpoint(origin, size, root, note)


def _same(a: Checkpoint, b: Optional[Checkpoint]) -> bool:
    """The same tree head (origin, size, root), whatever the signatures."""
    return b is not None and a[:3] == b[:3]


def _describe(cp: Checkpoint) -> str:
    return f"size {cp.size} root {base64.b64encode(cp.root).decode()} of {cp.origin!r}"


class CheckpointMonitor:
    """The kept checkpoint of one spool directory and the check of newer ones.

    ``get_json(path)`` fetches a proof: ``(status, parsed JSON, error text)`` (the
    logger's transport, with its token); ``on_failure()`` counts a failure."""

    def __init__(self, directory: str, get_json: Callable[[str], Any],
                 on_failure: Callable[[], None]) -> None:
        self.dir = directory
        self.path = os.path.join(directory, FILE)
        self._get_json = get_json
        self._on_failure = on_failure
        self._reported: Optional[Checkpoint] = None
        self._fetch_error_logged = False
        self.kept = self._load()

    def _load(self) -> Optional[Checkpoint]:
        try:
            with open(self.path, "r", encoding="utf-8", newline="") as f:
                return parse_note(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, _verify().VerificationError) as e:
            log.error("mlaudit: the kept checkpoint %s is unreadable (%s); the next checkpoint "
                      "received is kept without a check", self.path, e)
            return None

    def check(self, note: Any) -> None:
        """Check the checkpoint ``note`` of a receipt against the kept one; keep it when it
        passes (module docstring)."""
        try:
            new = parse_note(note)
        except _verify().VerificationError as e:
            self._fail(None, f"a receipt carries a checkpoint that does not parse: {e}")
            return
        kept = self.kept
        if kept is None:
            self._keep(new)
            return
        if _same(new, kept) or _same(new, self._reported):
            return
        if new.origin != kept.origin:
            self._fail(new, f"a checkpoint of another log: {_describe(new)}, while the "
                            f"kept one is {_describe(kept)}")
        elif new.size < kept.size:
            self._fail(new, f"ROLLBACK: the log's checkpoint has {_describe(new)}, smaller "
                            f"than the kept {_describe(kept)}")
        elif new.size == kept.size:
            self._fail(new, f"FORK: the log's checkpoint has {_describe(new)}, another "
                            f"root than the kept {_describe(kept)}")
        else:
            self._check_proof(kept, new)

    def _check_proof(self, kept: Checkpoint, new: Checkpoint) -> None:
        status, doc, err = self._get_json(
            f"/v1/proof/consistency?from={kept.size}&to={new.size}")
        if status == 200:
            v = _verify()
            try:
                v.verify_consistency(kept.size, new.size, kept.root, new.root,
                                     _proof_of(doc, kept, new))
            except v.VerificationError as e:
                self._fail(new, f"the log's consistency proof from the kept {_describe(kept)} "
                                f"to {_describe(new)} does not verify: {e}")
                return
            self._fetch_error_logged = False
            self._keep(new)
        elif status == 404:
            self._fail(new, f"the log cannot prove that {_describe(new)} extends the kept "
                            f"{_describe(kept)} ({err})")
        elif status is None or status in _TRANSIENT or 500 <= status < 600:
            log.debug("mlaudit: no consistency proof now (%s); checked on a later receipt", err)
        elif not self._fetch_error_logged:
            self._fetch_error_logged = True
            log.error("mlaudit: cannot fetch consistency proofs from the log (%s); the "
                      "checkpoints it sends are checked once it answers", err)

    def _fail(self, new: Optional[Checkpoint], message: str) -> None:
        self._reported = new
        self._on_failure()
        log.error("mlaudit: CONSISTENCY FAILURE: %s; the kept checkpoint (%s) stays the "
                  "trusted one", message, self.path)

    def _keep(self, cp: Checkpoint) -> None:
        """Replace the kept checkpoint: temp file (0600), fsync, rename, fsync the dir."""
        tmp = self.path + ".tmp"
        fd = create_private(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            data = memoryview(cp.note.encode("utf-8"))
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.kept = cp


def _proof_of(doc: Any, kept: Checkpoint, new: Checkpoint) -> List[bytes]:
    """The hashes of a ``GET /v1/proof/consistency`` answer, after checking that it is
    about the two sizes asked and that the log's own checkpoints of them have the same
    roots (another root there is a fork the log signed itself)."""
    VerificationError = _verify().VerificationError
    if not isinstance(doc, dict) or doc.get("from") != kept.size or doc.get("to") != new.size:
        raise VerificationError(f"the answer is not a proof from {kept.size} to {new.size}")
    for name, cp in (("from_checkpoint", kept), ("to_checkpoint", new)):
        if doc.get(name) is not None:
            theirs = parse_note(doc[name])
            if theirs[:3] != cp[:3]:
                raise VerificationError(f"FORK: the log's {name} has {_describe(theirs)}")
    hashes = doc.get("proof")
    if not isinstance(hashes, list):
        raise VerificationError("the answer has no 'proof' list")
    out = []
    for i, h in enumerate(hashes):
        try:
            raw = base64.b64decode(h.encode("ascii"), validate=True)
        except (AttributeError, UnicodeEncodeError, binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise VerificationError(f"proof[{i}] is not the base64 of 32 bytes")
        out.append(raw)
    return out
