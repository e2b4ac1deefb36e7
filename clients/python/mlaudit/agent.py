"""Delivery by a separate process: ``AuditLogger(..., delivery="process")``.

Why: in the default delivery a thread of the serving process encodes events to JSON and
POSTs them, holding the GIL. Here the serving process keeps only the cheap part: the
sampling decision, the copies of inputs and outputs, and a ``marshal`` of each chunk of
queued events (C code, about 0.2 µs per event) written to a pipe. A child process, the
*agent* (:func:`main`, started by the logger), runs an ordinary thread-delivery
:class:`~mlaudit.AuditLogger` on the same ``spool_dir`` and does the rest: encoding,
batching, retries, the spool. Events handed to it survive the serving process's death.
What it does for a predict function's p99 was measured only on the project's 2-vCPU VM,
where it was not lower than with the thread delivery (BENCHMARKS.md, Python SDK).

Invariants:

* **Order.** One forwarder thread writes chunks to the pipe in queue order; a caller that
  finds the queue full twice writes the older hand-off itself. Both hold ``_spool_lock``
  from taking events off the queue to the end of the write, as the thread delivery does
  for spool writes, so the agent receives events in ``log()`` order and queues them in
  that order.
* **Never blocks a caller on the network.** ``log()`` appends to the bounded queue; only a
  caller that finds it full twice writes to the pipe, which the agent empties at the speed
  of its own queue and spool (a disk write, never the network).
* **Flush.** ``flush()`` writes everything queued, then a flush request, to the pipe; the
  agent answers with its own ``flush()`` of everything it received before the request,
  which is exactly what was logged before the call.
* **Durability.** An event handed to the agent survives the serving process's death: on
  end-of-file the agent closes its logger (delivers or spools everything) and exits. It
  ignores SIGINT and SIGTERM for that reason (it runs in its own session; the end of the
  pipe is its signal). If the agent dies (killed), the events it held in memory are lost,
  as a thread delivery's queue is when its process is killed: the logger says so at error
  level and starts a new agent, which delivers what the spool holds.
* **Untrusted input:** none. Both ends of the pipe are this package; a malformed frame is
  a bug, reported, and ends the agent.
"""

from __future__ import annotations

import atexit
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .logger import AuditLogger, _finalize_many, _ENCODE_CHUNK, _ENCODE_EVERY_S
from .spool import SpoolInUseError

log = logging.getLogger("mlaudit")

_HEADER = struct.Struct("<I")
#: The largest frame either end accepts (a chunk of events; a flush forwards a backlog).
MAX_FRAME = 1 << 30
#: The settings the agent's logger takes from the serving process's; sampling and the
#: default actor are applied in the serving process, before an event is queued.
_AGENT_SETTINGS = ("queue_size", "batch_size", "linger_s", "timeout_s", "max_attempts",
                   "backoff_base_s", "backoff_cap_s", "spool_max_bytes", "spool_batch_size",
                   "cursor_interval_s", "kafka_config")
#: How long the serving process waits for the agent to start (it imports this package and
#: takes the spool's lock) and for an answer to ``stats()``.
_START_TIMEOUT_S = 30.0
_STATS_TIMEOUT_S = 5.0
#: After a failed start of a replacement agent, how long events are counted as dropped
#: before the next start is tried.
_RESTART_BACKOFF_S = 1.0
#: The clock of the restart back-off (a seam for its test).
_now = time.monotonic


#: How the agent starts: it imports this very copy of the package (the directory that holds
#: it is first on its path unless it is already on it, as site-packages is, behind the
#: standard library), never one found in its working directory.
_BOOT = ("import sys; here = sys.argv[1]; sys.path[:] = [p for p in sys.path if p not in "
         "('', '.')]; here in sys.path or sys.path.insert(0, here); "
         "from mlaudit.agent import main; sys.exit(main())")


class AgentError(RuntimeError):
    """The delivery agent could not be started, or refused its configuration."""


# -- frames ----------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)  # the GIL is released while the pipe is full
        view = view[n:]


def write_frame(fd: int, message: Any) -> None:
    """One message: a 4-byte little-endian length, then its ``marshal`` bytes."""
    write_frame_bytes(fd, marshal.dumps(message))


def write_frame_bytes(fd: int, data: bytes) -> None:
    """A message already marshalled."""
    _write_all(fd, _HEADER.pack(len(data)) + data)


