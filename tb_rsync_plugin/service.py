"""One sync cycle per source (rsync -> publish -> reload -> state), and its scheduling.

Requests never block: `request()` queues a cycle on a small worker pool and returns what was
started and what was joined (a source already queued or syncing is joined, so twenty clicks
make one rsync). A timer thread requests sources whose interval has elapsed, and a monitor
thread asks TensorBoard what it has loaded. `run_cycle()` is the same cycle, blocking, for
the CLI.

Two processes (a TensorBoard and a `tb-rsync watch`, say) may share a staging root; an
`flock` per source keeps them from syncing the same source at once.
"""

import atexit
import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import queue
import threading
import time
import traceback

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import publish as publish_lib
from tb_rsync_plugin import reload as reload_lib
from tb_rsync_plugin import rewrites as rewrites_lib
from tb_rsync_plugin import rsync as rsync_lib
from tb_rsync_plugin.errors import SyncError

logger = logging.getLogger(__name__)

MAX_PARALLEL_SOURCES = 4
LOADED_REFRESH_S = 2.0
LOCK_WAIT_S = 600.0
STOP_WAIT_S = 10.0  # rsync gets TERM, then KILL after a grace period
TIMER_MAX_SLEEP_S = 1.0  # the timer looks again at least this often (a click moves times)


