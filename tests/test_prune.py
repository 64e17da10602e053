"""Bounded disk (prune.py): real files, an injected clock, the logdir never touched."""

import datetime
import hashlib
import json
import os
import time
import subprocess
import sys

import pytest

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import config_file as config_file_lib
from tb_rsync_plugin.engine import prune
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.errors import ConfigError, SyncError
from tb_rsync_plugin.publishing import report as report_lib, rewrites
from tests.events import append_scalars, event_file_name
from tests.test_cli import tb_rsync

DAY = prune.DAY_S
NOW = 1_800_000_000.0
MIB = 1024 * 1024
EVENTS = event_file_name()


def make_config(tmp_path, sources=("kept",), days=30, max_gib=10):
    logdir, staging = tmp_path / "logs", tmp_path / "staging"
    logdir.mkdir(exist_ok=True)
    (logdir / "kept" / "run").mkdir(parents=True, exist_ok=True)
    (logdir / "kept" / "run" / EVENTS).write_bytes(b"published records")
    return config_lib.build_config(
        str(logdir), [f"{name}={tmp_path / 'remote' / name}/" for name in sources],
        staging=str(staging), disk=config_lib.DiskLimits(days, max_gib))


def tree_digest(folder):
    """Every path under `folder` with its inode, mode and bytes: any change shows."""
    digest = hashlib.sha256()
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest.update(f"{os.path.relpath(path, folder)}:{st.st_ino}:{st.st_mode}".encode())
            if name in files:
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def stamp(unix_s, n=1):
    text = datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime(
        "%Y%m%dT%H%M%S.%fZ")
    return text if n == 1 else f"{text}-{n}"


def quarantine(config, name, unix_s, rel, size=4096, n=1):
    path = os.path.join(config.staging_root, "quarantine", name, stamp(unix_s, n), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))  # random: every block allocated, as du counts it
    return path


