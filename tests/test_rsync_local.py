"""rsync.py against the real rsync binary with local folders."""

import os
import shlex
import shutil
import threading
import time

import pytest

from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.rsync import (Progress, decode_name, restage_files, run_rsync,
                                   ssh_command)
from tests.events import append_scalars, event_file_name, scalar_bytes

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
EVENTS = event_file_name()


@pytest.fixture
def dirs(tmp_path):
    src, staging, temp = tmp_path / "src", tmp_path / "staging" / "train", tmp_path / "tmp"
    src.mkdir()
    return src, staging, temp


def sync(dirs, **source_kw):
    src, staging, temp = dirs
    return run_rsync(RSYNC, Source("train", str(src), **source_kw), str(staging), str(temp))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_grown_event_file_moves_only_new_bytes(dirs):
    src, staging, _ = dirs
    event = src / "run1" / EVENTS
    event.parent.mkdir()
    append_scalars(event, range(20000))  # about 1 MB
    first = sync(dirs)
    assert first.changed == (f"run1/{EVENTS}",)
    assert first.bytes_received > 500_000
    inode = os.stat(staging / "run1" / EVENTS).st_ino

    added = append_scalars(event, range(20000, 20010))
    second = sync(dirs)

    assert second.changed == (f"run1/{EVENTS}",)
    assert second.restaged == ()
    assert second.files_transferred == 1
    assert second.bytes_received < len(added) + 2000
    assert os.stat(staging / "run1" / EVENTS).st_ino == inode  # grown in place
    assert (staging / "run1" / EVENTS).read_bytes() == event.read_bytes()


def test_noop_sync_changes_nothing(dirs):
    src, _, _ = dirs
    append_scalars(src / EVENTS, range(10))
    write(src / "ckpt", b"weights")
    sync(dirs)
    result = sync(dirs)
    assert result.changed == () and result.restaged == () and result.bytes_received == 0


def test_shrunk_event_file_is_restaged_whole(dirs):
    src, staging, _ = dirs
    event = src / EVENTS
    append_scalars(event, range(100))
    sync(dirs)
    event.write_bytes(scalar_bytes(range(5), header=True))  # a new run reusing the name

    result = sync(dirs)

    assert result.changed == (EVENTS,)
    assert result.restaged == (EVENTS,)
    assert (staging / EVENTS).read_bytes() == event.read_bytes()


def test_same_size_event_file_is_left_alone(dirs):
    src, staging, _ = dirs
    write(src / EVENTS, b"a" * 100)
    sync(dirs)
    write(src / EVENTS, b"b" * 100)
    assert sync(dirs).changed == ()
    assert (staging / EVENTS).read_bytes() == b"a" * 100


def test_rewritten_longer_file_is_fixed_by_restage_files(dirs):
    src, staging, temp = dirs
    event = src / EVENTS
    write(event, b"x" * 100)
    sync(dirs)
    write(event, b"y" * 300)
    sync(dirs)  # --append puts y's after the stale x's: the publisher sees no prefix match
    assert (staging / EVENTS).read_bytes() != event.read_bytes()

    result = restage_files(RSYNC, Source("train", str(src)), str(staging), str(temp), [EVENTS])

    assert result.changed == (EVENTS,) and result.restaged == (EVENTS,)
    assert (staging / EVENTS).read_bytes() == event.read_bytes()


def test_deleted_at_source_stays_in_staging(dirs):
    src, staging, _ = dirs
    append_scalars(src / EVENTS, range(3))
    write(src / "notes.txt", b"hi")
    sync(dirs)
    (src / EVENTS).unlink()
    (src / "notes.txt").unlink()
    assert sync(dirs).changed == ()
    assert (staging / EVENTS).exists() and (staging / "notes.txt").exists()


