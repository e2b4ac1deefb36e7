"""An independent verifier of mlaudit proof bundles, written from docs/FORMAT.md alone.

Usage::

    python -m mlaudit.verify BUNDLE.json --key VERIFIER_KEY     # key text, or a file holding it

Exit 0 with a one-line ``OK`` summary; 1 with the reason when the bundle does not verify;
2 on usage or input errors (unreadable file, not JSON, a malformed verifier key).

It checks (FORMAT.md §5): the verifier key and its key id; the checkpoint's signed-note
signature by that key (C2SP signed-note, Ed25519 over the body); the checkpoint body
(origin equals the key name, tree size equals ``tree_size``); the entry header (§1, every
rejection rule) and its seq equals ``leaf_index``; the payload's SHA-256 and length
against the entry (when the payload is not null); the RFC 9162 §2.1.3.2 inclusion path
from ``SHA-256(0x00 || entry)`` to the checkpoint's root; and, when the payload was erased or
expired, that ``payload_erased_by`` is a ``governance.payload_erased`` or
``governance.payload_expired`` event included in the same tree. Dependencies: hashlib and the
``cryptography`` package (Ed25519; without it the command says how to install it and exits
2).

It also holds the RFC 9162 §2.1.4.2 check of a consistency proof between two tree heads
(:func:`verify_consistency`, hashlib only), which the logger uses to detect a log that was
rolled back or forked (:mod:`mlaudit.checkpoints`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

BUNDLE_FORMAT = "mlaudit-proof-bundle/v1"
SUBJECT_FIELDS = {1: "model", 2: "version", 3: "dataset", 4: "dataset_version", 5: "run",
                  6: "pipeline_run", 7: "deployment", 8: "request"}
ACTOR_TYPES = {1: "user", 2: "service"}


class VerificationError(Exception):
    """The bundle does not verify (exit 1)."""


class InputError(Exception):
    """The input cannot be used at all: bad key text, unreadable bundle (exit 2)."""


@dataclass
class VerifierKey:
    name: str
    key_id: bytes  # 4 bytes
    public_key: bytes  # 32 bytes


@dataclass
class Entry:
    seq: int
    event_time_ns: int
    receipt_time_ns: int
    event_id: str
    payload_sha256: bytes
    payload_length: int
    actor_type: str
    kind: str
    actor_id: str
    principal: str
    subject: Dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    """``ok`` and ``reason`` always; the rest when the bundle parsed far enough."""
    ok: bool
    reason: str = ""
    origin: Optional[str] = None
    tree_size: Optional[int] = None
    leaf_index: Optional[int] = None
    root: Optional[bytes] = None
    entry: Optional[Entry] = None
    payload_checked: bool = False
    #: The governance event that erased or expired the payload, when the bundle names one.
    payload_erased_by: Optional[Entry] = None

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED: {self.reason}"
        e = self.entry
        payload = "payload digest checked" if self.payload_checked else "payload redacted (null)"
        if self.payload_erased_by is not None:
            r = self.payload_erased_by
            payload = (f"payload removed by {r.kind} event {r.event_id} (leaf {r.seq}, "
                       f"proven in the same tree)")
        return (f"OK: event {e.event_id} ({e.kind}) is leaf {self.leaf_index} of the tree of "
                f"size {self.tree_size} signed by {self.origin}; {payload}")


# -- keys and notes (FORMAT.md §3) ------------------------------------------------------------

def _b64(s: Any, what: str, exc=VerificationError) -> bytes:
    if not isinstance(s, str):
        raise exc(f"{what} is not a base64 string")
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise exc(f"{what} is not valid base64 (RFC 4648, padded)") from None


def key_id(name: str, public_key: bytes) -> bytes:
    """First 4 bytes of SHA-256(name || "\\n" || 0x01 || public key)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n\x01" + public_key).digest()[:4]


