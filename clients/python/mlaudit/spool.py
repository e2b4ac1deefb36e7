"""The on-disk spool: an append-only, crash-tolerant FIFO of encoded events.

Layout of ``spool_dir``::

    LOCK                      flock'd by the one process that owns the spool
    seg-<20 digits>.spool     segments, drained lowest number first
    cursor                    JSON {"offsets": {"<segment number>": <byte offset>}}
    checkpoint                the last checkpoint kept by the logger (mlaudit.checkpoints)

The directory is made private: created with mode 0700 (and set to 0700 if it is ours and
more open), and every file written in it is 0600 whatever the umask (``create_private``):
audit events can hold personal data.

A segment is a sequence of records::

    u32 length (big-endian) | u32 zlib.crc32 of the body | body (the event's JSON bytes)

Invariants:

* **Order.** The pending records, in delivery order, are the records of every segment in
  increasing segment-number order, each segment read from its cursor offset (0 when the
  cursor has no entry for it). ``append`` writes to the highest-numbered segment, ``prepend``
  creates a segment numbered below every existing one.
* **Torn tails.** A record whose header or body is incomplete, whose length is 0 (a
  zero-filled tail) or whose CRC does not match, ends its segment: it and anything after it in that segment are ignored (reported once).
  A process never appends to a segment that a previous process wrote: it starts a new one,
  so a torn tail can never hide records written after it.
* **Cursor.** The cursor only moves forward within a segment and is persisted with
  write-tmp + fsync + ``os.replace`` + fsync of the directory, *after* the server
  acknowledged the records it skips. A crash therefore at worst re-sends records the server
  already has; the server answers ``duplicate: true`` for their ids and writes nothing.
  A fully drained segment is deleted; a deleted segment's cursor entry is meaningless.

The class is not thread-safe: the logger calls it under its own lock, except for the
methods documented as lock-free (``read_records``, ``fsync_handles``, ``persist_cursor``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import struct
import time
import zlib
from typing import Dict, List, Optional, Tuple

try:  # pragma: no cover - not on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore

log = logging.getLogger("mlaudit")

_HDR = struct.Struct(">II")
_SEG_RE = re.compile(r"^seg-(\d{20})\.spool$")
#: Segment numbers start in the middle of the range so prepends can go below.
FIRST_SEGMENT = 10**15
MAX_RECORD = 1 << 26


class SpoolInUseError(RuntimeError):
    """Another live logger (in this or another process) owns the spool directory."""


def encode_record(body: bytes) -> bytes:
    return _HDR.pack(len(body), zlib.crc32(body) & 0xFFFFFFFF) + body


def read_records(path: str, offset: int, end: int, max_records: int,
                 max_bytes: int) -> Tuple[List[bytes], int, bool]:
    """Read up to ``max_records`` records of ``path`` between ``offset`` and ``end``.

    Returns ``(bodies, next_offset, torn)``; ``torn`` is True when a damaged or incomplete
    record was met (the segment is then finished at ``next_offset``). Lock-free: the bytes
    before ``end`` of a segment are never rewritten.
    """
    bodies: List[bytes] = []
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(max(0, end - offset)) if end > offset else b""
    pos = 0
    while pos < len(data) and len(bodies) < max_records and total < max_bytes:
        if len(bodies) & 63 == 63:
            time.sleep(0)  # offer the GIL (see logger._finalize_many)
        if len(data) - pos < _HDR.size:
            return bodies, offset + pos, True
        length, crc = _HDR.unpack_from(data, pos)
        # A zero length is a zero-filled tail (the size reached the disk before the data).
        if length == 0 or length > MAX_RECORD or len(data) - pos - _HDR.size < length:
            return bodies, offset + pos, True
        body = data[pos + _HDR.size: pos + _HDR.size + length]
        if zlib.crc32(body) & 0xFFFFFFFF != crc:
            return bodies, offset + pos, True
        bodies.append(body)
        total += len(body)
        pos += _HDR.size + length
    return bodies, offset + pos, False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def create_private(path: str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with mode 0600 whatever the umask (also for a
    file that existed with another mode)."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: str) -> None:
    """Create ``path`` with mode 0700, or narrow an existing one that we own to 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.chmod(path, 0o700)


