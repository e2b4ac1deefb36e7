"""The independent verifier (written from docs/FORMAT.md) against real bundles, tampered
bundles, and the Rust `mlaudit verify-bundle` as a second opinion."""

import base64
import urllib.error
import copy
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import make_logger
from mlaudit.verify import (InputError, VerificationError, leaf_hash, node_hash,
                            parse_verifier_key, root_from_inclusion_path, verify_bundle,
                            verify_note)
from server import CLIENT_DIR, Server, mlaudit_bin, run_cli

# golang.org/x/mod/sumdb/note's published example (package documentation).
GO_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def py_verify(path, key):
    env = dict(os.environ, PYTHONPATH=CLIENT_DIR)
    return subprocess.run([sys.executable, "-m", "mlaudit.verify", str(path), "--key", key],
                          capture_output=True, text=True, env=env, timeout=60)


def rust_verify(path, key):
    return subprocess.run([mlaudit_bin(), "verify-bundle", str(path), "--key", key],
                          capture_output=True, text=True, timeout=60)


# -- units ---------------------------------------------------------------------------------

def test_go_signed_note_known_answer():
    key = parse_verifier_key(GO_KEY)
    assert verify_note(GO_NOTE, key) == GO_TEXT.encode()
    with pytest.raises(VerificationError):
        verify_note(GO_NOTE.replace("cryptography", "cryptographY"), key)
    with pytest.raises(VerificationError, match="no signature by the key"):
        verify_note(GO_TEXT + "\n\u2014 Other x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n", key)


@pytest.mark.parametrize("bad", [
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",   # bad base64
    "PeterNeumann+c74f20a3+AhpjZzZzZzZzZzZzZzZzZzZzZzZzZzZzZzZzZzZzZzZz",  # not type 1
    "PeterNeumann+c74f20a3", "", "+c74f20a3+ARpc",
])
def test_malformed_keys_are_input_errors(bad):
    with pytest.raises(InputError):
        parse_verifier_key(bad)


def _mth(leaves):
    """Naive RFC 9162 MTH."""
    if len(leaves) == 0:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m, leaves):
    """Naive RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return _path(m, leaves[:k]) + [_mth(leaves[k:])]
    return _path(m - k, leaves[k:]) + [_mth(leaves[:k])]


def test_inclusion_against_a_naive_reference():
    leaves = [bytes([i]) * (i + 1) for i in range(33)]
    for n in range(1, len(leaves) + 1):
        root = _mth(leaves[:n])
        for m in range(n):
            p = _path(m, leaves[:n])
            assert root_from_inclusion_path(m, n, leaf_hash(leaves[m]), p) == root
            if p:
                with pytest.raises(VerificationError):
                    root_from_inclusion_path(m, n, leaf_hash(leaves[m]), p[:-1])
                assert root_from_inclusion_path(m, n, leaf_hash(leaves[m]),
                                                [bytes(32)] + p[1:]) != root
            with pytest.raises(VerificationError):
                root_from_inclusion_path(m, n, leaf_hash(leaves[m]), p + [bytes(32)])
        with pytest.raises(VerificationError):
            root_from_inclusion_path(n, n, leaf_hash(leaves[0]), [])


# -- real bundles ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Bundles of one prediction from a real server: as a reader (payload), the same with its
    payload redacted (null), and from `mlaudit prove --out` after the server stopped."""
    d = tmp_path_factory.mktemp("verify")
    srv = Server(str(d / "data")).start()
    lg = make_logger(srv, d / "spool")
    pid = "7d1e3f00-0000-4000-8000-0000000000aa"
    for i in range(37):  # a tree of a few levels, the event in the middle
        if i == 21:
            lg.log({"id": pid, "kind": "prediction.served",
                    "subject": {"model": "credit-risk", "version": "7", "request": "r-21"},
                    "attributes": {"inputs": {"income": 52000}, "outputs": {"p": 0.12}}})
        lg.log({"kind": "x.filler", "subject": {"run": f"run-{i}"}, "attributes": {"i": i}})
    assert lg.flush(30)
    lg.close()
    with pytest.raises(urllib.error.HTTPError) as refused:
        srv.get(f"/v1/proof/inclusion/{pid}", token=None)
    assert refused.value.code == 401, "a full bundle is reader data"
    reader = srv.get(f"/v1/proof/inclusion/{pid}")
    # A bundle whose payload was redacted (erased) still verifies: the entry commits to its digest.
    out = {"redacted": dict(reader, payload=None), "reader": reader}
    srv.stop()
    run_cli(srv.data, "prove", pid, "--out", str(d / "prove.json"))
    out["cli"] = json.load(open(d / "prove.json"))
    # Erased: the bundle names the governance event that removed the payload.
    run_cli(srv.data, "erase", "--subject", "request=r-21", "--reason", "DSR-7")
    run_cli(srv.data, "prove", pid, "--out", str(d / "erased.json"))
    out["erased"] = json.load(open(d / "erased.json"))
    for name, b in out.items():
        (d / f"{name}.json").write_text(json.dumps(b))
    return d, srv.verifier_key, out