def parse_verifier_key(text: str) -> VerifierKey:
    """Parse ``<name>+<8 hex key id>+<base64(0x01 || 32-byte key)>`` (raises InputError)."""
    text = text.strip()
    parts = text.split("+", 2)  # the base64 may itself contain '+'
    if len(parts) != 3 or not parts[0]:
        raise InputError(f"verifier key {text[:60]!r}: expected <name>+<key id>+<base64 key>")
    name, hex_id, b64 = parts
    if any(c.isspace() for c in name):
        raise InputError("verifier key: the name contains whitespace")
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise InputError(f"verifier key: key id {hex_id!r} is not 8 lower-case hex digits")
    raw = _b64(b64, "verifier key", InputError)
    if len(raw) != 33 or raw[0] != 0x01:
        raise InputError("verifier key: expected 33 bytes starting with 0x01 (Ed25519), "
                         f"got {len(raw)} bytes" + (f" starting with {raw[0]:#04x}" if raw else ""))
    pub = raw[1:]
    if key_id(name, pub).hex() != hex_id:
        raise InputError(f"verifier key: key id {hex_id} does not match the name and public "
                         f"key (expected {key_id(name, pub).hex()})")
    return VerifierKey(name, bytes.fromhex(hex_id), pub)


#: What to do when the ``cryptography`` package is missing.
INSTALL_HINT = "pip install 'mlaudit[verify]'"


