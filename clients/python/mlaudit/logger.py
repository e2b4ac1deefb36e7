"""AuditLogger: non-blocking, batching, spooling delivery of audit events.

Invariants (what the tests check):

* **Never blocks a caller on the network.** ``log()`` takes one in-process lock for an
  append to a bounded in-memory queue. When the queue is full it hands the whole queue to
  the sender (O(1)); only if it fills again before the sender took that hand-off does
  ``log()`` write the backlog to the local spool itself (no fsync, no network).
* **Order.** Events logged by one thread reach the server in ``log()`` order, across spool
  transitions. The sender is in one of two modes, switched only under the queue lock:

  - DIRECT (spool empty): the sender takes events from the queue in chunks, encodes them
    at once and sends them as a batch (see ``_take_chunk_locked``). If the batch cannot
    be delivered it is *prepended* to the spool (it is older than anything
    the spool may have received meanwhile) and the mode becomes SPOOLING.
  - SPOOLING: the sender moves hand-offs and queue items to the spool tail and sends from
    the spool head. When the spool is drained and no hand-off waits (checked under both
    locks) the mode returns to DIRECT; whatever is queued then is newer than everything
    delivered.

  A full queue sets SPOOLING together with the hand-off. Whoever moves events from memory
  to the spool holds the spool lock from taking them (oldest first, under the queue lock)
  until they are written, so spool writes happen in log order.
* **Flush.** Each queued event gets an index; since delivery follows index order, two
  watermarks (every lower index delivered / durable) answer ``flush()`` for exactly the
  events logged before it.
* **Idempotency.** An event's ``id`` (uuid4) and ``time`` are fixed before its first send
  attempt and travel with its JSON bytes through every retry and the spool; the server
  answers ``duplicate: true`` for an id it already has and writes nothing.
* **Durability.** An event is durable once the server acknowledged it (200 with a receipt
  for every event: see :mod:`mlaudit._http`) or once it is in the spool and fsync'd (the
  sender fsyncs spool writes in batches, ``flush()`` and ``close()`` wait for it). Events
  still in the memory queue when the process is killed (SIGKILL, power loss) are lost;
  ``close()`` runs at exit to spool them.
* **Consistency.** The checkpoint of each 200 is checked against the last one kept, on
  the sender thread, before the batch counts as delivered (:mod:`mlaudit.checkpoints`).
* **Nothing swallowed silently.** An exception the SDK catches instead of raising (in the
  decorator, the sender, encoding) is counted in ``errors``; the first of each kind is
  logged at error level (:meth:`AuditLogger._swallowed`).
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import random
import threading
import time
import traceback
import uuid
import warnings
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ._http import DELIVERED, INVALID, REQUEST_ERROR, SPLIT, Transport
from ._queue import is_queue_url, queue_transport
from .checkpoints import CheckpointMonitor
from .encode import build_prediction, dumps, timestamp, uuid4_text
from .sampling import HIGH, DEFAULT_LOW_RATE, Policy, Sampler
from .spool import Spool, read_records

log = logging.getLogger("mlaudit")

DIRECT, SPOOLING = "direct", "spooling"


class LoggerClosedError(RuntimeError):
    """``log()`` was called after ``close()``."""


class AuditLogger:
    """Send audit events to an ``mlaudit serve`` without ever blocking the caller.

    Args:
        url: base URL of the server, e.g. ``http://127.0.0.1:8080``; or a queue the
            server consumes (``mlaudit serve --ingest``), with the server's URL:
            ``nats://HOST:4222/STREAM?subject=S`` (needs ``mlaudit[nats]``) or
            ``kafka://HOST:9092/TOPIC`` (needs ``mlaudit[kafka]``); see docs/QUEUES.md.
        token: a writer token (``Authorization: Bearer``); not used with a queue.
        spool_dir: directory of the local spool (one live logger per directory).
            Default: ``$MLAUDIT_SPOOL_DIR``, else ``~/.mlaudit/spool``.
        actor: default actor for events without one, e.g.
            ``{"id": "scoring-api", "type": "service"}``.
        queue_size: capacity of the in-memory queue; beyond it ``log()`` spools.
        batch_size: most events per POST.
        linger_s: how long the sender waits to fill a batch (not while a flush waits).
            Fewer, larger batches mean fewer bursts of HTTP work competing for the GIL
            with the threads that serve predictions.
        timeout_s: HTTP timeout per request.
        max_attempts: attempts per batch in DIRECT mode before it is spooled.
        backoff_base_s, backoff_cap_s: exponential backoff with full jitter between
            attempts: ``uniform(0, min(cap, base * 2**attempt))``.
        spool_max_bytes: disk limit of the spool; events beyond it are dropped, counted
            in ``stats()["dropped"]`` and reported at error level.
        sampling: per-model policy for ``prediction.*`` events: ``{"credit-risk": "high",
            "churn": ("low", 0.05)}``; ``default_risk`` applies to other models and
            ``low_rate`` to a bare ``"low"``. See :mod:`mlaudit.sampling`.
        register_atexit: close the logger at interpreter exit.
        spool_batch_size: most events per POST when draining the spool.
        cursor_interval_s: how often, at most, the spool cursor is persisted while draining.
        kafka_config: extra librdkafka settings for a ``kafka://`` URL (e.g. TLS, SASL).
        delivery: ``"thread"`` (a sender thread of this process) or ``"process"`` (a child
            process, the delivery agent: see :mod:`mlaudit.agent`).
    """

    def __new__(cls, *args: Any, delivery: str = "thread", **kwargs: Any) -> "AuditLogger":
        if delivery not in ("thread", "process"):
            raise ValueError(f"delivery must be 'thread' or 'process', not {delivery!r}")
        if delivery == "process" and cls is AuditLogger:
            from .agent import ProcessAuditLogger
            cls = ProcessAuditLogger
        return super().__new__(cls)

    def __init__(self, url: str, token: Optional[str] = None, spool_dir: Optional[str] = None,
                 *, actor: Optional[Mapping[str, str]] = None, queue_size: int = 10_000,
                 batch_size: int = 500, linger_s: float = 0.2, timeout_s: float = 5.0,
                 max_attempts: int = 4, backoff_base_s: float = 0.05,
                 backoff_cap_s: float = 2.0, spool_max_bytes: int = 1 << 30,
                 sampling: Optional[Mapping[str, Policy]] = None, default_risk: Policy = HIGH,
                 low_rate: float = DEFAULT_LOW_RATE, register_atexit: bool = True,
                 spool_batch_size: int = 2000, cursor_interval_s: float = 0.2,
                 delivery: str = "thread",
                 kafka_config: Optional[Mapping[str, Any]] = None) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if actor is not None:
            _check_actor(actor)
        self.url = url.rstrip("/")
        if is_queue_url(self.url):
            # nats:// or kafka://: the queue `mlaudit serve --ingest` consumes.
            self._transport = queue_transport(self.url, timeout_s, kafka_config)
        else:
            self._transport = Transport(self.url, token, timeout_s)  # (never log the token)
        self.actor = dict(actor) if actor is not None else None
        self.queue_size, self.batch_size, self.linger_s = queue_size, batch_size, linger_s
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.spool_batch_size, self.cursor_interval_s = max(spool_batch_size, 1), cursor_interval_s
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.sampler = Sampler(sampling, default_risk, low_rate)
        spool_dir = spool_dir or os.environ.get("MLAUDIT_SPOOL_DIR") or os.path.join(
            os.path.expanduser("~"), ".mlaudit", "spool")

        # Lock order: _spool_lock, then _lock. _lock guards the queue, the overflow
        # hand-offs, the mode, flush bookkeeping and counters; _spool_lock guards the spool
        # and orders writes to it (whoever takes events from the queue to the spool holds
        # it from the take to the write).
        self._lock = threading.Lock()
        self._spool_lock = threading.Lock()
        self._cv = threading.Condition(self._lock)        # the sender waits for work here
        self._progress = threading.Condition(self._lock)  # flush() waits for progress here
        self._wake = threading.Event()                   # interrupts the sender's backoff
        self._buf: collections.deque = collections.deque()  # (event, time_ns) pairs
        self._overflow: List[collections.deque] = []  # full queues handed to the sender
        self._cursor_saved_at = 0.0
        self._mode = DIRECT
        self._closing = self._closed = False
        # Flush bookkeeping: every queued event gets the next index; events reach the
        # server in index order, so two watermarks say how far delivery has got.
        self._next_idx = 0        # index of the next event _enqueue accepts
        self._delivered_upto = 0  # every lower index: acknowledged (or rejected, dropped)
        self._durable_upto = 0    # every lower index: acknowledged or fsync'd in the spool
        self._spooled_upto = 0    # [_spool_lock] every lower index: written to the spool
        self._marks: collections.deque = collections.deque()  # [_spool_lock] see _spool_items
        self._failures = 0        # failed send attempts so far (a flush compares epochs)
        self._flush_waiters = 0
        # The sender's chunking (see _take_chunk_locked): log() wakes it when the queue
        # reaches _notify_at events; _held events are taken and encoded but not yet sent.
        self._notify_at = 1
        self._held = 0
        # Whether the sender pauses for the GIL while it encodes (see _finalize_many): not
        # in a delivery agent, whose process serves nothing else.
        self._gil_pauses = True
        self._batch_due: Optional[float] = None
        self._counts = dict(sent=0, duplicates=0, spooled=0, retried=0, dropped=0,
                            rejected=0, sampled_out=0, errors=0, consistency_failures=0)
        self._drop_warned = False
        # What was logged once: configuration problems (until the next 200), and the kinds
        # of exception swallowed (see _swallowed).
        self._config_logged: set = set()
        self._error_kinds: set = set()
        self._checkpoints: Optional[CheckpointMonitor] = None  # (the thread delivery's)
        self._pid = os.getpid()
        self._forked = False
        self._open_delivery(spool_dir, spool_max_bytes)
        _LIVE.add(self)  # before the sender starts: a fork from now on disowns this copy
        self._thread = threading.Thread(target=self._run, name="mlaudit-sender", daemon=True)
        self._thread.start()
        if register_atexit:
            ref = weakref.ref(self)
            self._atexit = lambda: (ref() is not None and ref().close())
            atexit.register(self._atexit)
        else:
            self._atexit = None

    def _open_delivery(self, spool_dir: str, spool_max_bytes: int) -> None:
        """Delivery by a thread of this process, which owns the spool (see
        :class:`mlaudit.agent.ProcessAuditLogger` for the other way)."""
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes)
        self._checkpoints = CheckpointMonitor(
            self.spool.dir, self._transport.get_json,
            on_failure=lambda: self._count("consistency_failures"))
        if not self.spool.is_empty():
            self._mode = SPOOLING
            # What an earlier process left counts as one event logged before any flush.
            last = max(self.spool._sizes)
            self._marks.append((last, self.spool._sizes[last], 1))
            self._next_idx = self._spooled_upto = self._durable_upto = 1

    # -- the caller's side ------------------------------------------------------------

    def log(self, event: Dict[str, Any]) -> None:
        """Queue ``event`` for delivery and return at once.

        ``event`` is a dict in the catalogue's JSON shape. ``time`` is stamped now (RFC 3339
        UTC, microseconds) if absent, ``actor`` is the logger's default if absent, and
        ``id`` is a uuid4 assigned before the first send attempt if absent. The dict is
        shallow-copied; do not mutate its nested values afterwards.

        ``prediction.*`` events are sampled (see :mod:`mlaudit.sampling`); a kept one gets
        ``attributes.sample_rate``. Raises ``ValueError`` for a non-dict, a missing
        ``kind`` or actor, and :class:`LoggerClosedError` after ``close()``.
        """
        t_ns = time.time_ns()
        if self._closing:
            if self._forked:
                raise LoggerClosedError(self._forked_message())
            raise LoggerClosedError("AuditLogger.log() after close(): the event was not recorded")
        if type(event) is not dict and not isinstance(event, Mapping):
            raise ValueError(f"an event is a dict, not {type(event).__name__}")
        ev = dict(event)
        kind = ev.get("kind")
        if type(kind) is not str or not kind:
            raise ValueError("event has no 'kind'")
        if "actor" not in ev:
            if self.actor is None:
                raise ValueError(f"{kind}: event has no 'actor' and the logger has no default actor")
            ev["actor"] = self.actor
        if kind.startswith("prediction."):
            subject = ev.get("subject") or {}
            keep, rate = self.sampler.decide(subject.get("model"), subject.get("request"))
            if not keep:
                with self._lock:
                    self._counts["sampled_out"] += 1
                return
            attrs = dict(ev.get("attributes") or {})
            attrs["sample_rate"] = rate
            ev["attributes"] = attrs
        self._enqueue(ev, t_ns)

    def _enqueue(self, ev: Dict[str, Any], t_ns: int) -> None:
        with self._lock:
            idx = self._next_idx
            self._next_idx = idx + 1
            buf = self._buf
            if len(buf) < self.queue_size:
                buf.append((ev, t_ns, idx))
                n = len(buf)
                if n == self._notify_at or n == self.batch_size:
                    self._cv.notify()
                return
            if not self._overflow:
                # Full: hand the whole queue to the sender to spool (O(1) here); the mode
                # switch makes the sender move it to the spool before anything newer.
                self._overflow.append(buf)
                self._buf = collections.deque([(ev, t_ns, idx)])
                self._mode = SPOOLING
                self._cv.notify()
                return
        # Full again before the sender took the last hand-off (it is busy sending, stuck, or
        # slower than this caller): write that hand-off to the spool here, on this thread —
        # a disk write, never the network — and hand off the full queue in its place.
        with self._spool_lock:
            with self._lock:
                pending, self._overflow = self._overflow, [self._buf]  # O(1)
                self._buf = collections.deque([(ev, t_ns, idx)])
                self._mode = SPOOLING
                self._cv.notify()
            items = [item for chunk in pending for item in chunk]
            if items:  # (empty if the sender took the hand-off while this thread waited)
                self._spool_items(items, pause=False)  # the caller's thread: no GIL pauses

    def stats(self) -> Dict[str, int]:
        """Counters since start: ``sent`` (acknowledged by the server, duplicates
        included), ``duplicates`` (ids the server already had), ``spooled`` (written to the
        spool), ``retried`` (failed send attempts that were retried or spooled),
        ``dropped`` (over ``spool_max_bytes``), ``rejected`` (refused with 422, or not
        encodable), ``sampled_out``, ``errors`` (exceptions the SDK caught instead of
        raising: in the decorator, the sender, encoding), ``consistency_failures``
        (checkpoints that failed the rollback and fork check, :mod:`mlaudit.checkpoints`);
        plus ``queued``, ``spool_pending_bytes`` and ``mode`` now."""
        with self._lock:
            out = dict(self._counts)
            out["queued"] = len(self._buf) + self._held
            out["spool_pending_bytes"] = self.spool.pending_bytes()
            out["mode"] = self._mode  # type: ignore[assignment]
        return out

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every event logged before this call is delivered or durably spooled.

        Returns True when all of them were acknowledged by the server (or rejected with
        422, or sampled out); False when the timeout expired first, or when the server
        could not be reached and all of them are in the spool, fsync'd (they are delivered
        later, by this logger or by the next one started on the same ``spool_dir``). Never
        raises on timeout. Events logged meanwhile by other threads do not delay it. What
        an earlier process left in the spool counts as logged before the first call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._next_idx
            if self._closed:
                return self._delivered_upto >= target
            failures = self._failures
            self._flush_waiters += 1
            self._cv.notify()
            self._wake.set()  # retry now rather than at the end of a backoff
            try:
                while True:
                    if self._delivered_upto >= target:
                        return True
                    # Durable, and an attempt made since this call began failed.
                    if self._failures > failures and self._durable_upto >= target:
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if (remaining is not None and remaining <= 0) or not self._thread.is_alive():
                        return False
                    self._progress.wait(0.1 if remaining is None else min(remaining, 0.1))
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what can be delivered within ``timeout``, spool and fsync the rest,
        stop the sender thread and release the spool. Idempotent. Returns what
        ``flush`` would. ``log()`` after ``close()`` raises :class:`LoggerClosedError`."""
        with self._lock:
            if self._closed:
                return self._delivered_upto >= self._next_idx
            already_closing = self._closing
            self._closing = True
        if already_closing:
            self._thread.join(timeout)
            return self._delivered_upto >= self._next_idx
        ok = self.flush(timeout)
        with self._lock:
            self._closed = True
            self._cv.notify()
        self._wake.set()
        self._thread.join(self.timeout_s + 5)
        with self._spool_lock:
            # Whatever is still in memory (timeout, dead thread) goes to the spool.
            with self._lock:
                items = self._take_all_locked()
                if items:
                    self._mode = SPOOLING
                    ok = False
            if items:
                self._spool_items(items, pause=False)
            self.spool.persist_cursor(self.spool.cursor_snapshot())
            self.spool.close()
        if not self._thread.is_alive():
            self._transport.close()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
        return ok

    def __enter__(self) -> "AuditLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers for the other stages --------------------------------------------------

    def emit(self, kind: str, *, subject: Optional[Mapping[str, Any]] = None,
             attributes: Optional[Mapping[str, Any]] = None,
             actor: Optional[Mapping[str, str]] = None, id: Optional[str] = None,
             time: Optional[str] = None) -> str:
        """Build and ``log()`` one event; returns its id (assigned here)."""
        ev: Dict[str, Any] = {"id": id or str(uuid.uuid4()), "kind": kind,
                              "subject": {k: v for k, v in (subject or {}).items() if v is not None},
                              "attributes": dict(attributes or {})}
        if time is not None:
            ev["time"] = time
        if actor is not None:
            _check_actor(actor)
            ev["actor"] = dict(actor)
        self.log(ev)
        return ev["id"]

    @property
    def data(self):
        from .stages import Data
        return Data(self)

    @property
    def registry(self):
        from .stages import Registry
        return Registry(self)

    @property
    def operations(self):
        from .stages import Operations
        return Operations(self)

    @property
    def governance(self):
        from .stages import Governance
        return Governance(self)

    def training_run(self, **kwargs):
        """``with logger.training_run(run=..., model=..., hyperparameters=...,
        random_seed=..., datasets=[...]) as run: run.checkpoint(step, metrics)`` — see
        :class:`mlaudit.stages.TrainingRun`."""
        from .stages import TrainingRun
        return TrainingRun(self, **kwargs)

    def predictions(self, *, model: str, version: str, risk: Optional[Policy] = None,
                    request_id: Optional[Callable[..., Any]] = None,
                    actor: Optional[Mapping[str, str]] = None) -> Callable:
        """Decorator recording each call as a ``prediction.served`` event.

        ``risk`` ("high", "low" or ("low", rate)) sets this model's sampling policy.
        The request id is ``request_id(*args, **kwargs)`` if given, else the call's
        ``request_id`` keyword argument, else a new uuid4. See
        :func:`mlaudit.stages.prediction_decorator` for the guarantees. Raises
        ``ValueError`` here, at decoration, when neither the decorator nor the logger has
        an actor (every call would fail to be recorded).
        """
        from .stages import prediction_decorator
        if actor is not None:
            _check_actor(actor)
        elif self.actor is None:
            raise ValueError(f"@predictions(model={model!r}): no actor: give the decorator "
                             "actor={'id': ..., 'type': 'service'} or the logger a default")
        if risk is not None:
            self.sampler.set(model, risk)
        return prediction_decorator(self, model=model, version=str(version),
                                    request_id=request_id, actor=actor)

    # -- fork safety -------------------------------------------------------------------

    def _disown_after_fork(self) -> None:
        """In a child process forked from the one that created this logger.

        The sender thread did not survive the fork, and the spool and the queued events
        belong to the parent, which still delivers them. Two processes writing one spool
        would corrupt it, and a queue nobody sends would lose events silently, so this copy
        is closed: ``log()`` raises :class:`LoggerClosedError` saying so (the decorator
        swallows it and counts it in ``stats()["errors"]``), ``flush``/``close`` return at
        once. Locks are new: the parent's sender may have held one at the fork. The child
        creates its own ``AuditLogger``, with its own ``spool_dir`` (gunicorn: in a
        ``post_fork`` hook, or without ``--preload``)."""
        self._forked = True
        self._forget_delivery_after_fork()
        self._lock = threading.Lock()
        self._spool_lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._buf = collections.deque()
        self._overflow = []
        self._marks = collections.deque()
        self._next_idx = self._delivered_upto = self._durable_upto = 0
        self._flush_waiters = self._held = 0
        self._closing = self._closed = True
        self._fork_error_logged = False
        self._error_kinds = set()
        self._counts = {name: 0 for name in self._counts}  # this process's, not the parent's

    def _forget_delivery_after_fork(self) -> None:
        self.spool.forget_after_fork()

    def _forked_message(self, say_once: bool = True) -> str:
        """Why a forked copy refuses to log; with ``say_once``, also logged the first time
        (the decorator reports it through ``_swallowed`` instead)."""
        msg = (f"this AuditLogger was created in process {self._pid}, before a fork; this "
               f"process ({os.getpid()}) must create its own, with its own spool_dir: "
               "the event was not recorded")
        if say_once and not self._fork_error_logged:
            self._fork_error_logged = True
            log.error("mlaudit: %s", msg)
        return msg

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _swallowed(self, where: str, exc: BaseException, what: str = "") -> None:
        """An exception caught ``where`` instead of being raised: counted in ``errors``; the
        first of its kind (place and type) is logged at error level with its traceback,
        later ones only counted. Never raises; never logs the token."""
        try:
            kind = (where, type(exc))
            with self._lock:
                self._counts["errors"] += 1
                first = kind not in self._error_kinds
                self._error_kinds.add(kind)
            if first:
                trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                log.error("%s", self._transport.redact(
                    f"mlaudit: {where}: {type(exc).__name__}: {exc}{what} (the first of its "
                    f"kind; later ones are only counted in stats()['errors'])\n{trace}"))
        except Exception:
            pass

    # -- spool helpers ---------------------------------------------------------------------

    def _progress_locked(self, delivered: int = 0, durable: int = 0,
                         failed: bool = False) -> None:
        """Under _lock: move the watermarks (never back) and wake flush() callers."""
        if delivered > self._delivered_upto:
            self._delivered_upto = delivered
        durable = max(durable, delivered)
        if durable > self._durable_upto:
            self._durable_upto = durable
        if failed:
            self._failures += 1
        if self._flush_waiters:
            self._progress.notify_all()

    def _take_all_locked(self) -> List[Tuple[dict, int, int]]:
        """Under _lock: every queued event, oldest first (hand-offs, then the queue)."""
        items: List[Tuple[dict, int, int]] = []
        for chunk in self._overflow:
            items.extend(chunk)
        self._overflow.clear()
        items.extend(self._buf)
        self._buf.clear()
        return items

    def _spool_items(self, items: List[Tuple[dict, int, int]], pause: bool) -> None:
        """Under _spool_lock (not _lock): encode and append at the spool tail (``pause``:
        see :func:`_finalize_many`).

        A mark (segment, end offset, index after the last event) is kept for each write,
        in drain order, so that the sender knows which indices a cursor move delivered."""
        bodies = self._encode(items, pause)
        try:
            n = self.spool.append(bodies)
        except OSError as e:  # disk full, I/O error: never raise into log()
            log.error("mlaudit: cannot write to the spool %s: %s", self.spool.dir, e)
            n = 0
        upto = items[-1][2] + 1
        self._spooled_upto = max(self._spooled_upto, upto)
        if n and self.spool.tail is not None:
            self._marks.append((*self.spool.tail, upto))
        with self._lock:
            self._counts["spooled"] += n
            if n < len(bodies):
                self._report_drop(len(bodies) - n)

    def _encode(self, items: List[Tuple[Any, int, int]], pause: bool) -> List[bytes]:
        """:func:`_finalize_many`, pausing for the GIL (if ``pause``) only for a chunk of at
        most ``_ENCODE_CHUNK`` events: a longer one is a backlog, or a flush or close that
        wants it sent. An event that cannot be encoded is counted as rejected."""
        failed: List[Tuple[BaseException, Any]] = []
        bodies = _finalize_many(items, pause and self._gil_pauses and len(items) <= _ENCODE_CHUNK,
                                failed)
        self._report_unencodable(failed)
        return bodies

    def _report_unencodable(self, failed: List[Tuple[BaseException, Any]]) -> None:
        """Events :func:`_finalize_many` could not encode: rejected, and swallowed errors."""
        if failed:
            self._count("rejected", len(failed))
            for exc, ev in failed:
                self._swallowed("REJECTED an event that could not be encoded", exc,
                                f"; the event: {_safe_repr(ev)}")

    def _report_drop(self, n: int) -> None:
        self._counts["dropped"] += n
        log.error("mlaudit: spool %s is full (spool_max_bytes=%d): DROPPED %d event(s); "
                  "%d dropped so far", self.spool.dir, self.spool.max_bytes, n,
                  self._counts["dropped"])
        if not self._drop_warned:
            self._drop_warned = True
            warnings.warn(f"mlaudit: audit events are being dropped: spool {self.spool.dir} "
                          f"reached spool_max_bytes={self.spool.max_bytes}", RuntimeWarning,
                          stacklevel=3)

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0  # consecutive failures while SPOOLING (for backoff)
        held: List[bytes] = []  # taken from the queue and encoded, not yet sent
        held_upto = 0           # index after the last held event
        while True:
            try:
                with self._lock:
                    if self._closed and not held:
                        return
                    mode = self._mode
                    if mode == DIRECT or held:
                        chunk, send = self._take_chunk_locked(len(held))
                        # A chunk or more still queued behind this one: a backlog.
                        behind = len(self._buf) >= _ENCODE_CHUNK
                if mode == DIRECT or held:
                    if chunk:
                        held.extend(self._encode(chunk, pause=not behind))
                        held_upto = chunk[-1][2] + 1
                        del chunk  # the queued objects die now, not after the POST
                    if held and send:
                        self._send_direct(held, held_upto)
                        held = []  # (kept until then: an exception spools them, below)
                    continue
                # SPOOLING: queued events to the spool tail (in order), fsync, send the head.
                with self._spool_lock:
                    with self._lock:
                        items = self._take_all_locked()
                    if items:  # everything queued: a backlog if more than a chunk
                        self._spool_items(items, pause=True)
                    dups, dir_dirty = self.spool.fsync_handles()
                    spooled = self._spooled_upto
                    head = self.spool.head()
                self.spool.sync_dups(dups, dir_dirty)
                with self._lock:
                    self._progress_locked(durable=spooled)
                if head is None:
                    with self._spool_lock:
                        with self._lock:
                            # Drained: whatever is queued now is newer than everything
                            # delivered (hand-offs would be older than the queue: wait).
                            if self.spool.is_empty() and not self._overflow:
                                self.spool.reset_if_empty()
                                self._marks.clear()
                                self._mode = DIRECT
                                self._progress_locked(delivered=self._spooled_upto)
                                attempt = 0
                    continue
                if self._send_spool_head(head):
                    attempt = 0
                    continue
                # Unreachable: what was queued is durable now (flush() may answer False).
                with self._lock:
                    self._progress_locked(failed=True)
                    if self._closing:
                        self._closed = True
                        self._progress.notify_all()
                        return
                self._backoff(attempt)
                attempt += 1
            except Exception as e:  # never let the sender die silently
                self._swallowed("the sender thread (retrying)", e)
                if held:  # never keep them in memory across an error: spool them
                    bodies, held = held, []
                    self._spool_undelivered(bodies, held_upto)
                self._backoff(attempt)
                attempt += 1

    def _take_chunk_locked(self, held: int) -> Tuple[Optional[List[Tuple[dict, int, int]]], bool]:
        """Under _lock, on the sender: wait for queued events and take the next chunk to
        encode. Returns ``(chunk or None, send)``; ``send`` says that the held events and
        this chunk are to be POSTed now: a full batch, the batch lingered ``linger_s``, a
        flush or close waits, or the mode left DIRECT (held events are older than any
        hand-off and go first).

        Events are encoded in chunks soon after they are queued (up to ``_ENCODE_CHUNK``
        or every ``_ENCODE_EVERY_S``) rather than once per batch, so that the caller's
        objects they hold die within milliseconds: kept queued for the whole linger, a
        batch's worth of them pushes CPython's cyclic garbage collector into collections
        that run on whichever thread allocates next, a predict call included."""
        buf = self._buf
        if self._mode != DIRECT or self._closed:
            self._batch_due = None
            return None, True
        if not buf and not held:
            if self._closing:
                self._closed = True
                self._progress.notify_all()
                return None, False
            self._batch_due = None
            self._notify_at = 1
            self._cv.wait(0.5)
            return None, False
        now = time.monotonic()
        if self._batch_due is None:
            self._batch_due = now + self.linger_s
        room = self.batch_size - held
        want = min(room, _ENCODE_CHUNK)
        wake = min(self._batch_due, now + _ENCODE_EVERY_S)
        while (len(buf) < want and self._mode == DIRECT and not self._flush_waiters
               and not self._closing):
            remaining = wake - time.monotonic()
            if remaining <= 0:
                break
            self._notify_at = want
            self._cv.wait(remaining)
        if self._mode != DIRECT:
            self._batch_due = None
            return None, True
        urgent = self._flush_waiters or self._closing
        take = min(room, len(buf)) if urgent else min(room, len(buf), _ENCODE_CHUNK)
        chunk = [buf.popleft() for _ in range(take)]
        self._held = held + len(chunk)
        send = (self._held >= self.batch_size or time.monotonic() >= self._batch_due
                or bool(urgent))
        if send:
            self._batch_due = None
        return chunk, send

    def _send_direct(self, bodies: List[bytes], upto: int) -> None:
        """POST encoded events (every index below ``upto`` that is not in the spool) with
        retries; spool them at the head if they cannot be delivered."""
        for attempt in range(self.max_attempts):
            result = self._post(bodies)
            if not result:
                with self._lock:
                    self._held = 0
                    self._progress_locked(delivered=upto)
                return
            bodies = result
            if attempt + 1 < self.max_attempts:
                self._count("retried")
                if self._closing:
                    break
                self._backoff(attempt)
        self._spool_undelivered(bodies, upto)

    def _spool_undelivered(self, bodies: List[bytes], upto: int) -> None:
        """Encoded events taken from the queue that could not be delivered: prepend them to
        the spool (they are older than anything it holds) and switch to SPOOLING."""
        with self._spool_lock:
            try:
                n, no, size = self.spool.prepend(bodies)
            except OSError as e:
                log.error("mlaudit: cannot write to the spool %s: %s", self.spool.dir, e)
                n = 0
            if n:
                self._marks.appendleft((no, size, upto))  # drains before everything else
            self._spooled_upto = max(self._spooled_upto, upto)
            with self._lock:
                self._counts["retried"] += 1
                self._counts["spooled"] += n
                self._held = 0
                if n < len(bodies):
                    self._report_drop(len(bodies) - n)
                self._mode = SPOOLING
                self._progress_locked(durable=upto, failed=True)  # prepend fsyncs

    def _send_spool_head(self, head: Tuple[int, str, int, int]) -> bool:
        """Send one batch from the spool head; advance the cursor on success. The cursor is
        persisted at most every ``cursor_interval_s`` (and when flushing, closing or
        drained): a crash can only re-send acknowledged events, which the server
        de-duplicates by id."""
        no, path, offset, end = head
        bodies, next_off, torn = read_records(path, offset, end, self.spool_batch_size, 8 << 20)
        if bodies and self._post(bodies):
            self._count("retried")
            return False
        with self._spool_lock:
            if torn:
                self.spool.mark_torn(no, next_off)
            else:
                self.spool.advance(no, next_off)
            delivered = 0
            while self._marks and not self.spool.pending_through(*self._marks[0][:2]):
                delivered = self._marks.popleft()[2]
            now = time.monotonic()
            if (now - self._cursor_saved_at >= self.cursor_interval_s or self._closing
                    or self._flush_waiters or self.spool.is_empty()):
                snapshot = self.spool.cursor_snapshot()
                self._cursor_saved_at = now
            else:
                snapshot = None
        with self._lock:
            self._progress_locked(delivered=delivered)
        if snapshot is not None:
            self.spool.persist_cursor(snapshot)
        return True

    def _post(self, bodies: List[bytes]) -> Optional[List[bytes]]:
        """POST ``bodies`` (with 422 removal and 400/413 splitting; what each answer means
        is in :mod:`mlaudit._http`).

        Returns None when every event was acknowledged or rejected, else the events that
        are still to be sent (no answer, 5xx, a configuration problem: kept, retried).
        """
        while True:
            out = self._transport.post_events(bodies)
            if out.kind == DELIVERED:
                receipts = out.doc["events"]
                dups = sum(1 for e in receipts if isinstance(e, dict) and e.get("duplicate"))
                with self._lock:
                    self._counts["sent"] += len(bodies)
                    self._counts["duplicates"] += dups
                self._config_logged.clear()
                self._check_checkpoint(out.doc.get("checkpoint"))
                return None
            if out.kind == INVALID:
                for i, why in sorted(out.invalid.items()):
                    log.error("mlaudit: the server rejected event %s: %s",
                              _describe(bodies[i]), why)
                self._count("rejected", len(out.invalid))
                bodies = [b for i, b in enumerate(bodies) if i not in out.invalid]
                if not bodies:
                    return None
                continue
            if out.kind == SPLIT:
                if len(bodies) > 1:
                    mid = len(bodies) // 2
                    first = self._post(bodies[:mid])
                    if first:  # transient failure in the first half: keep the order
                        return first + bodies[mid:]
                    return self._post(bodies[mid:])
                log.error("mlaudit: the server refused event %s: %s", _describe(bodies[0]),
                          out.reason)
                self._count("rejected")
                return None
            if out.config:
                self._config_problem(out.status, out.reason)
            else:
                log.debug("mlaudit: send failed (%s); will retry", out.reason)
            return bodies

    def _config_problem(self, status: Optional[int], reason: str) -> None:
        """A refusal that will not go away by itself: logged at error level once per kind
        until the server acknowledges a batch again; the events are kept."""
        kind = status if status is not None else REQUEST_ERROR
        if kind in self._config_logged:
            return
        self._config_logged.add(kind)
        if status in (401, 403):
            log.error("mlaudit: the server refused the token (%s); events are kept in the "
                      "spool %s until a valid writer token is configured", reason, self.spool.dir)
        else:
            log.error("mlaudit: %s (from %s); events are kept in the spool %s until the logger "
                      "or the server is configured correctly", reason, self.url, self.spool.dir)

    def _check_checkpoint(self, note: Any) -> None:
        """The rollback and fork check of a receipt's checkpoint (mlaudit.checkpoints)."""
        if self._checkpoints is not None and note is not None:
            try:
                self._checkpoints.check(note)
            except Exception as e:  # a disk error writing the kept checkpoint, a bug
                self._swallowed("the checkpoint check", e)

    def _backoff(self, attempt: int) -> None:
        """Full-jitter exponential backoff; returns early on flush/close."""
        delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** attempt))
        self._wake.wait(delay)
        self._wake.clear()


