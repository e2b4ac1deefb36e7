"""MLflow: a real `mlflow server` (sqlite backend) sends signed registry webhooks to a real
`mlaudit serve`; `mlaudit import mlflow` backfills the same server over its REST API.

One MLflow server for the module; the story (a run, a registered model, a version from the
run, tags, aliases, a prompt) is played once and each test checks part of what reached the
log."""

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from .harness import (ConfiguredServer, error_code, free_port, mlaudit_import, need,
                      request, wait_until)

mlflow = need("mlflow")
from mlflow import MlflowClient  # noqa: E402

SECRET = "mlflow-webhook-secret-" + uuid.uuid4().hex[:12]
WEBHOOK_PATH = "/v1/integrations/mlflow/webhook"
EVENTS = ["registered_model.created", "model_version.created", "model_version_tag.set",
          "model_version_tag.deleted", "model_version_alias.created",
          "model_version_alias.deleted", "prompt.created", "prompt_version.created",
          "prompt_tag.set", "prompt_tag.deleted", "prompt_version_tag.set",
          "prompt_version_tag.deleted", "prompt_alias.created", "prompt_alias.deleted"]


def start_mlflow(workdir: str) -> tuple:
    """A running `mlflow server` (uvicorn, 1 worker, sqlite) in its own process group (it
    starts uvicorn and job-runner children): (process, URL)."""
    from cryptography.fernet import Fernet
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ,
               # Without a stable key each worker encrypts webhook secrets with its own
               # random key and deliveries are silently dropped.
               MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode(),
               MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
               MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
               MLFLOW_WEBHOOK_CACHE_TTL="1")
    log = open(os.path.join(workdir, "mlflow-server.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
         "--default-artifact-root", f"{workdir}/artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}; see {log.name}")
        if not _port_open(port):
            return False
        try:
            return request("GET", url + "/health", timeout=5)[0] == 200
        except OSError:  # still starting (the first start runs the database migrations)
            return False

    try:
        wait_until(healthy, timeout=90, interval=0.3, what="mlflow server /health")
    except BaseException:
        stop_mlflow(proc)
        raise
    return proc, url


def stop_mlflow(proc) -> None:
    """SIGTERM to the server's whole process group, SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the server
    except ProcessLookupError:
        pass
    proc.wait()


def _port_open(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A running mlflow server, an mlaudit server receiving its webhooks, and the story."""
    work = str(tmp_path_factory.mktemp("mlflow"))
    proc, mlflow_url = start_mlflow(work)
    try:
        audit = ConfiguredServer(os.path.join(work, "audit", "data"), f"""
[integrations.mlflow]
webhook_secret = "{SECRET}"
tracking_uri = "{mlflow_url}"
""").start()
    except BaseException:
        stop_mlflow(proc)
        raise
    try:
        mlflow.set_tracking_uri(mlflow_url)
        client = MlflowClient(mlflow_url)
        hook = client.create_webhook(name="mlaudit", url=audit.url + WEBHOOK_PATH, events=EVENTS,
                                     secret=SECRET, description="audit trail")
        s = uuid.uuid4().hex[:8]
        story = {"client": client, "audit": audit, "mlflow_url": mlflow_url, "hook": hook,
                 "experiment": f"credit-exp-{s}", "model": f"credit-risk-{s}",
                 "prompt": f"credit-prompt-{s}"}
        play(story)
        yield story
    finally:
        audit.stop()
        stop_mlflow(proc)


def play(story):
    client, audit, model = story["client"], story["audit"], story["model"]
    mlflow.set_experiment(story["experiment"])
    with mlflow.start_run(run_name="train-credit") as run:
        mlflow.log_params({"lr": "0.1", "max_depth": "4", "random_seed": "42"})
        for step, (auc, loss) in enumerate([(0.71, 0.9), (0.78, 0.6), (0.83, 0.4)]):
            mlflow.log_metric("auc", auc, step=step)
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_text("weights", "model/model.pkl")
    story["run_id"] = run.info.run_id
    story["artifact_uri"] = run.info.artifact_uri

    client.create_registered_model(model, tags={"team": "risk"}, description="credit risk")
    mv = client.create_model_version(model, source=f"{run.info.artifact_uri}/model",
                                     run_id=run.info.run_id, tags={"t": "1"},
                                     description="first version")
    story["version"] = mv.version
    client.set_model_version_tag(model, mv.version, "validated", "yes")
    client.delete_model_version_tag(model, mv.version, "validated")
    client.set_registered_model_alias(model, "champion", mv.version)
    # Deletions name no version: mlaudit takes it from the alias's last assignment in the log,
    # so the assignment must be there first (MLflow delivers from a thread pool, in any order).
    audit.wait_events(lambda e: e["attributes"].get("to_stage") == "champion",
                      kind="registry.stage_changed", model=model)
    client.delete_registered_model_alias(model, "champion")
    client.set_registered_model_alias(model, "challenger", mv.version)  # stays, for the import
    p = mlflow.genai.register_prompt(name=story["prompt"], template="Score {{applicant}}.",
                                     commit_message="first prompt", tags={"use": "credit"})
    story["prompt_version"] = p.version


def mlflow_events(audit, **filters):
    return [e for e in audit.events(**filters)
            if e.get("principal") == "integration:mlflow-webhook"]


# -- webhooks from the real server -------------------------------------------------------

def test_registered_model_created(env):
    audit, model = env["audit"], env["model"]
    [e] = audit.wait_events(lambda e: True, kind="x.mlflow.registered_model.created",
                            model=model)
    assert e["subject"] == {"model": model}
    assert e["principal"] == "integration:mlflow-webhook"
    assert e["actor"] == {"id": "mlflow", "type": "service"}
    assert e["attributes"]["human_actor"] == "unknown"
    body = e["attributes"]["mlflow"]
    assert (body["entity"], body["action"]) == ("registered_model", "created")
    assert body["data"] == {"name": model, "tags": {"team": "risk"},
                            "description": "credit risk"}


def test_model_version_created_is_a_registration(env):
    audit, model = env["audit"], env["model"]
    [e] = audit.wait_events(lambda e: True, kind="registry.model_registered", model=model)
    assert e["subject"] == {"model": model, "version": env["version"], "run": env["run_id"]}
    # The OSS tracking server reports no user_id for a version: the lookup finds nobody.
    assert e["actor"] == {"id": "mlflow", "type": "service"}
    assert e["attributes"]["human_actor"] == "unknown"
    assert e["attributes"]["unreported"] == ["artifact_sha256"]
    data = e["attributes"]["mlflow"]["data"]
    assert data["run_id"] == env["run_id"]
    assert data["source"] == f"{env['artifact_uri']}/model"
    assert data["tags"] == {"t": "1"}


def test_version_tag_set_and_deleted(env):
    audit, model = env["audit"], env["model"]
    [s] = audit.wait_events(lambda e: True, kind="x.mlflow.model_version_tag.set", model=model)
    [d] = audit.wait_events(lambda e: True, kind="x.mlflow.model_version_tag.deleted",
                            model=model)
    assert s["subject"] == d["subject"] == {"model": model, "version": env["version"]}
    assert s["attributes"]["mlflow"]["data"] == {"name": model, "version": env["version"],
                                                  "key": "validated", "value": "yes"}
    assert d["attributes"]["mlflow"]["data"] == {"name": model, "version": env["version"],
                                                  "key": "validated"}


def test_alias_set_and_deleted(env):
    audit, model, version = env["audit"], env["model"], env["version"]
    changes = audit.wait_events(lambda e: e["principal"] == "integration:mlflow-webhook",
                                count=3, kind="registry.stage_changed", model=model)
    by = {(e["attributes"]["mlflow"]["data"]["alias"], e["attributes"]["mlflow"]["action"]): e
          for e in changes}
    created = by[("champion", "created")]
    assert created["subject"] == {"model": model, "version": version}
    assert created["attributes"]["to_stage"] == "champion"
    assert created["attributes"]["alias"] is True
    deleted = by[("champion", "deleted")]
    # MLflow's deletion names no version: it is the one the log last saw the alias assigned to.
    assert "version" not in deleted["attributes"]["mlflow"]["data"]
    assert deleted["subject"] == {"model": model, "version": version}
    assert deleted["attributes"]["from_stage"] == "champion"
    assert deleted["attributes"]["to_stage"] == "none"
    assert deleted["attributes"]["alias"] is True
    assert by[("challenger", "created")]["attributes"]["to_stage"] == "challenger"


def test_prompt_events(env):
    audit, prompt = env["audit"], env["prompt"]
    found = {}
    for kind in ("x.mlflow.prompt.created", "x.mlflow.prompt_version.created",
                 "x.mlflow.prompt_tag.set"):
        found[kind] = audit.wait_events(lambda e: True, kind=kind, model=prompt)
    [created] = found["x.mlflow.prompt.created"]
    assert created["attributes"]["mlflow"]["data"]["tags"] == {"use": "credit"}
    [pv] = found["x.mlflow.prompt_version.created"]
    assert pv["subject"] == {"model": prompt, "version": str(env["prompt_version"])}
    assert pv["attributes"]["mlflow"]["data"]["template"] == "Score {{applicant}}."
    # A prompt is not a model version: it never becomes a registration.
    assert audit.events(kind="registry.model_registered", model=prompt) == []


def test_deliveries_are_stored_once_each(env):
    """Every MLflow delivery of the story is stored once (MLflow's retries reuse its id)."""
    audit = env["audit"]

    def mine():
        return [e for e in mlflow_events(audit)
                if e["subject"].get("model") in (env["model"], env["prompt"])]
    # 7 for the model (created, version, tag set and deleted, 3 alias changes), 3 for the
    # prompt (created, its version, MLflow's internal experiment-ids tag).
    found = wait_until(lambda: (lambda m: m if len(m) >= 10 else None)(mine()), timeout=30,
                       what="the story's 10 deliveries")
    ids = [e["attributes"]["delivery_id"] for e in found]
    assert len(ids) == len(set(ids)) == 10, [e["kind"] for e in found]


# -- deliveries crafted here (bad signatures, replays) -----------------------------------

def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body,
                   hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def crafted(model: str) -> bytes:
    return json.dumps({"entity": "model_version_tag", "action": "set",
                       "timestamp": "2026-12-04T17:38:56.611458+00:00",
                       "data": {"name": model, "version": "3", "key": "reviewed",
                                "value": "yes"}}).encode()


def deliver(audit, body: bytes, delivery_id: str, timestamp: str, signature=None):
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
               "X-MLflow-Timestamp": timestamp}
    if signature is not None:
        headers["X-MLflow-Signature"] = signature
    status, doc, _ = request("POST", audit.url + WEBHOOK_PATH, body, headers)
    return status, doc