def _ed25519():
    """``(InvalidSignature, Ed25519PublicKey)`` from ``cryptography``; an ImportError that
    says how to install it when it is missing."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as e:
        raise ImportError("checking Ed25519 signatures needs the cryptography package, "
                          f"which cannot be imported ({' '.join(str(e).split())}); "
                          f"install it with: {INSTALL_HINT}") from None
    return InvalidSignature, Ed25519PublicKey


def verify_note(note: str, key: VerifierKey) -> bytes:
    """Check the signed note; return its body bytes (with the final newline)."""
    InvalidSignature, Ed25519PublicKey = _ed25519()

    if not isinstance(note, str):
        raise VerificationError("checkpoint is not a string")
    i = note.rfind("\n\n")
    if i < 0:
        raise VerificationError("checkpoint: no blank line between body and signatures")
    body, sigs = note[: i + 1], note[i + 2:]
    if not sigs:
        raise VerificationError("checkpoint: no signature lines")
    if not sigs.endswith("\n"):
        raise VerificationError("checkpoint: the signature block does not end with a newline")
    pub = Ed25519PublicKey.from_public_bytes(key.public_key)
    verified = 0
    for line in sigs[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise VerificationError(f"checkpoint: signature line {line[:40]!r} does not start "
                                    "with an em dash and a space")
        parts = line[2:].split(" ")
        if len(parts) != 2:
            raise VerificationError(f"checkpoint: malformed signature line {line[:60]!r}")
        name, b64 = parts
        blob = _b64(b64, f"checkpoint: signature of {name!r}")
        if len(blob) < 5:
            raise VerificationError(f"checkpoint: signature of {name!r} is too short")
        if name != key.name or blob[:4] != key.key_id:
            continue  # another signer (a witness): ignored
        if len(blob) != 4 + 64:
            raise VerificationError(f"checkpoint: signature by {name} is {len(blob) - 4} bytes, "
                                    "not 64")
        try:
            pub.verify(blob[4:], body.encode("utf-8"))
        except InvalidSignature:
            raise VerificationError(f"checkpoint: the signature by {name} "
                                    f"(key id {key.key_id.hex()}) does not verify") from None
        verified += 1
    if verified == 0:
        raise VerificationError(f"checkpoint: no signature by the key {key.name}+"
                                f"{key.key_id.hex()}")
    return body.encode("utf-8")


def parse_checkpoint_body(body: bytes) -> Tuple[str, int, bytes]:
    """(origin, tree size, root) of a tlog-checkpoint body; extension lines are ignored."""
    lines = body.decode("utf-8").split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise VerificationError("checkpoint body: expected origin, size and root lines")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not size_s.isdigit() or not size_s.isascii() or (size_s != "0" and size_s[0] == "0"):
        raise VerificationError(f"checkpoint body: size {size_s!r} is not a decimal number "
                                "without leading zeros")
    root = _b64(root_s, "checkpoint body: root")
    if len(root) != 32:
        raise VerificationError(f"checkpoint body: root is {len(root)} bytes, not 32")
    return origin, int(size_s), root


# -- the entry header (FORMAT.md §1) ----------------------------------------------------------

def parse_entry(b: bytes) -> Entry:
    """Decode an entry header, applying every rejection rule of FORMAT.md §1."""
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(b):
            raise VerificationError(f"entry: truncated in {what} (offset {pos}, "
                                    f"{len(b)} bytes)")
        out = b[pos: pos + n]
        pos += n
        return out

    def text(n: int, what: str) -> str:
        raw = take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationError(f"entry: {what} is not valid UTF-8") from None

    version = take(1, "version")[0]
    if version != 1:
        raise VerificationError(f"entry: version {version}, expected 1")
    seq, etime, rtime = struct.unpack(">Qqq", take(24, "seq and times"))
    eid = str(uuid.UUID(bytes=take(16, "event id")))
    digest = take(32, "payload SHA-256")
    (plen,) = struct.unpack(">I", take(4, "payload length"))
    at = take(1, "actor type")[0]
    if at not in ACTOR_TYPES:
        raise VerificationError(f"entry: unknown actor type {at:#04x}")
    k = take(1, "kind length")[0]
    if not 1 <= k <= 128:
        raise VerificationError(f"entry: kind length {k} is outside 1..=128")
    kind = text(k, "kind")
    (a,) = struct.unpack(">H", take(2, "actor id length"))
    if not 1 <= a <= 1024:
        raise VerificationError(f"entry: actor id length {a} is outside 1..=1024")
    actor = text(a, "actor id")
    (p,) = struct.unpack(">H", take(2, "principal length"))
    if not 1 <= p <= 1024:
        raise VerificationError(f"entry: principal length {p} is outside 1..=1024")
    principal = text(p, "principal")
    n = take(1, "subject count")[0]
    if n > 8:
        raise VerificationError(f"entry: subject count {n} is above 8")
    subject: Dict[str, str] = {}
    last = 0
    for _ in range(n):
        code = take(1, "subject field code")[0]
        if code not in SUBJECT_FIELDS:
            raise VerificationError(f"entry: unknown subject field code {code}")
        if code <= last:
            raise VerificationError(f"entry: subject field codes not strictly increasing "
                                    f"({last} then {code})")
        last = code
        (v,) = struct.unpack(">H", take(2, "subject value length"))
        if not 1 <= v <= 1024:
            raise VerificationError(f"entry: subject value length {v} is outside 1..=1024")
        subject[SUBJECT_FIELDS[code]] = text(v, f"subject {SUBJECT_FIELDS[code]}")
    if pos != len(b):
        raise VerificationError(f"entry: {len(b) - pos} trailing byte(s) after the last subject")
    return Entry(seq, etime, rtime, eid, digest, plen, ACTOR_TYPES[at], kind, actor, principal,
                 subject)


# -- the Merkle tree (FORMAT.md §2, RFC 9162 §2.1.3.2) -----------------------------------------

def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion_path(leaf_index: int, tree_size: int, leaf: bytes,
                             path: List[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2; raises VerificationError when the path has the wrong shape."""
    if leaf_index >= tree_size:
        raise VerificationError(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise VerificationError("inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion path is shorter than the tree is deep")
    return r


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: List[bytes]) -> None:
    """RFC 9162 §2.1.4.2: check that the tree of ``new_size`` leaves with root
    ``new_root`` extends the tree of ``old_size`` leaves with root ``old_root``, given the
    consistency proof (its hashes in RFC order). Equal sizes need equal roots and an empty
    proof. Raises VerificationError saying what does not hold."""
    if old_size < 1 or old_size > new_size:
        raise VerificationError(f"consistency: sizes {old_size} -> {new_size} are not "
                                "0 < old <= new")
    if old_size == new_size:
        if proof:
            raise VerificationError("consistency: a proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise VerificationError(f"consistency: two different roots for size {old_size}")
        return
    if not proof:
        raise VerificationError("consistency: empty proof between different sizes")
    path = ([old_root] if old_size & (old_size - 1) == 0 else []) + list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency: the proof is longer than the trees need")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency: the proof is shorter than the trees need")
    if not hmac.compare_digest(fr, old_root):
        raise VerificationError(f"consistency: the proof does not lead to the root of "
                                f"size {old_size}")
    if not hmac.compare_digest(sr, new_root):
        raise VerificationError(f"consistency: the proof does not lead to the root of "
                                f"size {new_size}")


