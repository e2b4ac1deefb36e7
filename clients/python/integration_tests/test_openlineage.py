"""OpenLineage: the real openlineage-python client (HttpTransport, api_key auth, gzip) posts
RunEvents, JobEvents and DatasetEvents to a real `mlaudit serve`; the batch endpoint and the
refusals are exercised with the client's own serialisation."""

import datetime
import json
import uuid

import pytest

from .harness import ConfiguredServer, by_kind, need, post_json

need("openlineage.client")
from openlineage.client import OpenLineageClient  # noqa: E402
from openlineage.client.event_v2 import (DatasetEvent, InputDataset, Job, JobEvent,  # noqa: E402
                                         OutputDataset, Run, RunEvent, RunState,
                                         StaticDataset)
from openlineage.client.facet_v2 import (dataset_version_dataset,  # noqa: E402
                                         documentation_job, job_type_job, schema_dataset)
from openlineage.client.serde import Serde  # noqa: E402
from openlineage.client.transport.http import HttpConfig, HttpTransport  # noqa: E402
from openlineage.client.uuid import generate_new_uuid  # noqa: E402

PRODUCER = "https://github.com/acme/credit-pipelines"
ACTOR = {"id": f"openlineage:{PRODUCER}", "type": "service"}
NS = "credit-ml"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("openlineage")
    s = ConfiguredServer(str(d / "data"), """
[integrations.openlineage]
training_jobs = ["train_*"]
""").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    cfg = HttpConfig.from_dict({"url": server.url, "endpoint": "api/v1/lineage",
                                "auth": {"type": "api_key", "apiKey": server.writer},
                                "compression": "gzip", "timeout": 10})
    return OpenLineageClient(transport=HttpTransport(cfg))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def versioned(cls, namespace, name, version, **facets):
    return cls(namespace=namespace, name=name, facets=dict(
        facets, version=dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=version)))


def job(name, job_type="JOB"):
    return Job(namespace=NS, name=name, facets={"jobType": job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="CUSTOM", jobType=job_type)})


def lineage_url(server, batch=False):
    return server.url + "/api/v1/lineage" + ("/batch" if batch else "")


def of_run(server, run_id):
    return by_kind(server.events(run=run_id))


@pytest.fixture(scope="module")
def training(server, client):
    """A training job (named train_*) run START and COMPLETE, with two versioned inputs."""
    s = uuid.uuid4().hex[:8]
    run = Run(runId=str(generate_new_uuid()))
    j = job(f"train_credit_{s}")
    schema = schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name="age", type="int"),
        schema_dataset.SchemaDatasetFacetFields(name="income", type="double")])
    inputs = [versioned(InputDataset, "s3://acme-data", f"credit/train-{s}.parquet",
                        "v2024-06-01", schema=schema),
              versioned(InputDataset, "s3://acme-data", f"credit/bureau-{s}.parquet", "17")]
    out = versioned(OutputDataset, "s3://acme-models", f"credit/model-{s}.pkl", "3")
    client.emit(RunEvent(eventType=RunState.START, eventTime=now(), run=run, job=j,
                         producer=PRODUCER, inputs=inputs, outputs=[]))
    client.emit(RunEvent(eventType=RunState.COMPLETE, eventTime=now(), run=run, job=j,
                         producer=PRODUCER, inputs=inputs, outputs=[out]))
    return {"run": run.runId, "job": f"{NS}/train_credit_{s}",
            "train": f"s3://acme-data/credit/train-{s}.parquet",
            "bureau": f"s3://acme-data/credit/bureau-{s}.parquet",
            "model_out": f"s3://acme-models/credit/model-{s}.pkl"}


def test_training_start_is_run_started(server, training):
    kinds = of_run(server, training["run"])
    [started] = kinds["training.run_started"]
    assert started["subject"] == {"run": training["run"], "model": training["job"]}
    assert started["actor"] == ACTOR
    assert started["principal"] == "token:w"
    assert started["attributes"]["datasets"] == [f"{training['train']}@v2024-06-01",
                                                 f"{training['bureau']}@17"]
    # OpenLineage reports neither: they are named, not invented.
    assert set(started["attributes"]["unreported"]) == {"hyperparameters", "random_seed"}
    ol = started["attributes"]["openlineage"]
    assert ol["eventType"] == "START" and ol["run"]["runId"] == training["run"]
    assert ol["schemaURL"].endswith("#/$defs/RunEvent")