@pytest.mark.parametrize("case", ["wrong secret", "modified body", "no signature",
                                  "stale timestamp", "future timestamp"])
def test_refused_delivery_writes_nothing(env, case):
    audit = env["audit"]
    model = f"crafted-{uuid.uuid4().hex[:8]}"
    body, did, now = crafted(model), str(uuid.uuid4()), int(time.time())
    ts = str(now)
    sig = sign(SECRET, did, ts, body)
    if case == "wrong secret":
        sig = sign("not-the-secret-at-all", did, ts, body)
    elif case == "modified body":
        body = body.replace(b'"yes"', b'"no!"')
    elif case == "no signature":
        sig = None
    elif case == "stale timestamp":
        ts = str(now - 400)
        sig = sign(SECRET, did, ts, body)
    elif case == "future timestamp":
        ts = str(now + 400)
        sig = sign(SECRET, did, ts, body)
    status, doc = deliver(audit, body, did, ts, sig)
    assert status == 401, (status, doc)
    assert isinstance(doc, dict) and doc.get("error", {}).get("message"), doc
    assert audit.events(model=model) == []


def test_signed_delivery_and_its_replay(env):
    audit = env["audit"]
    model = f"crafted-{uuid.uuid4().hex[:8]}"
    body, did, ts = crafted(model), str(uuid.uuid4()), str(int(time.time()))
    sig = sign(SECRET, did, ts, body)
    status, first = deliver(audit, body, did, ts, sig)
    assert status == 200, first
    assert len(first["events"]) == 1 and first["events"][0]["duplicate"] is False
    assert first["tree_size"] > first["events"][0]["seq"]
    assert first["checkpoint"]
    status, again = deliver(audit, body, did, ts, sig)
    assert status == 200, again
    assert again["events"][0]["id"] == first["events"][0]["id"]
    assert again["events"][0]["duplicate"] is True
    [e] = audit.events(model=model)
    assert e["id"] == first["events"][0]["id"]
    assert e["kind"] == "x.mlflow.model_version_tag.set"
    assert e["subject"] == {"model": model, "version": "3"}
    assert e["attributes"]["mlflow"] == json.loads(body)
    assert e["attributes"]["delivery_id"] == did
    # MLflow's own timestamp is the event's time.
    assert e["time"].startswith("2026-12-04T17:38:56.611458")