def _narrow(path: str) -> None:
    """An existing file written by an older version: down to 0600 if we may."""
    try:
        if os.stat(path).st_mode & 0o177:
            os.chmod(path, 0o600)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """An append-only segmented spool with a persisted read cursor (see module docstring)."""

    def __init__(self, directory: str, max_bytes: int = 1 << 30,
                 segment_bytes: int = 8 << 20) -> None:
        self.dir = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        make_private_dir(self.dir)
        self._lock_fd = create_private(os.path.join(self.dir, "LOCK"), os.O_RDWR)
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(self._lock_fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise SpoolInUseError(
                        f"spool directory {self.dir} is in use by another AuditLogger "
                        "(one logger per spool_dir; give each process its own)") from None
                raise
        self._sizes: Dict[int, int] = {}
        for name in os.listdir(self.dir):
            m = _SEG_RE.match(name)
            if m:
                self._sizes[int(m.group(1))] = os.path.getsize(os.path.join(self.dir, name))
            if m or name in ("cursor", "checkpoint"):
                _narrow(os.path.join(self.dir, name))
        self._offsets: Dict[int, int] = {}
        self._used = set(self._sizes)  # widened to every number used (see _new_number)
        self._load_cursor()
        self._lo = min(self._used) if self._used else FIRST_SEGMENT
        self._hi = max(self._used) if self._used else FIRST_SEGMENT - 1
        self._tail_no: Optional[int] = None  # the segment this process appends to
        self._tail_fd: Optional[int] = None
        self._dirty_fds: Dict[int, int] = {}  # segment number -> fd with unsynced writes
        self._dir_dirty = False
        self._torn_reported: set = set()

    # -- paths and cursor -------------------------------------------------------------

    def _path(self, no: int) -> str:
        return os.path.join(self.dir, f"seg-{no:020d}.spool")

    def _load_cursor(self) -> None:
        path = os.path.join(self.dir, "cursor")
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
            offsets = {int(k): int(v) for k, v in doc.get("offsets", {}).items()}
            # Never reuse a number the persisted cursor names (see _new_number).
            self._used |= set(offsets)
            self._offsets = {k: v for k, v in offsets.items() if k in self._sizes}
        except FileNotFoundError:
            self._offsets = {}
        except (ValueError, OSError, AttributeError) as e:
            # A damaged cursor can only make us re-send: delivery is idempotent by id.
            log.error("mlaudit spool: unreadable cursor %s (%s); re-sending the whole spool "
                      "(the server drops duplicate ids)", path, e)
            self._offsets = {}

    def cursor_snapshot(self) -> Dict[int, int]:
        """A copy of the cursor to persist outside the lock."""
        return dict(self._offsets)

    def persist_cursor(self, offsets: Dict[int, int]) -> None:
        """Durably replace the cursor file (lock-free; only the sender thread calls it)."""
        path = os.path.join(self.dir, "cursor")
        tmp = path + ".tmp"
        data = json.dumps({"offsets": {str(k): v for k, v in offsets.items()}}).encode()
        fd = create_private(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(self.dir)

    # -- state ------------------------------------------------------------------------

    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def is_empty(self) -> bool:
        """True when no segment has bytes past its cursor offset."""
        return all(self._offsets.get(no, 0) >= size for no, size in self._sizes.items())

    @property
    def tail(self) -> Optional[Tuple[int, int]]:
        """(segment number, size) of the segment appends go to, or None."""
        return None if self._tail_no is None else (self._tail_no, self._sizes[self._tail_no])

    def pending_through(self, no: int, end: int) -> bool:
        """True while bytes of segment ``no`` before ``end`` are not yet delivered."""
        return no in self._sizes and self._offsets.get(no, 0) < end

    def pending_bytes(self) -> int:
        return sum(max(0, size - self._offsets.get(no, 0)) for no, size in self._sizes.items())

    # -- writing ----------------------------------------------------------------------

    def _room(self, n: int) -> bool:
        return self.total_bytes() + n <= self.max_bytes

    def append(self, bodies: List[bytes]) -> int:
        """Append encoded events at the tail (after every pending record).

        Returns how many were written; the rest did not fit under ``max_bytes`` (the caller
        counts them as dropped). Written but not yet fsync'd: see ``fsync_handles``.
        """
        written = 0
        pending: List[bytes] = []
        size = 0
        for body in bodies:
            rec = encode_record(body)
            if not self._room(len(rec) + size):
                break
            if self._tail_fd is None or self._sizes[self._tail_no] + size >= self.segment_bytes:
                self._write_tail(pending, size)
                pending, size = [], 0
                self._open_new_tail()
            pending.append(rec)
            size += len(rec)
            written += 1
        self._write_tail(pending, size)
        return written

    def _write_tail(self, records: List[bytes], size: int) -> None:
        if records:
            _write_all(self._tail_fd, b"".join(records))  # O_APPEND, one write per call
            self._sizes[self._tail_no] += size
            self._dirty_fds[self._tail_no] = self._tail_fd

    def _open_new_tail(self) -> None:
        if self._tail_fd is not None:
            # The fd may still be listed as dirty: keep it open until synced.
            if self._tail_no not in self._dirty_fds:
                os.close(self._tail_fd)
        no = self._new_number(tail=True)
        self._tail_fd = create_private(self._path(no), os.O_WRONLY | os.O_APPEND)
        self._tail_no = no
        self._sizes[no] = 0
        self._dir_dirty = True

    def prepend(self, bodies: List[bytes]) -> int:
        """Write ``bodies`` as a new segment numbered below every existing one, durably.

        Used when a batch taken from the memory queue could not be delivered: those events
        were logged before anything already in the spool, so they must be drained first.
        Returns (how many were written — the oldest that fit under ``max_bytes``, segment
        number, its size).
        """
        data = b"".join(encode_record(b) for b in bodies)
        if not self._room(len(data)):
            # Keep as many of the oldest as fit.
            kept, size = [], 0
            for b in bodies:
                r = encode_record(b)
                if not self._room(size + len(r)):
                    break
                kept.append(r)
                size += len(r)
            data = b"".join(kept)
            n = len(kept)
        else:
            n = len(bodies)
        if n == 0:
            return 0, None, 0
        no = self._new_number(tail=False)
        fd = create_private(self._path(no), os.O_WRONLY | os.O_EXCL)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            os.unlink(self._path(no))  # all or nothing
            raise
        _fsync_dir(self.dir)
        self._sizes[no] = len(data)
        return n, no, len(data)

    def _new_number(self, tail: bool) -> int:
        """A segment number above (tail) or below (prepend) every number ever used here or
        named by the persisted cursor, so that a stale cursor entry can never apply to a
        new segment."""
        if tail:
            self._hi += 1
            if self._hi < self._lo:
                self._lo = self._hi
            return self._hi
        self._lo -= 1
        if self._hi < self._lo:
            self._hi = self._lo
        return self._lo

    def fsync_handles(self) -> Tuple[List[int], bool]:
        """Under the lock: dup the fds with unsynced writes; the caller fsyncs and closes
        them outside the lock (``sync_dups``). Returns (fds, directory_needs_sync)."""
        dups = []
        for no, fd in self._dirty_fds.items():
            dups.append(os.dup(fd))
            if fd != self._tail_fd:
                os.close(fd)
        self._dirty_fds.clear()
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        return dups, dir_dirty

    def sync_dups(self, dups: List[int], dir_dirty: bool) -> None:
        for fd in dups:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if dir_dirty:
            _fsync_dir(self.dir)

    def sync(self) -> None:
        self.sync_dups(*self.fsync_handles())

    # -- reading ----------------------------------------------------------------------

    def head(self) -> Optional[Tuple[int, str, int, int]]:
        """The first segment with pending bytes: (number, path, offset, end) or None."""
        for no in sorted(self._sizes):
            off, size = self._offsets.get(no, 0), self._sizes[no]
            if off < size:
                return no, self._path(no), off, size
        return None

    def mark_torn(self, no: int, offset: int) -> None:
        """The segment is damaged from ``offset``: skip the rest of it (never appended to)."""
        if no not in self._torn_reported:
            self._torn_reported.add(no)
            log.warning("mlaudit spool: %s ends in a torn or damaged record at offset %d "
                        "(%d bytes skipped; written by a process that died mid-write)",
                        self._path(no), offset, self._sizes[no] - offset)
        self.advance(no, self._sizes[no])

    def advance(self, no: int, offset: int) -> None:
        """Move the cursor of segment ``no`` to ``offset`` (after a 200); delete the
        segment when it is fully drained and is not being appended to."""
        self._offsets[no] = offset
        if offset >= self._sizes[no] and no != self._tail_no:
            self._delete(no)

    def _delete(self, no: int) -> None:
        fd = self._dirty_fds.pop(no, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self._path(no))
        except FileNotFoundError:
            pass
        self._sizes.pop(no, None)
        self._offsets.pop(no, None)

    def reset_if_empty(self) -> None:
        """When everything is drained, delete every segment (including the tail)."""
        if not self.is_empty():
            return
        if self._tail_fd is not None:
            if self._tail_no not in self._dirty_fds:
                os.close(self._tail_fd)
            else:
                self._dirty_fds[self._tail_no] = self._tail_fd
            self._tail_fd, self._tail_no = None, None
        for no in list(self._sizes):
            self._delete(no)

    def close(self) -> None:
        self.sync()
        if self._tail_fd is not None:
            os.close(self._tail_fd)
            self._tail_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copies of the spool's descriptors, without
        syncing, writing or deleting anything. The flock is on the open file description the
        parent shares, so the parent keeps it; the child just stops holding it open (which
        would keep the spool locked, and deleted segments on disk, until the child exits)."""
        fds = set(self._dirty_fds.values())
        fds.update(fd for fd in (self._tail_fd, self._lock_fd) if fd is not None)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._dirty_fds = {}
        self._tail_fd = self._tail_no = None
        self._lock_fd = None
