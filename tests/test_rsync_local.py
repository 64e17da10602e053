"""rsync.py against the real rsync binary with local folders."""

import errno
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.rsync import restage_files, run_rsync
from tb_rsync_plugin.transports.rsync_run import decode_name
from tb_rsync_plugin.transports.transfer import Progress
from tb_rsync_plugin.transports.ssh import ssh_command
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


def test_source_that_is_a_file_is_a_sentence(dirs, tmp_path):
    _, staging, temp = dirs
    (tmp_path / "events.out.tfevents.1").write_bytes(b"")
    source = str(tmp_path / "events.out.tfevents.1") + "/"
    with pytest.raises(TransferError) as info:
        run_rsync(RSYNC, Source("train", source), str(staging), str(temp))
    assert str(info.value).endswith("failed: the source is a file, not a directory; name the "
                                    "folder that holds the runs.")


def test_rsync_killed_by_a_signal_says_so(dirs, tmp_path):
    """A stand-in rsync that aborts itself (as a crashing rsync would): the signal is named."""
    src, staging, temp = dirs
    crashing = rsync_wrapper(tmp_path, "os.abort()\n")
    with pytest.raises(TransferError) as info:
        run_rsync(crashing, Source("train", str(src)), str(staging), str(temp))
    assert str(info.value).endswith("failed: rsync was killed by signal SIGABRT.")


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


# --- one listing, then the transfers it asks for ---------------------------------------

def rsync_wrapper(tmp_path, body):
    """An executable standing in for rsync: `body` (Python) runs with `args` and `kind`
    ("list", "events" for the append pass, "other") before the real rsync, whose exit code
    is kept unless `body` calls sys.exit. Each run's kind is logged to `tmp_path/kinds`."""
    path = tmp_path / "rsync-wrapper"
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        "args = sys.argv[1:]\n"
        "kind = 'list' if '--dry-run' in args else 'events' if '--append' in args else 'other'\n"
        f"with open({str(tmp_path / 'kinds')!r}, 'a') as log:\n"
        "    log.write(kind + '\\n')\n"
        "def wait_for(path):\n"
        "    deadline = time.monotonic() + 20\n"
        "    while not os.path.exists(path) and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "def rsync():\n"
        "    sys.stdout.flush()\n"
        f"    return subprocess.call([{RSYNC!r}] + args)\n"
        + body)
    path.chmod(0o755)
    return str(path)


def test_event_file_growing_during_the_sync_is_appended_not_restaged(dirs, tmp_path):
    """The source grows between the listing and the append: the append takes the file up to
    its current length, and it is not taken for shrunk or rewritten."""
    src, staging, temp = dirs
    event = src / "run" / EVENTS
    event.parent.mkdir()
    append_scalars(event, range(100))
    sync(dirs)
    append_scalars(event, range(100, 200))
    wrapper = rsync_wrapper(tmp_path, (
        "if kind == 'events':\n"
        f"    with open({str(event)!r}, 'ab') as f:\n"
        f"        f.write({scalar_bytes(range(200, 300))!r})\n"
        "sys.exit(rsync())\n"))

    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp))

    assert result.changed == (f"run/{EVENTS}",)
    assert result.restaged == () and result.same_size == ()
    assert (staging / "run" / EVENTS).read_bytes() == event.read_bytes()


def after_an_earlier_sync(staging):
    """Staging holds something, as after a first sync: the listing comes first (a first
    sync into an empty staging folder is one rsync, without a listing)."""
    (staging / "synced-before").mkdir(parents=True)


