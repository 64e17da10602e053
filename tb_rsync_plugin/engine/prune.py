"""Bounded disk: what tb-rsync lets go of in its staging root, and when.

Nothing in the logdir is ever removed here (`_remove` refuses any path outside the staging
root or inside the logdir). In the staging root:

- `quarantine/<name>/<UTC time>/<path>`: published event files a rewrite replaced, one
  version per rewrite. A version that a newer quarantined version of the same file
  supersedes goes once it is older than `quarantine_days`; the newest version of each file
  is never removed for its age, so the content a rewrite last replaced can always be got
  back while room allows. While the quarantine is over `quarantine_max_gib` after that,
  versions go oldest first, whatever their file. The published file is another inode (or,
  after a crash mid-rewrite, another name of the same one): removing a quarantined name
  never removes anything published.
- `tmp/`: what a killed transfer left (rsync's `.NAME.XXXXXX`, our file lists, rclone's
  fetch folders), at a service's start and by `tb-rsync prune`, only while every source
  lock on disk is free and held by us (no process syncs), and only entries untouched for
  `TMP_MIN_AGE_S` (a sync starting meanwhile writes newer ones).
- a source not configured here that has not synced for `RECLAIM_AFTER_DAYS` (its newest
  journal, manifest or staging change): its staging tree, manifest, unpublished marker and
  state journal, under its source lock; `forget` does the same at once. Its quarantine
  stays under the rules above; its lock file (others may hold it) and parked files in
  `holding/` (published files) stay.
- journals: every `state/*.jsonl` and `rewrites.jsonl` that has grown past its compaction
  threshold is compacted (they also compact themselves as they are appended to).

When: a long-lived service (TensorBoard, `tb-rsync watch`) prunes at its start and every
`PRUNE_EVERY_S`; a one-shot `tb-rsync sync` only once its syncs are done, and only when no
process pruned this staging root for `PRUNE_EVERY_S` (`due`: the `pruned` stamp file, which
every `prune` touches). A sync from cron every few minutes then pays for it once an hour, not
at every run (a prune reads every journal it may compact: docs/BENCHMARKS.md B3).

Sizes are allocated bytes, as `du` counts them (staged event files are sparse).
"""

import contextlib
import dataclasses
import datetime
import fnmatch
import logging
import os
import re
import shutil

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.engine import locks, state_journal
from tb_rsync_plugin.errors import ConfigError, SyncError
from tb_rsync_plugin.publishing import rewrites as rewrites_lib

logger = logging.getLogger(__name__)

DAY_S = 86400.0
GIB = 1024 ** 3
PRUNE_EVERY_S = 3600.0  # a service prunes at start, then this often; `due` after as long
RECLAIM_AFTER_DAYS = 7.0
TMP_MIN_AGE_S = 60.0
# What our transfers write into tmp/: rsync's temporaries (config.FOREIGN_TEMP_PATTERNS'
# first), rsync.py's `--files-from` lists and rclone.py's whole-fetch folders.
_TMP_PATTERNS = (config_lib.FOREIGN_TEMP_PATTERNS[0], ".tb-rsync-*", ".tb-rclone-*")
_STAMP_RE = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)(?:-(\d+))?$")  # file_publisher's _quarantine_path


@dataclasses.dataclass(frozen=True)
class Removal:
    """One thing removed (or, in a dry run, that would be)."""

    kind: str  # "quarantine", "tmp", "staging", "journal"
    path: str
    bytes: int
    why: str


@dataclasses.dataclass(frozen=True)
class PruneReport:
    removals: tuple = ()
    notes: tuple = ()  # what was left alone this time, and why

    @property
    def total_bytes(self):
        return sum(r.bytes for r in self.removals)

    def __add__(self, other):
        return PruneReport(self.removals + other.removals, self.notes + other.notes)


def prune(config, now, dry_run=False):
    """Quarantine by age and size, unconfigured sources' staging, long journals; then the
    stamp says when (not in a dry run)."""
    report = (_prune_quarantine(config, now, dry_run) +
              _reclaim_unconfigured(config, now, dry_run) + _compact_journals(config, dry_run))
    if not dry_run and os.path.isdir(config.staging_root):  # none yet: nothing was pruned
        _touch(_stamp_path(config), now)
    return report


def due(config, now):
    """True unless a process pruned this staging root less than `PRUNE_EVERY_S` before
    `now` (a stamp from the future, the clock set back, counts as due)."""
    try:
        return not 0 <= now - os.stat(_stamp_path(config)).st_mtime < PRUNE_EVERY_S
    except OSError:
        return True


