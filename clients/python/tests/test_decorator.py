"""The prediction decorator never changes a result and never raises into the caller."""

import math

import pytest

from conftest import make_logger


class Opaque:
    def __repr__(self):
        return "<Opaque thing>"


class BadRepr:
    def __repr__(self):
        raise RuntimeError("repr explodes")


RESULTS = [None, 0, 1.5, "yes", (1, 2), [0.1, 0.9], {"p": 0.3}, Opaque(), b"\x00\x01",
           {1, 2}, float("nan"), BadRepr()]


def test_results_are_returned_unchanged_and_logged(shared_server, tmp_path, delivery):
    lg = make_logger(shared_server, tmp_path / "spool", delivery=delivery)
    model = f"deco-model-{delivery}"

    @lg.predictions(model=model, version="3", risk="high")
    def predict(x, *, request_id=None):
        return x

    for i, r in enumerate(RESULTS):
        assert predict(r, request_id=f"deco-{i}") is r
    assert lg.flush(30) is True
    st = lg.stats()
    lg.close()
    assert st["errors"] == 0 and st["rejected"] == 0
    got = {e["event"]["subject"]["request"]: e["event"]
           for e in shared_server.query(model=model, kind="prediction.served")}
    assert sorted(got) == sorted(f"deco-{i}" for i in range(len(RESULTS)))
    ev = got["deco-6"]
    assert ev["subject"] == {"model": model, "version": "3", "request": "deco-6"}
    assert ev["attributes"]["outputs"] == {"p": 0.3}
    assert ev["attributes"]["inputs"] == {"args": [{"p": 0.3}], "kwargs": {"request_id": "deco-6"}}
    assert ev["attributes"]["sample_rate"] == 1.0
    assert ev["attributes"]["latency_ms"] >= 0
    assert got["deco-7"]["attributes"]["outputs"] == "<Opaque thing>"
    assert got["deco-8"]["attributes"]["outputs"] == {"bytes_hex": "0001", "length": 2}
    assert got["deco-10"]["attributes"]["outputs"] == "NaN"
    assert "unrepresentable BadRepr" in got["deco-11"]["attributes"]["outputs"]


def test_unserialisable_inputs(shared_server, tmp_path, delivery):
    lg = make_logger(shared_server, tmp_path / "spool", delivery=delivery)
    calls = []

    @lg.predictions(model=f"deco-inputs-{delivery}", version="1",
                    request_id=lambda *a, **k: f"in-{len(calls)}")
    def predict(*args, **kwargs):
        calls.append(1)
        return len(args)

    loop = []
    loop.append(loop)
    odd = [object(), {("tuple", "key"): 1, 2: "int key"}, float("inf"), loop, {1, 2, 3},
           2**80, Opaque(), BadRepr(), bytearray(b"abc"), math.pi]
    assert predict(*odd, extra=Opaque()) == len(odd)
    try:
        import numpy as np
        assert predict(np.arange(6).reshape(2, 3), np.float32(0.5)) == 2
        n = 2
    except ImportError:
        n = 1
    assert lg.flush(30) is True
    lg.close()
    events = shared_server.query(model=f"deco-inputs-{delivery}")
    assert len(events) == n
    args = events[0]["event"]["attributes"]["inputs"]["args"]
    assert args[1] == {"('tuple', 'key')": 1, "2": "int key"}
    assert args[2] == "Infinity" and args[5] == 2**80 and args[6] == "<Opaque thing>"
    assert events[0]["event"]["attributes"]["inputs"]["kwargs"] == {"extra": "<Opaque thing>"}
    if n == 2:
        assert events[1]["event"]["attributes"]["inputs"]["args"] == [[[0, 1, 2], [3, 4, 5]], 0.5]


def test_the_functions_exception_propagates_unchanged(offline_server, tmp_path):
    lg = make_logger(offline_server, tmp_path / "spool")
    boom = ValueError("bad input", 42)

    @lg.predictions(model="m", version="1")
    def predict(x):
        raise boom

    with pytest.raises(ValueError) as info:
        predict(1)
    assert info.value is boom and info.value.args == ("bad input", 42)

    class Custom(BaseException):
        pass

    @lg.predictions(model="m", version="1")
    def interrupted():
        raise Custom()

    with pytest.raises(Custom):
        interrupted()
    assert lg.stats()["queued"] == 0  # nothing logged for failed calls
    lg.close(timeout=5)