class SyncService:
    """Runs sync cycles for the sources of one `SyncConfig`.

    Args:
      config: the validated `SyncConfig`.
      state: the `SyncState` every cycle reports into.
      reloader: from `reload.make_reloader`; tells TensorBoard about published runs.
      clock: Unix seconds; injected for tests.
    """

    def __init__(self, config, state, reloader, clock=time.time):
        self.config = config
        self.state = state
        self.reloader = reloader
        self._clock = clock
        self._stop = threading.Event()
        # Daemon worker threads, not a ThreadPoolExecutor: the executor's workers are joined
        # before atexit handlers run, so a TensorBoard stopped mid-sync would wait for rsync
        # to finish instead of cancelling it in `stop()`.
        self._queue = queue.Queue()
        # Per source: cycles queued or running, and an Event set when that count is 0. The
        # count (not "set after each cycle") keeps a request that lands while a worker is
        # finishing from being reported idle by `wait()`.
        self._pending = collections.Counter()
        self._pending_lock = threading.Lock()
        self._idle = {}
        self._publish_lock_warned = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"tb-rsync-worker-{i}", daemon=True)
            for i in range(min(MAX_PARALLEL_SOURCES, max(1, len(config.sources))))]
        for thread in self._threads:
            thread.start()
        self._rsync_path = None
        self.journal = rewrites_lib.RewriteJournal(config.rewrites_path, clock)
        state.loader, state.loader_note, state.not_live = \
            reloader.kind, reloader.note, reloader.not_live
        state.logdir = config.logdir
        state.restore(config.state_path)
        for source in config.sources:
            self._restore_parked(source.name)
        try:
            self._rsync_path = config_lib.find_rsync()
        except SyncError as e:
            state.rsync_error = str(e)

    # --- asking for syncs --------------------------------------------------------------
    def request(self, names=None):
        """Start or join syncs for `names` (all sources when None); never blocks.

        Returns:
          {"started": [...], "joined": [...]} of source names.
        """
        names = [s.name for s in self.config.sources] if names is None else list(names)
        started, joined = [], []
        for name in names:
            if not self.state.try_queue(name):
                joined.append(name)
                continue
            with self._pending_lock:
                self._pending[name] += 1
                self._idle.setdefault(name, threading.Event()).clear()
            self._queue.put(name)
            started.append(name)
        return {"started": started, "joined": joined}

    def wait(self, names=None, timeout_s=None):
        """Block until the cycles in flight for `names` end (tests, CLI)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for name, idle in list(self._idle.items()):
            if names is None or name in names:
                idle.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _worker(self):
        while True:
            name = self._queue.get()
            try:
                if not self._stop.is_set():
                    self._guarded_cycle(name)
                else:
                    self.state.fail(name, f"Sync of '{name}' was cancelled: tb-rsync is stopping.")
            finally:
                with self._pending_lock:
                    self._pending[name] -= 1
                    if not self._pending[name]:
                        self._idle[name].set()

    def run_cycle(self, name, on_progress=None):
        """One blocking cycle for source `name`; raises `SyncError` on failure (CLI)."""
        if not self.state.try_queue(name):
            raise SyncError(f"Source '{name}' is already being synced; wait for it to finish.")
        self._cycle(name, on_progress)

    def _guarded_cycle(self, name):
        try:
            self._cycle(name)
        except SyncError:
            pass  # already recorded in state by _cycle
        except Exception:  # a bug: keep the worker alive and show it
            logger.exception("tb-rsync: sync of %r failed unexpectedly", name)

    # --- one cycle ---------------------------------------------------------------------
    def _cycle(self, name, on_progress=None):
        source = self.config.source(name)
        self.state.begin(name)

        def progress(p):
            self.state.progress(name, p)
            if on_progress:
                on_progress(name, p)

        try:
            if self._rsync_path is None:
                self._rsync_path = config_lib.find_rsync()
            with self._source_lock(name):
                transfer, retry = self._transfer(source, progress)
                # Another process with another staging root holds another source lock, so
                # the published folder is locked too, before publishing into it: else both
                # would append the same new records. Also held while a fast-loader reload
                # parks this source's files.
                with self._publish_lock(name):
                    transfer, report = self._publish(source, transfer, retry, progress)
                    self.journal.record(name, report)
                    notes = self._reload(report, progress, transfer.bytes_received)
            self.state.finish(name, transfer, report, notes)
            self._refresh_loaded(list(report.runs))
        except SyncError as e:
            self.state.fail(name, str(e), getattr(e, "details", ""))
            raise
        except Exception as e:
            self.state.fail(name, f"Internal error in tb-rsync ({type(e).__name__}: {e}); "
                                  "please report it.", traceback.format_exc())
            raise
        finally:
            self._save_state()

    def _reload(self, report, progress, bytes_done):
        """Tell TensorBoard; a failure here never turns a good publish into a failed sync."""
        if any(update.rewritten for update in report.runs.values()):
            progress(rsync_lib.Progress(bytes_done, 100, 0.0, "reloading"))
        try:
            return self.reloader.apply(self.config.logdir, report, cancel=self._stop)
        except Exception:
            logger.exception("tb-rsync: telling TensorBoard about %s failed", sorted(report.runs))
            return {run: "Published, but reloading it in TensorBoard failed (see TensorBoard's "
                         "log); it shows after TensorBoard's next reload or a restart."
                    for run in report.runs}

    def _refresh_loaded(self, runs):
        try:
            self.state.set_loaded(self.reloader.loaded_wall_times(runs))
        except Exception:
            logger.exception("tb-rsync: asking TensorBoard what it has loaded failed")

    def _dirty_marker(self, name):
        return os.path.join(self.config.staging_root, "locks", name + ".unpublished")

    def _transfer(self, source, progress):
        """rsync into staging; returns the transfer and what an earlier cycle left to retry."""
        cfg, name = self.config, source.name
        staging_dir = cfg.staging_dir(name)
        for folder in (staging_dir, cfg.temp_dir):
            os.makedirs(folder, exist_ok=True)
        # A cycle that stopped between rsync and publish left staged files rsync will not
        # report again; the marker makes the next publish walk the whole staging tree.
        dirty_marker = self._dirty_marker(name)
        retry = _read_retry(dirty_marker)
        with open(dirty_marker, "w"):
            pass
        transfer = rsync_lib.run_rsync(self._rsync_path, source, staging_dir, cfg.temp_dir,
                                       on_progress=progress, cancel=self._stop)
        if transfer.same_size:
            # Changed at the source without changing size (a corrupt record fixed in place,
            # a same-length rewrite): --append skips those, so they are fetched whole and the
            # publisher compares them with what it published (append, or rewrite).
            again = rsync_lib.restage_files(self._rsync_path, source, staging_dir,
                                            cfg.temp_dir, transfer.same_size,
                                            on_progress=progress, cancel=self._stop)
            transfer = _merge_transfers(transfer, again)
        return transfer, retry

    def _publish(self, source, transfer, retry, progress):
        """Publish what the transfer staged (or everything, after an interrupted cycle)."""
        cfg, name = self.config, source.name
        staging_dir, dirty_marker = cfg.staging_dir(name), self._dirty_marker(name)
        walk_all = retry == [] or not os.path.exists(cfg.manifest_path(name))
        publish_args = (staging_dir, cfg.logdir, name, cfg.quarantine_dir(name),
                        cfg.manifest_path(name))
        changed = None if walk_all else sorted(set(transfer.changed) | set(retry or ()))
        report = publish_lib.publish(*publish_args, changed=changed, restaged=transfer.restaged)
        if report.needs_restage:
            # New bytes that do not continue the published records: the source rewrote the
            # file. Fetch those files whole and publish again; the publisher then decides
            # between "rewritten" (quarantine + republish) and "corrupt at the source".
            again = rsync_lib.restage_files(self._rsync_path, source, staging_dir, cfg.temp_dir,
                                            report.needs_restage, on_progress=progress,
                                            cancel=self._stop)
            second = publish_lib.publish(*publish_args, changed=list(report.needs_restage),
                                         restaged=tuple(report.needs_restage))
            report = _merge_reports(report, second)
            transfer = _merge_transfers(transfer, again)
        # Files that failed to publish (a write error part-way, e.g. EFBIG) are staged
        # already, so rsync will not report them again: they are kept in the marker and
        # retried by the next cycle. Without this a half-appended record waited for the
        # source to grow before it was completed (tests/test_faults.py, file-size case).
        failed = sorted({a.path for a in report.actions if a.action == "error"})
        if failed:
            with open(dirty_marker, "w", encoding="utf-8") as f:
                f.write("\n".join(failed) + "\n")
        else:
            os.unlink(dirty_marker)
        return _explain_problems(source, staging_dir, transfer, report)

    @contextlib.contextmanager
    def _source_lock(self, name):
        """An exclusive `flock` on the source, shared with other tb-rsync processes."""
        with self._open_source_lock(name) as f:
            self._flock(f.fileno(), name, f.name)
            yield

    def _open_source_lock(self, name):
        path = self.config.lock_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "a")

    @contextlib.contextmanager
    def _publish_lock(self, name):
        """An exclusive `flock` on `LOGDIR/NAME` itself (nothing is written for it)."""
        path = os.path.join(self.config.logdir, name)
        try:
            try:
                os.mkdir(path)  # publishing creates it anyway
            except FileExistsError:
                pass
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # a symlink: publish() judges it
        except OSError:
            yield  # unusable: publish() refuses it with a sentence
            return
        try:
            try:
                self._flock(fd, name, path)
            except OSError as e:
                # NFS emulates flock with write locks (EBADF on a directory), Lustre without
                # -o flock has none (ENOSYS): publish as before this lock existed.
                if not self._publish_lock_warned:
                    self._publish_lock_warned = True
                    logger.warning("tb-rsync: cannot lock '%s' (%s); two tb-rsync processes "
                                   "with different staging folders must not sync one source "
                                   "at once.", path, e.strerror or e)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _hold_source(self, name):
        """Both locks of a cycle, for reloading runs another process rewrote."""
        with self._source_lock(name), self._publish_lock(name):
            yield

    def _restore_parked(self, name):
        """Put back files a killed process left parked for a fast-loader reload.

        Skipped while another process holds the source: it is parking them right now, and
        putting them back early would keep TensorBoard from ever dropping the run.
        """
        held = os.path.join(self.config.holding_dir, name)
        if not os.path.isdir(held):
            return
        with self._open_source_lock(name) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            reload_lib.restore_held_runs(held, os.path.join(self.config.logdir, name))

    def _flock(self, fd, name, path):
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self._stop.is_set() or time.monotonic() > deadline:
                    raise SyncError(
                        f"Source '{name}' is being synced by another tb-rsync process "
                        f"(lock '{path}'); wait for it or stop that process.") from None
                self._stop.wait(0.2)

    def _save_state(self):
        try:
            self.state.save(self.config.state_path)
        except OSError as e:
            logger.warning("tb-rsync: cannot save state to %s: %s", self.config.state_path, e)

    # --- background threads ------------------------------------------------------------
    def start(self):
        """Start the interval timer and the loaded-data monitor (daemon threads)."""
        for target in (self._timer_loop, self._loaded_loop):
            threading.Thread(target=target, name=f"tb-rsync-{target.__name__}",
                             daemon=True).start()
        atexit.register(self.stop)

    def stop(self):
        """Cancel running rsyncs (their process groups are killed) and stop threads."""
        self._stop.set()
        self.wait(timeout_s=STOP_WAIT_S)

    def _timer_loop(self):
        """Sync each timed source when its `next_sync_unix_s` (shown in the tab) comes.

        The end of every cycle sets that time to end + interval, so the tab's countdown is
        the one the timer keeps, a click postpones the next timed sync, and a sync longer
        than the interval is never followed by another at once.
        """
        timed = [s.name for s in self.config.sources if self.config.interval_for(s) > 0]
        for name in timed:
            self.state.set_next_sync(name, self._clock())  # first sync right away
        while timed and not self._stop.is_set():
            now, wake = self._clock(), self._clock() + TIMER_MAX_SLEEP_S
            for name in timed:
                when = self.state.next_sync(name)
                if when is None:
                    continue  # queued or syncing: the cycle's end sets the next time
                if now >= when:
                    self.state.set_next_sync(name, None)
                    self.request([name])
                else:
                    wake = min(wake, when)
            self._stop.wait(max(0.05, wake - self._clock()))

    def _loaded_loop(self):
        while not self._stop.wait(LOADED_REFRESH_S):
            rewrites_lib.catch_up(self.journal, self.reloader, self.config.logdir,
                                  self._hold_source, self.state, self._stop)
            runs = self.state.runs()
            if runs:
                self._refresh_loaded(runs)


def _explain_problems(source, staging_dir, transfer, report):
    """Word publish problems for the user and copy them into the source's warnings.

    The publisher names staged copies; the user can only fix the file at the source, so
    messages name that instead. Files that could not be published (corrupt record, file too
    large...) are also source warnings: the CLI prints warnings, and without this a
    `tb-rsync sync` that published nothing said "1 file(s) published" and no more.
    """
    staged_prefix = staging_dir.rstrip(os.sep) + os.sep
    errors = tuple((path, message.replace(staged_prefix, source.source_dir))
                   for path, message in report.errors)
    links = [a.path for a in report.actions
             if a.action == "skip" and publish_lib.SYMLINK_NOT_FOLLOWED in a.detail]
    warnings = transfer.warnings + tuple(message for _, message in errors)
    if links:
        shown = ", ".join(f"'{path}'" for path in links[:3]) + (" ..." if len(links) > 3 else "")
        warnings += (f"{len(links)} symlink(s) at the source were not published "
                     f"(symlinks are never followed): {shown}.",)
    return (dataclasses.replace(transfer, warnings=warnings),
            dataclasses.replace(report, errors=errors))


def _read_retry(marker):
    """None: no marker; []: a cycle died after rsync (walk everything); else paths to retry."""
    try:
        with open(marker, encoding="utf-8") as f:
            return [line for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return None


def _merge_reports(first, second):
    """`first` with the files `second` republished replaced by `second`'s outcome."""
    redone = {a.path for a in second.actions}
    runs = dict(first.runs)
    for run, update in second.runs.items():
        old = runs.get(run)
        if old is not None:
            update = dataclasses.replace(
                update, rewritten=update.rewritten or old.rewritten,
                files=tuple(sorted(set(old.files) | set(update.files))))
        runs[run] = update
    return dataclasses.replace(
        second,
        actions=tuple(a for a in first.actions if a.path not in redone) + second.actions,
        runs=runs,
        errors=tuple(e for e in first.errors if e[0] not in redone) + second.errors)


def _merge_transfers(first, second):
    return dataclasses.replace(
        first,
        changed=tuple(sorted(set(first.changed) | set(second.changed))),
        restaged=tuple(sorted(set(first.restaged) | set(second.changed))),
        bytes_received=first.bytes_received + second.bytes_received,
        files_transferred=first.files_transferred + second.files_transferred,
        warnings=first.warnings + second.warnings,
        duration_s=first.duration_s + second.duration_s)
