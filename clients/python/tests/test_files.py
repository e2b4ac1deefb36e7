"""Files at rest: the spool directory is private (0700) and every file the SDK writes in it
is 0600, whatever the umask: audit events can hold personal data."""

import os
import stat

from conftest import make_logger


def modes(directory):
    """Each file's mode. A file the sender removes between the listing and its stat (a
    delivered segment, in the agent process) is left out."""
    out = {}
    for name in os.listdir(directory):
        try:
            out[name] = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
        except FileNotFoundError:
            pass
    return out


def test_the_spool_is_private_whatever_the_umask(offline_server, tmp_path, delivery):
    srv, spool = offline_server, tmp_path / "spool"
    spool.mkdir()
    os.chmod(spool, 0o755)  # ours, and more open than it should be
    for name, text in (("LOCK", ""), ("cursor", '{"offsets": {}}')):  # as older versions left
        (spool / name).write_text(text)
        os.chmod(spool / name, 0o644)
    old = os.umask(0)
    try:
        lg = make_logger(srv, spool, delivery=delivery)  # the server is down: all spooled
        for i in range(20):
            lg.log({"kind": "x.private", "attributes": {"i": i}})
        assert lg.close(timeout=5) is False
        spooled = modes(spool)  # segments, LOCK and the cursor
        os.umask(old)
        srv.start()
        os.umask(0)
        lg = make_logger(srv, spool, delivery=delivery)
        assert lg.flush(30) is True  # delivered: the cursor moved, a checkpoint was kept
        lg.log({"kind": "x.private", "attributes": {"i": 20}})
        assert lg.flush(30) is True
        delivered = modes(spool)
        lg.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
    assert any(name.startswith("seg-") for name in spooled), spooled
    assert {"LOCK", "cursor"} <= set(spooled) and {"checkpoint"} <= set(delivered)
    for name, mode in {**spooled, **delivered, **modes(spool)}.items():
        assert mode == 0o600, (name, oct(mode))


def test_a_new_spool_directory_is_created_private(offline_server, tmp_path):
    old = os.umask(0)
    try:
        lg = make_logger(offline_server, tmp_path / "new" / "spool")
        lg.close(timeout=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "spool").st_mode) == 0o700