def test_rotated_secret_signatures(env):
    """Several space-separated signatures: one that matches is enough."""
    audit = env["audit"]
    model = f"crafted-{uuid.uuid4().hex[:8]}"
    body, did, ts = crafted(model), str(uuid.uuid4()), str(int(time.time()))
    sig = sign("the-previous-secret-x", did, ts, body) + " " + sign(SECRET, did, ts, body)
    status, doc = deliver(audit, body, did, ts, sig)
    assert status == 200, doc
    assert [e["kind"] for e in audit.events(model=model)] == ["x.mlflow.model_version_tag.set"]


def test_signed_delivery_that_is_not_json(env):
    audit = env["audit"]
    body, did, ts = b"<html>not json</html>", str(uuid.uuid4()), str(int(time.time()))
    before = audit.count()
    status, doc = deliver(audit, body, did, ts, sign(SECRET, did, ts, body))
    assert status == 400, doc
    assert audit.count() == before


def test_alias_deleted_that_the_log_never_saw_assigned(env):
    """MLflow's deletion names no version; without an assignment in the log there is no
    stage change to record honestly: it is kept as x.mlflow.model_version_alias.deleted."""
    audit = env["audit"]
    model = f"crafted-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"entity": "model_version_alias", "action": "deleted",
                       "timestamp": "2026-12-04T17:38:57.729266+00:00",
                       "data": {"name": model, "alias": "champion"}}).encode()
    did, ts = str(uuid.uuid4()), str(int(time.time()))
    status, doc = deliver(audit, body, did, ts, sign(SECRET, did, ts, body))
    assert status == 200, doc
    [e] = audit.events(model=model)
    assert e["kind"] == "x.mlflow.model_version_alias.deleted"
    assert e["subject"] == {"model": model}


