"""Per-source and per-run freshness: the one place the rest of the program writes status.

Writers (sync workers, the loaded-data monitor) call the methods below; readers (HTTP, the
CLI) take `snapshot()`, a plain dict matching docs/API.md. One lock guards everything, and
snapshots are built under it, so a reader never sees half an update. The state is also saved
to `state.json` in the staging root so `tb-rsync status` can show it without TensorBoard.
"""

import collections
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import threading
import time
from typing import Optional

from tb_rsync_plugin import __version__, atomic, config, publish

STATE_FORMAT = 1
# Publishes remembered per run, to tell which one TensorBoard should show by now.
_HISTORY = 64


@dataclasses.dataclass
class SourceStatus:
    name: str
    source: str
    interval_s: float
    state: str = "idle"  # idle | queued | syncing | error
    next_sync_unix_s: Optional[float] = None
    last_start_unix_s: Optional[float] = None
    last_end_unix_s: Optional[float] = None
    last_ok_unix_s: Optional[float] = None
    progress: Optional[dict] = None
    last_result: Optional[dict] = None
    error: Optional[dict] = None
    warnings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RunFreshness:
    run: str
    source: str
    source_wall_time: Optional[float] = None
    source_step: Optional[int] = None
    published_unix_s: Optional[float] = None
    loaded_wall_time: Optional[float] = None
    rewritten_unix_s: Optional[float] = None
    restart_reason: Optional[str] = None
    # The newest rewrite of one of its files: {unix_s, file, kept_at, by}.
    rewrite: Optional[dict] = None
    # Journal generation of the newest rewrite another process published, and of the newest
    # one this process made TensorBoard read again: "live" only when they match.
    rewrite_gen: int = -1
    applied_gen: int = -1
    # (published_unix_s, newest wall time, newest step) of recent publishes, oldest first.
    history: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_HISTORY))
    # Event files of this run that could not be published: {staged path: sentence}. An
    # entry stays until that file publishes cleanly, whatever the run's other files do.
    file_errors: dict = dataclasses.field(default_factory=dict)


