#!/usr/bin/env python3
"""What logging costs the caller: mlaudit's Python SDK beside two baselines, in one run.

    python clients/python/bench/bench_log.py                                   # full: 1,000,000 calls
    python clients/python/bench/bench_log.py --calls 20000 --predict-seconds 1    # tiny (CI)

Figures (one JSON line each: bench, engine, metric, value, plus context):

* ``log``: the time of one call on the caller's thread, ``time.perf_counter_ns`` around each
  call, p50/p99/p99.9 over ``--calls`` calls of
  - ``mlaudit-python``: ``AuditLogger.log(event)`` of a ``prediction.served`` event (a high-risk
    model, so the sampling hash and ``sample_rate`` are computed) to a real ``mlaudit serve``;
    the sender thread delivers meanwhile, in the same process (it competes for the GIL);
  - ``http-sync``: one synchronous ``urllib`` POST of the same event per call, waiting for the
    durable 200 — ``--calls / 100`` calls (it is that slow);
  - ``logging-file``: the standard ``logging`` module, a ``FileHandler``, the event as one JSON
    line (``json.dumps`` on the caller, as a structured log would).
  The mlaudit run ends with ``flush()``; its time and the SDK's counters are reported.
  The unpaced loop offers events far faster than one Python process can encode and send
  them (~0.3 M calls/s vs. some tens of thousands delivered per second), so it measures the
  overload path too: the queue fills, hand-offs go to the spool, and once per queue-full a
  ``log()`` call spills the backlog to disk itself (``spooled_events`` says how many).
* ``log_paced``: ``log()`` at a steady ``--paced-rate`` (10,000/s) for ``--calls / 10``
  calls, which the sender keeps up with: the cost in the steady state.
* ``predict``: a ~0.2 ms pure-Python predict function serving 1,000 requests/s for
  ``--predict-seconds`` in each of five conditions, in interleaved 0.25 s blocks: without
  the decorator, without it again (an A/A control: two identical conditions, whose p99 ratio
  is what this machine's noise alone produces), with ``@logger.predictions`` (high risk:
  every call logged, the sender thread delivering meanwhile; engine ``mlaudit-python``), and
  with the decorator of a logger built with ``delivery="process"`` (engine
  ``mlaudit-python-process``: a child process encodes and sends), and, as a diagnostic, the
  decorator alone (engine ``decorator-only``: its events are dropped in groups of 32, as a
  sender would take them, and never delivered: what the decorator's own work costs). The
  requests come from another process, which writes each one's arrival time to a pipe every millisecond; the predict
  thread blocks reading it (the GIL released, as a server thread waiting on its socket).
  Two latencies per request: ``call`` (``predict_*``: the decorated call alone) and
  ``response`` (``predict_response_*``: from the arrival to the return, so waking up and
  waiting for the GIL, which the sender thread may hold, count too). For each: p50/p99 without
  and with the decorator, the decorated/plain p99 ratio and the A/A ratio, each with a 95 %
  paired block-bootstrap interval (``ci95_low``/``ci95_high``). Each block begins with a few
  unmeasured requests, the logger is flushed (unmeasured) after each decorated block, and
  the blocks follow the orders of the five conditions, shuffled (see ``bench_predict``). Also
  ``events_delivered_while_serving`` (with how many were spooled: 0 when the sender keeps
  up) and ``decorator_overhead_*`` (a no-op function with and without the decorator in a
  hot loop of 20,000 calls, which overflows the queue into the spool: ``events_delivered``).

The server is started here (``mlaudit init`` in a temporary directory, ``mlaudit serve`` on a
free port; binary from ``$MLAUDIT_BIN``, else target/release, else target/debug) unless
``--url`` and ``--token`` are given. Where the OS allows it the server runs under
``SCHED_IDLE``: in production it runs on another machine, and here, on the same two cores,
its CPU time would otherwise be charged to the predict function it competes with.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
try:
    import mlaudit
except ImportError:
    sys.path.insert(0, os.path.dirname(HERE))
    import mlaudit


def emit(bench: str, engine: str, metric: str, value, **ctx) -> None:
    print(json.dumps(dict(bench=bench, engine=engine, metric=metric, value=value, **ctx),
                     sort_keys=True), flush=True)


def percentiles(samples):
    s = sorted(samples)

    def at(q):
        return s[min(len(s) - 1, int(q * len(s)))]
    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999), "max": s[-1]}


def find_binary() -> str:
    env = os.environ.get("MLAUDIT_BIN")
    if env:
        return env
    for rel in ("target/release/mlaudit", "target/debug/mlaudit"):
        p = os.path.join(REPO, rel)
        if os.path.exists(p):
            return p
    raise SystemExit("no mlaudit binary: set MLAUDIT_BIN or build target/release/mlaudit")


def _idle_priority() -> None:
    """In the server's process before exec: SCHED_IDLE where the OS allows it (see the
    module docstring); anywhere else the server simply runs at normal priority."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


