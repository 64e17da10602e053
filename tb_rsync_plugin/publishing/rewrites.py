"""Rewrites on disk: an append-only journal in the staging root that every process follows.

A rewrite (old file quarantined, new content published under the same name) gives a
published event file a new inode. TensorBoard shows the new content only once its loader
reads the run again (legacy: rebuild; fast loader: the holding cycle), and only the process
that published knows to do that. So every publisher appends one line per rewritten file to
`rewrites.jsonl` in the staging root, and every TensorBoard sharing that staging root
follows the file: for lines another process wrote, it applies the same reload, or marks the
run "restart needed" with the reason. The journal is also what `tb-rsync status` and the
Sync tab show as "recent rewrites".

One line is one JSON object; `gen` is the byte offset of the line in the journal as if it
had never been compacted, unique and increasing, so a reader remembers where it stopped and
a run remembers which rewrite it last saw. Once the journal is `COMPACT_FACTOR` times the
size of its newest `KEEP_LINES` lines (and over `COMPACT_MIN_BYTES`), it is rewritten
(temp + rename) with only those, after a header line `{"first_gen": N}` that gives the gen
of the line after it: gens survive compaction, and a follower finds its place again.
Appenders and the compaction hold an `flock` on the journal and check, once they hold it,
that it is still the file at the path (a compaction renames a new one over it).
"""

import collections
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from typing import Optional

from tb_rsync_plugin import disk_lines
from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin.publishing import report as report_lib

logger = logging.getLogger(__name__)