def test_a_sync_that_finds_nothing_runs_one_rsync_and_writes_nothing(dirs, tmp_path):
    """One walk of the source, no transfer process, no callback that marks staging dirty.
    A first sync (empty staging) is one rsync as well: no listing, nothing to compare."""
    src, staging, temp = dirs
    append_scalars(src / EVENTS, range(10))
    write(src / "cfg.json", b"{}")
    wrapper = rsync_wrapper(tmp_path, "sys.exit(rsync())\n")
    marks = []  # what before_write was told: may staged event files be appended to?
    run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp),
              before_write=marks.append)
    assert (tmp_path / "kinds").read_text().split() == ["other"]
    assert marks == [False]  # nothing was staged
    assert (staging / EVENTS).read_bytes() == (src / EVENTS).read_bytes()
    (tmp_path / "kinds").unlink()

    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp),
                       before_write=marks.append)

    assert result.changed == () and marks == [False]
    assert (tmp_path / "kinds").read_text().split() == ["list"]

    append_scalars(src / EVENTS, range(10, 12))
    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp),
                       before_write=marks.append)
    assert result.grown == (EVENTS,) and marks == [False, True]


@pytest.mark.parametrize("order", ["list-then-grow-then-append", "append-then-grow-then-list"])
def test_active_source_growing_during_the_sync_is_never_restaged(dirs, tmp_path, order):
    """An active source (`expect_growth`): the append pass runs beside the listing, and the
    source grows between the two processes' looks at it. An event file the append pass
    itemized must not be taken for shrunk because the listing saw an older, shorter length
    (the staged copy is then longer than that length)."""
    src, staging, temp = dirs
    event = src / "run" / EVENTS
    event.parent.mkdir()
    append_scalars(event, range(100))
    sync(dirs)
    append_scalars(event, range(100, 200))
    marker = tmp_path / "first-done"
    first, second = ("list", "events") if order.startswith("list") else ("events", "list")
    wrapper = rsync_wrapper(tmp_path, (
        f"if kind == {second!r}:\n"
        f"    wait_for({str(marker)!r})\n"
        f"    with open({str(event)!r}, 'ab') as f:\n"
        f"        f.write({scalar_bytes(range(200, 300))!r})\n"
        "rc = rsync()\n"
        f"if kind == {first!r}:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "sys.exit(rc)\n"))

    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp),
                       expect_growth=True)

    assert result.changed == (f"run/{EVENTS}",)
    assert result.restaged == () and result.same_size == ()
    staged, source = (staging / "run" / EVENTS).read_bytes(), event.read_bytes()
    assert source.startswith(staged) and len(staged) >= len(scalar_bytes(range(200), header=True))
    sync(dirs)  # the next sync appends the rest
    assert (staging / "run" / EVENTS).read_bytes() == event.read_bytes()


def test_active_source_created_or_grown_after_the_append_pass_looked(dirs, tmp_path):
    """An active source (`expect_growth`): the listing sees a new event file and a grown one that the append pass missed (it
    looked first): both are appended by a second --append, not restaged."""
    src, staging, temp = dirs
    old = src / "run" / EVENTS
    new = src / "new run" / "deep" / f"{EVENTS}.2"
    old.parent.mkdir()
    append_scalars(old, range(100))
    sync(dirs)
    marker = tmp_path / "append-done"
    wrapper = rsync_wrapper(tmp_path, (
        "if kind == 'list':\n"
        f"    wait_for({str(marker)!r})\n"
        f"    os.makedirs({str(new.parent)!r})\n"
        f"    with open({str(new)!r}, 'wb') as f:\n"
        f"        f.write({scalar_bytes(range(3), header=True)!r})\n"
        f"    with open({str(old)!r}, 'ab') as f:\n"
        f"        f.write({scalar_bytes(range(100, 103))!r})\n"
        "rc = rsync()\n"
        "if kind == 'events':\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "sys.exit(rc)\n"))

    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp),
                       expect_growth=True)

    assert result.changed == (f"new run/deep/{EVENTS}.2", f"run/{EVENTS}")
    assert result.restaged == ()
    assert (staging / "run" / EVENTS).read_bytes() == old.read_bytes()
    assert (staging / "new run" / "deep" / f"{EVENTS}.2").read_bytes() == new.read_bytes()