# -- the bundle (FORMAT.md §4, §5) --------------------------------------------------------------

#: Kinds of the governance events that remove payloads (FORMAT.md §4).
PAYLOAD_REMOVAL_KINDS = ("governance.payload_erased", "governance.payload_expired")


def _int(bundle: Dict[str, Any], name: str) -> int:
    v = bundle.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise VerificationError(f"bundle: {name} is not a non-negative integer")
    return v


def verify_bundle(bundle: Dict[str, Any], key: Any) -> Result:
    """Verify a proof bundle (a dict, as parsed from JSON) against a verifier key (its text,
    or a :class:`VerifierKey`). Returns a :class:`Result`; ``ok`` is False with ``reason``
    when the bundle does not verify. A malformed key raises :class:`InputError`."""
    vkey = key if isinstance(key, VerifierKey) else parse_verifier_key(key)
    res = Result(ok=False)
    try:
        _verify(bundle, vkey, res)
    except VerificationError as e:
        res.ok, res.reason = False, str(e)
        return res
    res.ok = True
    return res


def _verify(bundle: Any, key: VerifierKey, res: Result) -> None:
    if not isinstance(bundle, dict):
        raise VerificationError("bundle: not a JSON object")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise VerificationError(f"bundle: format {bundle.get('format')!r}, expected "
                                f"{BUNDLE_FORMAT!r}")
    # 2–3: the checkpoint.
    body = verify_note(bundle.get("checkpoint"), key)
    origin, size, root = parse_checkpoint_body(body)
    if origin != key.name:
        raise VerificationError(f"checkpoint origin {origin!r} is not the key name {key.name!r}")
    tree_size = _int(bundle, "tree_size")
    if size != tree_size:
        raise VerificationError(f"checkpoint size {size} != bundle tree_size {tree_size}")
    res.origin, res.tree_size, res.root = origin, tree_size, root
    # 4: the entry.
    entry_bytes = _b64(bundle.get("entry"), "bundle: entry")
    entry = parse_entry(entry_bytes)
    leaf_index = _int(bundle, "leaf_index")
    if entry.seq != leaf_index:
        raise VerificationError(f"entry seq {entry.seq} != bundle leaf_index {leaf_index}")
    res.entry, res.leaf_index = entry, leaf_index
    # 5: the payload.
    payload = bundle.get("payload")
    if payload is not None:
        data = _b64(payload, "bundle: payload")
        if hashlib.sha256(data).digest() != entry.payload_sha256:
            raise VerificationError("payload: its SHA-256 "
                                    f"{hashlib.sha256(data).hexdigest()} is not the entry's "
                                    f"{entry.payload_sha256.hex()}")
        if len(data) != entry.payload_length:
            raise VerificationError(f"payload: {len(data)} bytes, the entry says "
                                    f"{entry.payload_length}")
        res.payload_checked = True
    # 6: the inclusion path.
    _check_inclusion(bundle.get("inclusion_path"), "inclusion_path", leaf_index, tree_size,
                     entry_bytes, root)
    # 7: the governance event that removed the payload, if the bundle names one.
    removal = bundle.get("payload_erased_by")
    if removal is not None:
        if payload is not None:
            raise VerificationError("payload_erased_by is present although the payload is too")
        res.payload_erased_by = _verify_removal(removal, entry.event_id, tree_size, root)