class SyncState:
    """Lock-guarded status of every source and run.

    Args:
      sources: the configured `Source`s, in display order.
      interval_for: maps a `Source` to its automatic sync period (0 = on request only).
      clock: returns Unix seconds; injected so tests control time.
      reload_period_s: how often TensorBoard reads appended data by itself (the fast
        loader's --reload_interval; 0 when tb-rsync reloads runs itself). The tab uses it to
        time its chart refresh.
      grace_s: how long after a publish TensorBoard may still not show it while the run
        stays "live" (its reload period plus the loaded-data check's); beyond, "waiting".
    """

    def __init__(self, sources, interval_for, clock=time.time, reload_period_s=0.0,
                 grace_s=0.0):
        self._clock = clock
        self._reload_period_s = reload_period_s
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._sources = {s.name: SourceStatus(s.name, s.source, interval_for(s)) for s in sources}
        self._runs = {}
        # Set by the service from its reloader: which loader, a note for the whole tab, and
        # the (state, detail) of a published run TensorBoard does not show yet.
        self.loader = "none"
        self.loader_note = "No TensorBoard attached: publishing only."
        self.not_live = ("unknown", "Published; no TensorBoard attached to ask what it shows.")
        self.logdir = ""
        self.rsync_error = None

    # --- sources -----------------------------------------------------------------------
    def try_queue(self, name):
        """Mark `name` queued unless a sync is already queued or running; True if marked."""
        with self._lock:
            status = self._sources[name]
            if status.state in ("queued", "syncing"):
                return False
            status.state = "queued"
            return True

    def begin(self, name):
        with self._lock:
            status = self._sources[name]
            status.state = "syncing"
            status.last_start_unix_s = self._clock()
            status.progress = {"bytes_done": 0, "percent": 0, "rate_bytes_s": 0.0,
                               "phase": "connecting"}

    def progress(self, name, progress):
        with self._lock:
            self._sources[name].progress = dataclasses.asdict(progress)

    def finish(self, name, transfer, report, reload_notes):
        """Record a successful cycle: the source's result and every run it touched."""
        now = self._clock()
        with self._lock:
            status = self._sources[name]
            status.state = "idle"
            status.progress = None
            status.error = None
            status.last_end_unix_s = status.last_ok_unix_s = now
            _schedule_after(status)
            status.warnings = list(transfer.warnings)
            status.last_result = {
                "bytes_received": transfer.bytes_received,
                "bytes_published": report.bytes_published,
                "files_transferred": transfer.files_transferred,
                "files_published": sum(1 for a in report.actions
                                       if a.action in publish.PUBLISHED_ACTIONS),
                "runs_updated": len(report.runs),
                "duration_s": round(now - (status.last_start_unix_s or now), 3),
            }
            for run, update in report.runs.items():
                fresh = self._runs.setdefault(run, RunFreshness(run, name))
                if update.newest_wall_time is not None:
                    fresh.source_wall_time = max(fresh.source_wall_time or 0.0,
                                                 update.newest_wall_time)
                if update.newest_step is not None:
                    fresh.source_step = max(fresh.source_step or 0, update.newest_step)
                    if update.rewritten:
                        fresh.source_step = update.newest_step
                fresh.published_unix_s = now
                if update.rewritten:
                    fresh.rewritten_unix_s = now
                    fresh.source_wall_time = update.newest_wall_time
                    # What TensorBoard served before is no proof it serves the new content.
                    fresh.loaded_wall_time = None
                    fresh.history.clear()
                fresh.history.append((now, fresh.source_wall_time, fresh.source_step))
                fresh.restart_reason = reload_notes.get(run)
            for action in report.actions:
                if action.action == "rewrite":
                    fresh = self._runs.setdefault(publish.run_of(name, action.path),
                                                  RunFreshness(publish.run_of(name, action.path), name))
                    fresh.rewrite = {"unix_s": now, "file": f"{name}/{action.path}",
                                     "kept_at": action.kept_at, "by": "this process"}
            self._record_file_errors(name, report)

    def note_rewrites(self, rewrites):
        """Rewrites another process published (`rewrites.Rewrite`): not live until reloaded."""
        with self._lock:
            for entry in rewrites:
                if entry.source not in self._sources:
                    continue
                fresh = self._runs.setdefault(entry.run, RunFreshness(entry.run, entry.source))
                fresh.rewrite = {"unix_s": entry.unix_s, "file": entry.file,
                                 "kept_at": entry.kept_at, "by": "another process"}
                fresh.rewritten_unix_s = fresh.published_unix_s = entry.unix_s
                fresh.rewrite_gen = max(fresh.rewrite_gen, entry.gen)
                fresh.source_wall_time, fresh.source_step = \
                    entry.newest_wall_time, entry.newest_step
                fresh.loaded_wall_time = None
                fresh.history.clear()
                fresh.history.append((entry.unix_s, entry.newest_wall_time, entry.newest_step))
                fresh.restart_reason = None

    def rewrites_applied(self, rewrites, reload_notes):
        """TensorBoard was told to read these runs again; `reload_notes`: {run: why not}."""
        with self._lock:
            for entry in rewrites:
                fresh = self._runs.get(entry.run)
                if fresh is None or fresh.source != entry.source:
                    continue
                fresh.applied_gen = max(fresh.applied_gen, entry.gen)
                fresh.loaded_wall_time = None
                fresh.restart_reason = reload_notes.get(entry.run)

    def _record_file_errors(self, name, report):
        """Clear the errors of event files that published cleanly; add this cycle's.

        Other files' problems are source warnings only: a folder without event files is no
        run, and an error pinned to it would never clear.
        """
        errors = {rel: message for rel, message in report.errors if config.is_event_file(rel)}
        for action in report.actions:
            if action.action in publish.PUBLISHED_ACTIONS and action.path not in errors:
                fresh = self._runs.get(publish.run_of(name, action.path))
                if fresh is not None:
                    fresh.file_errors.pop(action.path, None)
        for rel, message in errors.items():
            run = publish.run_of(name, rel)
            self._runs.setdefault(run, RunFreshness(run, name)).file_errors[rel] = message

    def fail(self, name, message, details=""):
        with self._lock:
            status = self._sources[name]
            status.state = "error"
            status.progress = None
            status.last_end_unix_s = self._clock()
            status.error = {"message": message, "details": details,
                            "unix_s": status.last_end_unix_s}
            _schedule_after(status)

    def set_next_sync(self, name, unix_s):
        with self._lock:
            self._sources[name].next_sync_unix_s = unix_s

    def next_sync(self, name):
        with self._lock:
            return self._sources[name].next_sync_unix_s

    # --- runs --------------------------------------------------------------------------
    def runs(self):
        with self._lock:
            return list(self._runs)

    def set_loaded(self, loaded_wall_times):
        """What TensorBoard serves: {run: newest loaded wall time or None}."""
        with self._lock:
            for run, wall_time in loaded_wall_times.items():
                if run in self._runs:
                    finite = wall_time is not None and math.isfinite(wall_time)
                    self._runs[run].loaded_wall_time = wall_time if finite else None

    # --- readers -----------------------------------------------------------------------
    def snapshot(self):
        """Everything as the JSON-ready dict of docs/API.md."""
        with self._lock:
            runs = [self._run_json(r) for r in sorted(self._runs.values(), key=lambda r: r.run)]
            return {
                "server_unix_s": self._clock(),
                "version": __version__,
                "logdir": self.logdir,
                "loader": self.loader,
                "reload_note": self.loader_note,
                "reload_period_s": self._reload_period_s,
                "rsync_error": self.rsync_error,
                "interval_s": max([s.interval_s for s in self._sources.values()] or [0.0]),
                "sources": [dataclasses.asdict(s) for s in self._sources.values()],
                "runs": runs,
            }

    def _run_json(self, fresh):
        state, detail, behind_s = self._run_state(fresh)
        return {
            "run": fresh.run,
            "source": fresh.source,
            "source_wall_time": fresh.source_wall_time,
            "source_step": fresh.source_step,
            "published_unix_s": fresh.published_unix_s,
            "loaded_wall_time": fresh.loaded_wall_time,
            "state": state,
            "state_detail": detail,
            "behind_s": behind_s,
            "rewritten_unix_s": fresh.rewritten_unix_s,
            "rewrite": fresh.rewrite,
            "file_errors": dict(fresh.file_errors),
        }

    def _run_state(self, fresh):
        """(state, detail, seconds TensorBoard is behind the newest published event or None).

        "live" while TensorBoard shows every event published more than `grace_s` ago: under
        steady writing it is always a reload or so behind, and that is still live (with "N s
        behind" beside it), not a badge flipping at every sync. A rewrite another process
        published is never live before this process made TensorBoard read the run again:
        the old content's newest wall time may equal the new one's.
        """
        if fresh.file_errors:
            return "error", fresh.file_errors[min(fresh.file_errors)], None
        if fresh.restart_reason:
            return "restart_needed", fresh.restart_reason, None
        if self.loader == "none":
            return self.not_live + (None,)
        if fresh.rewrite_gen > fresh.applied_gen:
            return ("waiting", "Another process rewrote an event file of this run; "
                               "TensorBoard is reading it again.", None)
        if fresh.source_wall_time is None:
            return "waiting", "Published; no events with a time yet.", None
        loaded = fresh.loaded_wall_time
        if loaded is None:
            return self.not_live + (None,)
        behind_s = max(0.0, fresh.source_wall_time - loaded)
        if behind_s <= 1e-3:
            return "live", "TensorBoard shows the newest published event.", 0.0
        due = [wall for unix_s, wall, _ in fresh.history
               if unix_s <= self._clock() - self._grace_s and wall is not None]
        if not due or loaded >= max(due) - 1e-3:
            return ("live", f"TensorBoard is {behind_s:.0f} s behind the newest published "
                            "event; it shows it at its next reload.", behind_s)
        return self.not_live + (behind_s,)

    # --- persistence -------------------------------------------------------------------
    def save(self, path):
        """Write the snapshot atomically (temp file + rename) for `tb-rsync status`.

        Another process (a TensorBoard, a `tb-rsync watch`) may sync other sources into the
        same staging root, so this keeps what the file holds about sources this process does
        not have. The read-merge-write runs under an exclusive lock on a sibling file, so two
        savers never drop each other's update.
        """
        with _exclusive(path + ".lock"):
            # Taken under the lock: two threads saving out of order would otherwise let the
            # older snapshot of this process's own sources land last.
            data = self.snapshot()
            data["format"] = STATE_FORMAT
            earlier = load_snapshot(path) or {}
            if earlier.get("format") == STATE_FORMAT:
                ours = set(self._sources)
                data["sources"] += [s for s in earlier.get("sources", [])
                                    if s.get("name") not in ours]
                data["runs"] += [r for r in earlier.get("runs", []) if r.get("source") not in ours]
                data["runs"].sort(key=lambda r: r.get("run", ""))
            _write_snapshot(path, data)

    def restore(self, path):
        """Load runs and last results saved by an earlier process, if any (best effort)."""
        try:
            data = load_snapshot(path)
        except OSError:
            return
        if data is None or data.get("format") != STATE_FORMAT:
            return
        with self._lock:
            for saved in data.get("sources", []):
                status = self._sources.get(saved.get("name"))
                if status is None:
                    continue
                for key in ("last_start_unix_s", "last_end_unix_s", "last_ok_unix_s",
                            "last_result", "error"):
                    setattr(status, key, saved.get(key))
                if status.error:
                    status.state = "error"
            for saved in data.get("runs", []):
                if saved.get("source") not in self._sources:
                    continue
                fresh = RunFreshness(saved["run"], saved["source"])
                for key in ("source_wall_time", "source_step", "published_unix_s",
                            "rewritten_unix_s", "rewrite"):
                    setattr(fresh, key, saved.get(key))
                if fresh.published_unix_s is not None:
                    fresh.history.append((fresh.published_unix_s, fresh.source_wall_time,
                                          fresh.source_step))
                fresh.file_errors = dict(saved.get("file_errors") or {})
                # "restart_needed" is not restored: this process is the restart.
                self._runs[fresh.run] = fresh


