"""Helpers for each lifecycle stage. Every catalogue field a kind requires is a required
keyword argument, so an event cannot be built without it. Each helper returns the event id
and accepts ``actor=`` (default: the logger's actor), ``attributes=`` (extra attributes,
kept as they are), ``id=`` and ``time=``.
"""

from __future__ import annotations

import functools
import time
import uuid
from time import perf_counter_ns, time_ns
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from .encode import PREDICTION, json_safe, snapshot
from .logger import LoggerClosedError

Actor = Optional[Mapping[str, str]]


def _merge(required: Dict[str, Any], extra: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    out = dict(extra or {})
    out.update(required)
    return out


class _Stage:
    def __init__(self, logger) -> None:
        self._logger = logger

    def _emit(self, kind: str, subject: Dict[str, Any], required: Dict[str, Any], *,
              attributes=None, actor: Actor = None, id=None, time=None) -> str:
        return self._logger.emit(kind, subject=subject, attributes=_merge(required, attributes),
                                 actor=actor, id=id, time=time)


class Data(_Stage):
    """``data.*`` events."""

    def source_accessed(self, *, dataset: str, source: str, **kw) -> str:
        return self._emit("data.source_accessed", {"dataset": dataset}, {"source": source}, **kw)

    def transformation_applied(self, *, dataset: str, inputs: List[str], transformation: str,
                               filters: Optional[Mapping[str, Any]] = None, **kw) -> str:
        req: Dict[str, Any] = {"inputs": list(inputs), "transformation": transformation}
        if filters is not None:
            req["filters"] = dict(filters)
        return self._emit("data.transformation_applied", {"dataset": dataset}, req, **kw)

    def snapshot_created(self, *, dataset: str, dataset_version: str, content_sha256: str,
                         **kw) -> str:
        return self._emit("data.snapshot_created",
                          {"dataset": dataset, "dataset_version": str(dataset_version)},
                          {"content_sha256": content_sha256}, **kw)


class Registry(_Stage):
    """``registry.*`` events. Approvals default their actor to the approver (a user)."""

    def model_registered(self, *, model: str, version: str, run: str, artifact_sha256: str,
                         **kw) -> str:
        return self._emit("registry.model_registered",
                          {"model": model, "version": str(version), "run": run},
                          {"artifact_sha256": artifact_sha256}, **kw)

    def promotion_requested(self, *, model: str, version: str, to_stage: str, **kw) -> str:
        return self._emit("registry.promotion_requested", {"model": model, "version": str(version)},
                          {"to_stage": to_stage}, **kw)

    def approval_granted(self, *, model: str, version: str, approver: str, reason: str,
                         **kw) -> str:
        kw.setdefault("actor", {"id": approver, "type": "user"})
        return self._emit("registry.approval_granted", {"model": model, "version": str(version)},
                          {"approver": approver, "reason": reason}, **kw)

    def approval_rejected(self, *, model: str, version: str, approver: str, reason: str,
                          **kw) -> str:
        kw.setdefault("actor", {"id": approver, "type": "user"})
        return self._emit("registry.approval_rejected", {"model": model, "version": str(version)},
                          {"approver": approver, "reason": reason}, **kw)

    def stage_changed(self, *, model: str, version: str, from_stage: str, to_stage: str,
                      **kw) -> str:
        return self._emit("registry.stage_changed", {"model": model, "version": str(version)},
                          {"from_stage": from_stage, "to_stage": to_stage}, **kw)

    def deployment_target_assigned(self, *, model: str, version: str, target: str, **kw) -> str:
        return self._emit("registry.deployment_target_assigned",
                          {"model": model, "version": str(version)}, {"target": target}, **kw)


class Operations(_Stage):
    """``operations.*`` events."""

    def deployed(self, *, deployment: str, model: str, version: str, environment: str,
                 **kw) -> str:
        return self._emit("operations.deployed",
                          {"deployment": deployment, "model": model, "version": str(version)},
                          {"environment": environment}, **kw)

    def traffic_routed(self, *, deployment: str, split: Mapping[str, float], **kw) -> str:
        """``split`` maps version to percent and must sum to 100."""
        if abs(sum(split.values()) - 100) > 1e-9:
            raise ValueError(f"traffic split {dict(split)} sums to {sum(split.values())}, not 100")
        return self._emit("operations.traffic_routed", {"deployment": deployment},
                          {"split": {str(k): v for k, v in split.items()}}, **kw)

    def rolled_back(self, *, deployment: str, from_version: str, to_version: str, trigger: str,
                    **kw) -> str:
        return self._emit("operations.rolled_back", {"deployment": deployment},
                          {"from_version": str(from_version), "to_version": str(to_version),
                           "trigger": trigger}, **kw)

    def config_changed(self, *, deployment: str, changes: Mapping[str, Mapping[str, Any]],
                       **kw) -> str:
        """``changes`` maps each key to ``{"old": ..., "new": ...}``."""
        return self._emit("operations.config_changed", {"deployment": deployment},
                          {"changes": {k: dict(v) for k, v in changes.items()}}, **kw)


class Governance(_Stage):
    """``governance.policy_changed`` (access changes are recorded by the server itself).
    Governance events are never sampled."""

    def policy_changed(self, *, policy: str, old: Any, new: Any, **kw) -> str:
        return self._emit("governance.policy_changed", {}, {"policy": policy, "old": old,
                                                           "new": new}, **kw)


class TrainingRun:
    """Context manager for one training run.

    Emits ``training.run_started`` on entry, ``training.checkpoint_evaluated`` per
    :meth:`checkpoint`, and ``training.run_completed`` on exit with ``status``
    ("succeeded", or "failed" when an exception escapes — it is re-raised unchanged),
    ``duration_s`` and ``compute`` (wall and CPU seconds and peak RSS measured here, merged
    with ``compute=`` given at start and :meth:`add_compute`).
    """

    def __init__(self, logger, *, run: str, model: str, hyperparameters: Mapping[str, Any],
                 random_seed: Any, datasets: Iterable[str],
                 compute: Optional[Mapping[str, Any]] = None,
                 attributes: Optional[Mapping[str, Any]] = None, actor: Actor = None) -> None:
        self._logger = logger
        self.run, self.model = run, model
        self._start_attrs = _merge({"hyperparameters": dict(hyperparameters),
                                    "random_seed": random_seed,
                                    "datasets": list(datasets)}, attributes)
        self._compute: Dict[str, Any] = dict(compute or {})
        self._actor = actor
        self.started_id: Optional[str] = None
        self.completed_id: Optional[str] = None

    def __enter__(self) -> "TrainingRun":
        self._t0, self._cpu0 = time.monotonic(), time.process_time()
        self.started_id = self._logger.emit("training.run_started",
                                            subject={"run": self.run, "model": self.model},
                                            attributes=self._start_attrs, actor=self._actor)
        return self

    def checkpoint(self, step: int, metrics: Mapping[str, Any], **attributes: Any) -> str:
        attrs = dict(attributes)
        attrs.update(step=step, metrics=json_safe(dict(metrics)))
        return self._logger.emit("training.checkpoint_evaluated",
                                 subject={"run": self.run, "model": self.model},
                                 attributes=attrs, actor=self._actor)

    def add_compute(self, **resources: Any) -> None:
        self._compute.update(resources)

    def __exit__(self, exc_type, exc, tb) -> bool:
        measured = {"wall_clock_s": round(time.monotonic() - self._t0, 6),
                    "cpu_s": round(time.process_time() - self._cpu0, 6)}
        try:
            import resource
            measured["max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        except Exception:
            pass
        measured.update(self._compute)
        attrs = {"status": "succeeded" if exc_type is None else "failed",
                 "duration_s": measured["wall_clock_s"], "compute": measured}
        if exc_type is not None:
            attrs["error"] = f"{exc_type.__name__}: {exc}"[:1000]
        try:
            self.completed_id = self._logger.emit(
                "training.run_completed", subject={"run": self.run, "model": self.model},
                attributes=attrs, actor=self._actor)
        except Exception as e:
            if exc_type is None:
                raise
            # The training code's exception matters more than this one: keep it.
            self._logger._swallowed(f"recording training.run_completed of run {self.run!r}", e)
        return False  # never swallow the training code's exception


def prediction_decorator(logger, *, model: str, version: str,
                         request_id: Optional[Callable[..., Any]] = None,
                         actor: Actor = None) -> Callable:
    """Wrap a predict function so each call is logged as ``prediction.served``.

    Guarantees: the wrapped function's result is returned unchanged (the same object); if
    the function raises, that exact exception propagates and nothing is logged; no
    exception from the logging path (encoding, sampling, a closed or broken logger) ever
    reaches the caller — it is swallowed and counted in ``stats()["errors"]``, and the
    first of each type is logged at error level. (A decorator without an actor, from
    itself or the logger, is refused at decoration: ``AuditLogger.predictions``.)

    The event: subject ``{model, version, request}``, attributes ``inputs`` (``args`` and
    ``kwargs``), ``outputs`` (the result; ``None`` is recorded as ``{"value": null}`` since
    the catalogue requires outputs), ``latency_ms`` (the function alone) and
    ``sample_rate``. For calls sampled in, inputs and outputs are copied on the caller's
    thread right after the call (:func:`mlaudit.encode.snapshot`: containers, numpy arrays
    and pandas objects; other objects by reference) and encoded to JSON on the sender
    thread (numpy through ``tolist()``, pandas through ``to_dict``, unknown objects as
    their ``repr``).
    """
    sampler = logger.sampler

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = perf_counter_ns()
            result = fn(*args, **kwargs)
            t1 = perf_counter_ns()
            # The caller's share is kept small (about 5 µs here, half of what building the
            # event dict took): the sampling decision and copies of the inputs and outputs.
            # The event dict is built, and encoded, on the sender thread (build_prediction).
            try:
                if logger._closing:
                    raise LoggerClosedError(logger._forked_message(say_once=False)
                                            if logger._forked else "prediction after close()")
                if request_id is not None:
                    rid = request_id(*args, **kwargs)
                else:
                    rid = kwargs.get("request_id")
                rid = str(uuid.uuid4()) if rid is None else str(rid)
                keep, rate = sampler.decide(model, rid)
                if not keep:
                    logger._count("sampled_out")
                    return result
                who = actor if actor is not None else logger.actor
                if who is None:
                    raise ValueError("prediction.served: no actor (give the logger or the "
                                     "decorator one)")
                logger._enqueue((PREDICTION, model, version, rid, who, snapshot(args),
                                 snapshot(kwargs) if kwargs else None,
                                 snapshot(result) if result is not None else None, t1 - t0,
                                 rate), time_ns())
            except Exception as e:
                logger._swallowed("the prediction decorator (the call was not recorded)", e)
            return result
        return wrapper
    return decorate
