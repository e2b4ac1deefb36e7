"""W&B audit logs: a JSONL file in the documented format (docs.wandb.ai, "Audit logs": one
flat object per line, snake_case keys, only the keys that apply) → `mlaudit import
wandb-audit`."""

import json
import subprocess

import pytest

from .harness import ConfiguredServer, mlaudit_bin, mlaudit_import

LINES = [
    {"timestamp": "2026-03-02T08:59:51Z", "action": "user:initiate_login",
     "actor_ip": "203.0.113.7", "user_email": "alice@example.com", "response_code": 200},
    {"timestamp": "2026-03-02T09:00:04Z", "action": "user:login", "actor_user_id": "VXNlcjoxMDQy",
     "actor_email": "alice@example.com", "actor_ip": "203.0.113.7", "response_code": 200},
    {"timestamp": "2026-03-02T09:14:22Z", "action": "artifact:create",
     "actor_user_id": "VXNlcjoxMDQy", "actor_email": "alice@example.com",
     "actor_ip": "203.0.113.7", "cli_version": "0.19.8", "entity_asset": "RW50aXR5OjIwMQ==",
     "entity_name": "acme-ml", "project_asset": "UHJvamVjdDozMzAx", "project_name": "credit",
     "artifact_asset": "QXJ0aWZhY3Q6OTg3NjU0",
     "artifact_sequence_asset": "QXJ0aWZhY3RDb2xsZWN0aW9uOjQ1Njc=",
     "artifact_digest": "3f5e8a1c2b7d4e9f0a1b2c3d4e5f6a7b",
     "artifact_qualified_name": "acme-ml/credit/credit-model:v3", "response_code": 200},
    {"timestamp": "2026-03-02T10:02:47Z", "action": "run:update", "actor_user_id": "VXNlcjoxMDQy",
     "actor_email": "alice@example.com", "actor_ip": "203.0.113.7", "cli_version": "0.19.8",
     "entity_name": "acme-ml", "project_asset": "UHJvamVjdDozMzAx", "project_name": "credit",
     "response_code": 200},
    {"timestamp": "2026-03-02T11:30:00Z", "action": "team:invite_user",
     "actor_user_id": "VXNlcjox", "actor_email": "admin@example.com",
     "actor_ip": "198.51.100.4", "entity_asset": "RW50aXR5OjIwMQ==", "entity_name": "acme-ml",
     "user_asset": "VXNlcjozMzAz", "user_email": "bob@example.com", "response_code": 200},
    {"timestamp": "2026-03-02T11:45:00Z", "action": "user:create_api_key",
     "actor_user_id": "VXNlcjozMzAz", "actor_email": "bob@example.com",
     "actor_ip": "192.0.2.55", "user_email": "bob@example.com", "response_code": 200},
    # The docs' table has "artifact:delete   " with trailing spaces: trimmed.
    {"timestamp": "2026-03-02T12:45:13Z", "action": "artifact:delete   ",
     "actor_user_id": "VXNlcjoxMDQy", "actor_email": "alice@example.com",
     "actor_ip": "203.0.113.7", "entity_name": "acme-ml", "project_name": "credit",
     "artifact_asset": "QXJ0aWZhY3Q6OTg3NjAx",
     "artifact_qualified_name": "acme-ml/credit/credit-model:v1", "response_code": 200},
    {"timestamp": "2026-03-02T16:05:39Z", "action": "project:delete",
     "actor_user_id": "VXNlcjozMzAz", "actor_email": "bob@example.com",
     "actor_ip": "192.0.2.55", "entity_name": "acme-ml", "project_asset": "UHJvamVjdDozMzAx",
     "project_name": "credit", "response_code": 403},
    {"timestamp": "2026-03-02T16:30:00Z", "action": "team:uninvite", "actor_user_id": "VXNlcjox",
     "actor_email": "admin@example.com", "entity_name": "acme-ml",
     "user_asset": "VXNlcjozMzAz", "user_email": "bob@example.com", "response_code": 200},
    # anonymize=true leaves the PII out: the actor is known by id only.
    {"timestamp": "2026-03-02T17:00:02Z", "action": "user:logout", "actor_user_id": "VXNlcjoxMDQy",
     "response_code": 200},
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("wandb")
    path = d / "wandb-audit-2026-03-02.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    server = ConfiguredServer(str(d / "data"))
    first = mlaudit_import(server.data, "wandb-audit", str(path))
    second = mlaudit_import(server.data, "wandb-audit", str(path))
    server.start()
    events = [e for e in server.events() if "wandb" in e["attributes"]]
    yield server, first, second, events
    server.stop()


def find(events, action):
    found = [e for e in events if e["attributes"]["action"] == action]
    assert len(found) == 1, (action, found)
    return found[0]


def test_every_line_is_one_event(imported):
    _, first, _, events = imported
    assert first.new == len(LINES) == len(events)
    assert sorted(e["time"][:19] for e in events) == sorted(
        ln["timestamp"][:19] for ln in LINES)


def test_membership_changes_are_access_changes(imported):
    _, _, _, events = imported
    invite = find(events, "team:invite_user")
    assert invite["kind"] == "governance.access_changed"
    assert invite["actor"] == {"id": "admin@example.com", "type": "user"}
    assert (invite["attributes"]["principal"], invite["attributes"]["role"],
            invite["attributes"]["change"]) == ("bob@example.com", "team member", "granted")
    assert invite["attributes"]["system"] == "wandb"
    assert invite["attributes"]["wandb"] == LINES[4]
    assert invite["time"].startswith("2026-03-02T11:30:00")
    # Written by the operator's import (a reserved kind no client token may write).
    assert invite["principal"].endswith("(import wandb-audit)")
    key = find(events, "user:create_api_key")
    assert key["kind"] == "governance.access_changed"
    assert (key["attributes"]["role"], key["attributes"]["change"]) == ("api key", "granted")
    gone = find(events, "team:uninvite")
    assert gone["kind"] == "governance.access_changed"
    assert (gone["attributes"]["principal"], gone["attributes"]["change"]) == (
        "bob@example.com", "revoked")


def test_other_actions_are_custom_events(imported):
    _, _, _, events = imported
    created = find(events, "artifact:create")
    assert created["kind"] == "x.wandb.artifact.create"
    assert created["subject"] == {"model": "acme-ml/credit/credit-model", "version": "v3"}
    assert created["attributes"]["wandb"]["artifact_digest"] == "3f5e8a1c2b7d4e9f0a1b2c3d4e5f6a7b"
    deleted = find(events, "artifact:delete")
    assert deleted["kind"] == "x.wandb.artifact.delete"
    assert deleted["subject"] == {"model": "acme-ml/credit/credit-model", "version": "v1"}
    refused = find(events, "project:delete")
    assert refused["kind"] == "x.wandb.project.delete"
    assert refused["attributes"]["wandb"]["response_code"] == 403
    assert refused["actor"] == {"id": "bob@example.com", "type": "user"}
    assert find(events, "user:login")["kind"] == "x.wandb.user.login"
    assert find(events, "run:update")["kind"] == "x.wandb.run.update"
    anonymous = find(events, "user:logout")
    assert anonymous["actor"] == {"id": "wandb-user:VXNlcjoxMDQy", "type": "user"}
    # No actor at all (a login attempt before authentication).
    assert find(events, "user:initiate_login")["actor"] == {"id": "wandb", "type": "service"}


def test_second_import_writes_nothing(imported):
    _, first, second, _ = imported
    assert (second.new, second.present) == (0, first.new)


def run_import(data, path):
    return subprocess.run([mlaudit_bin(), "--data", data, "import", "wandb-audit", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_import_refuses_a_log_in_use_by_a_server(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text(json.dumps(LINES[1]) + "\n")
    server = ConfiguredServer(str(tmp_path / "data")).start()
    try:
        p = run_import(server.data, path)
        assert p.returncode == 2, p
        assert "in use" in p.stderr, p.stderr
        assert [e for e in server.events() if "wandb" in e["attributes"]] == []
    finally:
        server.stop()


def test_a_bad_line_imports_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text(json.dumps(LINES[1]) + "\n{broken\n" + json.dumps(LINES[2]) + "\n")
    server = ConfiguredServer(str(tmp_path / "data"))
    p = run_import(server.data, path)
    assert p.returncode == 2, p
    assert "line 2" in p.stderr and "nothing was imported" in p.stderr, p.stderr
    server.start()
    try:
        assert [e for e in server.events() if "wandb" in e["attributes"]] == []
    finally:
        server.stop()
