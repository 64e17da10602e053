"""One-file writes into the logdir: atomic, mode-keeping, never named like an event file."""

import errno
import os
import stat
import threading
import time

import pytest

from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin.errors import PublishError


def leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(atomic.TEMP_PREFIX)]


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "staging" / "model.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"weights" * 1000)
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (tmp_path / "logdir").mkdir()
    return path


@pytest.mark.parametrize("link_ok", [True, False])
def test_replace_file_keeps_content_mode_and_mtime(src, tmp_path, link_ok):
    dest = tmp_path / "logdir" / "model.ckpt"
    dest.write_bytes(b"old")
    old_inode = dest.stat().st_ino
    atomic.replace_file(str(src), str(dest), link_ok=link_ok)
    st = dest.stat()
    assert dest.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == src.stat().st_mtime_ns
    assert st.st_ino != old_inode
    assert (st.st_ino == src.stat().st_ino) == link_ok
    assert leftovers(dest.parent) == []


def test_replace_file_failure_leaves_no_temp_and_raises_the_original_error(src, tmp_path):
    dest_dir = tmp_path / "logdir" / "taken"
    (dest_dir / "child").mkdir(parents=True)  # a non-empty folder cannot be replaced
    for link_ok in (True, False):
        with pytest.raises(OSError) as info:
            atomic.replace_file(str(src), str(dest_dir), link_ok=link_ok)
        assert not isinstance(info.value, PublishError)
        assert leftovers(tmp_path / "logdir") == []
    with pytest.raises(FileNotFoundError):
        atomic.replace_file(str(tmp_path / "missing"), str(tmp_path / "logdir" / "x"))
    assert leftovers(tmp_path / "logdir") == []


def test_append_bytes_grows_the_same_inode(tmp_path):
    dest = tmp_path / "events.out.tfevents.1"
    dest.write_bytes(b"abc")
    inode = dest.stat().st_ino
    source = tmp_path / "src"
    source.write_bytes(b"0123456789")
    assert atomic.append_bytes(str(dest), b"def") == 3
    assert atomic.append_bytes(str(dest), [b"g", b"hi"]) == 3
    assert atomic.append_bytes(str(dest), (str(source), 2, 6)) == 4
    assert dest.read_bytes() == b"abcdefghi2345"
    assert dest.stat().st_ino == inode


def test_append_bytes_never_creates_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic.append_bytes(str(tmp_path / "missing"), b"x")
    assert not (tmp_path / "missing").exists()


def test_create_file_copies_a_range_with_the_source_mode(tmp_path):
    source = tmp_path / "staged"
    source.write_bytes(b"0123456789")
    os.chmod(source, 0o604)
    dest = tmp_path / "out" / "events.out.tfevents.2"
    dest.parent.mkdir()
    assert atomic.create_file(str(dest), str(source), 0, 7) == 7
    assert dest.read_bytes() == b"0123456"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o604
    assert leftovers(dest.parent) == []


def test_create_file_temp_is_hidden_and_never_named_like_an_event_file(tmp_path):
    """Watch the temp file while create_file is blocked reading a FIFO mid-copy."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "events.out.tfevents.1700000000.host.1.0"
    go_on = threading.Event()

    def writer():
        with open(fifo, "wb", buffering=0) as f:
            f.write(b"first half")
            go_on.wait(10)
            f.write(b"secondhalf")

    threads = [threading.Thread(target=writer),
               threading.Thread(target=atomic.create_file, args=(str(dest), str(fifo), 0, 20))]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while not os.listdir(out) and time.monotonic() < deadline:
            time.sleep(0.005)
        names = os.listdir(out)
        assert len(names) == 1
        assert names[0].startswith(".tb-rsync-") and names[0].endswith(".tmp")
        assert "tfevents" not in names[0]
        assert not dest.exists()  # the name appears only with the complete bytes
    finally:
        go_on.set()
        for t in threads:
            t.join(10)
    assert dest.read_bytes() == b"first halfsecondhalf"
    assert os.listdir(out) == [dest.name]


def test_rewrite_file_keeps_the_old_inode_and_replaces_the_name(tmp_path):
    dest = tmp_path / "logdir" / "events.out.tfevents.1"
    dest.parent.mkdir()
    dest.write_bytes(b"old records")
    old_inode = dest.stat().st_ino
    source = tmp_path / "staged"
    source.write_bytes(b"new records!")
    keep = tmp_path / "quarantine" / "2024" / "events.out.tfevents.1"
    assert atomic.rewrite_file(str(dest), str(source), 0, 11, str(keep)) == 11
    assert dest.read_bytes() == b"new records"
    assert keep.read_bytes() == b"old records"
    assert keep.stat().st_ino == old_inode
    assert leftovers(dest.parent) == []


def test_keep_file_never_overwrites(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    with pytest.raises(FileExistsError):
        atomic.keep_file(str(a), str(b))
    assert b.read_bytes() == b"b"


def test_disk_full_is_a_sentence_naming_the_path():
    # /dev/full answers every write with ENOSPC: a real full disk, without filling one.
    with pytest.raises(PublishError) as info:
        atomic.append_bytes("/dev/full", b"x" * 10)
    assert str(info.value) == "The disk holding '/dev/full' is full; free space and sync again."
    assert info.value.__cause__.errno == errno.ENOSPC


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "is full; free space and sync again."),
    (errno.EDQUOT, "quota"),
    (errno.EFBIG, "largest file"),
    (errno.EACCES, "not allowed to write"),
    (errno.EROFS, "read-only filesystem"),
])
def test_errno_sentences(code, words):
    with pytest.raises(PublishError) as info:
        with atomic.publish_errors("/logs/run/file"):
            raise OSError(code, os.strerror(code))
    assert "'/logs/run/file'" in str(info.value) and words in str(info.value)
    assert info.value.details


def test_other_errors_pass_through_unchanged():
    with pytest.raises(IsADirectoryError):
        with atomic.publish_errors("/x"):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")


def test_remove_stale_temps_only_touches_our_temps(tmp_path):
    (tmp_path / ".tb-rsync-abc.tmp").write_bytes(b"")
    (tmp_path / ".events.out.tfevents.1.XYZ").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")
    atomic.remove_stale_temps(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".events.out.tfevents.1.XYZ", "keep.tmp"]


def test_fsync_dir(tmp_path):
    atomic.fsync_dir(str(tmp_path))