def test_a_broken_or_closed_logger_never_reaches_the_caller(offline_server, tmp_path):
    lg = make_logger(offline_server, tmp_path / "spool")  # server unreachable

    @lg.predictions(model="m", version="1")
    def predict(x):
        return x * 2

    assert predict(21) == 42  # unreachable server: logged to the queue, never waited on

    def explode(*args):
        raise RuntimeError("logger bug")

    lg._enqueue = explode  # a broken logging path
    assert predict(2) == 4
    assert lg.stats()["errors"] == 1
    del lg._enqueue
    lg.close(timeout=5)
    assert predict(3) == 6  # closed: log() raises inside, swallowed
    assert lg.stats()["errors"] == 2

    @lg.predictions(model="m", version="1", request_id=lambda x: 1 / 0)
    def bad_request_id(x):
        return x

    assert bad_request_id("same") == "same"
    assert lg.stats()["errors"] == 3


def test_low_risk_predictions_are_sampled_by_request_id(shared_server, tmp_path):
    from mlaudit.sampling import sampled_in
    lg = make_logger(shared_server, tmp_path / "spool")

    @lg.predictions(model="deco-low", version="1", risk=("low", 0.1))
    def predict(x, request_id):
        return x

    rids = [f"low-{i}" for i in range(300)]
    for rid in rids:
        assert predict(1, request_id=rid) == 1
    assert lg.flush(30)
    lg.close()
    got = shared_server.query(model="deco-low")
    assert sorted(e["event"]["subject"]["request"] for e in got) == \
        sorted(r for r in rids if sampled_in(r, 0.1))
    assert {e["event"]["attributes"]["sample_rate"] for e in got} == {0.1}
    assert lg.stats()["sampled_out"] == 300 - len(got)


def test_the_record_is_what_the_call_saw(shared_server, tmp_path, delivery):
    """Inputs and outputs are copied at call time: mutating them afterwards (a reused
    buffer, a cached dict) does not change the recorded event."""
    lg = make_logger(shared_server, tmp_path / "spool", linger_s=0.5, delivery=delivery)
    cache = {"score": 0.25, "explanation": ["income"]}

    @lg.predictions(model=f"deco-snapshot-{delivery}", version="1")
    def predict(features, request_id):
        return cache

    features = [1.0, 2.0, {"nested": [3.0]}]
    predict(features, request_id="snap-1")
    features[0] = -1.0
    features[2]["nested"].append(99)
    cache["score"] = 0.99
    cache["explanation"].append("age")
    try:
        import numpy as np
        buf = np.array([1.5, 2.5])
        predict(buf, request_id="snap-2")
        buf[:] = 0
        numpy = True
    except ImportError:
        numpy = False
    assert lg.flush(30)
    lg.close()
    got = {e["event"]["subject"]["request"]: e["event"]["attributes"]
           for e in shared_server.query(model=f"deco-snapshot-{delivery}")}
    assert got["snap-1"]["inputs"]["args"] == [[1.0, 2.0, {"nested": [3.0]}]]
    assert got["snap-1"]["outputs"] == {"score": 0.25, "explanation": ["income"]}
    if numpy:
        assert got["snap-2"]["inputs"]["args"] == [[1.5, 2.5]]


def test_a_predictions_objects_are_released_long_before_its_batch_is_sent(shared_server,
                                                                         tmp_path):
    """The sender encodes queued predictions within milliseconds and keeps only their bytes
    for the batch: the caller's objects do not stay alive for the whole linger (a batch's
    worth of live objects drives CPython's garbage collector into collections that run on
    the predict thread)."""
    import gc
    import time
    import weakref

    class Output:  # recorded by reference (its repr), and weakly referenceable
        def __repr__(self):
            return "Output()"

    lg = make_logger(shared_server, tmp_path / "spool", linger_s=5.0)
    refs = []

    @lg.predictions(model="deco-release", version="1")
    def predict(features, request_id):
        out = Output()
        refs.append(weakref.ref(out))
        return out

    try:
        for i in range(5):
            predict([1.0], request_id=f"rel-{i}")
        deadline = time.monotonic() + 2.0  # far below the 5 s linger
        while any(r() is not None for r in refs) and time.monotonic() < deadline:
            gc.collect()  # only to rule out a cycle keeping them: none is expected
            time.sleep(0.005)
        assert all(r() is None for r in refs), "queued objects outlived their encoding"
        assert lg.stats()["sent"] == 0  # the batch is still lingering
        assert lg.stats()["queued"] == 5  # held (encoded) events count as queued
        assert lg.flush(30)
    finally:
        lg.close()
    got = shared_server.query(model="deco-release")
    assert sorted(e["event"]["attributes"]["outputs"] for e in got) == ["Output()"] * 5