def test_changed_non_event_file_is_replaced_by_rename(dirs):
    src, staging, _ = dirs
    write(src / "ckpt" / "model.bin", b"A" * 4096)
    sync(dirs)
    inode = os.stat(staging / "ckpt" / "model.bin").st_ino
    write(src / "ckpt" / "model.bin", b"B" * 4096)
    os.utime(src / "ckpt" / "model.bin", (1_800_000_000, 1_800_000_000))

    result = sync(dirs)

    assert result.changed == ("ckpt/model.bin",)
    assert result.restaged == ()
    assert (staging / "ckpt" / "model.bin").read_bytes() == b"B" * 4096
    assert os.stat(staging / "ckpt" / "model.bin").st_ino != inode
    assert os.stat(staging / "ckpt" / "model.bin").st_mtime == 1_800_000_000


def test_include_means_only_these_and_exclude_always_wins(dirs):
    src, staging, _ = dirs
    for rel in (f"a/{EVENTS}", f"debug/{EVENTS}", "a/plugins/profile/x.pb", "a/model.ckpt",
                "a/notes.txt"):
        write(src / rel, b"data")

    result = sync(dirs, include=("*tfevents*", "*.pb", "*.ckpt"), exclude=("debug/", "*.ckpt"))

    assert result.changed == (f"a/{EVENTS}", "a/plugins/profile/x.pb")
    assert not (staging / "debug" / EVENTS).exists()


def test_exclude_only_and_classic_star_exclude(dirs):
    src, _, _ = dirs
    for rel in (f"a/{EVENTS}", "a/big.ckpt", "b/notes.txt"):
        write(src / rel, b"data")
    assert sync(dirs, exclude=("*.ckpt",)).changed == (f"a/{EVENTS}", "b/notes.txt")
    src2 = dirs
    # The rsync idiom include=[...] exclude=['*'] means the same as include alone.
    for rel in ("c/notes.txt", f"c/{EVENTS}"):
        write(src / rel, b"data2")
    assert sync(src2, include=("*tfevents*",), exclude=("*",)).changed == (f"c/{EVENTS}",)


@pytest.mark.parametrize("name", ["run 1/événements", "sp ace/new\nline", "quote'\"\\#012"])
def test_unusual_names_round_trip(dirs, name):
    src, staging, _ = dirs
    event = f"{name}/{EVENTS}"
    other = f"{name}/ckpt {name.split('/')[-1]}.bin"
    write(src / event, b"e" * 10)
    write(src / other, b"o" * 10)

    result = sync(dirs)

    assert result.changed == tuple(sorted([event, other]))
    assert (staging / event).read_bytes() == b"e" * 10
    write(src / event, b"e" * 20)
    assert sync(dirs).changed == (event,)


def test_non_utf8_name_uses_surrogateescape(dirs):
    src, staging, _ = dirs
    raw = b"run\xff/" + EVENTS.encode()
    os.makedirs(os.path.join(os.fsencode(src), b"run\xff"))
    with open(os.path.join(os.fsencode(src), raw), "wb") as f:
        f.write(b"data")
    result = sync(dirs)
    assert result.changed == (raw.decode("utf-8", "surrogateescape"),)
    assert os.path.exists(os.path.join(os.fsencode(staging), raw))


def test_progress_callback_reports(dirs):
    src, staging, temp = dirs
    write(src / "big.bin", os.urandom(3_000_000))
    append_scalars(src / EVENTS, range(1000))
    seen = []
    run_rsync(RSYNC, Source("train", str(src)), str(staging), str(temp), on_progress=seen.append)
    assert seen and all(isinstance(p, Progress) for p in seen)
    assert {p.phase for p in seen} <= {"events", "files", "restage"}
    assert max(p.bytes_done for p in seen) >= 3_000_000
    assert all(0 <= p.percent <= 100 for p in seen)


def test_missing_source_folder_is_a_sentence(dirs, tmp_path):
    _, staging, temp = dirs
    with pytest.raises(TransferError) as info:
        run_rsync(RSYNC, Source("train", str(tmp_path / "nope")), str(staging), str(temp))
    assert str(info.value) == (f"Sync of 'train' from '{tmp_path / 'nope'}' failed: there is no "
                               "such directory at the source; check the path.")
    assert "command: " in info.value.details and "change_dir" in info.value.details