def test_training_complete_is_run_completed(server, training):
    kinds = of_run(server, training["run"])
    [done] = kinds["training.run_completed"]
    assert done["subject"] == {"run": training["run"]}
    assert done["attributes"]["status"] == "succeeded"
    assert done["attributes"]["source_status"] == "COMPLETE"
    assert done["attributes"]["openlineage"]["eventType"] == "COMPLETE"


def test_inputs_are_sources_accessed(server, training):
    accessed = of_run(server, training["run"])["data.source_accessed"]
    # Two inputs, each on START and on COMPLETE.
    assert len(accessed) == 4
    train = [e for e in accessed if e["subject"]["dataset"] == training["train"]]
    assert len(train) == 2
    for e in train:
        assert e["subject"] == {"dataset": training["train"], "dataset_version": "v2024-06-01",
                                "run": training["run"]}
        assert e["attributes"]["source"] == training["train"]
        assert [f["name"] for f in e["attributes"]["facets"]["schema"]["fields"]] == [
            "age", "income"]


def test_outputs_are_transformations_and_snapshots(server, training):
    kinds = of_run(server, training["run"])
    [t] = kinds["data.transformation_applied"]
    assert t["subject"] == {"dataset": training["model_out"], "run": training["run"]}
    assert t["attributes"]["inputs"] == [training["train"], training["bureau"]]
    assert t["attributes"]["transformation"]["job"] == training["job"]
    [snap] = server.events(kind="data.snapshot_created", dataset=training["model_out"])
    assert snap["subject"]["dataset_version"] == "3"
    assert snap["attributes"]["unreported"] == ["content_sha256"]


def test_job_type_facet_marks_training(server, client):
    run = Run(runId=str(generate_new_uuid()))
    name = f"fit-scorecard-{uuid.uuid4().hex[:6]}"  # does not match train_*
    client.emit(RunEvent(eventType=RunState.START, eventTime=now(), run=run,
                         job=job(name, "TRAINING"), producer=PRODUCER,
                         inputs=[versioned(InputDataset, "s3://acme-data", "scorecard.csv", "9")]))
    [started] = server.events(kind="training.run_started", run=run.runId)
    assert started["subject"]["model"] == f"{NS}/{name}"
    assert started["attributes"]["datasets"] == ["s3://acme-data/scorecard.csv@9"]


def test_other_jobs_are_custom_run_events(server, client):
    run = Run(runId=str(generate_new_uuid()))
    name = f"etl_daily_{uuid.uuid4().hex[:6]}"
    client.emit(RunEvent(eventType=RunState.RUNNING, eventTime=now(), run=run, job=job(name),
                         producer=PRODUCER))
    [e] = server.events(run=run.runId)
    assert e["kind"] == "x.openlineage.run_event"
    assert e["attributes"]["event_type"] == "RUNNING"
    assert e["attributes"]["job"] == f"{NS}/{name}"


def test_training_start_with_an_unversioned_input(server, client):
    """Most OpenLineage producers send no version facet: such a START must still be recorded
    (the client raises on any non-2xx answer), and the model's lineage still reaches the
    dataset and its data events."""
    run = Run(runId=str(generate_new_uuid()))
    name = f"train_plain_{uuid.uuid4().hex[:6]}"
    client.emit(RunEvent(eventType=RunState.START, eventTime=now(), run=run, job=job(name),
                         producer=PRODUCER, inputs=[InputDataset(namespace="postgres://db:5432",
                                                                 name="risk.applications")]))
    kinds = of_run(server, run.runId)
    [started] = kinds["training.run_started"]
    assert started["subject"]["model"] == f"{NS}/{name}"
    assert started["attributes"]["datasets"] == []  # `dataset@version` entries only
    assert started["attributes"]["unversioned_datasets"] == [
        "postgres://db:5432/risk.applications"]
    [accessed] = kinds["data.source_accessed"]
    assert accessed["subject"] == {"dataset": "postgres://db:5432/risk.applications",
                                   "run": run.runId}
    assert accessed["attributes"]["source"] == "postgres://db:5432/risk.applications"

    reg = {"id": str(uuid.uuid4()), "kind": "registry.model_registered",
           "actor": {"id": "ci", "type": "service"},
           "subject": {"model": f"plain-{uuid.uuid4().hex[:6]}", "version": "1",
                       "run": run.runId},
           "attributes": {"artifact_sha256": "cd" * 32}}
    status, doc = server.post([reg])
    assert status == 200, doc
    lin = server.lineage(reg["id"])
    assert [e["kind"] for e in lin["training"]] == ["training.run_started"]
    assert [(d["dataset"], d["version"]) for d in lin["datasets"]] == [
        ("postgres://db:5432/risk.applications", None)], lin["datasets"]
    assert [e["id"] for e in lin["datasets"][0]["events"]] == [accessed["id"]]


