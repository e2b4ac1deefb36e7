"""Deterministic per-model sampling of prediction events.

The rule is shared byte for byte with the Rust SDK, so a request is in or out identically
in both (``tests/sampling_vectors.json`` is the known-answer file both test against)::

    rate >= 1.0                                        -> in
    otherwise: the first 8 bytes of SHA-256(UTF-8(request_id)) as a big-endian
    unsigned integer  <  int(rate * 2**64)             -> in

Only ``prediction.*`` events are sampled. A prediction without a request id is kept
(rate 1.0). Governance and every other stage are never sampled.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Mapping, Optional, Tuple, Union

HIGH = "high"
LOW = "low"
#: The range a low-risk rate must fall in (1–10%, from the design brief).
LOW_RATE_MIN, LOW_RATE_MAX = 0.01, 0.10
DEFAULT_LOW_RATE = 0.05

Policy = Union[str, float, Tuple[str, float]]


def sampled_in(request_id: str, rate: float) -> bool:
    """The shared sampling rule (see module docstring)."""
    if rate >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(request_id.encode("utf-8")).digest()[:8], "big")
    return h < int(rate * 2**64)


def policy_rate(policy: Policy, low_rate: float = DEFAULT_LOW_RATE) -> float:
    """Turn ``"high"``, ``"low"``, ``("low", 0.05)`` or ``("high",)`` into a rate.

    ``high`` is 1.0; ``low`` must be within [0.01, 0.10]. Anything else is a ValueError.
    """
    if isinstance(policy, tuple):
        if len(policy) == 1:
            policy = policy[0]
        elif len(policy) == 2 and policy[0] == LOW:
            return _check_low(policy[1])
        elif len(policy) == 2 and policy[0] == HIGH and float(policy[1]) == 1.0:
            return 1.0
        else:
            raise ValueError(f"sampling policy {policy!r}: expected 'high', 'low' or "
                             f"('low', rate) with rate in [{LOW_RATE_MIN}, {LOW_RATE_MAX}]")
    if policy == HIGH:
        return 1.0
    if policy == LOW:
        return _check_low(low_rate)
    raise ValueError(f"sampling policy {policy!r}: expected 'high', 'low' or ('low', rate)")


def _check_low(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ValueError(f"low-risk sample rate {rate!r} is not a number")
    rate = float(rate)
    if not (LOW_RATE_MIN <= rate <= LOW_RATE_MAX):
        raise ValueError(f"low-risk sample rate {rate} is outside "
                         f"[{LOW_RATE_MIN}, {LOW_RATE_MAX}] (1–10%)")
    return rate


class Sampler:
    """Per-model rates, resolved once; ``default`` applies to models not listed."""

    def __init__(self, sampling: Optional[Mapping[str, Policy]] = None,
                 default_risk: Policy = HIGH, low_rate: float = DEFAULT_LOW_RATE) -> None:
        self.low_rate = _check_low(low_rate)
        self.default = policy_rate(default_risk, self.low_rate)
        self.rates: Dict[str, float] = {}
        for model, pol in (sampling or {}).items():
            self.set(model, pol)

    def set(self, model: str, policy: Policy) -> None:
        self.rates[model] = policy_rate(policy, self.low_rate)

    def rate_for(self, model: Optional[str]) -> float:
        return self.rates.get(model, self.default) if model is not None else self.default

    def decide(self, model: Optional[str], request_id: Optional[str]) -> Tuple[bool, float]:
        """(keep, rate) for a prediction of ``model`` for ``request_id``."""
        if request_id is None:
            return True, 1.0
        rate = self.rate_for(model)
        return sampled_in(str(request_id), rate), rate
