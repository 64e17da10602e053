"""Per-source and per-run freshness: the one place the rest of the program writes status.

Writers (sync cycles, the scheduler, the loaded-data monitor) call the methods below;
readers (HTTP, the CLI) take `snapshot()`, a plain dict matching docs/API.md, or
`status_json()`, the same as bytes, rebuilt only when something changed. One lock guards
everything, and snapshots are built under it, so a reader never sees half an update.

For `tb-rsync status`, the next start and every other process on the staging root, what
changed is also appended to a journal per source (`state/<name>.jsonl` in the staging root,
one JSON object a line). A sync that changed nothing writes nothing, except a heartbeat
every `HEARTBEAT_S` so 'last sync' stays roughly current; a journal is compacted when it has
grown to several times its live size. Each process appends only about the sources it syncs,
under an `flock`, so processes sharing a staging root never drop each other's lines, and
each follows the journals of its sources (`follow`): a line newer than what it knows (a
later sync end, a later publish) is taken in, so a TensorBoard shows what a `tb-rsync sync`
beside it published. A cycle that ends while its source is out of the configuration (an
edit of --rsync_config) is still recorded and journalled: adding the source back shows it.

This module is the registry: the lock, what is unsaved, snapshots, saving and following.
One source's fields are `source_status.SourceStatus`, one run's state rules
`freshness.RunFreshness`, the journal files `state_journal`.
"""

import contextlib
import dataclasses
import json
import math
import threading
import time

from tb_rsync_plugin import __version__, config
from tb_rsync_plugin.publishing import report as report_lib
from tb_rsync_plugin.engine.freshness import RunFreshness
from tb_rsync_plugin.engine.source_status import SourceStatus
from tb_rsync_plugin.engine.state_journal import (JournalFollower, append_journal, journal_path,
                                                  read_line)

