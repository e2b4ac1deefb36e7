"""JSON encoding of events and of arbitrary Python values (for prediction inputs/outputs)."""

from __future__ import annotations

import json
import math
import os
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


def _default(o: Any) -> Any:
    """What the encoder does with a value JSON has no type for (called from C)."""
    tolist = getattr(o, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    item = getattr(o, "item", None)
    if callable(item):
        return item()
    if isinstance(o, (set, frozenset)):
        return list(o)
    if isinstance(o, (bytes, bytearray, memoryview)):
        b = bytes(o)
        return {"bytes_hex": b[:_MAX_REPR].hex(), "length": len(b)}
    if isinstance(o, Fragment):
        raise TypeError("a Fragment outside attributes")
    return _repr(o)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=_default)


class Fragment:
    """A value already encoded to JSON (a snapshot taken on the caller's thread); spliced
    verbatim into the event when it is encoded. Only as a direct value of ``attributes``."""

    __slots__ = ("json",)

    def __init__(self, value: Any) -> None:
        self.json = encode_value(value)


def encode_value(value: Any) -> str:
    """JSON text of any value, never raising: the C encoder with a hook for numpy values,
    sets, bytes and unknown objects (their ``repr``); :func:`json_safe` when that fails
    (NaN, infinities, cycles, non-string keys)."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return _ENCODER.encode(json_safe(value))


_TOKEN = "\x00mlaudit-fragment-%s-" % os.urandom(8).hex()


def dumps(event: Dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an event; values JSON cannot hold are made safe (see
    :func:`encode_value`); :class:`Fragment` attribute values are spliced in verbatim."""
    attrs = event.get("attributes")
    if type(attrs) is dict and any(type(v) is Fragment for v in attrs.values()):
        plain, raws = dict(attrs), []
        for k, v in attrs.items():
            if type(v) is Fragment:
                token = f"{_TOKEN}{len(raws)}\x00"
                plain[k] = token
                raws.append((_ENCODER.encode(token), v.json))
        text = encode_value(dict(event, attributes=plain))
        for token, raw in raws:
            text = text.replace(token, raw, 1)
        return text.encode("utf-8")
    return encode_value(event).encode("utf-8")


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
            if isinstance(value, int) and not isinstance(value, bool) and \
                    abs(value) >= 1 << 63:
                return str(value)
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