def clean_tmp(config, now, dry_run=False):
    """Remove what killed transfers left in `tmp/`, unless a source is being synced."""
    folder = config.temp_dir
    try:
        entries = sorted(e for e in os.listdir(folder)
                         if any(fnmatch.fnmatchcase(e, p) for p in _TMP_PATTERNS))
    except FileNotFoundError:
        return PruneReport()
    if not entries:
        return PruneReport()
    lock_dir = os.path.join(config.staging_root, "locks")
    try:
        names = sorted(n[:-len(".lock")] for n in os.listdir(lock_dir) if n.endswith(".lock"))
    except FileNotFoundError:
        names = []
    removals = []
    try:
        with _held(config, names) as busy:
            if busy:
                return PruneReport(notes=(f"tmp/ left alone: source '{busy}' is being "
                                          "synced right now.",))
            for entry in entries:
                path = os.path.join(folder, entry)
                if now - _newest_mtime(path) >= TMP_MIN_AGE_S:
                    removals.append(_remove(config, Removal(
                        "tmp", path, _du(path), "left by a transfer that was stopped"), dry_run))
    except OSError as e:  # EMFILE with thousands of sources, say: next start tries again
        return PruneReport(tuple(removals), (f"tmp/ left alone: cannot lock every source "
                                             f"({e.strerror or e}).",))
    return PruneReport(tuple(removals))


def forget(config, names, dry_run=False):
    """Reclaim sources `names` at once; returns (names that had anything, `PruneReport`).

    Raises:
      ConfigError: a name that is not a source name.
      SyncError: another process is syncing one of them now.
    """
    for name in names:
        if not config_lib.is_source_name(name):
            raise ConfigError(f"'{name}' is not a source name; 'tb-rsync status' lists them.")
    found, report = [], PruneReport()
    for name in names:
        if not any(os.path.lexists(p) for p in _owned(config, name) + (
                state_journal.journal_path(config.state_dir, name),)):
            continue
        with _held(config, [name], dry_run) as busy:
            if busy:
                raise SyncError(f"Source '{name}' is being synced by another tb-rsync process; "
                                "remove it from that process's sources first.")
            done = _reclaim(config, name, "forgotten", dry_run)
        if done.removals:
            found.append(name)
        report += done
    return found, report