def _schedule_after(status):
    """The next timed sync of a source whose cycle just ended (the timer keeps this time)."""
    status.next_sync_unix_s = status.last_end_unix_s + status.interval_s \
        if status.interval_s > 0 else None


@contextlib.contextmanager
def _exclusive(lock_path):
    """Hold an flock on `lock_path` (per open file, so it also orders threads)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def forget_sources(path, names):
    """Drop sources `names` and their runs from the saved state; returns those it held.

    For a source nobody syncs any more (a typo, a retired node): saves merge in what the
    file holds about other processes' sources, so it would otherwise stay listed, and stay
    in error, for good.
    """
    names = set(names)
    with _exclusive(path + ".lock"):
        data = load_snapshot(path)
        if data is None or data.get("format") != STATE_FORMAT:
            return []
        found = [s["name"] for s in data.get("sources", []) if s.get("name") in names]
        if found:
            data["sources"] = [s for s in data["sources"] if s.get("name") not in names]
            data["runs"] = [r for r in data.get("runs", []) if r.get("source") not in names]
            _write_snapshot(path, data)
    return found


def _write_snapshot(path, data):
    """Temp file + rename. Compact: json.dumps with indent falls back to the pure-Python
    encoder (~4x slower)."""
    atomic.write_bytes(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))


def load_snapshot(path):
    """The saved snapshot for `tb-rsync status`, or None if no sync has run yet."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # written by a crashed older version; the next sync rewrites it