def test_job_event(server, client):
    name = f"train_docs_{uuid.uuid4().hex[:6]}"
    inp = versioned(InputDataset, "s3://acme-data", f"{name}/in.parquet", "1")
    out = OutputDataset(namespace="s3://acme-data", name=f"{name}/out.parquet")
    client.emit(JobEvent(eventTime=now(), producer=PRODUCER, inputs=[inp], outputs=[out],
                         job=Job(namespace=NS, name=name, facets={
                             "documentation": documentation_job.DocumentationJobFacet(
                                 description="documents the job")})))
    [e] = [e for e in server.events(kind="x.openlineage.job_event")
           if e["attributes"]["job"] == f"{NS}/{name}"]
    assert e["actor"] == ACTOR
    assert e["attributes"]["openlineage"]["job"]["facets"]["documentation"]["description"] == \
        "documents the job"
    [src] = server.events(kind="data.source_accessed", dataset=f"s3://acme-data/{name}/in.parquet")
    assert src["subject"] == {"dataset": f"s3://acme-data/{name}/in.parquet",
                              "dataset_version": "1"}  # a JobEvent has no run
    assert src["attributes"]["openlineage_event"] == e["id"]
    [t] = server.events(kind="data.transformation_applied",
                        dataset=f"s3://acme-data/{name}/out.parquet")
    assert t["attributes"]["inputs"] == [f"s3://acme-data/{name}/in.parquet"]
    # The output has no version facet: no snapshot.
    assert server.events(kind="data.snapshot_created",
                         dataset=f"s3://acme-data/{name}/out.parquet") == []


def test_dataset_events(server, client):
    s = uuid.uuid4().hex[:6]
    client.emit(DatasetEvent(eventTime=now(), producer=PRODUCER, dataset=StaticDataset(
        namespace="s3://acme-data", name=f"ds-{s}.parquet", facets={
            "version": dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion="2026-06")})))
    client.emit(DatasetEvent(eventTime=now(), producer=PRODUCER, dataset=StaticDataset(
        namespace="s3://acme-data", name=f"plain-{s}.parquet")))
    [snap] = server.events(dataset=f"s3://acme-data/ds-{s}.parquet")
    assert snap["kind"] == "data.snapshot_created"
    assert snap["subject"] == {"dataset": f"s3://acme-data/ds-{s}.parquet",
                               "dataset_version": "2026-06"}
    assert snap["attributes"]["unreported"] == ["content_sha256"]
    [plain] = server.events(dataset=f"s3://acme-data/plain-{s}.parquet")
    assert plain["kind"] == "x.openlineage.dataset_event"
    assert plain["attributes"]["openlineage"]["schemaURL"].endswith("#/$defs/DatasetEvent")


def test_redelivery_is_stored_once(server, client):
    run = Run(runId=str(generate_new_uuid()))
    ev = RunEvent(eventType=RunState.START, eventTime=now(), run=run,
                  job=job(f"train_retry_{uuid.uuid4().hex[:6]}"), producer=PRODUCER,
                  inputs=[versioned(InputDataset, "s3://acme-data", "retry.parquet", "5")])
    client.emit(ev)
    first = server.events(run=run.runId)
    body = Serde.to_json(ev).encode()
    status, doc = post_json(lineage_url(server), None, token=server.writer, raw=body,
                            gzip_body=True)
    assert status == 200, doc
    # The client adds nothing per send: the same bytes, the same ids, nothing new.
    assert {e["id"] for e in first} == {r["id"] for r in doc["events"]}
    assert all(r["duplicate"] for r in doc["events"])
    assert len(server.events(run=run.runId)) == len(first) == 2


def serialized(ev) -> dict:
    return json.loads(Serde.to_json(ev))


