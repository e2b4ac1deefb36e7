"""JSON encoding of events and of arbitrary Python values (for prediction inputs/outputs)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

_MAX_DEPTH = 16
_MAX_REPR = 256
_MAX_ITEMS = 10_000


def timestamp(t_ns: int) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: ``2026-11-27T03:00:00.123456Z``."""
    sec, ns = divmod(t_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%06dZ" % (ns // 1000)


def dumps(event: Any) -> bytes:
    """Compact UTF-8 JSON; values JSON cannot hold are made safe with :func:`json_safe`."""
    try:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):
        return json.dumps(json_safe(event), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")


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
