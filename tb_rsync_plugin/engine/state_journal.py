"""The state journals on disk: `state/<name>.jsonl` in the staging root, one per source.

One JSON object a line: `{"source": {...}}` (the source's saved fields) or `{"run": {...}}`
(a run as in the status JSON). Processes append under an `flock` on `<name>.jsonl.lock`; a
journal grown to `COMPACT_FACTOR` times its live size is rewritten (atomically, so a new
inode) with only the last line of its source and of each run; an append checks that only at
check points (`_check_point`). Every line read back is
checked (`disk_lines`): a damaged one is skipped. `state.SyncState` writes these and
follows them (`JournalFollower`); `tb-rsync status` reads them with `load_snapshot`.
"""

import contextlib
import fcntl
import json
import math
import os

from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin import disk_lines

COMPACT_FACTOR = 4  # compact a journal once it is this many times its live size
COMPACT_MIN_BYTES = 64 * 1024
# Knowing the live size means reading and checking every line (0.2 s for 10,000 runs): an
# append checks only when it takes the journal past 64 KiB or past another eighth of growth,
# so a one-line heartbeat (a `tb-rsync sync` from cron) does not read the whole journal, and
# a journal still compacts before 4.5 times its live size. Pruning checks each one hourly.
COMPACT_CHECK_GROWTH = 1.125
_TAIL_BYTES = 256  # what a journal follower re-reads to know its file was not replaced


def journal_path(state_dir, name):
    return os.path.join(state_dir, name + ".jsonl")


@contextlib.contextmanager
def _exclusive(lock_path):
    """Hold an flock on `lock_path` (per open file, so it also orders threads)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_journal(path, entries):
    """Append `entries` as lines; compact the journal when it has grown too long."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = b"".join(json.dumps(e, separators=(",", ":")).encode("utf-8") + b"\n"
                    for e in entries)
    with _exclusive(path + ".lock"):
        with open(path, "ab") as f:
            before = f.tell()
            f.write(data)
        if _check_point(before + len(data)) > _check_point(before):
            _compact(path)


def _check_point(size):
    """-1 up to `COMPACT_MIN_BYTES`, then how many times the journal grew by
    `COMPACT_CHECK_GROWTH` past it."""
    if size <= COMPACT_MIN_BYTES:
        return -1
    return int(math.log(size / COMPACT_MIN_BYTES) / math.log(COMPACT_CHECK_GROWTH))


def compact(path, dry_run=False):
    """Compact the journal at `path` if it is long enough; returns the bytes it shrank by
    (`dry_run`: would shrink by)."""
    if not os.path.exists(path):
        return 0
    if dry_run:  # a read needs no lock (a line being appended is left out)
        return _compact(path, dry_run)
    with _exclusive(path + ".lock"):
        return _compact(path)


def _compact(path, dry_run=False):
    """Rewrite the journal with its live lines once it is `COMPACT_FACTOR` times their size
    (the caller holds its lock)."""
    size = os.path.getsize(path)
    if size <= COMPACT_MIN_BYTES:
        return 0
    source, runs = _read_journal(path)
    live = _journal_bytes(source, runs)
    if size <= COMPACT_FACTOR * len(live):
        return 0
    if not dry_run:
        atomic.write_bytes(path, live)
    return size - len(live)


def _journal_bytes(source, runs):
    entries = ([{"source": source}] if source else []) + [{"run": r} for r in runs.values()]
    return b"".join(json.dumps(e, separators=(",", ":")).encode("utf-8") + b"\n"
                    for e in entries)


_OPTIONAL_TIME = disk_lines.optional(disk_lines.number)


def _request_minute(value):
    """One of a source's `api_request_minutes` (source_status.py): [minute, syncs,
    requests, syncs not counted], whole numbers >= 0. Absent in older journals."""
    return isinstance(value, list) and len(value) == 4 and \
        all(disk_lines.integer(v) and v >= 0 for v in value)


