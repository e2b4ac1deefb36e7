"""The spool on its own: order with prepends, torn records, cursor and segment numbers."""

import json
import os

from mlaudit.spool import FIRST_SEGMENT, Spool, read_records


def drain(sp):
    """Every pending body, in delivery order, advancing the cursor."""
    out = []
    while True:
        head = sp.head()
        if head is None:
            return out
        no, path, off, end = head
        bodies, nxt, torn = read_records(path, off, end, 1000, 1 << 20)
        out += bodies
        (sp.mark_torn if torn else sp.advance)(no, nxt)


def test_prepend_drains_first(tmp_path):
    sp = Spool(str(tmp_path))
    sp.append([b"3", b"4"])
    sp.prepend([b"1", b"2"])  # older than what is in the spool
    sp.append([b"5"])
    sp.prepend([b"0"])
    assert drain(sp) == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert sp.is_empty()
    sp.close()


def test_restart_resumes_at_the_persisted_cursor(tmp_path):
    sp = Spool(str(tmp_path))
    sp.append([b"a", b"b", b"c"])
    sp.sync()
    no, path, off, end = sp.head()
    bodies, nxt, _ = read_records(path, off, end, 1, 1 << 20)
    assert bodies == [b"a"]
    sp.advance(no, nxt)
    sp.persist_cursor(sp.cursor_snapshot())
    sp.close()
    sp = Spool(str(tmp_path))
    sp.append([b"d"])  # a new process appends to a new segment, after the old one
    assert drain(sp) == [b"b", b"c", b"d"]
    sp.close()


def test_a_stale_cursor_never_applies_to_a_new_segment(tmp_path):
    """A cursor entry for a segment that was drained and deleted must not skip records of
    a later segment: numbers named by the cursor are never reused."""
    sp = Spool(str(tmp_path))
    sp.append([b"x" * 100])
    no, path, off, end = sp.head()
    sp.advance(no, end)
    sp.persist_cursor(sp.cursor_snapshot())  # {no: end}
    sp.reset_if_empty()  # deletes the segment; the persisted cursor still names it
    sp.close()
    assert json.load(open(tmp_path / "cursor"))["offsets"] == {str(no): end}
    sp = Spool(str(tmp_path))
    sp.prepend([b"p"])
    sp.append([b"t"])
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("seg-"))
    assert f"seg-{no:020d}.spool" not in names
    assert drain(sp) == [b"p", b"t"]
    sp.close()
    assert no == FIRST_SEGMENT


def test_torn_and_zero_tails(tmp_path):
    sp = Spool(str(tmp_path))
    sp.append([b"one", b"two"])
    sp.close()
    seg = [n for n in os.listdir(tmp_path) if n.startswith("seg-")][0]
    with open(tmp_path / seg, "ab") as f:
        f.write(b"\x00\x00\x00\x09\x00")  # a header cut short
    sp = Spool(str(tmp_path))
    assert drain(sp) == [b"one", b"two"]
    sp.close()
