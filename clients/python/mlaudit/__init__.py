"""mlaudit: Python client for the mlaudit audit trail.

* :class:`AuditLogger` — non-blocking, batching, spooling delivery of audit events.
* :mod:`mlaudit.agent` — ``AuditLogger(..., delivery="process")``: delivery by a child process.
* :mod:`mlaudit.sampling` — the deterministic per-model sampling rule (shared with Rust).
* :mod:`mlaudit.verify` — an independent proof-bundle verifier (``python -m mlaudit.verify``).
"""

from .logger import AuditLogger, LoggerClosedError
from .sampling import sampled_in
from .spool import SpoolInUseError

__all__ = ["AuditLogger", "LoggerClosedError", "SpoolInUseError", "sampled_in"]
__version__ = "0.1.0"