def _check_inclusion(path_in: Any, what: str, leaf_index: int, tree_size: int,
                     entry_bytes: bytes, root: bytes) -> None:
    if not isinstance(path_in, list):
        raise VerificationError(f"bundle: {what} is not a list")
    if len(path_in) > 64:
        raise VerificationError(f"bundle: {what} is longer than 64 hashes")
    path = []
    for i, p in enumerate(path_in):
        h = _b64(p, f"{what}[{i}]")
        if len(h) != 32:
            raise VerificationError(f"{what}[{i}] is {len(h)} bytes, not 32")
        path.append(h)
    computed = root_from_inclusion_path(leaf_index, tree_size, leaf_hash(entry_bytes), path)
    if computed != root:
        raise VerificationError(f"{what}: computed root {computed.hex()} is not the "
                                f"checkpoint root {root.hex()}")


def _verify_removal(removal: Any, event_id: str, tree_size: int, root: bytes) -> Entry:
    if not isinstance(removal, dict):
        raise VerificationError("bundle: payload_erased_by is not a JSON object")
    entry_bytes = _b64(removal.get("entry"), "payload_erased_by: entry")
    entry = parse_entry(entry_bytes)
    leaf_index = _int(removal, "leaf_index")
    if entry.seq != leaf_index:
        raise VerificationError(f"payload_erased_by: entry seq {entry.seq} != its leaf_index "
                                f"{leaf_index}")
    if entry.kind not in PAYLOAD_REMOVAL_KINDS:
        raise VerificationError(f"payload_erased_by names a {entry.kind} event, not a payload "
                                "removal")
    data = _b64(removal.get("payload"), "payload_erased_by: payload")
    if len(data) != entry.payload_length or hashlib.sha256(data).digest() != entry.payload_sha256:
        raise VerificationError("payload_erased_by: its payload is not the one its entry "
                                "commits to")
    try:
        listed = json.loads(data.decode("utf-8"))["attributes"]["events"]
    except (ValueError, KeyError, TypeError):
        listed = None
    if not isinstance(listed, list) or event_id not in listed:
        raise VerificationError(f"payload_erased_by: the removal event does not list event "
                                f"{event_id}")
    _check_inclusion(removal.get("inclusion_path"), "payload_erased_by.inclusion_path",
                     leaf_index, tree_size, entry_bytes, root)
    return entry


# -- command line ---------------------------------------------------------------------------------

def _read_key(arg: str) -> str:
    if os.path.isfile(arg):
        with open(arg, "r", encoding="utf-8") as f:
            return f.read().strip()
    return arg


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlaudit.verify",
                                 description="Verify an mlaudit proof bundle offline "
                                             "(docs/FORMAT.md §5).")
    ap.add_argument("bundle", help="proof bundle JSON file ('-' for standard input)")
    ap.add_argument("--key", required=True, help="verifier key text, or a file holding it")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        _ed25519()
    except ImportError as e:
        print(f"mlaudit.verify: {e}", file=sys.stderr)
        return 2
    try:
        try:
            key = parse_verifier_key(_read_key(args.key))
        except OSError as e:
            raise InputError(f"cannot read the key file {args.key}: {e}") from None
        try:
            if args.bundle == "-":
                text = sys.stdin.read()
            else:
                with open(args.bundle, "r", encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {args.bundle}: {e}") from None
        try:
            bundle = json.loads(text)
        except ValueError as e:
            raise InputError(f"{args.bundle} is not JSON: {e}") from None
    except InputError as e:
        print(f"mlaudit.verify: {e}", file=sys.stderr)
        return 2
    res = verify_bundle(bundle, key)
    if res.ok:
        print(res.summary())
        return 0
    print(f"mlaudit.verify: {args.bundle}: {res.summary()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