def _check_actor(actor: Mapping[str, str]) -> None:
    if not isinstance(actor, Mapping) or not actor.get("id") or \
            actor.get("type") not in ("user", "service"):
        raise ValueError(f"actor must be {{'id': ..., 'type': 'user'|'service'}}, got {actor!r}")


#: How long the sender sleeps between slices of encoding. ``time.sleep(0)`` releases the GIL
#: but takes it straight back before a waiting thread wakes up (which then waits for the
#: 5 ms switch interval); a real sleep lets it in.
_GIL_PAUSE_S = 50e-6
#: How long the sender encodes between two pauses (about three events).
_GIL_SLICE_NS = 30_000

#: The sender encodes queued events when this many are queued, or this often (see
#: AuditLogger._take_chunk_locked), and sends them once a batch is full or has lingered.
_ENCODE_CHUNK = 32
_ENCODE_EVERY_S = 0.025


def _finalize_many(items: List[Tuple[Dict[str, Any], int, int]], pause: bool,
                   failed: List[Tuple[BaseException, Any]]) -> List[bytes]:
    """Fix each event's id and time (before its first send attempt) and encode it. An item
    queued as a tuple by the prediction decorator becomes its event dict here. An event
    that cannot be encoded (not expected: encoding never raises) is left out and appended
    to ``failed`` with its exception, for the caller to report.

    With ``pause``, the sender sleeps ``_GIL_PAUSE_S`` whenever it has encoded for
    ``_GIL_SLICE_NS`` (a few events) since the last pause, which lets a thread waiting for
    the GIL (one woken to serve a prediction) take it: without the pauses that thread waits
    for the whole chunk (up to the 5 ms switch interval); with them, for one slice. The
    sender pauses only while it keeps up: not when a chunk (``_ENCODE_CHUNK`` events) or
    more is still queued behind what it encodes (a backlog). Then each pause could cost it a
    whole switch interval to get the GIL back from a busy caller (a few events per 5 ms, far
    below what it must deliver), and a waking prediction may wait up to one switch interval
    instead. A caller's own spill never pauses: a pause there would only delay that
    caller."""
    need = sum(1 for ev, _, _ in items
               if type(ev) is tuple or (type(ev) is dict and "id" not in ev))
    rnd = os.urandom(16 * need) if need else b""
    j = 0
    out = []
    slice_start = time.perf_counter_ns()
    for ev, t_ns, _ in items:
        if pause and out and time.perf_counter_ns() - slice_start >= _GIL_SLICE_NS:
            time.sleep(_GIL_PAUSE_S)
            slice_start = time.perf_counter_ns()
        if type(ev) is bytes:  # encoded already (by a process delivering through an agent)
            out.append(ev)
            continue
        try:
            if type(ev) is tuple:  # queued by the prediction decorator
                ev = build_prediction(ev)
            if "id" not in ev:
                ev["id"] = uuid4_text(rnd[j:j + 16])
                j += 16
            if "time" not in ev:
                ev["time"] = timestamp(t_ns)
            out.append(dumps(ev))
        except Exception as e:  # not expected (encoding never raises): never lose the others
            failed.append((e, ev))
    return out


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:200]
    except Exception:
        return f"<a {type(value).__name__} without a repr>"


#: Every logger alive in this process (weakly held), for the after-fork hook.
_LIVE: "weakref.WeakSet[AuditLogger]" = weakref.WeakSet()


def _disown_in_child() -> None:
    """``os.register_at_fork`` hook, registered once: closes every inherited logger."""
    for lg in list(_LIVE):
        lg._disown_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_in_child)


def _describe(body: bytes) -> str:
    try:
        d = json.loads(body)
        return f"{d.get('id')} ({d.get('kind')})"
    except Exception:
        return repr(body[:80])