HEARTBEAT_S = 60.0
PROGRESS_EVERY_S = 0.5
STATUS_MAX_AGE_S = 1.0


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
        self._run_map = {}  # `_runs`: of configured and retired sources; only the former shown
        # Run lines `restore` read and no caller needed yet, in journal order: (source name,
        # journal path, "run" and its fields, or "unread" and the line). `_runs` folds them.
        self._unfolded = []
        # Sources removed from the configuration whose last cycle is not journalled yet.
        self._retired = {}
        self._journals = JournalFollower()  # where each followed journal was read to
        self._follow_lock = threading.Lock()  # one reader of the journals at a time
        # Set by the service from its reloader: which loader, a note for the whole tab, and
        # the (state, detail) of a published run TensorBoard does not show yet.
        self.loader = "none"
        self.loader_note = "No TensorBoard attached: publishing only."
        self.not_live = ("unknown", "Published; no TensorBoard attached to ask what it shows.")
        self.logdir = ""
        self.rsync_error = None
        self.config_error = None  # a bad edit of --rsync_config, while the old one runs
        self.discover = []  # the [[discover]] rules' status (discovery.RuleStatus dicts)
        self._version = 0  # bumped by every change: status_json() rebuilds only then
        self._cached = (-1, 0.0, b"")
        # What the journal does not know yet: sources whose saved fields changed, runs.
        self._unsaved_sources = set()
        self._unsaved_runs = set()
        self._saved_at = {}  # source -> when its status was last journalled (Unix s)
        self._progress_shown = {}  # source -> when its progress last reached readers
        # Sources whose cycle ended since the last save: only they get heartbeat lines (a
        # process must not journal its stale view of a source another process syncs).
        self._ended = set()
        # Sources asked for while syncing: their scheduler queues them again at the end of
        # the cycle, so the cycle ends in "queued", never in a moment of "idle" in between.
        self._queued_after = set()

    # --- sources -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self):
        with self._lock:
            self._version += 1
            yield

    def set_sources(self, sources, interval_for):
        """Follow a new configuration: add sources, drop removed ones and their runs."""
        with self._changing():
            old = self._sources
            self._sources = {}
            for s in sources:
                status = old.get(s.name) or self._retired.pop(s.name, None) or \
                    SourceStatus(s.name, s.source, interval_for(s))
                status.source, status.interval_s = s.source, interval_for(s)
                self._sources[s.name] = status
            for name, status in old.items():
                if name not in self._sources:
                    self._retired[name] = status
                    self._queued_after.discard(name)
            self._prune_retired()

    def _status(self, name):
        """A source's status, also while it is retired (its cycle's end is still recorded)."""
        return self._sources.get(name) or self._retired.get(name)

    def _prune_retired(self):
        """Forget retired sources with nothing left to journal (re-adding reads the journal)."""
        for name, status in list(self._retired.items()):
            if status.state not in ("queued", "syncing") and name not in self._unsaved_sources \
                    and not any(self._runs[r].source == name for r in self._unsaved_runs
                                if r in self._runs):
                del self._retired[name]
                self._journals.forget(name)
                self._runs = {run: fresh for run, fresh in self._runs.items()
                              if fresh.source != name}

    @property
    def _runs(self):
        """{run: RunFreshness} (the lock held), after the run lines `restore` left: a
        10,000-run journal takes ~0.2 s to check and fold, and a sync that publishes nothing
        never needs them (docs/BENCHMARKS.md B3)."""
        self._fold_unfolded()
        return self._run_map

    @_runs.setter
    def _runs(self, runs):
        self._run_map = runs

    def _shown_runs(self):
        return [fresh for fresh in self._runs.values() if fresh.source in self._sources]

    def try_queue(self, name):
        """Mark `name` queued unless a sync is already queued or running; True if marked."""
        with self._changing():
            status = self._sources.get(name)
            self._queued_after.discard(name)
            if status is None or status.state in ("queued", "syncing"):
                return False
            status.state = "queued"
            return True

    def queue_after(self, name):
        """`name` is asked for while it syncs: its cycle ends in "queued" (the scheduler
        queues it again then)."""
        with self._changing():
            if name in self._sources:
                self._queued_after.add(name)

    def _end_state(self, name, state):
        """The state a cycle of `name` ends in (holding the lock)."""
        if name in self._queued_after:
            self._queued_after.discard(name)
            return "queued"
        return state

    def abandon(self, name):
        """A queued or running sync cancelled because tb-rsync is stopping: not a failure of
        the source, so nothing is recorded and it shows its state from before."""
        with self._changing():
            self._queued_after.discard(name)
            status = self._sources.get(name)
            if status is not None and status.state in ("queued", "syncing"):
                status.state = "error" if status.error else "idle"
                status.progress = None

    def set_rsync_error(self, message):
        with self._changing():
            self.rsync_error = message

    def set_config_error(self, message):
        with self._changing():
            self.config_error = message

    def set_discovery(self, rules, found_by, leaving):
        """The rules' status, which rule found each source, which sources are leaving."""
        with self._lock:
            if rules == self.discover and all(
                    (status.found_by, status.leaving) == (found_by.get(name), name in leaving)
                    for name, status in self._sources.items()):
                return  # polled twice a second while a source leaves: no new version
            self._version += 1
            self.discover = rules
            for name, status in self._sources.items():
                if status.found_by != found_by.get(name):
                    status.found_by = found_by.get(name)
                    self._unsaved_sources.add(name)
                status.leaving = name in leaving

    def set_probe(self, name, mode, detail):
        """How `name`'s changes are noticed now (a probe's mode, or the listing fallback)."""
        with self._changing():
            status = self._sources.get(name)
            if status is not None:
                status.probe_mode, status.probe_detail = mode, detail

    def set_schedule(self, name, delay_s, retry=False, idle_factor=1):
        """The scheduler's next automatic sync of `name`: `delay_s` after the end of the
        last one (None: only on request)."""
        with self._changing():
            status = self._sources.get(name)
            if status is not None:
                status.next_sync_unix_s = None if delay_s is None else \
                    (status.last_end_unix_s or self._clock()) + delay_s
                status.retrying = retry and delay_s is not None
                status.idle_factor = idle_factor

    def begin(self, name):
        with self._changing():
            status = self._status(name)
            if status is None:
                return
            status.state = "syncing"
            status.last_start_unix_s = self._clock()
            status.progress = {"bytes_done": 0, "percent": 0, "rate_bytes_s": 0.0,
                               "phase": "connecting"}

    def progress(self, name, progress):
        """A progress report. It reaches readers at most every `PROGRESS_EVERY_S` per source
        (or at once when the phase changes): with a hundred sources syncing, rsync's
        progress lines would otherwise make every status request rebuild the snapshot."""
        with self._lock:
            status = self._status(name)
            if status is None:
                return
            new = dataclasses.asdict(progress)
            now = time.monotonic()
            if status.progress is None or status.progress.get("phase") != new["phase"] or \
                    now - self._progress_shown.get(name, 0.0) >= PROGRESS_EVERY_S:
                status.progress = new
                self._progress_shown[name] = now
                self._version += 1

    def finish(self, name, transfer, report, reload_notes):
        """Record a successful cycle: the source's result and every run it touched."""
        now = self._clock()
        with self._changing():
            status = self._status(name)
            if status is None:
                return
            status.state = self._end_state(name, "idle")
            self._ended.add(name)
            if status.succeeded(transfer, report, now):
                self._unsaved_sources.add(name)
            for run, update in report.runs.items():
                self._runs.setdefault(run, RunFreshness(run, name)).published(
                    update, now, reload_notes.get(run))
                self._unsaved_runs.add(run)
            for action in report.actions:
                if action.action == "rewrite":
                    run = report_lib.run_of(name, action.path)
                    fresh = self._runs.setdefault(run, RunFreshness(run, name))
                    fresh.rewrite = {"unix_s": now, "file": f"{name}/{action.path}",
                                     "kept_at": action.kept_at, "by": "this process"}
                    self._unsaved_runs.add(fresh.run)
            self._record_file_errors(name, report)

    def note_rewrites(self, rewrites):
        """Rewrites another process published (`rewrites.Rewrite`): not live until reloaded.

        Returns those of configured sources (the others are not this process's to reload).
        """
        noted = []
        if not rewrites:
            return noted  # no version bump: the cached status stays valid
        with self._changing():
            for entry in rewrites:
                if entry.source not in self._sources:
                    continue
                noted.append(entry)
                self._runs.setdefault(entry.run, RunFreshness(entry.run, entry.source)) \
                    .rewritten_elsewhere(entry)
        return noted

    def rewrites_applied(self, rewrites, reload_notes):
        """TensorBoard was told to read these runs again; `reload_notes`: {run: why not}."""
        with self._changing():
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
            if action.action in report_lib.PUBLISHED_ACTIONS and action.path not in errors:
                fresh = self._runs.get(report_lib.run_of(name, action.path))
                if fresh is not None and fresh.file_errors.pop(action.path, None):
                    self._unsaved_runs.add(fresh.run)
        for rel, message in errors.items():
            run = report_lib.run_of(name, rel)
            self._runs.setdefault(run, RunFreshness(run, name)).file_errors[rel] = message
            self._unsaved_runs.add(run)

    def fail(self, name, message, details="", api_requests=0):
        """Record a failed cycle (`api_requests`: what it asked of an rclone remote)."""
        with self._changing():
            status = self._status(name)
            if status is None:
                return
            status.state = self._end_state(name, "error")
            status.failed(message, details, self._clock(), api_requests)
            # Journalled each time (with its retry time): failures back off, so this is rare.
            self._unsaved_sources.add(name)

    def source(self, name):
        """One source's status as in `snapshot()["sources"]` (also while it is retired)."""
        with self._lock:
            status = self._status(name)
            if status is None:
                raise KeyError(name)
            return status.to_json(self._clock())

    # --- runs --------------------------------------------------------------------------
    def runs(self):
        with self._lock:
            return [fresh.run for fresh in self._shown_runs()]

    def set_loaded(self, loaded_wall_times):
        """What TensorBoard serves: {run: newest loaded wall time or None}."""
        with self._lock:
            for run, wall_time in loaded_wall_times.items():
                fresh = self._runs.get(run)
                if fresh is not None:
                    finite = wall_time is not None and math.isfinite(wall_time)
                    wall_time = wall_time if finite else None
                    if fresh.loaded_wall_time != wall_time:
                        fresh.loaded_wall_time = wall_time
                        self._version += 1

    # --- readers -----------------------------------------------------------------------
    def snapshot(self):
        """Everything as the JSON-ready dict of docs/API.md."""
        with self._lock:
            return self._snapshot()

    def status_json(self):
        """`snapshot()` as JSON bytes; the part after the clock is rebuilt only when
        something changed or `STATUS_MAX_AGE_S` passed (run states also follow the clock).

        The Sync tab polls every second or two, with hundreds of runs, while syncs run: the
        route must not build and encode the whole state each time (docs/BENCHMARKS.md B4).
        """
        with self._lock:
            version, built, body = self._cached
            now = self._clock()
            if version != self._version or not 0 <= now - built < STATUS_MAX_AGE_S:
                data = self._snapshot()
                del data["server_unix_s"]
                body = json.dumps(data, separators=(",", ":")).encode("utf-8")
                self._cached = (self._version, now, body)
        return b'{"server_unix_s":' + json.dumps(now).encode() + b"," + body[1:]

    def _snapshot(self):
        runs = [self._run_json(r) for r in sorted(self._shown_runs(), key=lambda r: r.run)]
        now = self._clock()
        return {
            "server_unix_s": now,
            "version": __version__,
            "logdir": self.logdir,
            "loader": self.loader,
            "reload_note": self.loader_note,
            "reload_period_s": self._reload_period_s,
            "rsync_error": self.rsync_error,
            "config_error": self.config_error,
            "discover": self.discover,
            "interval_s": max([s.interval_s for s in self._sources.values()] or [0.0]),
            "sources": [s.to_json(now) for s in self._sources.values()],
            "runs": runs,
        }

    def _run_json(self, fresh):
        return fresh.to_json(self.loader, self.not_live, self._clock() - self._grace_s)

    # --- persistence -------------------------------------------------------------------
    def save(self, state_dir):
        """Append what changed since the last save to each source's journal.

        Returns the number of lines written (0 after a sync that changed nothing).
        """
        now = self._clock()
        with self._lock:
            lines = {}
            for name, status in list(self._sources.items()) + list(self._retired.items()):
                heartbeat = name in self._ended and \
                    now - self._saved_at.get(name, 0.0) >= HEARTBEAT_S
                if name in self._unsaved_sources or heartbeat:
                    lines.setdefault(name, []).append({"source": status.saved_fields()})
            for run in sorted(self._unsaved_runs):
                fresh = self._runs.get(run)
                if fresh is not None:
                    lines.setdefault(fresh.source, []).append({"run": self._run_json(fresh)})
            self._unsaved_sources.clear()
            self._unsaved_runs.clear()
            self._ended.clear()
            for name in lines:
                self._saved_at[name] = now
        written = 0
        for name, entries in lines.items():
            try:
                append_journal(journal_path(state_dir, name), entries)
            except OSError:
                with self._lock:  # try again next time
                    self._unsaved_sources.add(name)
                    self._unsaved_runs.update(e["run"]["run"] for e in entries if "run" in e)
                raise
            written += len(entries)
        with self._lock:
            self._prune_retired()
        return written

    def restore(self, state_dir, names=None):
        """Load what earlier processes journalled about `names` (all sources when None):
        source lines now, run lines once a run is needed (`_runs`)."""
        with self._follow_lock:
            for name in self._sources if names is None else names:
                self._journals.forget(name)  # read the journal from its start
        self._follow(state_dir, names, defer_runs=True)

    def follow(self, state_dir, names=None):
        """Take in what other processes journalled about `names` (all sources when None)
        since the last call: one `stat` per journal when nothing is new.

        Lines are folded in only where not older than what this process knows (the sync
        end, the publish), so its own lines, read back, change nothing. "restart_needed"
        is never read back: it is about the process that wrote it. Run lines fold at once,
        after those `restore` left (so they cannot pile up while no run is needed).
        """
        self._follow(state_dir, names, defer_runs=False)

    def _follow(self, state_dir, names, defer_runs):
        with self._follow_lock:
            with self._lock:
                wanted = [n for n in self._sources if names is None or n in names]
            for name in wanted:
                path = journal_path(state_dir, name)
                lines = self._journals.new_lines(path, name)
                if not lines:
                    continue
                with self._changing():
                    if name not in self._sources:
                        continue  # removed meanwhile
                    has_runs = False
                    for kind, saved in lines:
                        if kind == "source":
                            self._fold_source(self._sources[name], saved)
                        else:  # after the run lines before it
                            self._unfolded.append((name, path, kind, saved))
                            has_runs = True
                    if has_runs and not defer_runs:
                        self._fold_unfolded()

    def _fold_unfolded(self):
        """Fold the run lines `restore` left, in journal order (the lock held)."""
        if not self._unfolded:
            return
        lines, self._unfolded = self._unfolded, []
        for name, path, kind, saved in lines:
            if kind == "unread":
                kind, saved = read_line(saved, path, name) or (None, None)
            if kind == "run":
                self._fold_run(name, saved)
            elif kind == "source" and name in self._sources:
                self._fold_source(self._sources[name], saved)  # a line of both keys

    def _fold_source(self, status, saved):
        if status.fold(saved):
            end = saved["last_end_unix_s"]
            self._saved_at[status.name] = max(self._saved_at.get(status.name, 0.0), end)

    def _fold_run(self, name, saved):
        fresh = self._run_map.get(saved["run"])  # called by `_fold_unfolded`
        published = saved["published_unix_s"]
        if fresh is not None and (published is None or (
                fresh.published_unix_s is not None and published < fresh.published_unix_s)):
            return
        if fresh is None:
            fresh = self._run_map[saved["run"]] = RunFreshness(saved["run"], name)
        fresh.fold(saved)
