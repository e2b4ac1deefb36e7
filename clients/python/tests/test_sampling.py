import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import make_logger
from mlaudit.sampling import Sampler, policy_rate, sampled_in
from server import CLIENT_DIR

VECTORS = os.path.join(os.path.dirname(__file__), "sampling_vectors.json")


def test_known_answer_vectors():
    """The fixed vectors the Rust SDK tests against too."""
    doc = json.load(open(VECTORS, encoding="utf-8"))
    assert len(doc["vectors"]) >= 20
    assert {v["expected_in"] for v in doc["vectors"]} == {True, False}
    for v in doc["vectors"]:
        h = int.from_bytes(hashlib.sha256(v["request_id"].encode()).digest()[:8], "big")
        assert str(h) == v["hash_u64"], v["request_id"]
        if v["threshold_u64"] is not None:
            assert str(int(v["rate"] * 2**64)) == v["threshold_u64"]
        assert sampled_in(v["request_id"], v["rate"]) is v["expected_in"], v


_DECIDE = ("import sys; from mlaudit.sampling import sampled_in; "
           "ids = [f'req-{i}' for i in range(5000)] + [f'r\u00e9q-\u2603-{i}' for i in range(500)]; "
           "print(''.join('1' if sampled_in(r, float(sys.argv[1])) else '0' for r in ids))")


def test_decisions_are_the_same_in_other_processes_whatever_their_hash_seed():
    """The decision is a function of the request id alone: two processes with different
    PYTHONHASHSEED (str and bytes hashes differ between them) decide exactly as this one
    does, so that a request is sampled the same way by every worker."""
    seed1, seed2 = (subprocess.run([sys.executable, "-c", _DECIDE, "0.05"],
                                   capture_output=True, text=True, timeout=60,
                                   env=dict(os.environ, PYTHONPATH=CLIENT_DIR,
                                            PYTHONHASHSEED=seed))
                    for seed in ("1", "2"))
    assert seed1.returncode == seed2.returncode == 0, seed1.stderr + seed2.stderr
    ids = [f"req-{i}" for i in range(5000)] + [f"r\u00e9q-\u2603-{i}" for i in range(500)]
    mine = "".join("1" if sampled_in(r, 0.05) else "0" for r in ids)
    assert seed1.stdout.strip() == seed2.stdout.strip() == mine
    assert "1" in mine and "0" in mine


def test_the_kept_share_is_close_to_the_rate_and_monotone_in_it():
    ids = [f"req-{i}" for i in range(20000)]
    first = [sampled_in(r, 0.05) for r in ids]
    assert 0.04 < sum(first) / len(ids) < 0.06
    # Monotone in the rate: in at 1% implies in at 5%.
    assert all(sampled_in(r, 0.05) for r in ids if sampled_in(r, 0.01))
    assert all(sampled_in(r, 1.0) for r in ids[:100])


def test_policy_validation():
    assert policy_rate("high") == 1.0
    assert policy_rate(("low", 0.02)) == 0.02
    assert policy_rate("low", 0.1) == 0.1
    for bad in [("low", 0.2), ("low", 0.001), ("low", "x"), "medium", ("medium", 0.05), 0.5]:
        with pytest.raises(ValueError):
            policy_rate(bad)
    with pytest.raises(ValueError):
        Sampler({"m": ("low", 0.5)})
    s = Sampler({"churn": ("low", 0.05)}, default_risk="high")
    assert s.decide("churn", None) == (True, 1.0)  # no request id: kept
    assert s.decide("other", "r") == (True, 1.0)


def test_only_predictions_are_sampled(shared_server, tmp_path):
    """A low-risk model's predictions are sampled with sample_rate recorded; governance and
    other stages with the same subject are always kept."""
    lg = make_logger(shared_server, tmp_path / "spool", sampling={"churn-s": ("low", 0.05)})
    ids = [f"churn-req-{i}" for i in range(400)]
    for rid in ids:
        lg.log({"kind": "prediction.served",
                "subject": {"model": "churn-s", "version": "1", "request": rid},
                "attributes": {"inputs": [1], "outputs": [0]}})
        lg.log({"kind": "x.sampling-check", "subject": {"model": "churn-s", "request": rid}})
    lg.governance.policy_changed(policy="sampling/churn-s", old="high", new="low 5%")
    assert lg.flush(30)
    expected = sorted(r for r in ids if sampled_in(r, 0.05))
    got = shared_server.query(model="churn-s", kind="prediction.served")
    assert sorted(e["event"]["subject"]["request"] for e in got) == expected
    assert all(e["event"]["attributes"]["sample_rate"] == 0.05 for e in got)
    assert len(shared_server.query(model="churn-s", kind="x.sampling-check")) == 400
    assert len(shared_server.query(kind="governance.policy_changed")) >= 1
    st = lg.stats()
    assert st["sampled_out"] == 400 - len(expected)
    lg.close()