def test_one_sync_sorts_grown_shrunk_same_size_new_and_other_files(dirs):
    src, staging, _ = dirs
    grown, shrunk, same = (src / "a" / EVENTS, src / "b" / EVENTS, src / "c" / EVENTS)
    for path in (grown, shrunk):
        path.parent.mkdir(parents=True)
        append_scalars(path, range(50))
    write(same, b"a" * 100)
    write(src / "a" / "ckpt.index", b"v1")
    sync(dirs)
    append_scalars(grown, range(50, 60))
    shrunk.write_bytes(scalar_bytes(range(3), header=True))
    write(same, b"b" * 100)
    os.utime(same, (1_800_000_000, 1_800_000_000))
    write(src / "a" / "ckpt.index", b"v2")
    os.utime(src / "a" / "ckpt.index", (1_800_000_000, 1_800_000_000))
    write(src / "new" / "deeper" / EVENTS, b"n" * 10)

    result = sync(dirs)

    assert result.changed == ("a/ckpt.index", f"a/{EVENTS}", f"b/{EVENTS}",
                              f"new/deeper/{EVENTS}")
    assert result.restaged == (f"b/{EVENTS}",)
    assert result.same_size == (f"c/{EVENTS}",)
    for rel in (f"a/{EVENTS}", f"b/{EVENTS}", "a/ckpt.index", f"new/deeper/{EVENTS}"):
        assert (staging / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert (staging / "c" / EVENTS).read_bytes() == b"a" * 100
    assert sync(dirs).changed == ()
    assert sync(dirs).same_size == (f"c/{EVENTS}",)  # still reported; the service restages it


def test_append_pass_honours_the_filters(dirs):
    """Event files a filter leaves out are not fetched by the append pass either, and folders
    without a selected event file are not created by it."""
    src, staging, _ = dirs
    for rel in (f"keep/{EVENTS}", f"keep/old/{EVENTS}", f"drop/{EVENTS}",
                f"keep/{EVENTS}.bak", "keep/only-ckpt/model.ckpt", "keep/notes/readme.txt"):
        write(src / rel, b"data")

    result = sync(dirs, include=("keep/***",), exclude=("old/", "*.bak"))

    assert result.changed == (f"keep/{EVENTS}", "keep/notes/readme.txt",
                              "keep/only-ckpt/model.ckpt")
    assert sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")) == [
        "keep", f"keep/{EVENTS}", "keep/notes", "keep/notes/readme.txt", "keep/only-ckpt",
        "keep/only-ckpt/model.ckpt"]
    write(src / f"drop/{EVENTS}", b"data grown")
    write(src / f"keep/old/{EVENTS}", b"data grown")
    assert sync(dirs, include=("keep/***",), exclude=("old/", "*.bak")).changed == ()
    assert not (staging / "drop").exists() and not (staging / "keep" / "old").exists()


def test_append_pass_error_is_one_sentence(dirs, tmp_path):
    """The listing succeeds, the append pass fails: its error is raised, worded as before."""
    src, staging, temp = dirs
    after_an_earlier_sync(staging)
    append_scalars(src / EVENTS, range(10))
    wrapper = rsync_wrapper(tmp_path, (
        "if kind == 'events':\n"
        "    sys.stderr.write('rsync: [receiver] write failed on \"x\": No space left on "
        "device (28)\\n')\n"
        "    sys.exit(11)\n"
        "sys.exit(rsync())\n"))
    with pytest.raises(TransferError) as info:
        run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp))
    assert str(info.value) == (f"Sync of 'train' from '{src}' failed: the disk holding the "
                               "staging folder is full; free space or choose another "
                               "staging folder (--rsync_staging in TensorBoard, --staging for "
                               "tb-rsync).")
    assert "--append" in info.value.details