def write(path, data=b"x", mtime=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def removed(report):
    return sorted(r.path for r in report.removals)


def test_old_quarantined_versions_go_and_each_files_newest_stays(tmp_path):
    config = make_config(tmp_path)
    rel = os.path.join("run", EVENTS)
    oldest = quarantine(config, "kept", NOW - 50 * DAY, rel)
    older = quarantine(config, "kept", NOW - 40 * DAY, rel)
    recent = quarantine(config, "kept", NOW - 10 * DAY, rel, n=2)  # superseded, but young
    newest = quarantine(config, "kept", NOW - 5 * DAY, rel)
    lonely = quarantine(config, "kept", NOW - 400 * DAY, os.path.join("other", EVENTS))
    # A crash between quarantining and renaming leaves a second name of a published file:
    # removing it must leave the published file as it is.
    published = os.path.join(config.logdir, "kept", "run", EVENTS)
    linked = os.path.join(config.staging_root, "quarantine", "kept", stamp(NOW - 45 * DAY),
                          "run", "linked.tfevents")
    os.makedirs(os.path.dirname(linked))
    os.link(published, linked)
    quarantine(config, "kept", NOW - DAY, os.path.join("run", "linked.tfevents"))
    before = tree_digest(config.logdir)

    dry = prune.prune(config, NOW, dry_run=True)
    assert removed(dry) == sorted([oldest, older, linked])
    assert all(os.path.exists(p) for p in (oldest, older, linked))

    report = prune.prune(config, NOW)
    assert removed(report) == removed(dry)
    assert all("older than 30 days, and a newer version" in r.why for r in report.removals)
    assert not any(os.path.exists(p) for p in (oldest, older, linked))
    for path in (recent, newest, lonely):
        assert os.path.exists(path), "a young version, or a file's newest, is kept"
    assert not os.path.exists(os.path.dirname(os.path.dirname(oldest))), \
        "an emptied time folder goes too"
    assert tree_digest(config.logdir) == before
    assert removed(prune.prune(config, NOW + 25 * DAY)) == [recent], \
        "a superseded version goes once it is old; each file's newest never for its age"


def test_over_the_size_cap_the_oldest_versions_go_first(tmp_path):
    config = make_config(tmp_path, max_gib=2.5 * MIB / prune.GIB)
    files = [quarantine(config, "kept", NOW - age * DAY, os.path.join(f"run{age}", EVENTS),
                        size=MIB) for age in (1, 4, 2, 3)]
    before = tree_digest(config.logdir)
    report = prune.prune(config, NOW)
    by_age = {age: path for age, path in zip((1, 4, 2, 3), files)}
    assert removed(report) == sorted([by_age[4], by_age[3]])
    assert [r.path for r in report.removals] == [by_age[4], by_age[3]], "oldest first"
    assert all(r.bytes == MIB and r.why.endswith("oldest first") for r in report.removals)
    assert os.path.exists(by_age[1]) and os.path.exists(by_age[2])
    assert prune.prune(config, NOW).removals == ()
    assert tree_digest(config.logdir) == before


def unconfigured_source(config, name, mtime):
    """Everything a source leaves in the staging root, last touched at `mtime`."""
    root = config.staging_root
    files = {
        "staged": write(os.path.join(root, "staging", name, "run", EVENTS), b"s" * 9000, mtime),
        "manifest": write(os.path.join(root, "manifest", name + ".json"), b"{}", mtime),
        "journal": write(os.path.join(root, "state", name + ".jsonl"), b"", mtime),
        "marker": write(os.path.join(root, "locks", name + ".unpublished"), b"", mtime),
        "lock": write(os.path.join(root, "locks", name + ".lock"), b"", mtime),
        "held": write(os.path.join(root, "holding", name, "run", EVENTS), b"parked", mtime),
        "kept": quarantine(config, name, mtime, os.path.join("run", EVENTS)),
    }
    for folder in (os.path.join(root, "staging", name, "run"), os.path.join(root, "staging", name)):
        os.utime(folder, (mtime, mtime))
    return files


def test_an_unconfigured_sources_staging_is_reclaimed_after_its_grace_period(tmp_path):
    config = make_config(tmp_path, sources=("kept",))
    gone = unconfigured_source(config, "gone", NOW)
    kept = unconfigured_source(config, "kept", NOW)  # configured: never reclaimed
    before = tree_digest(config.logdir)

    assert prune.prune(config, NOW + 6 * DAY).removals == ()
    later = NOW + prune.RECLAIM_AFTER_DAYS * DAY + 60
    report = prune.prune(config, later)
    assert removed(report) == sorted(gone[k] if k != "staged" else
                                     os.path.join(config.staging_root, "staging", "gone")
                                     for k in ("staged", "manifest", "journal", "marker"))
    assert all("source not configured, no sync for 7 days" in r.why for r in report.removals)
    assert os.path.exists(gone["lock"]) and os.path.exists(gone["held"]), \
        "the lock file (others may hold it) and parked published files stay"
    assert os.path.exists(gone["kept"]), "its quarantine follows the quarantine rules"
    assert all(os.path.exists(p) for p in kept.values())
    assert tree_digest(config.logdir) == before


class HeldLock:
    """Another process holding a source's lock, as a sync in progress does."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        script = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
                  "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", script, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "held\n"

    def release(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_a_source_another_process_syncs_is_not_reclaimed(tmp_path):
    config = make_config(tmp_path, sources=())
    gone = unconfigured_source(config, "gone", NOW)
    superseded = quarantine(config, "gone", NOW - 40 * DAY, os.path.join("run", EVENTS))
    holder = HeldLock(gone["lock"])
    try:
        report = prune.prune(config, NOW + 30 * DAY)
        assert report.removals == () and os.path.exists(superseded)
        assert report.notes == ("quarantine of 'gone' left alone: it is being synced right now.",)
        with pytest.raises(SyncError, match="being synced by another tb-rsync process"):
            prune.forget(config, ["gone"])
        assert os.path.exists(gone["staged"])
    finally:
        holder.release()
    found, report = prune.forget(config, ["gone", "never-there"])
    assert found == ["gone"] and not os.path.exists(gone["staged"])
    assert removed(prune.prune(config, NOW)) == [superseded]
    with pytest.raises(ConfigError, match="is not a source name"):
        prune.forget(config, [".."])


def make_tmp_leftovers(config, mtime):
    tmp = config.temp_dir
    files = {
        "rsync": write(os.path.join(tmp, f".{EVENTS}.Ab3dE9"), b"half", mtime),
        "list": write(os.path.join(tmp, ".tb-rsync-files-x1y2z3"), b"a\0", mtime),
        "rclone": write(os.path.join(tmp, ".tb-rclone-q8w7", "run", EVENTS), b"half", mtime),
        "not ours": write(os.path.join(tmp, "notes.txt"), b"someone's", mtime),
    }
    rclone = os.path.join(tmp, ".tb-rclone-q8w7")
    for folder in (os.path.join(rclone, "run"), rclone):
        os.utime(folder, (mtime, mtime))
    return files


def kept_source(tmp_path):
    """A local source "kept" with one run -> (config, `tb-rsync` arguments, its folder)."""
    remote = tmp_path / "remote" / "kept"
    (remote / "run").mkdir(parents=True)
    append_scalars(str(remote / "run" / EVENTS), range(3))
    config = make_config(tmp_path)
    return config, ("--logdir", config.logdir, "--staging", config.staging_root,
                    "--source", f"kept={remote}/"), remote


def test_tmp_leftovers_go_at_start_but_not_while_a_source_is_syncing(tmp_path):
    """`tb-rsync sync` starts a service: it clears what a killed process left in tmp/,
    except while another process syncs a source of this staging root."""
    config, args, remote = kept_source(tmp_path)
    old = os.path.getmtime(remote) - 3600
    leftovers = make_tmp_leftovers(config, old)
    holder = HeldLock(os.path.join(config.staging_root, "locks", "other.lock"))
    try:
        result = tb_rsync("sync", *args)
        assert result.returncode == 0, result.stderr
        assert all(os.path.exists(p) for p in leftovers.values())
        dry = prune.clean_tmp(config, NOW)
        assert dry.removals == () and "source 'other' is being synced" in dry.notes[0]
    finally:
        holder.release()
    result = tb_rsync("sync", *args)
    assert result.returncode == 0, result.stderr
    assert [k for k, p in leftovers.items() if os.path.exists(p)] == ["not ours"]
    assert not os.path.exists(os.path.join(config.temp_dir, ".tb-rclone-q8w7"))
    fresh = write(os.path.join(config.temp_dir, ".tb-rsync-files-new"), b"")
    assert prune.clean_tmp(config, os.path.getmtime(fresh) + 1).removals == (), \
        "a file a sync may be writing right now stays"


def rewrite_report(first, count):
    actions = tuple(report_lib.FileAction(f"job/events.out.tfevents.{i}", "rewrite", 10,
                                          kept_at=f"/q/{i}") for i in range(first, first + count))
    return report_lib.PublishReport(actions, {"node/job": report_lib.RunUpdate(
        "node/job", 1.0, first + count, True)}, (), ())


WRITER = """
import sys
from tb_rsync_plugin.publishing import report as report_lib, rewrites
first, count = int(sys.argv[2]), int(sys.argv[3])
actions = tuple(report_lib.FileAction(f"job/events.out.tfevents.{i}", "rewrite", 10,
                                      kept_at=f"/q/{i}") for i in range(first, first + count))
report = report_lib.PublishReport(actions, {"node/job": report_lib.RunUpdate(
    "node/job", 1.0, first + count, True)}, (), ())
for entry in rewrites.RewriteJournal(sys.argv[1]).record("node", report):
    print(entry.gen, entry.kept_at)
"""


def test_the_rewrite_journal_compacts_and_a_follower_reads_on(tmp_path):
    """Another process appends rewrites until the journal compacts; this one, following it,
    gets every line once, with the gens the writer gave them."""
    path = str(tmp_path / "rewrites.jsonl")
    state = state_lib.SyncState([config_lib.Source("node", "/src/")], lambda s: 0.0)
    follower = rewrites.RewriteJournal(path)
    written, seen, sizes = [], [], []
    batch = rewrites.KEEP_LINES * 9 // 10
    for first in range(0, 7 * batch, batch):
        out = subprocess.run([sys.executable, "-c", WRITER, path, str(first), str(batch)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        written += [(int(gen), kept) for gen, kept in (line.split() for line in
                                                        out.stdout.splitlines())]
        sizes.append(os.path.getsize(path))
        follower.notice(state)
        seen += [(e.gen, e.kept_at) for e in follower.take_unapplied()]
    assert seen == written and len(seen) == 7 * batch
    assert [gen for gen, _ in written] == sorted({gen for gen, _ in written}), \
        "gens stay unique and increasing across compactions"
    assert any(b < a for a, b in zip(sizes, sizes[1:])), "the journal was compacted"
    with open(path, "rb") as f:
        assert json.loads(f.readline())["first_gen"] > 0
        lines = f.read().splitlines(keepends=True)
    live = sum(map(len, lines[-rewrites.KEEP_LINES:]))
    assert sizes[-1] <= rewrites.COMPACT_FACTOR * live, "within a small multiple of its live lines"
    assert [(r.gen, r.kept_at) for r in rewrites.recent(path, 3)] == written[::-1][:3]
    # A process started after the compaction follows from the end, with the same gens.
    late = rewrites.RewriteJournal(path)
    more = rewrites.RewriteJournal(path).record("node", rewrite_report(10 ** 6, 1))
    late.notice(state)
    assert [e.gen for e in late.take_unapplied()] == [more[0].gen] and \
        more[0].gen > written[-1][0]


def test_prune_dry_run_removes_nothing_then_prune_does(tmp_path):
    config = make_config(tmp_path)
    now = time.time()
    old_version = quarantine(config, "kept", now - 40 * DAY, os.path.join("run", EVENTS))
    quarantine(config, "kept", now - 35 * DAY, os.path.join("run", EVENTS))
    unconfigured_source(config, "gone", now - 8 * DAY)
    make_tmp_leftovers(config, now - 3600)
    args = ("--logdir", config.logdir, "--staging", config.staging_root,
            "--source", f"kept={tmp_path / 'remote' / 'kept'}/")
    staging_before, logdir_before = tree_digest(config.staging_root), tree_digest(config.logdir)

    dry = tb_rsync("prune", *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert tree_digest(config.staging_root) == staging_before
    lines = dry.stdout.splitlines()
    assert f"would remove quarantine '{old_version}' (4.0 KiB): older than 30 days" in dry.stdout
    assert sum(line.startswith("would remove tmp ") for line in lines) == 3
    assert sum(line.startswith("would remove staging ") for line in lines) == 3
    assert lines[-1].startswith("total: 8 item(s), ") and lines[-1].endswith(" would be freed")

    done = tb_rsync("prune", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace("removed ", "would remove ").replace(" freed", " would be freed") \
        == dry.stdout
    assert tree_digest(config.logdir) == logdir_before
    assert tb_rsync("prune", *args).stdout.strip() == "total: 0 item(s), 0 B freed"
    bad = tb_rsync("prune", *args, "--quarantine-days", "-1")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: --quarantine-days must be a number of days >= 0, not '-1'."


def test_a_one_shot_sync_prunes_when_no_process_did_within_the_hour(tmp_path):
    """`tb-rsync sync` from cron every few minutes prunes once an hour, not at every run:
    the stamp every prune leaves says when the staging root was last pruned."""
    config, args, remote = kept_source(tmp_path)
    now = time.time()
    rel = os.path.join("run", EVENTS)
    quarantine(config, "kept", now - DAY, rel)  # the newest version: kept
    first = quarantine(config, "kept", now - 40 * DAY, rel)
    assert prune.due(config, now), "never pruned"

    assert tb_rsync("sync", *args).returncode == 0
    assert not os.path.exists(first)
    assert not prune.due(config, __import__("time").time())

    second = quarantine(config, "kept", now - 50 * DAY, rel)
    assert tb_rsync("sync", *args).returncode == 0
    assert os.path.exists(second), "pruned less than an hour ago: not again"

    stamp_path = os.path.join(config.staging_root, "pruned")
    hours_ago = now - 2 * prune.PRUNE_EVERY_S
    os.utime(stamp_path, (hours_ago, hours_ago))
    assert prune.due(config, now)
    assert tb_rsync("sync", *args).returncode == 0
    assert not os.path.exists(second)
    assert prune.due(config, now - 60), "a stamp from the future (clock set back) is due"


def test_status_forget_reclaims_a_sources_staging_at_once(tmp_path):
    remote = tmp_path / "remote" / "n1"
    (remote / "run").mkdir(parents=True)
    append_scalars(str(remote / "run" / EVENTS), range(3))
    config = make_config(tmp_path, sources=())
    args = ("--logdir", config.logdir, "--staging", config.staging_root)
    assert tb_rsync("sync", *args, "--source", f"n1={remote}/").returncode == 0
    assert os.path.isdir(config.staging_dir("n1"))
    before = tree_digest(config.logdir)
    result = tb_rsync("status", *args, "--forget", "n1")
    assert result.returncode == 0, result.stderr
    assert "freed in the staging folder" in result.stdout.splitlines()[0]
    assert not os.path.exists(config.staging_dir("n1"))
    assert not os.path.exists(config.manifest_path("n1"))
    assert tree_digest(config.logdir) == before


def test_disk_limit_flags_say_what_to_fix():
    assert config_file_lib.parse_disk_limits("7", "0.5", tensorboard=True) == \
        config_lib.DiskLimits(7.0, 0.5)
    with pytest.raises(ConfigError, match=r"^--rsync_quarantine_max_gib must be a number of "
                                          r"GiB >= 0, not 'lots'\.$"):
        config_file_lib.parse_disk_limits("7", "lots", tensorboard=True)
    with pytest.raises(ConfigError, match="^--quarantine-days must be"):
        config_file_lib.parse_disk_limits("inf", "1", tensorboard=False)
