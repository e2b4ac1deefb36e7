"""CloudEvents: the real `cloudevents` SDK (2.2.0: the new `cloudevents.core` API and the
legacy `cloudevents.v1` one) builds what KServe's and Seldon's payload loggers and CDEvents
producers send, in binary, structured and batch mode, to a real `mlaudit serve`."""

import json
import time
import uuid

import pytest

from .harness import ConfiguredServer, need, request

need("cloudevents.core")
from cloudevents.core.bindings import http as cehttp  # noqa: E402
from cloudevents.core.v1.event import CloudEvent  # noqa: E402

from mlaudit.sampling import sampled_in  # noqa: E402

PATH = "/v1/integrations/cloudevents"
V1_REQUEST = {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}
V1_RESPONSE = {"predictions": [1, 1]}
V2_REQUEST = {"id": "42", "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                      "data": [6.8, 2.8, 4.8, 1.4, 6.0, 3.4, 4.5, 1.6]}]}


def v2_response(version):
    return {"model_name": "sklearn-v2-iris", "model_version": version, "id": "42",
            "parameters": None, "outputs": [{"name": "output-0", "shape": [2],
                                             "datatype": "INT64", "parameters": None,
                                             "data": [1, 1]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("cloudevents")
    s = ConfiguredServer(str(d / "data"), """
[integrations.cloudevents]
query_token = true
default_version = "1"
join_timeout_s = 1
default_sample_rate = 1.0
sample_rates = { "default/sampled-model" = 0.5 }
""").start()
    yield s
    s.stop()


def uid() -> str:
    return uuid.uuid4().hex[:8]


def kserve(side, ce_id, name, data, ns="default", **ext):
    attrs = {"type": f"org.kubeflow.serving.inference.{side}", "source": "http://localhost:9081/",
             "id": ce_id, "inferenceservicename": name, "namespace": ns,
             "component": "predictor", "endpoint": "default",
             "datacontenttype": "application/json", **ext}
    return CloudEvent(attributes=attrs, data=data)


def seldon(side, ce_id, request_id, name, data):
    return CloudEvent(attributes={
        "type": f"io.seldon.serving.inference.{side}", "source": "http://seldon-executor:8000/",
        "id": ce_id, "requestid": request_id, "modelid": "classifier",
        "inferenceservicename": name, "namespace": "seldon", "endpoint": "default",
        "protocol": "seldon", "datacontenttype": "application/json"}, data=data)


def send(server, msg=None, *, headers=None, body=None, token="writer", query=""):
    """POST one HTTP message (an SDK HTTPMessage, or headers + body) to the receiver."""
    h = dict(msg.headers if msg is not None else headers or {})
    if token == "writer":
        h["Authorization"] = f"Bearer {server.writer}"
    elif token:
        h["Authorization"] = f"Bearer {token}"
    data = msg.body if msg is not None else body
    status, doc, _ = request("POST", server.url + PATH + query, data, h)
    return status, doc


def binary(ev):
    return cehttp.to_binary_event(ev)


def structured(ev):
    return cehttp.to_structured_event(ev)


def predictions(server, model):
    return server.events(kind="prediction.served", model=model)


# -- KServe ------------------------------------------------------------------------------

def test_kserve_v1_binary_pair(server):
    name, ce_id = f"sklearn-iris-{uid()}", str(uuid.uuid4())
    status, first = send(server, binary(kserve("request", ce_id, name, V1_REQUEST)))
    assert status == 200, first
    assert first["events"] == [] and first["waiting_for_partner"] == 1
    assert first["sampled_out"] == 0
    assert predictions(server, f"default/{name}") == []  # waits for its partner
    status, second = send(server, binary(kserve("response", ce_id, name, V1_RESPONSE)))
    assert status == 200, second
    assert second["waiting_for_partner"] == 0
    [p] = predictions(server, f"default/{name}")
    assert p["subject"] == {"model": f"default/{name}", "version": "1", "request": ce_id}
    a = p["attributes"]
    assert a["inputs"] == V1_REQUEST
    assert a["outputs"] == V1_RESPONSE
    assert a["join"] == "matched"
    assert a["sample_rate"] == 1.0
    assert a["version_source"] == "configured default"
    assert (a["component"], a["endpoint"], a["namespace"]) == ("predictor", "default", "default")
    assert a["cloudevents"]["request"]["type"] == "org.kubeflow.serving.inference.request"
    assert a["cloudevents"]["response"]["type"] == "org.kubeflow.serving.inference.response"
    assert a["cloudevents"]["request"]["id"] == a["cloudevents"]["response"]["id"] == ce_id
    assert "data" not in a["cloudevents"]["request"]
    assert p["actor"] == {"id": f"kserve:default/{name}", "type": "service"}
    assert p["principal"] == "token:w"


def test_completing_half_answers_with_the_joined_event(server):
    """The half that completes a join writes a prediction.served: its receipt says so."""
    name, ce_id = f"sklearn-iris-{uid()}", str(uuid.uuid4())
    send(server, binary(kserve("request", ce_id, name, V1_REQUEST)))
    status, second = send(server, binary(kserve("response", ce_id, name, V1_RESPONSE)))
    assert status == 200, second
    [p] = predictions(server, f"default/{name}")
    assert [r["id"] for r in second["events"]] == [p["id"]], second
    assert second["events"][0]["duplicate"] is False


def test_kserve_v2_structured_pair_in_reverse_order(server):
    name, ce_id = f"sklearn-v2-{uid()}", str(uuid.uuid4())
    status, doc = send(server, structured(kserve("response", ce_id, name, v2_response("v2.1"))))
    assert status == 200 and doc["waiting_for_partner"] == 1, doc
    status, doc = send(server, structured(kserve("request", ce_id, name, V2_REQUEST)))
    assert status == 200, doc
    [p] = predictions(server, f"default/{name}")
    assert p["subject"] == {"model": f"default/{name}", "version": "v2.1", "request": ce_id}
    assert p["attributes"]["version_source"] == "model_version"
    assert p["attributes"]["inputs"] == V2_REQUEST
    assert p["attributes"]["outputs"] == v2_response("v2.1")
    assert p["attributes"]["join"] == "matched"


def test_kserve_v2_binary_without_model_version(server):
    name, ce_id = f"sklearn-v2-{uid()}", str(uuid.uuid4())
    send(server, binary(kserve("request", ce_id, name, V2_REQUEST)))
    send(server, binary(kserve("response", ce_id, name, v2_response(None))))
    [p] = predictions(server, f"default/{name}")
    assert p["subject"]["version"] == "1"  # default_version
    assert p["attributes"]["outputs"]["outputs"][0]["data"] == [1, 1]


def test_legacy_sdk_binary_pair(server):
    """cloudevents.v1 (the 1.x API): binary mode without a content-type header."""
    from cloudevents.v1.http import CloudEvent as LegacyEvent, to_binary
    name, ce_id = f"legacy-{uid()}", str(uuid.uuid4())
    for side, data in (("request", V1_REQUEST), ("response", V1_RESPONSE)):
        ev = LegacyEvent({"type": f"org.kubeflow.serving.inference.{side}",
                          "source": "http://localhost:9081/", "id": ce_id,
                          "inferenceservicename": name, "namespace": "ml",
                          "component": "predictor", "endpoint": ""}, data)
        headers, body = to_binary(ev)
        assert "content-type" not in {k.lower() for k in headers}
        status, doc = send(server, headers=headers, body=body)
        assert status == 200, doc
    [p] = predictions(server, f"ml/{name}")
    assert p["attributes"]["inputs"] == V1_REQUEST
    assert p["attributes"]["outputs"] == V1_RESPONSE
    assert "endpoint" not in p["attributes"]  # KServe sends it empty


def test_kserve_agent_headers_as_sent(server):
    """Exactly what KServe's Go agent sends: canonicalised header names, nanosecond time,
    ce-metadata, the original request's content type on both halves."""
    name, ce_id = f"agent-{uid()}", str(uuid.uuid4())
    for side, data in (("request", V1_REQUEST), ("response", V1_RESPONSE)):
        headers = {"Ce-Specversion": "1.0", "Ce-Id": ce_id,
                   "Ce-Type": f"org.kubeflow.serving.inference.{side}",
                   "Ce-Source": "http://localhost:9081/",
                   "Ce-Time": "2026-12-04T17:34:48.505997782Z",
                   "Ce-Inferenceservicename": name, "Ce-Namespace": "default",
                   "Ce-Component": "predictor", "Ce-Endpoint": "",
                   "Ce-Metadata": '{"X-User-Id":["u-17"]}', "Content-Type": "application/json"}
        status, doc = send(server, headers=headers, body=json.dumps(data).encode())
        assert status == 200, doc
    [p] = predictions(server, f"default/{name}")
    assert p["time"].startswith("2026-12-04T17:34:48.505997")
    assert p["attributes"]["cloudevents"]["request"]["metadata"] == '{"X-User-Id":["u-17"]}'
    assert p["attributes"]["outputs"] == V1_RESPONSE


def test_form_encoded_body_is_kept_not_refused(server):
    """`curl -d` without -H sends JSON typed application/x-www-form-urlencoded, and KServe's
    logger passes the original content type on: the bytes are kept (base64), not refused."""
    import base64
    name, ce_id = f"curl-{uid()}", str(uuid.uuid4())
    for side, data in (("request", V1_REQUEST), ("response", V1_RESPONSE)):
        h = dict(binary(kserve(side, ce_id, name, data)).headers,
                 **{"content-type": "application/x-www-form-urlencoded"})
        status, doc = send(server, headers=h, body=json.dumps(data).encode())
        assert status == 200, doc
    [p] = predictions(server, f"default/{name}")
    assert p["attributes"]["inputs"] == {
        "data_base64": base64.b64encode(json.dumps(V1_REQUEST).encode()).decode(),
        "datacontenttype": "application/x-www-form-urlencoded"}
    assert p["attributes"]["join"] == "matched"


def test_redelivered_halves_are_stored_once(server):
    """KServe's logger retries: a half sent twice while it waits, or again after its join,
    never yields a second prediction (not even a timed-out one)."""
    name, ce_id = f"retry-{uid()}", str(uuid.uuid4())
    req = binary(kserve("request", ce_id, name, V1_REQUEST))
    for _ in range(2):
        status, doc = send(server, req)
        assert status == 200 and doc["waiting_for_partner"] == 1, doc
    send(server, binary(kserve("response", ce_id, name, V1_RESPONSE)))
    status, doc = send(server, req)  # after the join
    assert status == 200, doc
    time.sleep(2.0)  # past the join timeout
    [p] = predictions(server, f"default/{name}")
    assert p["attributes"]["join"] == "matched"


def test_a_waiting_half_survives_a_restart(make_server):
    s = make_server('[integrations.cloudevents]\njoin_timeout_s = 30\n')
    name, ce_id = f"restart-{uid()}", str(uuid.uuid4())
    status, doc = send(s, binary(kserve("request", ce_id, name, V1_REQUEST)))
    assert status == 200 and doc["waiting_for_partner"] == 1, doc
    s.stop()
    s.start()
    status, doc = send(s, binary(kserve("response", ce_id, name, V1_RESPONSE)))
    assert status == 200, doc
    [p] = predictions(s, f"default/{name}")
    assert p["attributes"]["join"] == "matched"
    assert p["attributes"]["inputs"] == V1_REQUEST
    assert p["attributes"]["outputs"] == V1_RESPONSE


def test_declared_json_that_is_not_json_is_kept(server):
    """KServe gives the response event its request's content type, so a half declared
    application/json may hold other bytes: they are kept (base64), not refused."""
    import base64
    name, ce_id = f"notjson-{uid()}", str(uuid.uuid4())
    send(server, binary(kserve("request", ce_id, name, V1_REQUEST)))
    h = dict(binary(kserve("response", ce_id, name, V1_RESPONSE)).headers)
    status, doc = send(server, headers=h, body=b"1,0,1\n")
    assert status == 200, doc
    [p] = predictions(server, f"default/{name}")
    assert p["attributes"]["outputs"] == {"data_base64": base64.b64encode(b"1,0,1\n").decode(),
                                          "datacontenttype": "application/json"}
    assert p["attributes"]["inputs"] == V1_REQUEST


# -- Seldon ------------------------------------------------------------------------------

def test_seldon_halves_join_on_request_id(server):
    name, rid = f"iris-seldon-{uid()}", str(uuid.uuid4())
    req = {"data": {"names": ["f0", "f1"], "ndarray": [[1.0, 2.0]]}}
    resp = {"data": {"names": ["proba"], "ndarray": [[0.1, 0.9]]}, "meta": {}}
    status, doc = send(server, binary(seldon("request", str(uuid.uuid4()), rid, name, req)))
    assert status == 200 and doc["waiting_for_partner"] == 1, doc
    status, doc = send(server, binary(seldon("response", str(uuid.uuid4()), rid, name, resp)))
    assert status == 200, doc
    [p] = predictions(server, f"seldon/{name}")
    assert p["subject"] == {"model": f"seldon/{name}", "version": "1", "request": rid}
    assert p["attributes"]["inputs"] == req and p["attributes"]["outputs"] == resp
    assert p["attributes"]["logger"] == "seldon"
    assert p["attributes"]["modelid"] == "classifier"
    assert p["attributes"]["join"] == "matched"


# -- batches, timeouts, sampling ---------------------------------------------------------

def test_batch(server):
    name, ce_id, other = f"batch-{uid()}", str(uuid.uuid4()), str(uuid.uuid4())
    items = [json.loads(structured(ev).body) for ev in (
        kserve("request", ce_id, name, V1_REQUEST),
        CloudEvent(attributes={"type": "com.example.batch.note", "source": "/batch-test",
                               "id": other, "datacontenttype": "application/json"},
                   data={"note": name}),
        kserve("response", ce_id, name, V1_RESPONSE))]
    status, doc = send(server, headers={"Content-Type": "application/cloudevents-batch+json"},
                       body=json.dumps(items).encode())
    assert status == 200, doc
    [p] = predictions(server, f"default/{name}")
    assert p["attributes"]["join"] == "matched"
    assert p["attributes"]["inputs"] == V1_REQUEST
    [x] = [e for e in server.events(kind="x.cloudevents")
           if e["attributes"]["cloudevent"]["id"] == other]
    assert x["attributes"]["type"] == "com.example.batch.note"
    assert x["attributes"]["cloudevent"]["data"] == {"note": name}
    # The answer names every event the body wrote, and nothing waits any more.
    assert sorted(r["id"] for r in doc["events"]) == sorted([x["id"], p["id"]]), doc
    assert doc["waiting_for_partner"] == 0, doc


@pytest.mark.parametrize("side", ["request", "response"])
def test_unmatched_half_is_written_after_the_timeout(server, side):
    name, ce_id = f"lonely-{uid()}", str(uuid.uuid4())
    data = V1_REQUEST if side == "request" else V1_RESPONSE
    status, doc = send(server, binary(kserve(side, ce_id, name, data)))
    assert status == 200 and doc["waiting_for_partner"] == 1, doc
    [p] = server.wait_events(lambda e: True, timeout=15, kind="prediction.served",
                             model=f"default/{name}")
    assert p["attributes"]["join"] == "timed_out"
    assert p["subject"]["request"] == ce_id
    if side == "request":
        assert p["attributes"]["inputs"] == V1_REQUEST
        assert p["attributes"]["unreported"] == ["outputs"]
        assert "outputs" not in p["attributes"]
    else:
        assert p["attributes"]["outputs"] == V1_RESPONSE
        assert p["attributes"]["unreported"] == ["inputs"]
    assert list(p["attributes"]["cloudevents"]) == [side]


def test_sampling_per_model(server):
    run = uid()
    keys = [f"sampled-{run}-{i}" for i in range(24)]
    outs = 0
    for k in keys:
        for side, data in (("request", V1_REQUEST), ("response", V1_RESPONSE)):
            status, doc = send(server, binary(kserve(side, k, "sampled-model", data)))
            assert status == 200, doc
            outs += doc["sampled_out"]
    kept = {p["subject"]["request"]: p for p in predictions(server, "default/sampled-model")
            if p["subject"]["request"].startswith(f"sampled-{run}-")}
    # The SDKs' own rule decides, per request id.
    expected = {k for k in keys if sampled_in(k, 0.5)}
    assert set(kept) == expected
    assert 0 < len(expected) < len(keys)
    assert outs == 2 * (len(keys) - len(expected))
    assert all(p["attributes"]["sample_rate"] == 0.5 for p in kept.values())


# -- authentication ----------------------------------------------------------------------

def test_query_token(server):
    name, note = f"qt-{uid()}", str(uuid.uuid4())
    ev = CloudEvent(attributes={"type": "com.example.query-token", "source": "/qt", "id": note,
                                "datacontenttype": "application/json"}, data={"name": name})
    status, doc = send(server, binary(ev), token=None, query=f"?token={server.writer}")
    assert status == 200, doc
    [x] = [e for e in server.events(kind="x.cloudevents") if e["id"] == doc["events"][0]["id"]]
    assert x["principal"] == "token:w"
    assert x["attributes"]["cloudevent"]["data"] == {"name": name}
    status, doc = send(server, binary(ev), token=None, query=f"?token={server.reader}")
    assert status == 403, doc
    status, doc = send(server, binary(ev), token=None, query="?token=mla_not-a-token")
    assert status == 401, doc
    status, doc = send(server, binary(ev), token=None)
    assert status == 401, doc


def test_query_token_refused_when_off(make_server):
    plain = make_server("")
    ev = CloudEvent(attributes={"type": "com.example.query-token", "source": "/qt",
                                "id": str(uuid.uuid4())}, data={"x": 1})
    status, doc = send(plain, binary(ev), token=None, query=f"?token={plain.writer}")
    assert status == 400, doc
    assert "query_token" in doc["error"]["message"]
    assert plain.events(kind="x.cloudevents") == []


# -- CDEvents and other types -------------------------------------------------------------

def cdevent(service, env, artifact, ctx_id):
    return {"context": {"version": "0.4.1", "id": ctx_id, "source": "/tekton/prod",
                        "type": "dev.cdevents.service.deployed.0.2.0",
                        "timestamp": "2026-12-04T09:00:00.315384Z"},
            "subject": {"id": service, "source": "/tekton/prod", "type": "service",
                        "content": {"environment": {"id": env, "source": "/envs"},
                                    "artifactId": artifact}}}


def test_cdevents_service_deployed(server):
    service, ctx_id = f"credit-risk-svc-{uid()}", str(uuid.uuid4())
    body = cdevent(service, "prod-eu", "pkg:oci/credit-risk@3", ctx_id)
    ev = CloudEvent(attributes={"type": "dev.cdevents.service.deployed.0.2.0",
                                "source": "/tekton/prod", "id": ctx_id,
                                "datacontenttype": "application/json"}, data=body)
    status, doc = send(server, binary(ev))
    assert status == 200, doc
    [d] = server.events(kind="operations.deployed", deployment=f"prod-eu/{service}")
    assert d["subject"] == {"deployment": f"prod-eu/{service}", "model": "credit-risk",
                            "version": "3"}
    assert d["attributes"]["environment"] == "prod-eu"
    assert d["attributes"]["cdevent"] == body
    assert d["actor"] == {"id": "cdevents:/tekton/prod", "type": "service"}
    assert d["time"].startswith("2026-12-04T09:00:00.315384")
    assert [r["id"] for r in doc["events"]] == [d["id"]]


@pytest.mark.parametrize("purl,model,version", [
    ("pkg:oci/credit-risk@sha256%3Aabc123?repository_url=ghcr.io/acme", "credit-risk",
     "sha256:abc123"),
    ("pkg:oci/acme/credit-risk@3", "credit-risk", "3"),
    ("pkg:maven/org.acme/credit-risk@1.2.0", "credit-risk", "1.2.0")])
def test_cdevents_artifact_purls(server, purl, model, version):
    service, ctx_id = f"svc-{uid()}", str(uuid.uuid4())
    ev = CloudEvent(attributes={"type": "dev.cdevents.service.deployed.0.2.0",
                                "source": "/tekton/prod", "id": ctx_id,
                                "datacontenttype": "application/json"},
                    data=cdevent(service, "prod", purl, ctx_id))
    status, doc = send(server, structured(ev))
    assert status == 200, doc
    [d] = server.events(kind="operations.deployed", deployment=f"prod/{service}")
    assert (d["subject"]["model"], d["subject"]["version"]) == (model, version)


def test_cdevents_other_service_events(server):
    service = f"svc-{uid()}"
    sent = {}
    for action, artifact in (("upgraded", "pkg:oci/credit-risk@4"),
                             ("rolledback", "pkg:oci/credit-risk@3"), ("removed", None)):
        ctx_id = str(uuid.uuid4())
        body = cdevent(service, "prod", artifact, ctx_id)
        body["context"]["type"] = f"dev.cdevents.service.{action}.0.2.0"
        if artifact is None:  # service.removed names no artifact
            del body["subject"]["content"]["artifactId"]
        ev = CloudEvent(attributes={"type": body["context"]["type"], "source": "/tekton/prod",
                                    "id": ctx_id, "datacontenttype": "application/json"},
                        data=body)
        status, doc = send(server, binary(ev))
        assert status == 200, doc
        sent[action] = doc["events"][0]["id"]
    got = {e["id"]: e for e in server.events(deployment=f"prod/{service}")}
    up, back, removed = (got[sent[a]] for a in ("upgraded", "rolledback", "removed"))
    assert up["kind"] == "operations.deployed"
    assert (up["subject"]["version"], up["attributes"]["change"]) == ("4", "upgraded")
    assert back["kind"] == "operations.rolled_back"
    assert back["attributes"]["to_version"] == "3"
    assert set(back["attributes"]["unreported"]) == {"from_version", "trigger"}
    assert removed["kind"] == "operations.config_changed"
    assert removed["attributes"]["changes"]["deployed"]["new"] is None


def test_unknown_type_is_kept_and_stored_once(server):
    note = str(uuid.uuid4())
    ev = CloudEvent(attributes={"type": "com.example.model.drift", "source": "/monitor",
                                "id": note, "subject": "credit-risk",
                                "datacontenttype": "application/json", "severity": "high"},
                    data={"psi": 0.31})
    status, first = send(server, structured(ev))
    assert status == 200, first
    [x] = [e for e in server.events(kind="x.cloudevents") if e["id"] == first["events"][0]["id"]]
    assert x["attributes"]["type"] == "com.example.model.drift"
    assert x["attributes"]["source"] == "/monitor"
    ce = x["attributes"]["cloudevent"]
    assert (ce["id"], ce["subject"], ce["severity"], ce["data"]) == (
        note, "credit-risk", "high", {"psi": 0.31})
    status, again = send(server, structured(ev))  # a redelivery: same source and id
    assert status == 200, again
    assert again["events"][0]["id"] == first["events"][0]["id"]
    assert again["events"][0]["duplicate"] is True
    assert [e["id"] for e in server.events(kind="x.cloudevents")].count(x["id"]) == 1


# -- malformed ---------------------------------------------------------------------------

def _malformed(case, marker):
    ok = kserve("request", str(uuid.uuid4()), marker, V1_REQUEST)
    h, body = dict(binary(ok).headers), binary(ok).body
    if case == "no ce-id":
        h.pop("ce-id")
    elif case == "bad specversion":
        h["ce-specversion"] = "0.3"
    elif case == "structured body not JSON":
        h, body = {"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", '
    elif case == "bad time":
        h["ce-time"] = "yesterday"
    elif case == "no inferenceservicename":
        h.pop("ce-inferenceservicename")
    elif case == "structured without id":
        s = json.loads(structured(ok).body)
        del s["id"]
        h, body = {"Content-Type": "application/cloudevents+json"}, json.dumps(s).encode()
    elif case == "batch with a bad event":
        good = json.loads(structured(CloudEvent(attributes={
            "type": "com.example.note", "source": "/x", "id": str(uuid.uuid4())},
            data={"m": marker})).body)
        bad = json.loads(structured(ok).body)
        bad["specversion"] = "2.0"
        h, body = {"Content-Type": "application/cloudevents-batch+json"}, \
            json.dumps([good, bad]).encode()
    elif case == "not a CloudEvent":
        h, body = {"Content-Type": "application/json"}, json.dumps(V1_REQUEST).encode()
    return h, body


@pytest.mark.parametrize("case", ["no ce-id", "bad specversion", "structured body not JSON",
                                  "bad time", "no inferenceservicename",
                                  "structured without id", "batch with a bad event",
                                  "not a CloudEvent"])
def test_malformed_is_400_and_writes_nothing(server, case):
    marker = f"malformed-{uid()}"
    MALFORMED.append(marker)
    before = server.count()
    h, body = _malformed(case, marker)
    status, doc = send(server, headers=h, body=body)
    assert status == 400, (case, status, doc)
    assert doc["error"]["message"], doc
    assert server.count() == before


MALFORMED = []


def test_malformed_halves_never_surface_later(server):
    """Past the join timeout, no refused half was written alone either."""
    assert MALFORMED
    time.sleep(2.0)
    for marker in MALFORMED:
        assert predictions(server, f"default/{marker}") == []