def test_accepts_bundles_from_the_server(bundles):
    d, key, out = bundles
    assert out["redacted"]["payload"] is None and out["reader"]["payload"] is not None
    for name, b in out.items():
        res = verify_bundle(b, key)
        assert res.ok, (name, res.reason)
        assert res.entry.kind == "prediction.served"
        assert res.entry.subject == {"model": "credit-risk", "version": "7", "request": "r-21"}
        assert res.payload_checked is (b["payload"] is not None)
        assert (res.payload_erased_by is not None) is (name == "erased")
        p = py_verify(d / f"{name}.json", key)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("OK: event 7d1e3f00-0000-4000-8000-0000000000aa")
    # the key from a file works too
    (d / "vkey").write_text(key + "\n")
    assert py_verify(d / "cli.json", str(d / "vkey")).returncode == 0


def test_an_erased_payload_is_proven_removed_by_an_erasure(bundles, tmp_path):
    d, key, out = bundles
    erased = out["erased"]
    assert erased["payload"] is None and erased["event"]["attributes"] == "[redacted]"
    res = verify_bundle(erased, key)
    assert res.ok, res.reason
    assert res.payload_erased_by.kind == "governance.payload_erased"
    assert "payload removed by governance.payload_erased" in res.summary()
    # The removal must be a removal event of the same tree, and only of a payload-less bundle.
    forged = {
        "another event's leaf": lambda b: b["payload_erased_by"].update(
            entry=out["reader"]["entry"], leaf_index=out["reader"]["leaf_index"],
            inclusion_path=out["reader"]["inclusion_path"]),
        "removal path element": lambda b: b["payload_erased_by"]["inclusion_path"].__setitem__(
            0, _flip_b64(b["payload_erased_by"]["inclusion_path"][0])),
        "payload put back": lambda b: b.__setitem__("payload", out["reader"]["payload"]),
        "removal payload altered": lambda b: b["payload_erased_by"].__setitem__(
            "payload", _flip_b64(b["payload_erased_by"]["payload"], 40)),
    }
    for what, forge in forged.items():
        b = copy.deepcopy(erased)
        forge(b)
        assert not verify_bundle(b, key).ok, what
        path = tmp_path / "forged.json"
        path.write_text(json.dumps(b))
        assert py_verify(path, key).returncode == 1, what
        assert rust_verify(path, key).returncode == 1, what