def test_batch_endpoint(server):
    run_a, run_b = (Run(runId=str(generate_new_uuid())) for _ in range(2))
    j = job(f"train_batch_{uuid.uuid4().hex[:6]}")
    inp = versioned(InputDataset, "s3://acme-data", "batch.parquet", "2")
    batch = [serialized(RunEvent(eventType=RunState.START, eventTime=now(), run=r, job=j,
                                 producer=PRODUCER, inputs=[inp])) for r in (run_a, run_b)]
    batch.append(serialized(RunEvent(eventType=RunState.FAIL, eventTime=now(), run=run_b, job=j,
                                     producer=PRODUCER)))
    status, doc = post_json(lineage_url(server, batch=True), batch, token=server.writer,
                            gzip_body=True)
    assert status == 200, doc
    assert doc["openlineage_events"] == 3
    assert len(doc["events"]) == 5  # 3 records + 2 sources accessed
    a, b = of_run(server, run_a.runId), of_run(server, run_b.runId)
    assert [e["attributes"]["datasets"] for e in a["training.run_started"]] == [
        ["s3://acme-data/batch.parquet@2"]]
    assert [e["attributes"]["status"] for e in b["training.run_completed"]] == ["failed"]
    assert [e["attributes"]["source_status"] for e in b["training.run_completed"]] == ["FAIL"]


def test_batch_is_all_or_nothing(server):
    run = Run(runId=str(generate_new_uuid()))
    good = serialized(RunEvent(eventType=RunState.START, eventTime=now(), run=run,
                               job=job(f"train_aon_{uuid.uuid4().hex[:6]}"), producer=PRODUCER))
    bad = dict(good, schemaURL="https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/FooEvent")
    status, doc = post_json(lineage_url(server, batch=True), [good, bad], token=server.writer)
    assert status == 422, doc
    assert "event 1" in doc["error"]["message"]
    assert server.events(run=run.runId) == []


@pytest.mark.parametrize("case", ["unknown schemaURL", "no run, job or dataset"])
def test_unknown_event_type_is_422(server, client, case):
    marker = f"mystery-{uuid.uuid4().hex[:6]}"
    if case == "unknown schemaURL":
        body = {"eventTime": now(), "producer": PRODUCER,
                "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/FooEvent",
                "job": {"namespace": NS, "name": marker}}
    else:
        body = {"eventTime": now(), "producer": PRODUCER, "something": {"name": marker}}
    before = server.count()
    status, doc = post_json(lineage_url(server), body, token=server.writer, gzip_body=True)
    assert status == 422, doc
    assert doc["error"]["message"]
    assert server.count() == before


def test_tokens(server):
    ev = serialized(RunEvent(eventType=RunState.START, eventTime=now(),
                             run=Run(runId=str(generate_new_uuid())),
                             job=job("train_auth"), producer=PRODUCER))
    status, doc = post_json(lineage_url(server), ev)
    assert status == 401, doc
    status, doc = post_json(lineage_url(server), ev, token=server.reader)
    assert status == 403, doc
    assert server.events(run=ev["run"]["runId"]) == []


def test_lineage_from_a_registration_to_openlineage_data(server, training):
    """A model registered from the OpenLineage training run leads, through the log's lineage,
    to the run's datasets and their OpenLineage data events."""
    model = f"credit-risk-{uuid.uuid4().hex[:6]}"
    reg = {"id": str(uuid.uuid4()), "kind": "registry.model_registered",
           "actor": {"id": "ci", "type": "service"},
           "subject": {"model": model, "version": "1", "run": training["run"]},
           "attributes": {"artifact_sha256": "ab" * 32}}
    status, doc = server.post([reg])
    assert status == 200, doc
    lin = server.lineage(reg["id"])
    assert lin["run"] == training["run"]
    assert {e["kind"] for e in lin["training"]} == {"training.run_started",
                                                   "training.run_completed"}
    by_ds = {d["dataset"]: d for d in lin["datasets"]}
    assert set(by_ds) == {training["train"], training["bureau"]}
    train = by_ds[training["train"]]
    assert train["version"] == "v2024-06-01"
    kinds = [e["kind"] for e in train["events"]]
    assert kinds.count("data.source_accessed") == 2
    assert all(e["subject"]["dataset_version"] == "v2024-06-01" for e in train["events"])
    assert all(e["subject"]["run"] == training["run"] for e in train["events"])
