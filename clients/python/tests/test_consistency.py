"""Rollback and fork detection: the RFC 9162 consistency check against published vectors
and a naive reference, then the logger's kept checkpoint against a real server and a fake
one that rolls back, forks or sends a bad proof."""

import base64
import logging
import os
import re

import pytest

from conftest import make_logger
from fakelog import consistency_proof, mth, note
from mlaudit.checkpoints import FILE, parse_note
from mlaudit.verify import VerificationError, leaf_hash, verify_consistency
from server import REPO

# transparency-dev/merkle's vectors, as the Rust known-answer test holds them (its module
# docs give their source); read from there, so that both SDKs check the same values.
RUST_VECTORS = os.path.join(REPO, "crates", "mlaudit-core", "tests", "merkle_known_answer.rs")


def _strings(block):
    return re.findall(r'"([0-9a-f]*)"', block)


@pytest.fixture(scope="module")
def vectors():
    src = open(RUST_VECTORS, encoding="utf-8").read()
    leaves = _strings(re.search(r"const LEAVES_HEX: \[&str; 8\] = \[(.*?)\];", src, re.S)[1])
    roots = _strings(re.search(r"const ROOTS: \[&str; 8\] = \[(.*?)\];", src, re.S)[1])
    block = re.search(r"const CONSISTENCY: &\[ConsistencyVector\] = &\[(.*?)\n\];", src, re.S)[1]
    cases = [(int(old), int(new), [bytes.fromhex(h) for h in _strings(proof)])
             for old, new, proof in re.findall(
                 r"old: (\d+),\s*new: (\d+),\s*proof: &\[(.*?)\]", block, re.S)]
    assert len(leaves) == len(roots) == 8 and len(cases) == 5  # the file parsed as expected
    hashes = [leaf_hash(bytes.fromhex(x)) for x in leaves]
    roots = [bytes.fromhex(r) for r in roots]
    assert [mth(hashes[:n]) for n in range(1, 9)] == roots  # the leaves give the roots
    return roots, cases


