"""Kubeflow Pipelines (KFP v2): a component records the datasets it read and wrote and the
model it produced, tied to the pipeline run.

Call :func:`record_component` at the end of a component's function, with its ``Input[...]``
and ``Output[...]`` artifacts::

    @dsl.component(packages_to_install=["mlaudit"])
    def train(ds: Input[Dataset], model: Output[Model], audit_url: str, audit_token: str,
              run_id: str):
        from mlaudit.integrations.kfp import record_component
        ...  # write model.path
        record_component(audit_url, audit_token, pipeline_run=run_id, component="train",
                         inputs={"ds": ds}, outputs={"model": model},
                         model="credit-risk", version="7")

    # in the pipeline:
    train(ds=..., audit_url=url, audit_token=token, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)

What is recorded (every event carries ``subject.pipeline_run``):

* each input ``Dataset`` → ``data.source_accessed`` (``attributes.source`` = the artifact's
  URI; a local path becomes a ``file://`` URI);
* each output ``Dataset`` → ``data.transformation_applied`` (``attributes.inputs`` = the
  input datasets, ``attributes.transformation`` = the component) and, when its file or
  directory exists, ``data.snapshot_created`` with ``content_sha256`` computed from it
  (:func:`content_sha256`) and ``dataset_version`` = the artifact's ``dataset_version``
  metadata, else the digest's first 12 hex digits. Both are written into the output
  artifact's metadata (when not set), so a downstream component's ``data.source_accessed``
  names the same version;
* an output ``Model``, when ``model`` and ``version`` are given →
  ``registry.model_registered`` with ``subject.run`` = the pipeline run and
  ``artifact_sha256`` computed from the model's file or directory (named in
  ``attributes.unreported`` when there is none to read), and ``training.run_started`` for
  that run: its input datasets as ``datasets`` (``dataset@version``; those without a known
  version as ``unversioned_datasets``), ``hyperparameters`` and ``random_seed`` when given
  (else named in ``attributes.unreported``) — so that the lineage of the model, or of any
  prediction it serves, reaches the datasets the pipeline read;
* any other artifact type is left out.

A dataset is named by its artifact's ``dataset`` metadata when the producer set one, else by
its URI: KFP's artifact ``name`` is only the output's parameter name (``out_ds``), which
every pipeline reuses, while the URI is the same for the producer and its consumers.

Event ids are UUIDv5 of (pipeline run, component, artifact argument, role — and, for a
snapshot or a model, the content digest), and the events carry no client-side ``time`` (the
server stamps its receipt time: the server refuses an id it holds with another payload), so
a component that is retried sends the same events and the server stores nothing twice (it
answers ``duplicate: true``); a retry that wrote different bytes records the new content as
a snapshot or registration of its own. The events of one call go in one request, sent
synchronously (a component is short-lived: nothing is queued or spooled) through the SDK's
HTTP transport, with a timeout and a few retries on transient failures; :class:`RecordError`
is raised when they could not be recorded — catch it if auditing should not fail the
component. Pass the same ``actor`` on a retry (it is part of the payload).

Nothing here imports ``kfp``: artifacts are read by their attributes (``name``, ``uri``,
``path``, ``metadata``, ``schema_title``), and plain dicts with those keys (``type`` for the
schema title) work too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import time as _time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .._http import DELIVERED, INVALID, RETRY, Transport

__all__ = ["record_component", "component_events", "send_events", "content_sha256",
           "event_id", "RecordError"]

#: The namespace of the UUIDv5 event ids.
NAMESPACE = uuid.UUID("6f1d2c0e-4b1a-5d55-9a0b-6b66b7d0c1a7")

DATASET = "system.Dataset"
MODEL = "system.Model"

Artifact = Any  # a kfp.dsl artifact, or a dict with name/uri/path/metadata/type
Artifacts = Optional[Mapping[str, Union[Artifact, Sequence[Artifact]]]]


class RecordError(RuntimeError):
    """The events could not be recorded (refused, or the server could not be reached)."""


def event_id(pipeline_run: str, component: str, artifact: str, role: str,
             digest: str = "") -> str:
    """The id of the event of ``role`` for ``artifact`` (the argument name) of a component in
    a pipeline run (and of the content ``digest`` it records, if any): the same on every retry
    of the component."""
    parts = (pipeline_run, component, artifact, role) + ((digest,) if digest else ())
    return str(uuid.uuid5(NAMESPACE, "\n".join(parts)))


def content_sha256(path: str) -> Optional[str]:
    """SHA-256 (hex) of a file's bytes; of a directory, SHA-256 of the lines
    ``"<file sha256>  <relative path>\\n"`` of every file under it, sorted by path (``/``
    separators) — what ``cd DIR && find . -type f | sed 's|^\\./||' | LC_ALL=C sort |
    xargs sha256sum | sha256sum`` prints. ``None`` when ``path`` does not exist."""
    if os.path.isfile(path):
        return _file_sha256(path)
    if not os.path.isdir(path):
        return None
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for n in names:
            full = os.path.join(root, n)
            if os.path.isfile(full):
                files.append(os.path.relpath(full, path).replace(os.sep, "/"))
    h = hashlib.sha256()
    for rel in sorted(files, key=lambda r: r.encode("utf-8", "surrogateescape")):
        digest = _file_sha256(os.path.join(path, *rel.split("/")))
        h.update(f"{digest}  {rel}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- reading artifacts -------------------------------------------------------------------

def _get(a: Artifact, name: str) -> Any:
    if isinstance(a, Mapping):
        return a.get(name)
    try:
        return getattr(a, name, None)
    except Exception:  # a property that cannot answer (kfp's path of an odd URI)
        return None


def _schema_title(a: Artifact) -> str:
    title = _get(a, "schema_title") or _get(a, "type")
    if isinstance(title, Mapping):  # executor_input's {"schemaTitle": ...}
        title = title.get("schemaTitle")
    if isinstance(title, str) and title:
        return title if "." in title else f"system.{title}"
    return f"system.{type(a).__name__}"


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:.")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def as_uri(location: str) -> str:
    """``location`` when it is a URI (``gs://…``, ``s3://…``, ``file:///…``); a local path as
    a ``file://`` URI."""
    if _SCHEME.match(location) and not _DRIVE.match(location):
        return location
    return pathlib.Path(os.path.abspath(location)).as_uri()


def _uri(a: Artifact) -> str:
    uri = _get(a, "uri") or _get(a, "path")
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"artifact {_get(a, 'name')!r} has no uri")
    return as_uri(uri)