def test_mlflow_test_endpoint(env):
    """MLflow's own "test webhook" call (a canned, signed model_version_alias.created)."""
    result = env["client"].test_webhook(env["hook"].webhook_id,
                                        event="model_version_alias.created")
    assert result.success and result.response_status == 200, result
    body = json.loads(result.response_body)
    [e] = [e for e in env["audit"].events(kind="registry.stage_changed", model="example_model")
           if e["id"] == body["events"][0]["id"]]
    assert e["subject"] == {"model": "example_model", "version": "1"}
    assert e["attributes"]["to_stage"] == "example_alias"


def test_receiver_off_without_a_secret(make_server):
    plain = make_server("")
    body, did, ts = crafted("m"), str(uuid.uuid4()), str(int(time.time()))
    status, doc = deliver(plain, body, did, ts, sign(SECRET, did, ts, body))
    assert status == 404, doc
    assert error_code(doc) == "not_enabled"
    assert plain.events(model="m") == []


# -- `mlaudit import mlflow` -------------------------------------------------------------

def test_import_backfills_runs_and_registry_and_is_idempotent(env, tmp_path):
    mlflow_url, model, run_id = env["mlflow_url"], env["model"], env["run_id"]
    target = ConfiguredServer(str(tmp_path / "data"))
    args = ["mlflow", "--tracking-uri", mlflow_url, "--experiment", env["experiment"]]
    first = mlaudit_import(target.data, *args)
    assert first.new > 0, first
    target.start()
    try:
        [started] = target.events(kind="training.run_started", run=run_id)
        assert started["attributes"]["hyperparameters"] == {
            "lr": "0.1", "max_depth": "4", "random_seed": "42"}
        assert started["attributes"]["random_seed"] == 42
        assert started["subject"]["run"] == run_id
        steps = target.events(kind="training.checkpoint_evaluated", run=run_id)
        assert sorted(e["attributes"]["step"] for e in steps) == [0, 1, 2]
        assert {e["attributes"]["step"]: e["attributes"]["metrics"] for e in steps} == {
            0: {"auc": 0.71, "loss": 0.9}, 1: {"auc": 0.78, "loss": 0.6},
            2: {"auc": 0.83, "loss": 0.4}}
        [done] = target.events(kind="training.run_completed", run=run_id)
        # The SDKs' word, with MLflow's own kept beside it.
        assert done["attributes"]["status"] == "succeeded"
        assert done["attributes"]["source_status"] == "FINISHED"
        assert done["attributes"]["duration_s"] >= 0

        [rm] = target.events(kind="x.mlflow.registered_model.created", model=model)
        assert rm["subject"]["model"] == model
        [reg] = target.events(kind="registry.model_registered", model=model)
        assert reg["subject"] == {"model": model, "version": env["version"], "run": run_id}
        aliases = target.events(kind="registry.stage_changed", model=model)
        assert [(a["subject"]["version"], a["attributes"]["to_stage"]) for a in aliases] == [
            (env["version"], "challenger")]
        # The registration leads to the training run through the log's lineage.
        lineage = target.lineage(reg["id"])
        assert lineage["run"] == run_id
        assert {t["kind"] for t in lineage["training"]} >= {
            "training.run_started", "training.checkpoint_evaluated", "training.run_completed"}
        # Prompts are not registered models.
        assert target.events(model=env["prompt"], kind="registry.model_registered") == []
    finally:
        target.stop()
    second = mlaudit_import(target.data, *args)
    assert second.new == 0, second
    assert second.present == first.new + first.present, (first, second)


def test_import_since_leaves_older_records_out(env, tmp_path):
    target = ConfiguredServer(str(tmp_path / "data"))
    r = mlaudit_import(target.data, "mlflow", "--tracking-uri", env["mlflow_url"],
                       "--experiment", env["experiment"], "--since", "2099-01-01T00:00:00Z")
    assert (r.new, r.present) == (0, 0), r