_TAIL_BYTES = 64 * 1024  # enough for the last few hundred lines
# Followers read within seconds of an append, and status shows the newest ten: the newest
# lines are the live ones, kept through a compaction.
KEEP_LINES = 1000
COMPACT_FACTOR = 4
COMPACT_MIN_BYTES = 64 * 1024
_HEADER_KEY = b'{"first_gen":'


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One rewritten event file, as written to the journal."""

    gen: int
    unix_s: float
    source: str
    run: str
    file: str  # logdir-relative
    kept_at: str  # where the old published file went (quarantine)
    newest_wall_time: Optional[float]
    newest_step: Optional[int]
    writer: str  # host:pid:random of the process that published it

    def to_json(self):
        return dataclasses.asdict(self)


class RewriteJournal:
    """Appends this process's rewrites; returns the ones other processes appended.

    Lines written before this process started are not "new": it loaded the logdir after
    them, so TensorBoard already read the rewritten files from the start.
    """

    def __init__(self, path, clock=time.time):
        self.path = path
        # The host name gethostname() gives; not socket and uuid: their imports cost every
        # `tb-rsync sync` ~3 ms of start-up (docs/BENCHMARKS.md B3).
        self.writer = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self._clock = clock
        self._lock = threading.Lock()
        # This process's own rewrites, for the CLI to print (bounded: TensorBoard never takes).
        self._written = collections.deque(maxlen=1000)
        self._unapplied = []  # others' rewrites noticed, not yet reloaded
        self._seen = None  # (inode, size) of the journal when last read
        try:
            with open(path, "rb") as f:
                self._offset = _logical_end(f)  # the gen the next line will get
        except OSError:
            self._offset = 0

    def record(self, name, report):
        """Append one line per file `report` rewrote; returns the `Rewrite`s written."""
        rewrites = [a for a in report.actions if a.action == "rewrite"]
        if not rewrites:
            return []
        try:
            written = self._append(name, report, rewrites)
        except OSError as e:  # the files are published; other processes just miss this line
            logger.warning("tb-rsync: cannot append to the rewrite journal %s: %s", self.path, e)
            return []
        self._written.extend(written)
        return written

    def _append(self, name, report, rewrites):
        written = []
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # Several processes append: the lock keeps each line whole and its gen true.
        with _locked(self.path) as f:
            for action in rewrites:
                run = report_lib.run_of(name, action.path)
                update = report.runs.get(run)
                entry = Rewrite(
                    gen=_logical_end(f), unix_s=self._clock(), source=name, run=run,
                    file=f"{name}/{action.path}", kept_at=action.kept_at,
                    newest_wall_time=update.newest_wall_time if update else None,
                    newest_step=update.newest_step if update else None, writer=self.writer)
                f.write(json.dumps(entry.to_json(), separators=(",", ":")).encode() + b"\n")
                f.flush()
                written.append(entry)
            os.fsync(f.fileno())
            _compact(f, self.path)
        return written

    def take_written(self):
        """This process's rewrites recorded since the last call, oldest first."""
        with self._lock:
            taken = list(self._written)
            self._written.clear()
        return taken

    def notice(self, state):
        """Mark runs rewritten by others in `state` at once (cheap: one stat when nothing new).

        Called before every status answer, so the tab never says "live" for a run another
        process rewrote and TensorBoard has not read again; `catch_up` reloads them.
        """
        # Only runs of sources this process syncs: others' runs are not its to reload.
        entries = state.note_rewrites(self._follow())
        if entries:
            with self._lock:
                self._unapplied.extend(entries)

    def take_unapplied(self):
        with self._lock:
            taken, self._unapplied = self._unapplied, []
        return taken

    def _follow(self):
        """Rewrites other processes appended since the last call (complete lines only)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if (st.st_ino, st.st_size) == self._seen:
            return []
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    first_gen, header = _header(f)
                    end_gen = first_gen + st.st_size - header
                    if self._offset > end_gen:  # replaced by a shorter file: follow it from here
                        self._offset = end_gen
                    if self._offset < first_gen:
                        logger.warning("tb-rsync: rewrites in %s were compacted away before "
                                       "this process read them; their runs show the new "
                                       "content after TensorBoard's next reload or a restart.",
                                       self.path)
                        self._offset = first_gen
                    f.seek(header + self._offset - first_gen)
                    data = f.read()
            except FileNotFoundError:
                return []
            except OSError as e:
                logger.warning("tb-rsync: cannot read the rewrite journal %s: %s", self.path, e)
                return []
            end = data.rfind(b"\n") + 1  # a line being written waits for the next call
            entries = _parse(data[:end], self._offset, self.path)
            self._offset += end
            self._seen = (st.st_ino, header + self._offset - first_gen)
        return [e for e in entries if e.writer != self.writer]


def recent(path, limit=10):
    """The newest `limit` rewrites in the journal at `path`, newest first."""
    try:
        with open(path, "rb") as f:
            first_gen, header = _header(f)
            size = f.seek(0, os.SEEK_END)
            start = max(header, size - _TAIL_BYTES)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    if start > header:
        cut = data.find(b"\n") + 1  # the first line is probably cut
        data, start = data[cut:], start + cut
    data = data[:data.rfind(b"\n") + 1]  # a line being written is not damaged
    return _parse(data, first_gen + start - header, path)[::-1][:limit]


def compact(path, dry_run=False):
    """Compact the journal at `path` if it is long enough; returns the bytes it shrank by
    (`dry_run`: would shrink by)."""
    if not os.path.exists(path):
        return 0
    with _locked(path) as f:
        return _compact(f, path, dry_run)


@contextlib.contextmanager
def _locked(path):
    """The journal opened for appending, with its `flock` held; reopened until the file
    locked is the one at `path` (a compaction may have renamed a new one over it)."""
    while True:
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(f.fileno()).st_ino:
                yield f
                return


def _header(f):
    """(gen of the first line after the header, the header's length in bytes); (0, 0) for
    a journal never compacted."""
    f.seek(0)
    first = f.readline(200)
    if first.startswith(_HEADER_KEY) and first.endswith(b"\n"):
        try:
            value = json.loads(first)["first_gen"]
        except (ValueError, KeyError, TypeError):
            value = None
        if disk_lines.integer(value) and value >= 0:
            return value, len(first)
    return 0, 0


def _logical_end(f):
    """The gen a line appended to the open journal `f` now gets."""
    first_gen, header = _header(f)
    return first_gen + f.seek(0, os.SEEK_END) - header


def _compact(f, path, dry_run=False):
    """Rewrite the journal (locked, open as `f`) with its newest `KEEP_LINES` lines once it
    is `COMPACT_FACTOR` times their size; returns the bytes it shrank by."""
    size = f.seek(0, os.SEEK_END)
    if size <= COMPACT_MIN_BYTES:
        return 0
    first_gen, header = _header(f)
    f.seek(header)
    data = f.read()
    data = data[:data.rfind(b"\n") + 1]  # a line cut by a crash is dropped
    end = len(data) - 1  # walks back over the newest KEEP_LINES lines
    for _ in range(KEEP_LINES):
        end = data.rfind(b"\n", 0, max(end, 0))
        if end < 0:
            break
    live = data[end + 1:]
    if size <= COMPACT_FACTOR * len(live):
        return 0
    head = json.dumps({"first_gen": first_gen + end + 1}).encode() + b"\n"
    if not dry_run:
        atomic.write_bytes(path, head + live)
    return size - len(head) - len(live)


_FIELDS = {"unix_s": disk_lines.number, "source": disk_lines.is_source_name,
           "run": disk_lines.text, "file": disk_lines.text, "kept_at": disk_lines.text,
           "newest_wall_time": disk_lines.optional(disk_lines.number),
           "newest_step": disk_lines.optional(disk_lines.integer),
           "writer": disk_lines.text}


def _inside(fields):
    # The run is reloaded and, on the fast loader, its files moved: only ever a folder of
    # the source's own tree in the logdir.
    return disk_lines.is_run_of(fields["source"], fields["run"]) and \
        disk_lines.is_file_of(fields["run"], fields["file"])


def _parse(data, offset, path):
    """The rewrites in `data` (whole lines starting at byte `offset` of `path`)."""
    entries = []
    for line in data.split(b"\n"):
        if line:
            fields = disk_lines.parse(line, path, _FIELDS, required=tuple(_FIELDS),
                                      check=_inside)
            if fields is not None:
                entries.append(Rewrite(gen=offset, **fields))
        offset += len(line) + 1
    return entries


def catch_up(journal, reloader, logdir, hold, state, cancel):
    """Make TensorBoard read again the runs that other processes rewrote.

    Args:
      journal: this process's `RewriteJournal`.
      reloader: the TensorBoard reloader (`reload.make_reloader`).
      logdir: the logdir the runs are in.
      hold: `hold(name)` -> a context manager holding source `name`'s locks, so no publish
        or other reload of its runs happens meanwhile.
      state: the `SyncState`; runs of its sources are marked rewritten, then reloaded or
        "restart needed".
      cancel: a threading.Event that cuts waiting short.
    """
    journal.notice(state)
    entries = journal.take_unapplied()
    if not entries:
        return
    by_source = {}
    for entry in entries:
        by_source.setdefault(entry.source, []).append(entry)
    for name, items in sorted(by_source.items()):
        runs = {e.run: report_lib.RunUpdate(e.run, e.newest_wall_time, e.newest_step, True,
                                            (e.file,)) for e in items}
        report = report_lib.PublishReport((), runs, (), ())
        try:
            with hold(name):
                notes = reloader.apply(logdir, report, cancel=cancel)
        except Exception as e:  # a lock never freed, TB internals changed: say so, go on
            logger.exception("tb-rsync: reloading runs rewritten by another process failed")
            notes = {run: f"Another process rewrote an event file of this run and reloading "
                          f"it failed ({e}); restart TensorBoard to see the new content."
                     for run in runs}
        state.rewrites_applied(items, notes)