def test_missing_rsync_binary_is_a_sentence(dirs, tmp_path):
    src, staging, temp = dirs
    with pytest.raises(TransferError, match="could not start rsync"):
        run_rsync(str(tmp_path / "no-rsync"), Source("train", str(src)), str(staging), str(temp))


def test_temp_files_stay_out_of_staging(dirs):
    """rsync writes into --temp-dir, and ignores stale temp names an old run left in staging."""
    src, staging, temp = dirs
    stale = staging / "run1" / f".{EVENTS}.Ab12Cd"
    write(stale, b"stale half-written")
    write(src / "run1" / "big.bin", os.urandom(2_000_000))
    append_scalars(src / "run1" / EVENTS, range(20000))
    seen_in_staging, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            for root, _, files in os.walk(staging):
                seen_in_staging.update(f for f in files if f.startswith("."))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = sync(dirs, bwlimit_kib=20_000)
    finally:
        stop.set()
        watcher.join()

    assert seen_in_staging == {stale.name}
    assert stale.read_bytes() == b"stale half-written"
    assert result.changed == ("run1/big.bin", f"run1/{EVENTS}")
    assert os.listdir(temp) == []


def test_bwlimit_is_passed_and_slows_the_copy(dirs):
    src, _, _ = dirs
    write(src / "a.bin", os.urandom(300_000))
    started = time.monotonic()
    result = sync(dirs, bwlimit_kib=500)
    assert result.changed == ("a.bin",)
    assert time.monotonic() - started > 0.3


def test_cancel_stops_rsync_promptly(dirs):
    src, staging, temp = dirs
    write(src / "big.bin", os.urandom(5_000_000))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TransferError) as info:
        run_rsync(RSYNC, Source("train", str(src), bwlimit_kib=200), str(staging), str(temp),
                  cancel=cancel)
    assert str(info.value) == "Sync of 'train' was cancelled."
    assert time.monotonic() - started < 3
    assert not (staging / "big.bin").exists()


def test_wall_clock_timeout(dirs):
    src, staging, temp = dirs
    write(src / "big.bin", os.urandom(5_000_000))
    started = time.monotonic()
    with pytest.raises(TransferError, match=r"^Sync of 'train' timed out after 1 s"):
        run_rsync(RSYNC, Source("train", str(src), bwlimit_kib=200, timeout_s=1), str(staging),
                  str(temp))
    assert time.monotonic() - started < 4


def test_ssh_command_adds_batch_mode_first_and_timeouts_last():
    words = shlex.split(ssh_command("ssh -p 2222 -J login -o ConnectTimeout=3"))
    assert words[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert words[3:9] == ["-p", "2222", "-J", "login", "-o", "ConnectTimeout=3"]
    assert "ConnectTimeout=10" in words[9:] and "ServerAliveInterval=15" in words
    assert shlex.split(ssh_command(None))[:3] == ["ssh", "-o", "BatchMode=yes"]


def test_decode_name_reverses_rsync_escapes():
    assert decode_name(b"a\\#012b c\\#134#") == "a\nb c\\#"
    assert decode_name("é".encode()) == "é"
    assert decode_name(b"\\#377x") == b"\xffx".decode("utf-8", "surrogateescape")


def test_symlinks_never_lead_out_of_the_tree(dirs, tmp_path):
    src, staging, _ = dirs
    outside = tmp_path / "secret"
    outside.write_text("secret")
    write(src / "run" / EVENTS, b"e")
    os.symlink(outside, src / "run" / "escape")
    os.symlink(f"../../{outside.parent.name}/secret", src / "run" / "escape_rel")
    os.symlink(EVENTS, src / "run" / "inside")

    result = sync(dirs)

    assert result.changed == (f"run/{EVENTS}",)
    assert os.readlink(staging / "run" / "inside") == EVENTS
    assert not os.path.lexists(staging / "run" / "escape")
    assert not os.path.lexists(staging / "run" / "escape_rel")