def flip(h, bit):
    return h[: bit // 8] + bytes([h[bit // 8] ^ (1 << (bit % 8))]) + h[bit // 8 + 1:]


def test_the_published_consistency_proofs_verify(vectors):
    roots, cases = vectors
    for old, new, proof in cases:
        verify_consistency(old, new, roots[old - 1], roots[new - 1], proof)


def test_corrupted_published_proofs_are_rejected(vectors):
    roots, cases = vectors
    for old, new, proof in cases:
        if not proof:
            continue
        r1, r2 = roots[old - 1], roots[new - 1]

        def rejected(o, n, a, b, p):
            with pytest.raises(VerificationError):
                verify_consistency(o, n, a, b, p)

        for o, n in [(old - 1, new), (old + 1, new), (old ^ 2, new), (old, new * 2),
                     (old, new // 2)]:
            rejected(o, n, r1, r2, proof)
        for o in range(1, 9):  # every other pair of sizes, each with its own roots
            for n in range(o, 9):
                if (o, n) != (old, new):
                    rejected(o, n, roots[o - 1], roots[n - 1], proof)
        rejected(old, new, r1, r2, proof[:-1])
        rejected(old, new, r1, r2, proof + [proof[0]])
        rejected(old, new, r1, r2, [])
        for bit in range(256):
            rejected(old, new, flip(r1, bit), r2, proof)
            rejected(old, new, r1, flip(r2, bit), proof)
            for i in range(len(proof)):
                rejected(old, new, r1, r2, proof[:i] + [flip(proof[i], bit)] + proof[i + 1:])


def test_equal_and_impossible_sizes(vectors):
    roots, _ = vectors
    for size in range(1, 9):
        verify_consistency(size, size, roots[size - 1], roots[size - 1], [])
        with pytest.raises(VerificationError):  # one size, two roots: a fork
            verify_consistency(size, size, roots[size - 1], roots[size % 8], [])
        with pytest.raises(VerificationError):
            verify_consistency(size, size, roots[size - 1], roots[size - 1], [roots[0]])
    for old, new in [(2, 1), (0, 3), (0, 0)]:
        with pytest.raises(VerificationError):
            verify_consistency(old, new, roots[0], roots[1], [roots[2]])


def test_every_proof_of_a_naive_reference_verifies():
    hashes = [leaf_hash(bytes([i]) * (i % 7 + 1)) for i in range(33)]
    for n in range(1, 34):
        root = mth(hashes[:n])
        for m in range(1, n + 1):
            proof = consistency_proof(m, hashes[:n])
            verify_consistency(m, n, mth(hashes[:m]), root, proof)
            if proof:
                with pytest.raises(VerificationError):
                    verify_consistency(m, n, mth(hashes[:m]), root, proof[:-1])


# -- the logger's kept checkpoint ----------------------------------------------------------


def kept(spool):
    return open(os.path.join(spool, FILE), encoding="utf-8").read()


def failures_saying(caplog, text):
    return [r for r in caplog.records if r.levelno >= logging.ERROR
            and "CONSISTENCY FAILURE" in r.getMessage() and text in r.getMessage()]


def test_consistent_checkpoints_from_a_real_server_pass(server, tmp_path, delivery):
    """Four batches, each flushed: after each, the kept checkpoint is the server's latest
    (it moves only when the proof from the previous one verified), with no failure."""
    spool = str(tmp_path / "spool")
    lg = make_logger(server, spool, delivery=delivery)
    seen = []
    try:
        for b in range(4):
            for i in range(1 + 7 * b):
                lg.log({"kind": "x.consistent", "attributes": {"b": b, "i": i}})
            assert lg.flush(30) is True
            assert kept(spool) == server.get("/v1/checkpoint", token=None)
            seen.append(parse_note(kept(spool)).size)
        assert lg.stats()["consistency_failures"] == 0
    finally:
        lg.close()
    assert seen == sorted(set(seen)) and len(seen) == 4


def test_a_rollback_is_detected_and_the_old_checkpoint_kept(server, tmp_path, caplog,
                                                            delivery):
    """The kept checkpoint says the log had 1,000 entries; the server's has a few."""
    caplog.set_level(logging.ERROR, logger="mlaudit")
    spool = tmp_path / "spool"
    spool.mkdir()
    larger = note("test.example", 1000, bytes(range(32)))
    (spool / FILE).write_text(larger, encoding="utf-8")
    lg = make_logger(server, spool, delivery=delivery)
    try:
        lg.log({"kind": "x.rollback"})
        assert lg.flush(30) is True  # delivery goes on
        assert lg.stats()["consistency_failures"] == 1
    finally:
        lg.close()
    assert kept(spool) == larger
    if delivery == "thread":  # (the agent logs to its own stderr)
        assert failures_saying(caplog, "ROLLBACK")


def one_batch(lg, tag):
    lg.log({"kind": "x.fake", "attributes": {"tag": tag}})
    assert lg.flush(30) is True


def test_a_fork_is_detected(fake, tmp_path, caplog):
    """The same size with another root (the log answers a batch of duplicates with a
    checkpoint of a history it rewrote)."""
    caplog.set_level(logging.ERROR, logger="mlaudit")
    spool = str(tmp_path / "spool")
    lg = make_logger(fake, spool)
    try:
        one_batch(lg, "a")
        first = kept(spool)
        fake.rewrite_leaf(0)
        fake.appending = False
        one_batch(lg, "b")
        assert lg.stats()["consistency_failures"] == 1
        assert kept(spool) == first
        assert failures_saying(caplog, "FORK")
        one_batch(lg, "c")  # the same failing checkpoint again: not reported twice
        assert lg.stats()["consistency_failures"] == 1
    finally:
        lg.close()


@pytest.mark.parametrize("how", ["corrupted proof", "rewritten history"])
def test_a_bad_consistency_proof_is_detected(fake, tmp_path, caplog, how):
    caplog.set_level(logging.ERROR, logger="mlaudit")
    spool = str(tmp_path / "spool")
    lg = make_logger(fake, spool)
    try:
        one_batch(lg, "a")
        one_batch(lg, "b")
        first = kept(spool)
        assert parse_note(first).size == 2  # the proof from 1 to 2 verified
        if how == "corrupted proof":
            fake.corrupt_proofs = True
        else:
            fake.rewrite_leaf(0)  # the log's proofs are genuine, of another history
        one_batch(lg, "c")
        assert lg.stats()["consistency_failures"] == 1
        assert kept(spool) == first
        assert failures_saying(caplog, "does not verify")
    finally:
        lg.close()


def test_a_rollback_by_a_fake_log_is_detected(fake, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="mlaudit")
    spool = str(tmp_path / "spool")
    lg = make_logger(fake, spool)
    try:
        for tag in "abc":
            one_batch(lg, tag)
        first = kept(spool)
        fake.truncate(1)
        one_batch(lg, "d")  # the log's size is 2 now, below the kept 3
        assert lg.stats()["consistency_failures"] == 1
        assert kept(spool) == first
        assert failures_saying(caplog, "ROLLBACK")
    finally:
        lg.close()


@pytest.mark.parametrize("status", [503, 403])
def test_a_proof_that_cannot_be_fetched_is_checked_on_a_later_receipt(fake, tmp_path, status):
    spool = str(tmp_path / "spool")
    lg = make_logger(fake, spool)
    try:
        one_batch(lg, "a")
        fake.proof_status = status
        one_batch(lg, "b")
        assert parse_note(kept(spool)).size == 1  # not checked yet, not a failure
        fake.proof_status = None
        one_batch(lg, "c")
        assert parse_note(kept(spool)).size == 3  # checked from 1 to 3
        assert lg.stats()["consistency_failures"] == 0
        asked = [p for m, p, _ in fake.requests if p.startswith("/v1/proof/consistency")]
        assert asked == ["/v1/proof/consistency?from=1&to=2",
                         "/v1/proof/consistency?from=1&to=3"]
    finally:
        lg.close()


def test_the_proof_is_asked_with_the_loggers_token(fake, tmp_path):
    lg = make_logger(fake, str(tmp_path / "spool"))
    try:
        one_batch(lg, "a")
        one_batch(lg, "b")
    finally:
        lg.close()
    auth = [a for m, p, a in fake.requests if p.startswith("/v1/proof/consistency")]
    assert auth == [f"Bearer {fake.writer}"]


def test_the_kept_checkpoint_survives_a_restart(fake, tmp_path):
    """A new logger on the same spool directory checks against what the last one kept."""
    spool = str(tmp_path / "spool")
    lg = make_logger(fake, spool)
    one_batch(lg, "a")
    one_batch(lg, "b")
    lg.close()
    fake.truncate(1)
    lg = make_logger(fake, spool)
    try:
        one_batch(lg, "c")  # size 2 again, another root than the kept size-2 checkpoint
        assert lg.stats()["consistency_failures"] == 1
    finally:
        lg.close()


def test_the_kept_file_is_the_note_as_received(fake, tmp_path):
    spool = str(tmp_path / "spool")
    lg = make_logger(fake, spool)
    try:
        one_batch(lg, "a")
    finally:
        lg.close()
    assert kept(spool) == fake.checkpoint()
    cp = parse_note(kept(spool))
    assert (cp.origin, cp.size, base64.b64encode(cp.root).decode()) == \
        ("fake.example", 1, base64.b64encode(mth(fake.leaves)).decode())
    assert not os.path.exists(os.path.join(spool, FILE + ".tmp"))