def _read_exact(fd: int, n: int) -> Optional[bytes]:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(fd: int) -> Optional[Any]:
    """The next message, or None at end of file (also in the middle of a frame).
    Raises ``ValueError`` for a frame over :data:`MAX_FRAME` or that does not decode."""
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes (the limit is {MAX_FRAME})")
    body = _read_exact(fd, size)
    if body is None:
        return None
    try:
        return marshal.loads(body)
    except (EOFError, ValueError, TypeError) as e:
        raise ValueError(f"a frame that does not decode: {e}") from None


def _close_pipes(proc: subprocess.Popen) -> None:
    """Close this process's ends of the pipes to an agent (the agent sees end of file)."""
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()  # type: ignore[union-attr]
        except OSError:
            pass


# -- the serving process's side ----------------------------------------------------------


class ProcessAuditLogger(AuditLogger):
    """An :class:`~mlaudit.AuditLogger` whose delivery runs in a child process. Built by
    ``AuditLogger(..., delivery="process")``; the same interface and guarantees (see the
    module docs for what differs). ``stats()`` adds ``agent_pid`` and ``agent_restarts``."""

    def __init__(self, url: str, token: Optional[str] = None, spool_dir: Optional[str] = None,
                 **kwargs: Any) -> None:
        self._agent_settings = {k: kwargs[k] for k in _AGENT_SETTINGS if k in kwargs}
        self._agent_url, self._agent_token = url, token
        super().__init__(url, token, spool_dir, **kwargs)

    # AuditLogger.__init__ calls this where the thread delivery opens its spool.
    def _open_delivery(self, spool_dir: str, spool_max_bytes: int) -> None:
        self.spool = None  # type: ignore[assignment]  # the agent's
        self._spool_dir = spool_dir
        self._reply_lock = threading.Lock()
        self._replies: Dict[int, Any] = {}
        self._seq = 0
        self._restarts = 0
        self._close_ok: Optional[bool] = None
        self._generation = 0  # counts agents: an answer is awaited from one of them
        self._next_start_at = 0.0
        self._close_sent = False  # [_spool_lock] the agent reads nothing after it
        self._agent_stats_at_close: Dict[str, Any] = {}
        self._proc: Optional[subprocess.Popen] = None
        self._start_agent()

    def _start_agent(self) -> None:
        """Start the agent and wait for it to answer ``ready``; raises :class:`AgentError`."""
        if not sys.executable:
            raise AgentError("delivery='process' needs sys.executable (a Python interpreter)")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        flags = getattr(subprocess, "_args_from_interpreter_flags", list)()  # -X, -O, ...
        proc = subprocess.Popen([sys.executable, *flags, "-c", _BOOT, here],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                start_new_session=True)
        to_agent, from_agent = proc.stdin.fileno(), proc.stdout.fileno()  # type: ignore
        try:
            write_frame(to_agent, ("config", self._agent_url, self._agent_token or "",
                                   self._spool_dir, self._agent_settings))
            answer = self._read_reply(from_agent, _START_TIMEOUT_S)
        except (OSError, ValueError) as e:
            answer = ("error", f"{type(e).__name__}: {e}")
        if not (isinstance(answer, tuple) and answer and answer[0] == "ready"):
            status = proc.poll()
            proc.kill()
            proc.wait()
            _close_pipes(proc)
            why = (str(answer[1]) if isinstance(answer, tuple) and len(answer) > 1
                   else f"it exited with status {status}" if status is not None
                   else f"no answer within {_START_TIMEOUT_S:.0f} s")
            if why.startswith("SpoolInUseError: "):
                raise SpoolInUseError(why[len("SpoolInUseError: "):])
            raise AgentError(f"mlaudit: the delivery agent did not start: {why}")
        self._proc, self._to_agent, self._from_agent = proc, to_agent, from_agent

    @staticmethod
    def _read_reply(fd: int, timeout: Optional[float]) -> Any:
        """The next frame; None at end of file, ``_NOTHING_YET`` after ``timeout``."""
        poller = select.poll()  # not select(): it fails for descriptors of 1024 and more
        poller.register(fd, select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return read_frame(fd) if ready else _NOTHING_YET

    def _forget_delivery_after_fork(self) -> None:
        # The child's copies of the pipe would keep the agent from seeing the parent end.
        if self._proc is not None:
            _close_pipes(self._proc)
        self._proc = None

    # -- forwarding ------------------------------------------------------------------------

    def _run(self) -> None:
        """The forwarder thread: queued events to the agent, in chunks."""
        while True:
            with self._lock:
                if not self._wait_for_chunk_locked():
                    return
            try:
                with self._spool_lock:
                    with self._lock:
                        items = self._take_all_locked()
                    if items:
                        self._spool_items(items, pause=False)
            except Exception as e:  # never let the forwarder die silently
                self._swallowed("the forwarder thread", e)
                time.sleep(0.1)

    def _wait_for_chunk_locked(self) -> bool:
        """Under _lock: wait until a chunk is queued, the oldest queued event has waited
        ``_ENCODE_EVERY_S``, a hand-off, flush or close waits. False once closed."""
        due: Optional[float] = None
        while not self._closed:
            if (self._overflow or len(self._buf) >= _ENCODE_CHUNK
                    or (self._buf and (self._closing or self._flush_waiters))):
                return True
            if not self._buf:
                due = None
                self._notify_at = 1
                self._cv.wait(0.5)
                continue
            now = time.monotonic()
            due = now + _ENCODE_EVERY_S if due is None else due
            if now >= due:
                return True
            self._notify_at = _ENCODE_CHUNK
            self._cv.wait(due - now)
        return False

    def _spool_items(self, items: List[Tuple[Any, int, int]], pause: bool) -> None:
        """Under _spool_lock: hand ``items`` to the agent (in the thread delivery this
        writes them to the spool; here the agent does). After the close request the agent
        reads nothing more: events queued in a race with close() are counted as dropped."""
        if self._close_sent:
            with self._lock:
                self._report_drop(len(items))
            return
        failed: List[Tuple[BaseException, Any]] = []
        pairs = _pack(items, failed)
        if not pairs:
            self._report_unencodable(failed)
            return
        try:
            data = marshal.dumps(("events", pairs))
        except ValueError:  # nested too deeply for marshal: encode them all here
            failed = []
            pairs = _pack(items, failed, encode_all=True)
            data = marshal.dumps(("events", pairs))
        self._report_unencodable(failed)
        try:
            self._send(data, len(pairs))
        except Exception as e:  # never into log(), never lose them uncounted
            self._swallowed("handing events to the delivery agent", e)
            with self._lock:
                self._report_drop(len(pairs))

    def _send(self, data: bytes, events: int = 0) -> bool:
        """Under _spool_lock: write a marshalled message; if the agent is gone, start
        another and write it there. False (and ``events`` counted as dropped) if that
        fails too."""
        for attempt in range(2):
            if self._proc is not None:
                try:
                    write_frame_bytes(self._to_agent, data)
                    return True
                except OSError:
                    pass
            if attempt == 0 and not (self._forked or self._closing):
                self._replace_agent()
        if events:
            with self._lock:
                self._report_drop(events)
        return False

    def _replace_agent(self) -> None:
        """Under _spool_lock: the agent is gone (a write failed): say so, let go of it, and
        start a new one, unless the last start failed less than ``_RESTART_BACKOFF_S`` ago."""
        old = self._proc
        if old is not None:
            log.error("mlaudit: the delivery agent (pid %d) is gone (exit status %s); events "
                      "it had received but not yet delivered or spooled are LOST; starting a "
                      "new one on %s", old.pid, old.poll(), self._spool_dir)
            try:
                old.kill()
                old.wait(5)
            except Exception:
                pass
            with self._reply_lock:  # no waiter is reading it now; each checks the generation
                self._proc = None
                self._generation += 1  # requests waiting for the old agent's answer get None
                _close_pipes(old)
        if _now() < self._next_start_at:  # the last start failed just now
            return
        try:
            self._start_agent()
            self._restarts += 1
        except Exception as e:  # AgentError, SpoolInUseError, OSError from Popen, ...
            # From the end of the attempt, which can take _START_TIMEOUT_S.
            self._next_start_at = _now() + _RESTART_BACKOFF_S
            log.error("mlaudit: no new delivery agent: %s", e)

    def _report_drop(self, n: int) -> None:
        self._counts["dropped"] += n
        log.error("mlaudit: no delivery agent could take %d event(s): DROPPED (%d so far)",
                  n, self._counts["dropped"])

    # -- requests to the agent -----------------------------------------------------------

    def _request(self, op: str, *args: Any, timeout: Optional[float]) -> Optional[Any]:
        """Forward everything queued, then ask the agent ``op``; its answer, or None (no
        answer within ``timeout``, or no agent)."""
        with self._spool_lock:
            with self._lock:
                items = self._take_all_locked()
            if items:
                self._spool_items(items, pause=False)
            self._seq += 1
            seq = self._seq
            if self._proc is None or not self._send(marshal.dumps((op, seq) + args)):
                return None
            if op == "close":
                self._close_sent = True
            generation = self._generation
        return self._await(seq, timeout, generation)

    def _await(self, seq: int, timeout: Optional[float], generation: int) -> Optional[Any]:
        """The agent's answer to request ``seq``, or None (timeout, or the agent gone).
        Whoever holds ``_reply_lock`` reads one frame (waiting at most 0.1 s) and files it
        under its request's number, so that concurrent requests each get their own."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._reply_lock:
                if seq in self._replies:
                    return self._replies.pop(seq)
                remaining = None if deadline is None else deadline - time.monotonic()
                if ((remaining is not None and remaining <= 0) or self._proc is None
                        or self._generation != generation):
                    return None
                try:
                    reply = self._read_reply(self._from_agent, min(remaining or 0.1, 0.1))
                except (OSError, ValueError):
                    return None
                if reply is None:
                    return None  # end of file: the agent is gone
                if reply is _NOTHING_YET:
                    continue
                if isinstance(reply, tuple) and len(reply) >= 3:
                    self._replies[reply[1]] = reply[2]

    def flush(self, timeout: Optional[float] = None) -> bool:
        with self._lock:
            if self._closed:
                return self._forked or bool(self._close_ok)
            self._flush_waiters += 1
            self._cv.notify()
        try:
            wait = None if timeout is None else timeout + 5.0  # the agent answers at timeout
            return bool(self._request("flush", timeout, timeout=wait))
        finally:
            with self._lock:
                self._flush_waiters -= 1

    def stats(self) -> Dict[str, int]:
        with self._lock:
            mine = dict(self._counts)
            queued = len(self._buf) + sum(len(c) for c in self._overflow)
            closed = self._closed
        theirs = self._agent_stats_at_close if closed else (
            self._request("stats", timeout=_STATS_TIMEOUT_S) or {})
        out = {k: mine[k] + int(theirs.get(k, 0)) for k in mine}
        out["queued"] = queued + int(theirs.get("queued", 0))
        out["spool_pending_bytes"] = int(theirs.get("spool_pending_bytes", 0))
        out["mode"] = theirs.get("mode", "unknown")  # type: ignore[assignment]
        out["agent_pid"] = self._proc.pid if self._proc is not None else 0
        out["agent_restarts"] = self._restarts
        return out

    def close(self, timeout: float = 30.0) -> bool:
        with self._lock:
            if self._closed:
                return bool(self._close_ok)
            already_closing = self._closing
            self._closing = True
            self._cv.notify()
        if already_closing:
            self._thread.join(timeout)
            return bool(self._close_ok)
        answer = self._request("close", timeout, timeout=timeout + self.timeout_s + 10)
        ok = isinstance(answer, tuple) and bool(answer[0])
        if isinstance(answer, tuple):
            self._agent_stats_at_close = answer[1]
        with self._lock:
            self._close_ok = ok
            self._closed = True
            self._cv.notify()
            # A log() that passed its closing check just before close() began, and queued
            # after the last hand-over: the agent has closed, nobody can deliver these.
            late = len(self._take_all_locked())
            if late:
                self._report_drop(late)
        self._thread.join(5)
        proc, self._proc = self._proc, None
        if proc is not None:
            _close_pipes(proc)  # end of file: the agent exits
            try:
                proc.wait(self.timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.error("mlaudit: the delivery agent (pid %d) is still closing; it goes on "
                          "on its own", proc.pid)
        if self._atexit is not None:
            atexit.unregister(self._atexit)
        return ok


#: What ``_read_reply`` returns when no frame came in time.
_NOTHING_YET = object()


#: The types ``marshal`` writes and reads back as themselves. (It also writes any object
#: with the buffer protocol, a numpy array say, but reads it back as ``bytes``.)
_PLAIN = frozenset((str, int, float, bool, type(None), bytes))
_PLAIN_DEPTH = 20


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` survives ``marshal`` unchanged: only the types above, in tuples,
    lists, sets and dicts (flat containers are checked in one C-level pass)."""
    t = type(value)
    if t in _PLAIN:
        return True
    if depth >= _PLAIN_DEPTH:
        return False
    if t is tuple or t is list or t is frozenset or t is set:
        return _PLAIN.issuperset(map(type, value)) or all(_plain(v, depth + 1) for v in value)
    if t is dict:
        return ((_PLAIN.issuperset(map(type, value)) or all(_plain(k, depth + 1) for k in value))
                and (_PLAIN.issuperset(map(type, value.values()))
                     or all(_plain(v, depth + 1) for v in value.values())))
    return False


def _pack(items: List[Tuple[Any, int, int]], failed: List[Tuple[BaseException, Any]],
          encode_all: bool = False) -> List[Tuple[Any, int]]:
    """``(event, time_ns)`` pairs to marshal. An event holding anything else (a numpy array,
    an object) is encoded to JSON here instead (``_finalize_many``: its id and time fixed);
    one that cannot be encoded either is left out and put in ``failed`` (the caller reports
    it as rejected)."""
    out: List[Tuple[Any, int]] = []
    for ev, t, idx in items:
        if not encode_all and _plain(ev):
            out.append((ev, t))
        else:
            out.extend((body, t) for body in _finalize_many([(ev, t, idx)], False, failed))
    return out


# -- the agent -------------------------------------------------------------------------


class _Agent:
    """The child process: reads frames from stdin, answers on the descriptor that was
    stdout (stdout itself is pointed at stderr, so that a stray print cannot corrupt a
    frame)."""

    def __init__(self) -> None:
        self.inp = 0
        self.out = os.dup(1)
        os.dup2(2, 1)
        self.write_lock = threading.Lock()
        self.logger: Optional[AuditLogger] = None

    def reply(self, message: Any) -> None:
        """Answer the serving process; if it is gone, there is nobody to answer."""
        try:
            with self.write_lock:
                write_frame(self.out, message)
        except OSError:
            pass

    def flush_and_reply(self, seq: int, timeout: Optional[float]) -> None:
        assert self.logger is not None
        self.reply(("flushed", seq, self.logger.flush(timeout)))

    def start(self) -> bool:
        msg = read_frame(self.inp)
        if not (isinstance(msg, tuple) and len(msg) == 5 and msg[0] == "config"):
            self.reply(("error", f"expected a config frame, got {type(msg).__name__}"))
            return False
        _, url, token, spool_dir, settings = msg
        try:
            self.logger = AuditLogger(url, token or None, spool_dir, register_atexit=False,
                                      **settings)
        except Exception as e:
            self.reply(("error", f"{type(e).__name__}: {e}"))
            return False
        self.logger._gil_pauses = False
        self.reply(("ready", os.getpid()))
        return True

    def serve(self) -> None:
        lg = self.logger
        assert lg is not None
        while True:
            msg = read_frame(self.inp)
            if msg is None:  # the serving process is gone (or closed the pipe)
                lg.close()
                return
            op = msg[0]
            if op == "events":
                enqueue = lg._enqueue
                for ev, t in msg[1]:
                    enqueue(ev, t)
            elif op == "flush":  # answered by a thread, so that reading goes on meanwhile
                threading.Thread(target=self.flush_and_reply, args=msg[1:3], daemon=True).start()
            elif op == "stats":
                self.reply(("stats", msg[1], lg.stats()))
            elif op == "close":
                _, seq, timeout = msg
                ok = lg.close(timeout)
                self.reply(("closed", seq, (ok, lg.stats())))
                return
            else:
                raise ValueError(f"unknown request {op!r}")


def main() -> int:
    """``python -m mlaudit.agent``: started by ``AuditLogger(..., delivery="process")``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="mlaudit agent (pid %(process)d): %(levelname)s %(message)s")
    logging.getLogger("mlaudit").setLevel(logging.WARNING)
    agent = _Agent()
    try:
        if not agent.start():
            return 2
        agent.serve()
    except Exception as e:  # a bug: say so, and still deliver or spool what was received
        log.exception("mlaudit: the delivery agent stops: %s", e)
        return 2
    finally:
        if agent.logger is not None:
            agent.logger.close()  # (idempotent: a no-op after a close request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