_SOURCE_LINE = {
    "name": disk_lines.text, "source": disk_lines.text, "interval_s": disk_lines.number,
    "state": disk_lines.text, "last_start_unix_s": _OPTIONAL_TIME,
    "last_end_unix_s": _OPTIONAL_TIME, "last_ok_unix_s": _OPTIONAL_TIME,
    "last_result": disk_lines.optional(disk_lines.object_of(
        {key: disk_lines.number for key in (
            "bytes_received", "bytes_published", "files_transferred", "files_published",
            "runs_updated", "duration_s")})),
    "error": disk_lines.optional(disk_lines.object_of(
        {"message": disk_lines.text, "details": disk_lines.text, "unix_s": _OPTIONAL_TIME})),
    "warnings": disk_lines.list_of(disk_lines.text), "next_sync_unix_s": _OPTIONAL_TIME,
    "retrying": disk_lines.flag, "failures": disk_lines.integer, "appending": disk_lines.flag,
    "last_change": disk_lines.optional(disk_lines.object_of(
        {"unix_s": disk_lines.number, "files_published": disk_lines.number,
         "bytes_published": disk_lines.number, "runs_updated": disk_lines.number,
         "runs": disk_lines.list_of(disk_lines.text)})),
    "found_by": disk_lines.optional(disk_lines.text),
    "api_request_minutes": disk_lines.optional(disk_lines.list_of(_request_minute)),
}
_RUN_LINE = {
    "run": disk_lines.text, "source": disk_lines.text, "source_wall_time": _OPTIONAL_TIME,
    "source_step": disk_lines.optional(disk_lines.integer), "published_unix_s": _OPTIONAL_TIME,
    "loaded_wall_time": _OPTIONAL_TIME, "state": disk_lines.text,
    "state_detail": disk_lines.optional(disk_lines.text), "behind_s": _OPTIONAL_TIME,
    "rewritten_unix_s": _OPTIONAL_TIME,
    "rewrite": disk_lines.optional(disk_lines.object_of(
        {"unix_s": disk_lines.number, "file": disk_lines.text, "kept_at": disk_lines.text,
         "by": disk_lines.text})),
    "file_errors": disk_lines.text_map,
}
_LINE_FIELDS = {"source": _SOURCE_LINE, "run": _RUN_LINE}
_LINE = {"source": disk_lines.optional(disk_lines.object_of(_SOURCE_LINE)),
         "run": disk_lines.optional(disk_lines.object_of(_RUN_LINE))}
# Fields every reader indexes (the CLI's table); the others default to None.
_REQUIRED = {"source": ("source", "state"), "run": ("run", "source", "state")}
_DEFAULTS = {"warnings": [], "file_errors": {}, "retrying": False, "failures": 0,
             "appending": False, "state_detail": ""}


# (key, default) of each kind's fields, in order: a line's dict is built in one pass.
_FIELD_DEFAULTS = {kind: tuple((key, _DEFAULTS.get(key)) for key in fields)
                   for kind, fields in _LINE_FIELDS.items()}
# How every run line `append_journal` writes begins (compact separators, "run" first).
_RUN_LINE_START = b'{"run":{'


def read_line(line, path, name):
    """("source" | "run", fields) of one line (bytes, no newline) of source `name`'s journal
    at `path`, or None for a damaged line (skipped: `disk_lines`)."""
    entry = disk_lines.parse(line, path, _LINE, check=lambda e: _usable(e, name))
    if entry is None:
        return None
    kind = "source" if entry["source"] is not None else "run"
    saved = entry[kind]
    return kind, {key: saved.get(key, default) for key, default in _FIELD_DEFAULTS[kind]}


def journal_lines(data, path, name, runs_unread=False):
    """[("source" | "run", fields)] of the whole lines in `data`, from source `name`'s
    journal at `path`; damaged lines are skipped (`disk_lines`).

    With `runs_unread`, a line that begins as every run line tb-rsync writes does comes as
    ("unread", line), for `read_line` once its run is needed: a run line is most of a
    journal (one per run, one per source), and a sync that publishes nothing needs none.
    """
    lines = []
    for line in data.split(b"\n"):
        if not line:
            continue
        if runs_unread and line.startswith(_RUN_LINE_START):
            lines.append(("unread", line))
            continue
        entry = read_line(line, path, name)
        if entry is not None:
            lines.append(entry)
    return lines


