"""The credit-risk example, end to end in self-contained mode (needs scikit-learn)."""

import os
import subprocess
import sys

import pytest

from server import CLIENT_DIR, REPO, mlaudit_bin

pytest.importorskip("sklearn")


def test_credit_risk_example_self_contained():
    env = dict(os.environ, MLAUDIT_BIN=mlaudit_bin(), PYTHONPATH=CLIENT_DIR)
    p = subprocess.run([sys.executable, os.path.join(REPO, "examples", "credit-risk", "run.py"),
                        "--self-contained", "--predictions", "200"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "delivered=True" in out and "rejected=0" in out
    for kind in ("data.snapshot_created", "training.run_completed", "registry.approval_granted",
                 "operations.deployed", "prediction.served"):
        assert kind in out, kind
    assert "mlaudit verify-bundle:   exit 0: OK" in out
    assert "python -m mlaudit.verify: exit 0: OK" in out