def _local_path(a: Artifact) -> Optional[str]:
    """Where the artifact's bytes are on this machine, if anywhere."""
    for cand in (_get(a, "path"), _get(a, "uri")):
        if not isinstance(cand, str) or not cand:
            continue
        if cand.startswith("file://"):
            cand = cand[len("file://"):]
        elif _SCHEME.match(cand) and not _DRIVE.match(cand):
            continue
        if os.path.exists(cand):
            return cand
    return None


def _metadata(a: Artifact) -> Dict[str, Any]:
    md = _get(a, "metadata")
    return md if isinstance(md, dict) else {}


def _describe(key: str, a: Artifact) -> Dict[str, Any]:
    return {"argument": key, "name": _get(a, "name"), "uri": _get(a, "uri"),
            "type": _schema_title(a), "metadata": _jsonable(_metadata(a))}


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def _dataset_name(a: Artifact) -> str:
    name = _metadata(a).get("dataset")
    return name if isinstance(name, str) and name else _uri(a)


def _flatten(artifacts: Artifacts) -> List[Tuple[str, Artifact]]:
    out = []
    for key, value in (artifacts or {}).items():
        if isinstance(value, (list, tuple)):
            out.extend((f"{key}[{i}]", a) for i, a in enumerate(value))
        else:
            out.append((key, value))
    return out


# -- building events ---------------------------------------------------------------------

