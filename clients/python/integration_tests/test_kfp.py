"""Kubeflow Pipelines: a real two-component KFP v2 pipeline (kfp_pipeline.py), run by KFP's
local SubprocessRunner, whose components record themselves with mlaudit.integrations.kfp
against a real `mlaudit serve`."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from .harness import CLIENT_DIR, HERE, ConfiguredServer, free_port, need

need("kfp")
from kfp.dsl import Dataset, Model  # noqa: E402

from mlaudit.integrations.kfp import RecordError, record_component  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("kfp")
    server = ConfiguredServer(str(d / "data")).start()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [CLIENT_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "kfp_pipeline.py"),
                           "--url", server.url, "--token", server.writer,
                           "--root", str(d / "pipeline_root")],
                          capture_output=True, text=True, timeout=180, cwd=str(d), env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"the pipeline failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    events = [e for e in server.events() if e.get("subject", {}).get("pipeline_run")
              == result["run_id"]]
    yield server, result, events
    server.stop()


def sha256_file(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def sha256_tree(path):
    """The directory digest, computed independently: sha256sum-style lines, sorted."""
    lines = []
    for root, _, files in os.walk(path):
        for n in files:
            full = os.path.join(root, n)
            lines.append(f"{sha256_file(full)}  {os.path.relpath(full, path)}\n")
    lines.sort(key=lambda ln: ln.split("  ", 1)[1])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def one(events, kind, dataset=None):
    found = [e for e in events if e["kind"] == kind
             and (dataset is None or e["subject"].get("dataset") == dataset)]
    assert len(found) == 1, (kind, dataset, found)
    return found[0]


def test_every_component_event_names_the_pipeline_run(pipeline):
    _, result, events = pipeline
    assert result["run_id"].isdigit()  # the local runner's job id; a UUID on a cluster
    assert sorted(e["kind"] for e in events) == sorted([
        "data.transformation_applied", "data.snapshot_created",       # prepare-data
        "data.source_accessed", "registry.model_registered",          # train-model
        "training.run_started",
        "data.transformation_applied", "data.snapshot_created"])
    assert all(e["subject"]["pipeline_run"] == result["run_id"] for e in events)


def test_prepare_data_output(pipeline):
    _, result, events = pipeline
    t = one(events, "data.transformation_applied", "credit/features")
    assert t["attributes"]["inputs"] == []
    assert t["attributes"]["transformation"] == "prepare-data"
    assert t["actor"] == {"id": "kfp:prepare-data", "type": "service"}
    assert t["attributes"]["artifact"]["uri"] == result["data_uri"]
    assert t["attributes"]["artifact"]["type"] == "system.Dataset"
    snap = one(events, "data.snapshot_created", "credit/features")
    digest = sha256_file(result["data_uri"])
    assert snap["attributes"]["content_sha256"] == digest
    assert snap["subject"]["dataset_version"] == digest[:12]
    # The version travelled to the consumer through the artifact's metadata.
    assert result["data_meta"]["dataset_version"] == digest[:12]
    assert result["data_meta"]["content_sha256"] == digest


def test_train_model_input(pipeline):
    _, result, events = pipeline
    src = one(events, "data.source_accessed", "credit/features")
    digest = sha256_file(result["data_uri"])
    assert src["subject"] == {"dataset": "credit/features", "dataset_version": digest[:12],
                              "pipeline_run": result["run_id"]}
    assert src["attributes"]["source"] == "file://" + result["data_uri"]
    assert src["attributes"]["component"] == "train-model"
    assert src["actor"] == {"id": "ml-platform@bank.example", "type": "user"}


def test_train_model_registers_the_model(pipeline):
    _, result, events = pipeline
    reg = one(events, "registry.model_registered")
    assert reg["subject"] == {"model": "credit-risk-kfp", "version": "1",
                              "run": result["run_id"], "pipeline_run": result["run_id"]}
    assert reg["attributes"]["artifact_sha256"] == sha256_tree(result["model_uri"])
    assert reg["attributes"]["inputs"] == ["credit/features"]
    assert reg["attributes"]["source"] == "file://" + result["model_uri"]
    assert "unreported" not in reg["attributes"]


def test_the_models_lineage_reaches_the_pipelines_datasets(pipeline):
    server, result, events = pipeline
    run = one(events, "training.run_started")
    digest = sha256_file(result["data_uri"])
    assert run["subject"] == {"run": result["run_id"], "model": "credit-risk-kfp",
                              "pipeline_run": result["run_id"]}
    assert run["attributes"]["datasets"] == [f"credit/features@{digest[:12]}"]
    with open(os.path.join(result["model_uri"], "weights.json")) as f:
        lr = json.load(f)["lr"]
    assert run["attributes"]["hyperparameters"] == {"lr": lr}
    assert run["attributes"]["random_seed"] == 7
    reg = one(events, "registry.model_registered")
    lineage = server.lineage(reg["id"])
    assert lineage["run"] == result["run_id"]
    [ds] = lineage["datasets"]
    assert (ds["dataset"], ds["version"]) == ("credit/features", digest[:12])
    kinds = sorted(e["kind"] for e in ds["events"])
    assert kinds == ["data.snapshot_created", "data.source_accessed",
                     "data.transformation_applied"], kinds


def test_train_model_output_dataset(pipeline):
    _, result, events = pipeline
    t = one(events, "data.transformation_applied", "credit/scores")
    assert t["attributes"]["inputs"] == ["credit/features"]
    assert t["attributes"]["transformation"] == "train-model"
    snap = one(events, "data.snapshot_created", "credit/scores")
    assert snap["attributes"]["content_sha256"] == sha256_file(result["scores_uri"])


def test_a_retried_component_records_nothing_new(pipeline):
    server, result, events = pipeline
    with open(os.path.join(result["model_uri"], "weights.json")) as f:
        lr = json.load(f)["lr"]
    data = Dataset(name="features", uri=result["data_uri"], metadata=dict(result["data_meta"]))
    model = Model(name="model", uri=result["model_uri"], metadata={})
    scores = Dataset(name="scores", uri=result["scores_uri"],
                     metadata={"dataset": "credit/scores"})
    receipts = record_component(server.url, server.writer, pipeline_run=result["run_id"],
                                component="train-model", inputs={"data": data},
                                outputs={"model": model, "scores": scores},
                                model="credit-risk-kfp", version="1",
                                actor={"id": "ml-platform@bank.example", "type": "user"},
                                hyperparameters={"lr": lr}, random_seed=7)
    assert len(receipts) == 5
    assert all(r["duplicate"] for r in receipts), receipts
    stored = {e["id"] for e in events if e["attributes"]["component"] == "train-model"}
    assert {r["id"] for r in receipts} == stored


def test_a_retry_that_rewrote_the_output_records_the_new_content(pipeline, tmp_path):
    server, _, _ = pipeline
    out = tmp_path / "features.csv"
    out.write_text("age\n1\n")
    kw = dict(pipeline_run="retry-run", component="prepare-data")
    first = record_component(server.url, server.writer, outputs={
        "features": Dataset(name="features", uri=str(out), metadata={"dataset": "retry/features"})},
        **kw)
    out.write_text("age\n2\n")
    second = record_component(server.url, server.writer, outputs={
        "features": Dataset(name="features", uri=str(out), metadata={"dataset": "retry/features"})},
        **kw)
    assert [r["duplicate"] for r in first] == [False, False]
    # The transformation is the same event; the snapshot of other bytes is a new one.
    assert [r["duplicate"] for r in second] == [True, False]
    snaps = server.events(kind="data.snapshot_created", dataset="retry/features")
    assert sorted(s["attributes"]["content_sha256"] for s in snaps) == sorted(
        hashlib.sha256(t).hexdigest() for t in (b"age\n1\n", b"age\n2\n"))


def test_refusals_raise(pipeline):
    server, result, _ = pipeline
    ds = Dataset(name="x", uri="gs://bucket/x.csv", metadata={})
    with pytest.raises(RecordError) as e:
        record_component(server.url, server.reader, pipeline_run="p-1", component="c",
                         inputs={"x": ds}, timeout_s=5)
    assert "403" in str(e.value) and server.reader not in str(e.value)
    with pytest.raises(RecordError) as e:
        record_component(server.url, server.writer, pipeline_run="p" * 2000, component="c",
                         inputs={"x": ds}, timeout_s=5)
    assert "data.source_accessed" in str(e.value) and "pipeline_run" in str(e.value)
    t0 = time.monotonic()
    with pytest.raises(RecordError):
        record_component(f"http://127.0.0.1:{free_port()}", server.writer, pipeline_run="p-1",
                         component="c", inputs={"x": ds}, timeout_s=2, attempts=2)
    assert time.monotonic() - t0 < 10
    assert [e for e in server.events(kind="data.source_accessed")
            if e["subject"].get("pipeline_run") == "p-1"] == []