def _flip_b64(s, index=0):
    raw = bytearray(base64.b64decode(s))
    raw[index % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _tamper_checkpoint_line(b, line_no, fn):
    body, sig = b["checkpoint"].split("\n\n", 1)
    lines = body.split("\n")
    lines[line_no] = fn(lines[line_no])
    b["checkpoint"] = "\n".join(lines) + "\n\n" + sig


def _tamper_sig(b):
    body, sig = b["checkpoint"].rsplit("\n\n", 1)
    dash_name, blob = sig.rstrip("\n").rsplit(" ", 1)
    b["checkpoint"] = body + "\n\n" + dash_name + " " + _flip_b64(blob, 30) + "\n"


TAMPERS = {
    "entry byte (event time)": lambda b: b.__setitem__("entry", _flip_b64(b["entry"], 12)),
    "entry byte (kind)": lambda b: b.__setitem__("entry", _flip_b64(b["entry"], 80)),
    "entry seq": lambda b: b.__setitem__("entry", _flip_b64(b["entry"], 8)),
    "payload byte": lambda b: b.__setitem__("payload", _flip_b64(b["payload"], 5)),
    "path element": lambda b: b["inclusion_path"].__setitem__(
        1, _flip_b64(b["inclusion_path"][1])),
    "path element dropped": lambda b: b["inclusion_path"].pop(),
    "checkpoint root": lambda b: _tamper_checkpoint_line(b, 2, lambda s: _flip_b64(s, 3)),
    "checkpoint size": lambda b: _tamper_checkpoint_line(b, 1, lambda s: str(int(s) + 1)),
    "checkpoint signature": _tamper_sig,
    "checkpoint signature removed": lambda b: b.__setitem__(
        "checkpoint", b["checkpoint"].rsplit("\n\n", 1)[0] + "\n\n"),
    "leaf_index": lambda b: b.__setitem__("leaf_index", b["leaf_index"] + 1),
    "tree_size": lambda b: b.__setitem__("tree_size", b["tree_size"] + 1),
    "format": lambda b: b.__setitem__("format", "mlaudit-proof-bundle/v0"),
}


@pytest.mark.parametrize("what", sorted(TAMPERS))
def test_rejects_tampered_bundles(bundles, what, tmp_path):
    d, key, out = bundles
    b = copy.deepcopy(out["reader"])
    TAMPERS[what](b)
    res = verify_bundle(b, key)
    assert not res.ok and res.reason
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(b))
    p = py_verify(path, key)
    assert p.returncode == 1, (what, p.stdout, p.stderr)
    assert "FAILED" in p.stderr
    # A second opinion: the Rust verifier rejects it too.
    assert rust_verify(path, key).returncode == 1, what


def test_other_signers_are_ignored(bundles):
    """A cosignature by another key (a witness) does not affect the result."""
    d, key, out = bundles
    b = copy.deepcopy(out["reader"])
    blob = base64.b64encode(b"\x01\x02\x03\x04" + bytes(64)).decode()
    b["checkpoint"] += f"\u2014 witness.example {blob}\n"
    assert verify_bundle(b, key).ok


def test_rejects_a_wrong_key(bundles, tmp_path):
    d, key, out = bundles
    other = Server(str(tmp_path / "other"), origin="test.example")  # same name, other key
    p = py_verify(d / "reader.json", other.verifier_key)
    assert p.returncode == 1 and "no signature by the key" in p.stderr
    elsewhere = Server(str(tmp_path / "elsewhere"), origin="elsewhere.example")
    assert py_verify(d / "reader.json", elsewhere.verifier_key).returncode == 1


def test_usage_and_input_errors_exit_2(bundles, tmp_path):
    d, key, out = bundles
    assert py_verify(tmp_path / "missing.json", key).returncode == 2
    (tmp_path / "notjson").write_text("{nope")
    assert py_verify(tmp_path / "notjson", key).returncode == 2
    assert py_verify(d / "reader.json", "not-a-key").returncode == 2
    env = dict(os.environ, PYTHONPATH=CLIENT_DIR)
    p = subprocess.run([sys.executable, "-m", "mlaudit.verify", str(d / "reader.json")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2


# Runs ``python -m mlaudit.verify ARGS`` in a process where ``cryptography`` cannot be
# imported (a meta-path finder refuses it), whether or not it is installed.
_WITHOUT_CRYPTOGRAPHY = """
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "cryptography" or name.startswith("cryptography."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
sys.argv = ["mlaudit.verify"] + sys.argv[1:]
runpy.run_module("mlaudit.verify", run_name="__main__", alter_sys=True)
"""


def test_without_cryptography_the_command_says_how_to_install_it(bundles):
    d, key, out = bundles
    env = dict(os.environ, PYTHONPATH=CLIENT_DIR)
    p = subprocess.run([sys.executable, "-c", _WITHOUT_CRYPTOGRAPHY, str(d / "reader.json"),
                        "--key", key], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert "pip install 'mlaudit[verify]'" in lines[0] and "cryptography" in lines[0]
    # The same command with the module importable verifies the bundle.
    ok = subprocess.run([sys.executable, "-c", _WITHOUT_CRYPTOGRAPHY.replace(
        '"cryptography"', '"no-such-module"').replace('"cryptography."', '"no-such-module."'),
        str(d / "reader.json"), "--key", key], capture_output=True, text=True, env=env,
        timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stderr


def test_both_verifiers_agree_on_the_genuine_bundles(bundles):
    d, key, out = bundles
    for name in out:
        assert rust_verify(d / f"{name}.json", key).returncode == 0
        assert py_verify(d / f"{name}.json", key).returncode == 0