def component_events(pipeline_run: str, component: str, inputs: Artifacts = None,
                     outputs: Artifacts = None, model: Optional[str] = None,
                     version: Optional[str] = None,
                     actor: Optional[Mapping[str, str]] = None,
                     time: Optional[str] = None,
                     hyperparameters: Optional[Mapping[str, Any]] = None,
                     random_seed: Optional[int] = None) -> List[Dict[str, Any]]:
    """The events :func:`record_component` sends (see the module docstring), without sending
    them. Output datasets' metadata get ``dataset_version`` and ``content_sha256`` (when not
    set). ``time`` (RFC 3339) is left out unless given: a retry must send the same payload."""
    if not pipeline_run or not component:
        raise ValueError("pipeline_run and component are required")
    if (model is None) != (version is None):
        raise ValueError("model and version go together")
    actor = dict(actor) if actor else {"id": f"kfp:{component}", "type": "service"}
    ins, outs = _flatten(inputs), _flatten(outputs)

    def event(key: str, role: str, kind: str, subject: Dict[str, Any],
              attributes: Dict[str, Any], digest: str = "") -> Dict[str, Any]:
        subject = dict(subject, pipeline_run=pipeline_run)
        attributes = dict(attributes, component=component)
        ev = {"id": event_id(pipeline_run, component, key, role, digest), "kind": kind,
              "actor": actor, "subject": subject, "attributes": attributes}
        if time:
            ev["time"] = time
        return ev

    events: List[Dict[str, Any]] = []
    input_names: List[str] = []
    versioned: List[str] = []
    unversioned: List[str] = []
    for key, a in ins:
        if _schema_title(a) != DATASET:
            continue
        name = _dataset_name(a)
        input_names.append(name)
        subject: Dict[str, Any] = {"dataset": name}
        dv = _metadata(a).get("dataset_version")
        if isinstance(dv, (str, int)) and not isinstance(dv, bool) and str(dv):
            subject["dataset_version"] = str(dv)
            if "@" in name:  # "name@version" would be ambiguous: listed apart
                unversioned.append(name)
            else:
                versioned.append(f"{name}@{dv}")
        else:
            unversioned.append(name)
        events.append(event(key, "input", "data.source_accessed", subject,
                            {"source": _uri(a), "artifact": _describe(key, a)}))

    models = [(k, a) for k, a in outs if _schema_title(a) == MODEL]
    if model is not None and len(models) > 1:
        raise ValueError(f"model={model!r} names one version but the component has "
                         f"{len(models)} Model outputs: pass only the one to register")
    for key, a in outs:
        title = _schema_title(a)
        if title == DATASET:
            name = _dataset_name(a)
            events.append(event(key, "output", "data.transformation_applied", {"dataset": name},
                                {"inputs": list(input_names), "transformation": component,
                                 "artifact": _describe(key, a)}))
            path = _local_path(a)
            digest = content_sha256(path) if path else None
            if digest:
                md = _get(a, "metadata")
                given = md.get("dataset_version") if isinstance(md, dict) else None
                dv = str(given) if given not in (None, "") else digest[:12]
                if isinstance(md, dict):
                    md.setdefault("dataset_version", dv)
                    md.setdefault("content_sha256", digest)
                events.append(event(key, "snapshot", "data.snapshot_created",
                                    {"dataset": name, "dataset_version": dv},
                                    {"content_sha256": digest,
                                     "artifact": _describe(key, a)}, digest))
        elif title == MODEL and model is not None:
            path = _local_path(a)
            digest = content_sha256(path) if path else None
            attrs: Dict[str, Any] = {"inputs": list(input_names), "artifact": _describe(key, a),
                                     "source": _uri(a)}
            if digest:
                attrs["artifact_sha256"] = digest
            else:
                attrs["unreported"] = ["artifact_sha256"]
            events.append(event(key, "model", "registry.model_registered",
                                {"model": model, "version": str(version), "run": pipeline_run},
                                attrs, digest or ""))
            run_attrs: Dict[str, Any] = {"datasets": versioned}
            unreported = []
            if unversioned:
                run_attrs["unversioned_datasets"] = unversioned
            if hyperparameters is not None:
                run_attrs["hyperparameters"] = _jsonable(dict(hyperparameters))
            else:
                unreported.append("hyperparameters")
            if random_seed is not None:
                run_attrs["random_seed"] = int(random_seed)
            else:
                unreported.append("random_seed")
            if unreported:
                run_attrs["unreported"] = unreported
            events.append(event(key, "training", "training.run_started",
                                {"run": pipeline_run, "model": model}, run_attrs))
    return events


# -- sending -----------------------------------------------------------------------------

def send_events(url: str, token: str, events: List[Dict[str, Any]], timeout_s: float = 10.0,
                attempts: int = 3) -> List[Dict[str, Any]]:
    """POST ``events`` as one batch to ``/v1/events`` and return the server's receipts
    (``[{"id", "seq", "duplicate"}, ...]``). Retries a transient failure (no answer, 408,
    429, 5xx) up to ``attempts`` times, each request within ``timeout_s``; raises
    :class:`RecordError` when the events were refused or never acknowledged."""
    if not events:
        return []
    transport = Transport(url, token, timeout_s)
    bodies = [json.dumps(e, separators=(",", ":"), ensure_ascii=False,
                         default=str).encode("utf-8") for e in events]
    reason = ""
    for attempt in range(max(1, attempts)):
        outcome = transport.post_events(bodies)
        if outcome.kind == DELIVERED:
            return list(outcome.doc["events"])
        if outcome.kind == INVALID:
            detail = "; ".join(f"{events[i]['kind']} ({events[i]['id']}): {why}"
                               for i, why in sorted((outcome.invalid or {}).items()))
            raise RecordError(f"mlaudit refused events: {detail}")
        reason = outcome.reason
        if outcome.config or outcome.kind != RETRY:
            break
        if attempt + 1 < attempts:
            _time.sleep(min(2.0, 0.2 * 2 ** attempt))
    raise RecordError(f"the events were not recorded: {reason}")


def record_component(url: str, token: str, pipeline_run: str, component: str,
                     inputs: Artifacts = None, outputs: Artifacts = None,
                     model: Optional[str] = None, version: Optional[str] = None,
                     actor: Optional[Mapping[str, str]] = None, timeout_s: float = 10.0,
                     attempts: int = 3, hyperparameters: Optional[Mapping[str, Any]] = None,
                     random_seed: Optional[int] = None) -> List[Dict[str, Any]]:
    """Record a KFP component's inputs, outputs and model (module docstring) and return the
    receipts of its events. ``url`` is the mlaudit server, ``token`` a writer token,
    ``pipeline_run`` the run (``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` passed as a parameter),
    ``component`` its name; ``inputs``/``outputs`` map argument names to artifacts (or lists
    of them). ``actor`` defaults to ``{"id": "kfp:<component>", "type": "service"}``."""
    events = component_events(pipeline_run, component, inputs, outputs, model=model,
                              version=version, actor=actor, hyperparameters=hyperparameters,
                              random_seed=random_seed)
    return send_events(url, token, events, timeout_s=timeout_s, attempts=attempts)
