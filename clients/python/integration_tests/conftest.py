"""Integration tests against the real tools (MLflow, OpenLineage, CloudEvents, KFP, ClearML,
W&B audit logs) and a real `mlaudit serve`. Run them with scripts/integration-tests.sh, which
installs requirements.txt into target/integrations-venv.

A module whose tool is not installed is skipped (harness.need), unless
MLAUDIT_INTEGRATIONS_REQUIRED=1 (the runner sets it), which turns a missing tool into a
failure.

This directory is a package (integration_tests.*) so that its conftest and helpers never take
the module names of ../tests' (`conftest`, `server`) when both are collected at once.
"""

import os
import sys

import pytest

# The SDK under test is the source next to these tests, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from .harness import ConfiguredServer  # noqa: E402


@pytest.fixture
def make_server(tmp_path_factory):
    """A factory of running servers with a given config; all are stopped afterwards."""
    started = []

    def make(config: str = "", start: bool = True, env=None) -> ConfiguredServer:
        d = tmp_path_factory.mktemp("mlaudit")
        s = ConfiguredServer(str(d / "data"), config, env=env)
        started.append(s)
        return s.start() if start else s

    yield make
    for s in started:
        s.stop()