def format_report(report, dry_run=False):
    """One line per thing removed with its size, the notes, and a total line."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {r.kind} '{r.path}' ({format_bytes(r.bytes)}): {r.why}"
             for r in report.removals]
    lines.extend(report.notes)
    lines.append(f"total: {len(report.removals)} item(s), {format_bytes(report.total_bytes)}"
                 + (" would be freed" if dry_run else " freed"))
    return lines


def format_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# --- quarantine ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Version:
    when: tuple  # (unix seconds, n): the folder's UTC time and its "-n" suffix
    file: tuple  # (source name, path in its tree)
    path: str
    bytes: int


def _prune_quarantine(config, now, dry_run):
    limits = config.disk
    versions = sorted(_quarantined(os.path.join(config.staging_root, "quarantine")),
                      key=lambda v: (v.when, v.path))
    newest = {v.file: v for v in versions}
    removals, kept = [], []
    for v in versions:
        if newest[v.file] is not v and now - v.when[0] > limits.quarantine_days * DAY_S:
            removals.append(Removal("quarantine", v.path, v.bytes,
                                    f"older than {limits.quarantine_days:g} days, and a newer "
                                    "version of the file is kept"))
        else:
            kept.append(v)
    total, cap = sum(v.bytes for v in kept), limits.quarantine_max_gib * GIB
    for v in kept:
        if total <= cap:
            break
        removals.append(Removal("quarantine", v.path, v.bytes,
                                f"quarantine over {limits.quarantine_max_gib:g} GiB, oldest "
                                "first"))
        total -= v.bytes
    # Under each source's lock: its publisher may be quarantining into a new folder now.
    root = os.path.join(config.staging_root, "quarantine")
    by_source = {}
    for r in removals:
        by_source.setdefault(os.path.relpath(r.path, root).split(os.sep)[0], []).append(r)
    done, notes = [], []
    for name, items in by_source.items():
        with _held(config, [name], dry_run) as busy:
            if busy:
                notes.append(f"quarantine of '{name}' left alone: it is being synced right now.")
                continue
            for r in items:
                done.append(_remove(config, r, dry_run))
                if not dry_run:  # the time folder and the folders in it, once empty
                    _remove_empty_parents(os.path.dirname(r.path), os.path.join(root, name))
    return PruneReport(tuple(done), tuple(notes))


def _quarantined(root):
    """Every file under `quarantine/<name>/<UTC time>/`; other folders are not ours."""
    for name in _listdir(root):
        for stamp in _listdir(os.path.join(root, name)):
            match = _STAMP_RE.match(stamp)
            if not config_lib.is_source_name(name) or not match:
                continue
            when = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            top = os.path.join(root, name, stamp)
            for folder, _, files in os.walk(top):
                for file in files:
                    path = os.path.join(folder, file)
                    yield _Version((when, int(match.group(2) or 1)),
                                   (name, os.path.relpath(path, top)), path, _du(path))


def _remove_empty_parents(folder, stop):
    """rmdir `folder` and its parents while empty, up to `stop` (kept)."""
    while folder.startswith(stop + os.sep):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


# --- sources no longer configured ------------------------------------------------------------
def _reclaim_unconfigured(config, now, dry_run):
    configured = {s.name for s in config.sources}
    report = PruneReport()
    for name in sorted(_names_on_disk(config) - configured):
        idle_s = now - _last_activity(config, name)
        if idle_s <= RECLAIM_AFTER_DAYS * DAY_S:
            continue
        with _held(config, [name], dry_run) as busy:
            if busy:
                continue  # syncing in another process: configured there
            report += _reclaim(config, name, f"source not configured, no sync for "
                                             f"{idle_s / DAY_S:.0f} days", dry_run)
    return report


def _names_on_disk(config):
    root = config.staging_root
    names = set(_listdir(os.path.join(root, "staging")))
    for folder, suffix in (("manifest", ".json"), ("state", ".jsonl"),
                           ("locks", ".unpublished")):
        names.update(n[:-len(suffix)] for n in _listdir(os.path.join(root, folder))
                     if n.endswith(suffix))
    return {n for n in names if config_lib.is_source_name(n)}


def _owned(config, name):
    """What a source owns in the staging root that reclaiming removes (never its quarantine,
    its lock file, or files parked in holding/)."""
    return (config.staging_dir(name), config.manifest_path(name),
            config.unpublished_path(name))


def _last_activity(config, name):
    """When the source last synced, as far as the disk tells (a sync that changes nothing
    still journals a heartbeat once a minute)."""
    times = [0.0]
    for path in _owned(config, name) + (state_journal.journal_path(config.state_dir, name),):
        with contextlib.suppress(OSError):
            times.append(os.stat(path).st_mtime)
    return max(times)


def _reclaim(config, name, why, dry_run):
    """Remove what source `name` owns in the staging root (its lock held by the caller)."""
    removals = [_remove(config, Removal("staging", path, _du(path), why), dry_run)
                for path in _owned(config, name) if os.path.lexists(path)]
    journal = state_journal.journal_path(config.state_dir, name)
    if os.path.exists(journal):
        size = _du(journal)
        if not dry_run:
            state_journal.forget_sources(config.state_dir, [name])
        removals.append(Removal("journal", journal, size, why))
    return PruneReport(tuple(removals))


# --- journals ----------------------------------------------------------------------------------
def _compact_journals(config, dry_run):
    paths = [state_journal.journal_path(config.state_dir, n[:-len(".jsonl")])
             for n in _listdir(config.state_dir) if n.endswith(".jsonl")]
    removals = []
    for path, compact in [(p, state_journal.compact) for p in paths] + \
            [(config.rewrites_path, rewrites_lib.compact)]:
        try:
            saved = compact(path, dry_run=dry_run)
        except OSError as e:
            logger.warning("tb-rsync: cannot compact %s: %s", path, e)
            continue
        if saved > 0:
            removals.append(Removal("journal", path, saved, "compacted to its live lines"))
    return PruneReport(tuple(removals))


# --- helpers -----------------------------------------------------------------------------------
def _stamp_path(config):
    return os.path.join(config.staging_root, "pruned")


def _touch(path, unix_s):
    """An empty file at `path` whose mtime is `unix_s`; a failure only means pruning again."""
    try:
        with open(path, "a"):
            pass
        os.utime(path, (unix_s, unix_s))
    except OSError as e:
        logger.warning("tb-rsync: cannot write %s: %s", path, e)


@contextlib.contextmanager
def _held(config, names, dry_run=False):
    """Hold the source locks of `names` without waiting; yields the first name another
    process holds (then none is held), or None. A dry run creates no lock file (a missing
    one is not held)."""
    with contextlib.ExitStack() as stack:
        for name in names:
            if dry_run and not os.path.exists(config.lock_path(name)):
                continue
            if not stack.enter_context(locks.source_unless_busy(config, name)):
                stack.close()
                yield name
                return
        yield None


def _remove(config, removal, dry_run):
    """Remove `removal.path` (a file or a whole tree); never anything outside the staging
    root or inside the logdir."""
    path = removal.path
    folder = os.path.realpath(os.path.dirname(path))  # the name itself is never followed
    if not config_lib.is_within(folder, config.staging_root) or \
            config_lib.is_within(folder, config.logdir):
        raise RuntimeError(f"tb-rsync: refusing to remove '{path}', which is not in the "
                           "staging folder; please report this bug.")
    if not dry_run:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return removal


def _du(path):
    """Allocated bytes of a file or tree (symlinks are not followed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total = st.st_blocks * 512
    if os.path.isdir(path) and not os.path.islink(path):
        for folder, dirs, files in os.walk(path):
            for entry in dirs + files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, entry)).st_blocks * 512
    return total


def _newest_mtime(path):
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for folder, dirs, files in os.walk(path):
            for entry in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, entry)).st_mtime)
    return newest


def _listdir(folder):
    try:
        return sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