def test_listing_error_stops_the_sync_before_any_transfer(dirs, tmp_path):
    src, staging, temp = dirs
    after_an_earlier_sync(staging)
    write(src / EVENTS, b"e")
    wrapper = rsync_wrapper(tmp_path, (
        "if kind == 'list':\n"
        "    sys.stderr.write('ssh: connect to host h port 22: Connection refused\\n')\n"
        "    sys.exit(255)\n"
        "sys.exit(rsync())\n"))
    with pytest.raises(TransferError) as info:
        run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp))
    assert "the host is unreachable (connection refused)" in str(info.value)
    assert "--dry-run" in info.value.details
    assert (tmp_path / "kinds").read_text().split() == ["list"]


def test_daemon_max_connections_runs_the_refused_process_again(dirs, tmp_path):
    """A daemon allowing one connection refuses the second process; it is run again alone."""
    src, staging, temp = dirs
    after_an_earlier_sync(staging)
    append_scalars(src / EVENTS, range(10))
    write(src / "cfg.json", b"{}")
    tries = tmp_path / "tries"
    tries.mkdir()
    wrapper = rsync_wrapper(tmp_path, (
        f"open(os.path.join({str(tries)!r}, kind + str(os.getpid())), 'w').close()\n"
        f"if kind == 'events' and not os.path.exists({str(tries / 'refused')!r}):\n"
        f"    open({str(tries / 'refused')!r}, 'w').close()\n"
        "    sys.stderr.write('@ERROR: max connections (1) reached -- try again later\\n')\n"
        "    sys.exit(5)\n"
        "sys.exit(rsync())\n"))

    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp))

    assert result.changed == ("cfg.json", EVENTS)
    assert sum(f.startswith("events") for f in os.listdir(tries)) == 2
    assert (staging / EVENTS).read_bytes() == (src / EVENTS).read_bytes()


def test_file_reported_vanished_by_both_processes_is_one_warning(dirs, tmp_path):
    src, staging, temp = dirs
    after_an_earlier_sync(staging)
    write(src / EVENTS, b"e")
    wrapper = rsync_wrapper(tmp_path, (
        "rc = rsync()\n"
        "if kind in ('list', 'events'):\n"
        f"    sys.stderr.write('file has vanished: \"{src}/run/x\"\\n')\n"
        "    sys.exit(24)\n"
        "sys.exit(rc)\n"))
    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp))
    assert result.changed == (EVENTS,)
    assert result.warnings == ("Sync of 'train': 1 file(s) vanished at the source (deleted, or "
                               "replaced by a rename) while being copied; the next sync picks "
                               "up what is left.",)


def test_a_listed_file_gone_before_its_transfer_vanished_rather_than_unreadable(dirs,
                                                                                 tmp_path):
    """A checkpoint renamed over (or deleted) between the listing and its transfer: rsync
    exits 23 with `link_stat ... No such file or directory`; that file vanished, it was not
    unreadable, and the rest is synced."""
    src, staging, temp = dirs
    after_an_earlier_sync(staging)
    write(src / "model.ckpt", b"v1")
    write(src / "notes.txt", b"n")
    wrapper = rsync_wrapper(tmp_path, (
        "if kind == 'other':\n"
        f"    os.unlink({str(src / 'model.ckpt')!r})\n"
        "sys.exit(rsync())\n"))
    result = run_rsync(wrapper, Source("train", str(src)), str(staging), str(temp))
    assert result.changed == ("notes.txt",)
    assert result.warnings == ("Sync of 'train': 1 file(s) vanished at the source (deleted, or "
                               "replaced by a rename) while being copied; the next sync picks "
                               "up what is left.",)


