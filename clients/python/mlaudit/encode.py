"""JSON encoding of events and of arbitrary Python values (for prediction inputs/outputs)."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict

_MAX_DEPTH = 16
_MAX_REPR = 256
_MAX_ITEMS = 10_000


_sec_cache = [(None, "")]  # one (second, formatted) tuple, swapped atomically


def timestamp(t_ns: int) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: ``2026-11-27T03:00:00.123456Z``."""
    sec, ns = divmod(t_ns, 1_000_000_000)
    cached = _sec_cache[0]
    if cached[0] != sec:
        cached = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        _sec_cache[0] = cached
    return "%s.%06dZ" % (cached[1], ns // 1000)


_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID_SET = (0x8000 << 48) | (4 << 76)


def uuid4_text(random16: bytes) -> str:
    """``str(uuid.UUID(bytes=random16, version=4))``, in a fifth of the time: the version
    and variant bits set, the canonical 8-4-4-4-12 lowercase hex form."""
    h = "%032x" % (int.from_bytes(random16, "big") & _UUID_CLEAR | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _default(o: Any) -> Any:
    """What the encoder does with a value JSON has no type for (called from C)."""
    try:
        tolist = getattr(o, "tolist", None)  # numpy arrays and scalars
        if callable(tolist):
            return tolist()
        item = getattr(o, "item", None)
        if callable(item):
            return item()
        to_dict = getattr(o, "to_dict", None)  # pandas DataFrame / Series
        if callable(to_dict):
            try:
                return to_dict(orient="list")
            except TypeError:
                return to_dict()
        if isinstance(o, (set, frozenset)):
            return list(o)
        if isinstance(o, (bytes, bytearray, memoryview)):
            b = bytes(o)
            return {"bytes_hex": b[:_MAX_REPR].hex(), "length": len(b)}
    except Exception:
        pass
    return _repr(o)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=_default)


def _make_fast_encode():
    """The C encoder built once (``JSONEncoder.encode`` rebuilds it on every call, about a
    microsecond). No circular-reference markers, so that it can be shared between threads:
    a cycle is a RecursionError, handled by :func:`encode_value`'s fallback. Checked against
    ``JSONEncoder`` at import; the plain encoder is used if this Python differs."""
    try:
        from json.encoder import c_make_encoder, encode_basestring
        if c_make_encoder is None:
            raise ImportError
        c = c_make_encoder(None, _default, encode_basestring, None, ":", ",", False, False,
                           False)

        def fast(o: Any) -> str:
            return "".join(c(o, 0))

        probe = {"a": [1, 2.5, "é\"\n", None, True, {"b": []}], "c": 10**20}
        if fast(probe) != _ENCODER.encode(probe):
            raise ValueError
        return fast
    except Exception:
        return _ENCODER.encode


_encode = _make_fast_encode()


def encode_value(value: Any) -> str:
    """JSON text of any value, never raising: the C encoder with a hook for numpy values,
    sets, bytes and unknown objects (their ``repr``); :func:`json_safe` when that fails
    (NaN, infinities, cycles, non-string keys)."""
    try:
        return _encode(value)
    except Exception:  # NaN, cycles, non-string keys, a hook that raised
        return _ENCODER.encode(json_safe(value))


def dumps(event: Dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an event (see :func:`encode_value`)."""
    return encode_value(event).encode("utf-8")


_SCALARS = frozenset((str, int, float, bool, type(None)))
_only_scalar_types = _SCALARS.issuperset  # over map(type, ...): a C-level loop


def snapshot(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` that later mutation by the caller cannot change, as cheaply as
    possible (it runs on the caller's thread; JSON encoding happens later, on the sender's):
    scalars as they are; lists, tuples and dicts copied (recursively where they hold
    containers); numpy arrays and pandas objects through their ``copy()``; sets and
    bytearrays as immutable copies. Other objects are kept by reference and recorded as
    their ``repr`` when the event is encoded."""
    t = type(value)
    if t in _SCALARS:
        return value
    if _depth >= _MAX_DEPTH:
        return _repr(value)
    if t is list or t is tuple:
        if _only_scalar_types(map(type, value)):  # the common case
            return tuple(value) if t is list else value
        return [snapshot(x, _depth + 1) for x in value]
    if t is dict:
        if _only_scalar_types(map(type, value.values())):
            return dict(value)
        return {k: snapshot(x, _depth + 1) for k, x in value.items()}
    if isinstance(value, (str, int, float, bytes, frozenset)):
        return value
    if isinstance(value, (set, bytearray)):
        return frozenset(value) if isinstance(value, set) else bytes(value)
    copy = getattr(value, "copy", None)
    if callable(copy) and (hasattr(value, "tolist") or hasattr(value, "to_dict")):
        try:
            return copy()
        except Exception:
            return _repr(value)
    if isinstance(value, (list, tuple, dict)):  # subclasses
        return snapshot(list(value) if not isinstance(value, dict) else dict(value), _depth)
    return value


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A JSON-safe copy of ``value`` that never raises.

    dict keys become strings (``str`` of numbers, else ``repr``); tuples, lists, sets and iterables of known kinds become lists;
    objects with ``tolist()`` (numpy arrays and scalars) or ``item()`` are converted;
    NaN and infinities become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
    bytes become ``{"bytes_hex": ...}`` (truncated); anything else becomes its ``repr``
    (truncated). Depth and size are bounded so that a pathological input cannot stall
    the caller.
    """
    try:
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if _depth >= _MAX_DEPTH:
            return _repr(value)
        if isinstance(value, dict):
            out = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= _MAX_ITEMS:
                    out["..."] = f"{len(value) - i} more"
                    break
                out[_key(k)] = json_safe(v, _depth + 1)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            seq = list(value)[:_MAX_ITEMS]
            return [json_safe(v, _depth + 1) for v in seq]
        if isinstance(value, (bytes, bytearray, memoryview)):
            b = bytes(value)
            return {"bytes_hex": b[:_MAX_REPR].hex(), "length": len(b)}
        tolist = getattr(value, "tolist", None)
        if callable(tolist):
            return json_safe(tolist(), _depth + 1)
        item = getattr(value, "item", None)
        if callable(item):
            return json_safe(item(), _depth + 1)
        return _repr(value)
    except Exception:
        return _repr(value)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return str(k)
    return _repr(k)


def _repr(value: Any) -> str:
    try:
        r = repr(value)
    except Exception:
        r = f"<unrepresentable {type(value).__name__}>"
    return r if len(r) <= _MAX_REPR else r[:_MAX_REPR] + "..."


#: The first field of a prediction queued by the decorator as a tuple (the event dict is
#: built from it on the sender thread, by :func:`build_prediction`).
PREDICTION = "prediction.served"


def build_prediction(item: tuple) -> Dict[str, Any]:
    """The ``prediction.served`` event dict of a tuple queued by the decorator."""
    _, model, version, rid, actor, args, kwargs, result, latency_ns, rate = item
    inputs: Dict[str, Any] = {"args": args}
    if kwargs is not None:
        inputs["kwargs"] = kwargs
    # The catalogue requires a non-null outputs: a None result is recorded as {"value": null}.
    outputs = result if result is not None else {"value": None}
    return {"kind": PREDICTION, "actor": actor,
            "subject": {"model": model, "version": version, "request": rid},
            "attributes": {"inputs": inputs, "outputs": outputs,
                           "latency_ms": round(latency_ns / 1e6, 4), "sample_rate": rate}}