class JournalFollower:
    """Where each source's journal was read to, so each read takes only the new lines.

    Not thread-safe: its owner reads one journal at a time.
    """

    def __init__(self):
        self._read_to = {}  # source -> (inode, bytes read, the bytes just before that)

    def forget(self, name):
        """Read `name`'s journal from its start next time."""
        self._read_to.pop(name, None)

    def new_lines(self, path, name):
        """`journal_lines` of the whole lines appended to `path` since the last read, run
        lines unread (`runs_unread`).

        A compaction writes a new file. Its inode number may be the one this process read
        last (freed by an earlier compaction, then reused), so the bytes just before the
        offset read to must also still be the ones read there; else it is read from the start.
        """
        inode, offset, tail = self._read_to.get(name, (None, 0, b""))
        try:
            st = os.stat(path)
            if st.st_ino == inode and st.st_size == offset:
                return []
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino == inode and st.st_size >= offset:
                    f.seek(offset - len(tail))
                    if f.read(len(tail)) != tail:
                        offset = 0
                else:
                    offset = 0  # a new journal, or compacted: fold it from the start
                f.seek(offset)
                data = f.read()
        except OSError:
            return []  # no journal yet, or unreadable: nothing to fold
        end = data.rfind(b"\n") + 1  # a line being appended waits for the next call
        if end:
            tail = data[max(0, end - _TAIL_BYTES):end]
        elif offset == 0:
            tail = b""
        self._read_to[name] = (st.st_ino, offset + end, tail)
        return journal_lines(data[:end], path, name, runs_unread=True)


def _usable(entry, name):
    """Exactly one of a source and a run, with the fields readers index; a run of this
    source only (run names reach TensorBoard's reloads)."""
    kinds = [kind for kind in ("source", "run") if entry[kind] is not None]
    if len(kinds) != 1 or not all(key in entry[kinds[0]] for key in _REQUIRED[kinds[0]]):
        return False
    return kinds[0] == "source" or disk_lines.is_run_of(name, entry["run"]["run"])


def _read_journal(path):
    """Fold a journal: (the last source line, {run: its last line}). Raises OSError."""
    with open(path, "rb") as f:
        data = f.read()
    data = data[:data.rfind(b"\n") + 1]  # a line being appended is not damaged
    name = os.path.basename(path)[:-len(".jsonl")]
    source, runs = {}, {}
    for kind, fields in journal_lines(data, path, name):
        if kind == "source":
            source = fields
        else:
            runs[fields["run"]] = fields
    return source, runs


def load_snapshot(state_dir):
    """Every source's saved state for `tb-rsync status`, or None if no sync has run yet."""
    try:
        names = sorted(n[:-len(".jsonl")] for n in os.listdir(state_dir)
                       if n.endswith(".jsonl"))
    except FileNotFoundError:
        return None
    sources, runs = [], []
    for name in names:
        try:
            source, source_runs = _read_journal(journal_path(state_dir, name))
        except OSError:
            continue
        if source:
            sources.append(dict(source, name=name))
        runs.extend(source_runs.values())
    if not sources and not runs:
        return None
    return {"sources": sources, "runs": sorted(runs, key=lambda r: r.get("run", ""))}


def forget_sources(state_dir, names):
    """Drop the saved state of sources `names`; returns those it held.

    For a source nobody syncs any more (a typo, a retired node): it would otherwise stay
    listed, and stay in error, for good. Its published files stay.
    """
    found = []
    for name in names:
        path = journal_path(state_dir, name)
        if not os.path.exists(path):
            continue
        with _exclusive(path + ".lock"):  # the lock file stays: others may hold it
            try:
                os.unlink(path)
                found.append(name)
            except FileNotFoundError:
                pass
    return found