class LocalServer:
    def __init__(self) -> None:
        self.bin = find_binary()
        self.dir = tempfile.mkdtemp(prefix="mlaudit-bench-")
        self.data = os.path.join(self.dir, "data")
        self._cli("init", "--origin", "bench.example")
        self.token = self._cli("token", "create", "--role", "writer", "--name", "bench")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([self.bin, "--data", self.data, "serve", "--listen",
                                      f"127.0.0.1:{port}"], preexec_fn=_idle_priority, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "serve.log"), "ab"))
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    with open(os.path.join(self.dir, "serve.log"), errors="replace") as f:
                        tail = f.read()[-2000:]
                    shutil.rmtree(self.dir, ignore_errors=True)
                    raise SystemExit(f"mlaudit serve did not start; its log:\n{tail}")
                time.sleep(0.05)

    def _cli(self, *args):
        return subprocess.run([self.bin, "--data", self.data, *args], capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def event(i: int) -> dict:
    return {"kind": "prediction.served",
            "subject": {"model": "credit-risk", "version": "7", "request": f"req-{i}"},
            "attributes": {"inputs": {"income": 52000 + i % 1000, "age": 41, "term_months": 36,
                                      "debt_ratio": 0.31},
                           "outputs": {"default_probability": 0.071}, "latency_ms": 0.21}}


def bench_mlaudit(url, token, calls, work):
    events = [event(i) for i in range(calls)]
    lg = mlaudit.AuditLogger(url, token, os.path.join(work, "spool"),
                             actor={"id": "bench", "type": "service"}, register_atexit=False)
    samples = [0] * calls
    clock = time.perf_counter_ns
    log = lg.log
    gc.disable()
    t_start = clock()
    for i in range(calls):
        ev = events[i]
        t0 = clock()
        log(ev)
        samples[i] = clock() - t0
    t_loop = clock() - t_start
    gc.enable()
    t0 = clock()
    delivered = lg.flush(600)
    t_flush = clock() - t0
    st = lg.stats()
    lg.close()
    p = percentiles(samples)
    ctx = dict(calls=calls, queue_size=lg.queue_size, batch_size=lg.batch_size)
    for name in ("p50", "p99", "p99.9"):
        emit("log", "mlaudit-python", f"log_{name.replace('.', '_')}_ns", p[name], **ctx)
    emit("log", "mlaudit-python", "log_max_ns", p["max"], **ctx)
    emit("log", "mlaudit-python", "caller_calls_per_s", round(calls / (t_loop / 1e9)), **ctx)
    emit("log", "mlaudit-python", "flush_after_loop_ms", round(t_flush / 1e6, 1),
         delivered=delivered, **ctx)
    emit("log", "mlaudit-python", "delivered_events_per_s",
         round(st["sent"] / ((t_loop + t_flush) / 1e9)),
         note="from the first log() to the end of flush()", **ctx)
    emit("log", "mlaudit-python", "spooled_events", st["spooled"],
         note="events the full queue sent through the disk spool", **ctx)
    return delivered and st["sent"] == calls


def bench_mlaudit_paced(url, token, calls, rate, work):
    """log() at a steady ``rate`` calls/s (busy-wait between calls): the cost when the
    sender keeps up, i.e. without the overload of the unpaced loop."""
    events = [event(i) for i in range(calls)]
    lg = mlaudit.AuditLogger(url, token, os.path.join(work, "spool-paced"),
                             actor={"id": "bench", "type": "service"}, register_atexit=False)
    samples = [0] * calls
    clock = time.perf_counter_ns
    log = lg.log
    period = 1e9 / rate
    gc.disable()
    start = clock()
    for i in range(calls):
        target = start + i * period
        while clock() < target:
            pass
        ev = events[i]
        t0 = clock()
        log(ev)
        samples[i] = clock() - t0
    gc.enable()
    delivered = lg.flush(600)
    st = lg.stats()
    lg.close()
    p = percentiles(samples)
    ctx = dict(calls=calls, rate_per_s=rate)
    for name in ("p50", "p99", "p99.9"):
        emit("log_paced", "mlaudit-python", f"log_{name.replace('.', '_')}_ns", p[name], **ctx)
    emit("log_paced", "mlaudit-python", "log_max_ns", p["max"], **ctx)
    emit("log_paced", "mlaudit-python", "spooled_events", st["spooled"], delivered=delivered,
         retried=st["retried"], **ctx)


def bench_http_sync(url, token, calls):
    from mlaudit._http import DELIVERED, Transport
    from mlaudit.encode import dumps
    import uuid
    transport = Transport(url, token, 30)
    bodies = []
    for i in range(calls):
        ev = event(i)
        ev.update(id=str(uuid.uuid4()), actor={"id": "bench", "type": "service"})
        bodies.append(dumps(ev))
    samples = []
    for b in bodies:
        t0 = time.perf_counter_ns()
        out = transport.post_events([b])
        samples.append(time.perf_counter_ns() - t0)
        if out.kind != DELIVERED:
            raise SystemExit(f"http-sync: {out.kind}: {out.reason}")
    p = percentiles(samples)
    for name in ("p50", "p99", "p99.9"):
        emit("log", "http-sync", f"log_{name.replace('.', '_')}_ns", p[name], calls=calls,
             note="one synchronous POST per event, until the durable 200")


def bench_logging_file(calls, work):
    flog = logging.getLogger("bench-file")
    flog.propagate = False
    flog.setLevel(logging.INFO)
    handler = logging.FileHandler(os.path.join(work, "events.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    flog.addHandler(handler)
    events = [event(i) for i in range(calls)]
    samples = [0] * calls
    dumps = json.dumps
    clock = time.perf_counter_ns
    gc.disable()
    for i in range(calls):
        ev = events[i]
        t0 = clock()
        flog.info(dumps(ev))
        samples[i] = clock() - t0
    gc.enable()
    handler.close()
    flog.removeHandler(handler)
    p = percentiles(samples)
    for name in ("p50", "p99", "p99.9"):
        emit("log", "logging-file", f"log_{name.replace('.', '_')}_ns", p[name], calls=calls,
             note="logging.FileHandler, json.dumps of the event per call")


def predict_work(features, n=0):
    """~0.2 ms of pure-Python arithmetic (calibrated at start)."""
    acc = 0.0
    for i in range(PREDICT_LOOPS):
        acc += features[i % len(features)] * 1.0001
    return {"score": acc}


PREDICT_LOOPS = 1000
PREDICT_RATE = 1000  # predictions per second
LEAD_IN = 25  # unmeasured requests at the start of each block
#: The conditions of the predict phase, and every order of them, shuffled once (a run uses
#: the first ``seconds / 0.25``: a prefix of the lexicographic order would put "without"
#: first in every block of its first 24).
CONDITIONS = ("without", "again", "with", "with_process", "decorator_only")
ROUNDS = list(itertools.permutations(CONDITIONS))
random.Random(1).shuffle(ROUNDS)


def calibrate():
    global PREDICT_LOOPS
    feats = [0.1, 0.2, 0.3, 0.4]
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(50):
            predict_work(feats)
        per = (time.perf_counter_ns() - t0) / 50
        PREDICT_LOOPS = max(10, int(PREDICT_LOOPS * 200_000 / per))


#: The arrival process, run as a separate Python process: every 1/rate s it writes the
#: time (CLOCK_MONOTONIC, which ``perf_counter_ns`` reads in every process on Linux) as 8
#: bytes to the pipe the predict thread reads, like a request reaching a server's socket.
ARRIVALS = r"""
import os, struct, sys, time
fd, period = int(sys.argv[1]), 1e9 / float(sys.argv[2])
due = time.perf_counter_ns()
while True:
    due += period
    wait = due - time.perf_counter_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    os.write(fd, struct.pack("<q", time.perf_counter_ns()))
"""


class Arrivals:
    """Requests at ``rate``/s from another process: ``next()`` blocks (the GIL released, as
    a server thread waiting on its socket) and returns the request's arrival time."""

    def __init__(self, rate: float) -> None:
        self._unpack = struct.Struct("<q").unpack
        self._r, w = os.pipe()
        self._proc = subprocess.Popen([sys.executable, "-c", ARRIVALS, str(w), str(rate)],
                                      pass_fds=(w,))
        os.close(w)

    def next(self) -> int:
        record = os.read(self._r, 8)  # 8-byte writes to a pipe are atomic: 8 bytes or EOF
        if len(record) != 8:
            raise SystemExit(f"the arrivals process ended (exit status {self._proc.poll()})")
        return self._unpack(record)[0]

    def skip_backlog(self) -> None:
        """Drop the requests that arrived more than 0.5 ms ago (while a logger flushed)."""
        while time.perf_counter_ns() - self.next() > 500_000:
            pass

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        os.close(self._r)


def serve_block(arrivals, fn, n, first):
    """Serve ``n`` requests with ``fn``: per request, (response, call) latency in ns —
    response from the arrival to the return (waking up and getting the GIL included),
    call from the start of the call to its return."""
    feats = [0.1, 0.2, 0.3, 0.4]
    response, call = [], []
    for i in range(first, first + n):
        arrived = arrivals.next()
        t0 = time.perf_counter_ns()
        fn(feats, request_id=f"p-{i}")
        t1 = time.perf_counter_ns()
        response.append(t1 - arrived)
        call.append(t1 - t0)
    return response, call


def bench_predict(url, token, seconds, work):
    calibrate()
    def logger(spool, **kw):
        return mlaudit.AuditLogger(url, token, os.path.join(work, spool), register_atexit=False,
                                   actor={"id": "bench", "type": "service"}, **kw)

    lg = logger("spool-predict")

    def plain(features, request_id):
        return predict_work(features)

    def plain_again(features, request_id):  # the A/A control: the same function again
        return predict_work(features)

    decorated = lg.predictions(model="credit-risk", version="7", risk="high")(plain)
    lgp = logger("spool-predict-process", delivery="process")
    decorated_p = lgp.predictions(model="credit-risk", version="7", risk="high")(plain)
    # The decorator's own work alone (a diagnostic): its events go to a list emptied every
    # 32 events, as the sender or forwarder would take them, and are not delivered. (This
    # skips the queue's lock and its wake-up of the sender: slightly less than the real
    # decorator's own work.)
    lgd = logger("spool-predict-nodelivery")
    held = []

    def hold(ev, t_ns):
        held.append((ev, t_ns))
        if len(held) >= 32:
            held.clear()

    lgd._enqueue = hold
    decorated_d = lgd.predictions(model="credit-risk", version="7", risk="high")(plain)
    loggers = {"with": lg, "with_process": lgp}
    arrivals = Arrivals(PREDICT_RATE)
    try:
        serve_block(arrivals, plain, int(min(seconds, 0.5) * PREDICT_RATE), 0)  # warm up
        # Interleave 0.25 s blocks of the five conditions, so that all see the same machine
        # (this VM's noise drifts over seconds); pool each condition's samples. Each block
        # starts with LEAD_IN requests that are not measured (they serve what arrived while
        # the previous block ended, after skipping any backlog). After a decorated block its
        # logger is flushed, unmeasured, so that its last batch is not sent during the next
        # block; the decorated blocks thus see the POST work of one batch per 0.25 s, not the
        # 1,000/s steady state's 1.25. The rounds follow the orders of the five in a shuffled
        # sequence (ROUNDS), so that over a run each condition holds each place, and follows
        # each other one, about equally often.
        per_block = {m: {c: [] for c in CONDITIONS} for m in ("response", "call")}
        fns = {"without": plain, "again": plain_again, "with": decorated,
               "with_process": decorated_p, "decorator_only": decorated_d}
        blocks = max(1, int(round(seconds / 0.25)))
        per = max(1, int(seconds * PREDICT_RATE / blocks))
        served = 0
        for b in range(blocks):
            for name in ROUNDS[b % len(ROUNDS)]:
                arrivals.skip_backlog()
                serve_block(arrivals, fns[name], LEAD_IN, served)
                response, call = serve_block(arrivals, fns[name], per, served + LEAD_IN)
                served += LEAD_IN + per
                per_block["response"][name].append(response)
                per_block["call"][name].append(call)
                if name in loggers:
                    loggers[name].flush(30)
    finally:
        arrivals.close()
    serving_flushed = lg.flush(120)
    serving = lg.stats()
    process_flushed = lgp.flush(120)
    serving_p = lgp.stats()
    lgp.close()
    lgd.close()
    # The decorator's own cost on the caller's thread, without the predict work: a no-op
    # function with and without it, back to back, 20,000 calls each.
    def noop(features, request_id):
        return {"score": 0.5}

    noop_dec = lg.predictions(model="credit-risk-noop", version="7", risk="high")(noop)
    rids = [f"n-{i}" for i in range(20_000)]
    feats = [0.1, 0.2, 0.3, 0.4]
    over = {}
    for name, fn in (("plain", noop), ("decorated", noop_dec)):
        t = []
        for rid in rids:
            t0 = time.perf_counter_ns()
            fn(feats, request_id=rid)
            t.append(time.perf_counter_ns() - t0)
        over[name] = percentiles(t)
    delivered = lg.flush(120)
    st = lg.stats()
    lg.close()
    emit("predict", "mlaudit-python", "decorator_overhead_p50_ns",
         over["decorated"]["p50"] - over["plain"]["p50"], calls=len(rids),
         note="decorated minus plain no-op call, caller's thread, unpaced")
    emit("predict", "mlaudit-python", "decorator_overhead_p99_ns",
         over["decorated"]["p99"] - over["plain"]["p99"], calls=len(rids))
    ctx = dict(rate_per_s=PREDICT_RATE, seconds=seconds, predict_work_loops=PREDICT_LOOPS)
    emit("predict", "mlaudit-python", "events_delivered_while_serving", serving["sent"],
         all_flushed=serving_flushed, spooled=serving["spooled"], **ctx)
    emit("predict", "mlaudit-python-process", "events_delivered_while_serving",
         serving_p["sent"], all_flushed=process_flushed, spooled=serving_p["spooled"], **ctx)
    emit("predict", "mlaudit-python", "events_delivered", st["sent"], all_flushed=delivered,
         spooled=st["spooled"], note="serving, then the unpaced no-op loop (which overflows "
         "the queue into the spool)", **ctx)
    notes = {"call": "the decorated call alone: from calling the function to its return",
             "response": "from the request's arrival (written by another process) to the "
                         "return: waking up and waiting for the GIL included"}
    for metric, blocks_of in per_block.items():
        pooled = {name: percentiles([x for blk in bl for x in blk])
                  for name, bl in blocks_of.items()}
        prefix = "predict" if metric == "call" else "predict_response"
        c = dict(ctx, calls=sum(map(len, blocks_of["with"])), note=notes[metric])
        for engine, name, label in (("mlaudit-python", "without", "without"),
                                    ("mlaudit-python", "with", "with_decorator"),
                                    ("mlaudit-python-process", "with_process", "with_decorator"),
                                    ("decorator-only", "decorator_only", "with_decorator")):
            for q in ("p50", "p99"):
                emit("predict", engine, f"{prefix}_{q}_ns_{label}", pooled[name][q], **c)
        for engine, name in (("mlaudit-python", "with"), ("mlaudit-python-process", "with_process"),
                             ("decorator-only", "decorator_only"), ("plain-again", "again")):
            low, high = p99_ratio_interval(blocks_of["without"], blocks_of[name])
            emit("predict", engine, f"{prefix}_p99_ratio",
                 round(pooled[name]["p99"] / pooled["without"]["p99"], 3),
                 ci95_low=low, ci95_high=high,
                 note=("A/A control: the undecorated function against itself; "
                       if engine == "plain-again" else "") +
                 "95 % paired block-bootstrap interval", **ctx)


def p99_ratio_interval(base_blocks, other_blocks, rounds=500, seed=1):
    """A 95 % interval for p99(other) / p99(base). Block ``i`` of each condition ran in the
    same round, back to back, so the rounds are resampled with replacement and each drawn
    round contributes its block of both conditions: the pairing keeps what the interleaving
    was for (both conditions see the same spells of machine noise), and whole blocks are
    drawn, not single calls, since those spells span many consecutive calls. If the interval
    holds 1, this run cannot tell the two conditions' p99 apart."""
    import random
    rng = random.Random(seed)
    n = min(len(base_blocks), len(other_blocks))

    def p99(blocks):
        return percentiles([x for blk in blocks for x in blk])["p99"]

    ratios = []
    for _ in range(rounds):
        drawn = [rng.randrange(n) for _ in range(n)]
        ratios.append(p99([other_blocks[i] for i in drawn]) / p99([base_blocks[i] for i in drawn]))
    ratios.sort()
    tail = int(0.025 * rounds)
    return round(ratios[tail], 3), round(ratios[rounds - 1 - tail], 3)


def main() -> int:
    ap = argparse.ArgumentParser(description="log() cost vs baselines; predict latency")
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--predict-seconds", type=float, default=5.0)
    ap.add_argument("--paced-rate", type=float, default=10_000,
                    help="calls/s of the paced log() run (calls/10 calls; 0 to skip)")
    ap.add_argument("--url")
    ap.add_argument("--token", help="writer token (with --url)")
    args = ap.parse_args()
    server = None
    if not (args.url and args.token):
        server = LocalServer()
        args.url, args.token = server.url, server.token
    work = tempfile.mkdtemp(prefix="mlaudit-bench-work-")
    try:
        ok = bench_mlaudit(args.url, args.token, args.calls, work)
        if args.paced_rate > 0:
            bench_mlaudit_paced(args.url, args.token, max(100, args.calls // 10),
                                args.paced_rate, work)
        bench_http_sync(args.url, args.token, max(10, args.calls // 100))
        bench_logging_file(args.calls, work)
        if args.predict_seconds > 0:
            bench_predict(args.url, args.token, args.predict_seconds, work)
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