def test_a_failed_rsync_start_stops_the_ones_already_running(dirs, monkeypatch):
    """The third rsync of a sync cannot start (an injected Popen failure: EAGAIN cannot be
    caused safely here); the slow whole-file fetch already running must stop with it."""
    from tb_rsync_plugin.transports import process as process_lib
    from tests.processes import processes_mentioning
    src, staging, temp = dirs
    write(src / "run1" / EVENTS, os.urandom(2_000_000))
    write(staging / "run1" / EVENTS, os.urandom(3_000_000))  # staged longer: fetched whole
    write(src / "run1" / "notes.txt", b"new")  # another file: a third rsync
    real_popen, started = subprocess.Popen, []

    def popen(args, **kwargs):
        if any(a.startswith("--files-from=") for a in args) and started:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        proc = real_popen(args, **kwargs)
        if any(a.startswith("--files-from=") for a in args):
            started.append(proc)
        return proc

    monkeypatch.setattr(process_lib.subprocess, "Popen", popen)
    with pytest.raises(TransferError, match="could not start rsync"):
        run_rsync(RSYNC, Source("train", str(src), bwlimit_kib=200), str(staging), str(temp))
    assert started, "the whole-file fetch started"
    assert started[0].poll() is not None, "the whole-file fetch was stopped"
    assert not processes_mentioning(str(staging), "rsync")
    assert not [n for n in os.listdir(temp) if n.startswith(".tb-rsync-files-")]


def test_a_file_list_that_cannot_be_written_is_a_sentence(dirs, monkeypatch):
    """A full disk under the temp folder (injected: this machine has no small filesystem to
    fill) is a sentence that says so, not an internal error."""
    src, _, _ = dirs
    write(src / "run1" / EVENTS, scalar_bytes(range(3), header=True))
    sync(dirs)
    write(src / "run1" / "notes.txt", b"new")  # needs a --files-from list

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(TransferError) as info:
        sync(dirs)
    assert "could not write its file list into" in str(info.value)
    assert str(info.value).endswith("(No space left on device); free space on that disk or "
                                    "choose another staging folder (--rsync_staging in TensorBoard, --staging for "
                                    "tb-rsync).")


def test_a_setpriv_without_pdeathsig_is_not_used(tmp_path, monkeypatch):
    """util-linux before 2.33 (and busybox) has no --pdeathsig: rsync then starts plainly
    instead of every sync failing. A stand-in setpriv that rejects the option, on PATH."""
    from tb_rsync_plugin.transports import process as process_lib
    old = tmp_path / "bin" / "setpriv"
    old.parent.mkdir()
    old.write_text("#!/bin/sh\necho 'setpriv: unrecognized option --pdeathsig' >&2\nexit 1\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", f"{old.parent}{os.pathsep}{os.environ['PATH']}")
    process_lib.die_with_parent.cache_clear()
    try:
        assert process_lib.die_with_parent() == ()
        src = tmp_path / "src"
        write(src / "run1" / EVENTS, scalar_bytes(range(3), header=True))
        result = run_rsync(RSYNC, Source("train", str(src)), str(tmp_path / "staging"),
                           str(tmp_path / "tmp"))
        assert result.changed == (f"run1/{EVENTS}",)
    finally:
        monkeypatch.undo()
        process_lib.die_with_parent.cache_clear()
    assert process_lib.die_with_parent()[1:] == ("--pdeathsig", "TERM", "--")


def test_syncs_leave_no_pipe_open_for_the_garbage_collector(dirs):
    """Each rsync's pipes are closed when it ends, not when a collection finds the cycle a
    job and its run make: a long watch otherwise held hundreds of pipes between collections.
    Also after a failed sync (the processes a failure stops)."""
    import gc
    src, staging, temp = dirs
    event = src / "run" / EVENTS
    event.parent.mkdir()
    append_scalars(event, range(3))
    missing = Source("gone", str(src / "missing"))
    sync(dirs)
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for i in range(10):
            append_scalars(event, [3 + i])
            run_rsync(RSYNC, Source("train", str(src)), str(staging), str(temp),
                      expect_growth=True)
            sync(dirs)  # nothing changed: the listing alone
            with pytest.raises(TransferError):
                run_rsync(RSYNC, missing, str(staging), str(temp))
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        gc.enable()
