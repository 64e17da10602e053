"""One source's sync cycle: rsync -> publish -> reload -> state.

`SyncService.cycle(name)` is the whole job for one source, blocking. When and how many
cycles run is the scheduler's business (scheduler.py): the service owns one, hands it
`cycle`, and exposes its `request` / `wait` to the plugin and the CLI. A thread asks
TensorBoard, every `LOADED_REFRESH_S`, what it has loaded.

Two processes (a TensorBoard and a `tb-rsync watch`, say) may share a staging root, or
publish one source from two staging roots: a cycle holds the source's locks (locks.py).
"""

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
import time
import traceback

from tb_rsync_plugin.engine import prune as prune_lib
from tb_rsync_plugin.transports import probe_agent
from tb_rsync_plugin.transports import probes as probes_lib
from tb_rsync_plugin.publishing import publish as publish_lib
from tb_rsync_plugin.publishing import report as report_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.publishing import rewrites as rewrites_lib
from tb_rsync_plugin.transports import transfer as transfer_lib
from tb_rsync_plugin.engine import locks as locks_lib
from tb_rsync_plugin.engine import scheduler as scheduler_lib
from tb_rsync_plugin.transports import ssh as ssh_lib
from tb_rsync_plugin.transports import transport
from tb_rsync_plugin.errors import SyncError, TransferError

logger = logging.getLogger(__name__)

LOADED_REFRESH_S = 2.0
STOP_WAIT_S = 10.0  # rsync gets TERM, then KILL after a grace period


@dataclasses.dataclass(frozen=True)
class CycleOutcome:
    """What one successful cycle did; `changed` is False when it published nothing."""

    name: str
    transfer: transfer_lib.TransferResult
    report: report_lib.PublishReport

    @property
    def changed(self):
        return bool(self.transfer.changed or self.report.runs or self.report.actions)


class SyncService:
    """Runs sync cycles for the sources of one `SyncConfig`, through its own scheduler.

    Args:
      config: the validated `SyncConfig`.
      state: the `SyncState` every cycle reports into.
      reloader: from `reload.make_reloader`; tells TensorBoard about published runs.
      clock: Unix seconds; injected for tests.
      on_progress: called with (name, `transfer.Progress`) from every cycle (the CLI's line).
    """

    def __init__(self, config, state, reloader, clock=time.time, on_progress=None):
        self.config = config
        self.state = state
        self.reloader = reloader
        self._clock = clock
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._ssh = ssh_lib.SshConnections(enabled=config.ssh_sharing)  # closed by stop()
        self._locks = locks_lib.SourceLocks(self._stop)
        self.scheduler = scheduler_lib.Scheduler(
            self.cycle, state, config.max_parallel, on_end=[self._after_cycle])
        self.scheduler.set_sources(config.sources, config.interval_for, config.host_limit_for)
        self.probes = probes_lib.Probes(self._ssh, self.scheduler.poke, self._probe_mode,
                                        config.interval_for)
        self.journal = rewrites_lib.RewriteJournal(config.rewrites_path, clock)
        state.loader, state.loader_note, state.not_live = \
            reloader.kind, reloader.note, reloader.not_live
        state.logdir = config.logdir
        state.restore(config.state_dir)
        for source in config.sources:
            self._restore_parked(source.name)
        self.probes.set_sources(config.sources)
        self._check_tools()

    def _probe_mode(self, name, mode, detail):
        """A probe started, stopped or fell back: the tab says so, and the scheduler syncs a
        watched source at its safety interval instead of listing it every interval."""
        self.state.set_probe(name, mode, detail)
        self.scheduler.set_probed(name, self.probes.probed(name))

    def _check_tools(self):
        """rsync (and rclone, for rclone sources) installed? The tab's banner says if not."""
        try:
            transport.find_tools(self.config.sources)
            self.state.set_rsync_error(None)
        except SyncError as e:
            self.state.set_rsync_error(str(e))

    # --- asking for syncs (the scheduler decides when) ---------------------------------
    def request(self, names=None):
        """Ask for syncs of `names` (all sources when None) that start after this call; never
        blocks.

        Returns:
          {"started": [...], "joined": [...], "queued_after": [...]} of source names
          (`scheduler.Scheduler.request`).
        """
        return self.scheduler.request(names)

    def wait(self, names=None, timeout_s=None):
        """Block until the cycles in flight for `names` end (tests, CLI)."""
        return self.scheduler.wait(names, timeout_s)

    def reconfigure(self, config):
        """Follow a new configuration (same logdir and staging): sources come and go.

        A removed source's running cycle ends normally; its published files stay.
        """
        added = [s for s in config.sources if s.name not in
                 {old.name for old in self.config.sources}]
        self.config = config
        # The scheduler first: it must not queue a source the state no longer knows.
        self.scheduler.set_sources(config.sources, config.interval_for, config.host_limit_for)
        self.state.set_sources(config.sources, config.interval_for)
        self.state.restore(config.state_dir, [s.name for s in added])
        for source in added:
            self._restore_parked(source.name)
        self.probes.set_sources(config.sources)
        self._check_tools()

    def run_cycle(self, name, on_progress=None):
        """One blocking cycle for source `name` outside the scheduler; raises `SyncError`."""
        if not self.state.try_queue(name):
            raise SyncError(f"Source '{name}' is already being synced; wait for it to finish.")
        try:
            return self.cycle(name, on_progress)
        finally:
            self._save_state()

    # --- one cycle ---------------------------------------------------------------------
    def cycle(self, name, on_progress=None):
        """rsync -> publish -> reload -> state for one source; returns a `CycleOutcome`.

        Raises:
          SyncError: recorded in state first; anything else is a bug, recorded likewise.
        """
        try:
            source = self.config.source(name)
        except KeyError:  # removed by a config edit just as its cycle started
            raise SyncError(f"Source '{name}' is no longer configured.") from None
        self.state.begin(name)
        listeners = [f for f in (on_progress, self._on_progress) if f is not None]
        transfer = None

        def progress(p):
            self.state.progress(name, p)
            for listener in listeners:
                listener(name, p)

        try:
            with self._locks.source(self.config, name):
                # What another process published up to now (it held this lock): this cycle
                # starts from it, and the tab shows it even if this cycle changes nothing.
                self.state.follow(self.config.state_dir, [name])
                transfer, retry = self._transfer(source, progress)
                # Another process with another staging root holds another source lock, so
                # the published folder is locked too, before publishing into it: else both
                # would append the same new records. Also held while a fast-loader reload
                # parks this source's files.
                with self._locks.publish(self.config, name):
                    transfer, report = self._publish(source, transfer, retry, progress)
                    self.journal.record(name, report)
                    notes = self._reload(report, progress, transfer.bytes_received)
            self.state.finish(name, transfer, report, notes)
            outcome = CycleOutcome(name, transfer, report)
            if report.runs:
                self._refresh_loaded(list(report.runs))
            return outcome
        except SyncError as e:
            # A failed transfer counted its requests, the cycle's earlier ones included;
            # a later failure (publishing) made none beyond the transfer's.
            if not isinstance(e, TransferError):
                e.api_requests = 0 if transfer is None else transfer.api_requests
            if self._stop.is_set():
                self.state.abandon(name)  # cancelled by stop(): not the source's failure
            else:
                self.state.fail(name, str(e), getattr(e, "details", ""), e.api_requests)
            raise
        except Exception as e:
            self.state.fail(name, f"Internal error in tb-rsync ({type(e).__name__}: {e}); "
                                  "please report it.", traceback.format_exc())
            raise

    def _reload(self, report, progress, bytes_done):
        """Tell TensorBoard; a failure here never turns a good publish into a failed sync."""
        if any(update.rewritten for update in report.runs.values()):
            progress(transfer_lib.Progress(bytes_done, 100, 0.0, "reloading"))
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

    def _appending(self, name):
        """Event files that grew at the last successful sync likely grow again by this one
        (a job writing): this sync then appends beside its listing; others only list. The
        state keeps it, journalled, so a new `tb-rsync sync` process knows it too."""
        return self.state.source(name)["appending"]

    def _dirty_marker(self, name):
        return self.config.unpublished_path(name)

    def _transfer(self, source, progress):
        """rsync into staging; returns the transfer and what an earlier cycle left to retry."""
        cfg, name = self.config, source.name
        staging_dir = cfg.staging_dir(name)  # the transport creates it, or says why not
        # A cycle that stopped between rsync and publish left staged files rsync will not
        # report again; the marker, made before rsync first writes into staging, makes the
        # next publish walk the whole staging tree. A sync that changes nothing writes none.
        dirty_marker = self._dirty_marker(name)
        retry = _read_retry(dirty_marker)
        query = None  # the first-record check's session, where no probe session answers

        def mark_unpublished():
            if retry is None:
                with open(dirty_marker, "w"):
                    pass

        def before_write(grows):
            """Staging is about to change: mark it unpublished; if staged event files may
            grow, open the first-record check's session now, so that it has started by the
            time the transfer ends."""
            nonlocal query
            if grows and query is None:
                query = self.probes.first_record_query(source)
            mark_unpublished()

        try:
            # One login for all rsyncs of the host; a sync whose shared login died under it
            # runs again once over a fresh one.
            transfer = self._ssh.run(source, lambda rsh: transport.fetch(
                source, staging_dir, cfg.temp_dir, on_progress=progress, cancel=self._stop,
                before_write=before_write, rsh=rsh, expect_growth=self._appending(name)),
                cancel=self._stop)
            restarted = self._restarted(source, transfer, query)
        finally:
            if query is not None:
                query.close()
        # Changed at the source without changing size (a corrupt record fixed in place, a
        # same-length rewrite): --append skips those. And grown files whose first record is
        # not the source's any more: a restarted run reused the name, and --append spliced
        # its new records onto the old ones. Both are fetched whole; the publisher compares
        # them with what it published (append, or rewrite: quarantine and republish).
        whole = sorted(set(transfer.same_size) | set(restarted))
        if whole:
            mark_unpublished()
            transfer = self._refetch(source, whole, progress, transfer)
        return transfer, retry

    def _refetch(self, source, paths, progress, transfer):
        """Fetch `paths` whole; returns `transfer` merged with that fetch. A failure carries
        the requests of both (`TransferError.api_requests`)."""
        try:
            again = self._ssh.run(source, lambda rsh: transport.refetch(
                source, self.config.staging_dir(source.name), self.config.temp_dir, paths,
                on_progress=progress, cancel=self._stop, rsh=rsh), cancel=self._stop)
        except TransferError as e:
            e.api_requests = transfer_lib.add_requests(transfer.api_requests, e.api_requests)
            raise
        return _merge_transfers(transfer, again)

    def _restarted(self, source, transfer, query):
        """Grown event files whose first record (the writer's start) differs at the source.

        The probe reads the source's first records (in-process for local folders, through
        the node's probe session or `query` over ssh); where none can (a daemon, rclone, a
        host without python3), this check is skipped: docs/FAULTS.md says what then holds.
        """
        if not transfer.grown:
            return ()
        theirs = self.probes.first_records(source, transfer.grown, query)
        if not theirs:
            return ()
        # Compared with the published copy: the staged one may have had its published
        # blocks dropped (sparse staging), and the published one is what a splice would hit.
        ours = probe_agent.first_record_digests(
            os.path.join(self.config.logdir, source.name), transfer.grown)
        return [path for path, digest in theirs.items() if path in ours and ours[path] != digest]

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
            transfer = self._refetch(source, report.needs_restage, progress, transfer)
            second = publish_lib.publish(*publish_args, changed=list(report.needs_restage),
                                         restaged=tuple(report.needs_restage))
            report = _merge_reports(report, second)
        # Files that failed to publish (a write error part-way, e.g. EFBIG) are staged
        # already, so rsync will not report them again: they are kept in the marker and
        # retried by the next cycle. Without this a half-appended record waited for the
        # source to grow before it was completed (tests/test_faults.py, file-size case).
        failed = sorted({a.path for a in report.actions if a.action == "error"})
        if failed:
            with open(dirty_marker, "w", encoding="utf-8") as f:
                f.write("\n".join(failed) + "\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dirty_marker)
        return _explain_problems(source, staging_dir, transfer, report)

    def _restore_parked(self, name):
        """Put back files a killed process left parked for a fast-loader reload.

        Skipped while another process holds the source: it is parking them right now, and
        putting them back early would keep TensorBoard from ever dropping the run.
        """
        held = os.path.join(self.config.holding_dir, name)
        if not os.path.isdir(held):
            return
        with locks_lib.source_unless_busy(self.config, name) as free:
            if free:
                reload_lib.restore_held_runs(held, os.path.join(self.config.logdir, name))

    def _after_cycle(self, end):
        """Journal the cycle; then take in what another process journalled meanwhile (it
        may have saved after this cycle took the source's lock)."""
        self._save_state()
        self.state.follow(self.config.state_dir, [end.name])

    def _save_state(self):
        try:
            self.state.save(self.config.state_dir)
        except OSError as e:
            logger.warning("tb-rsync: cannot save state to %s: %s", self.config.state_dir, e)

    # --- background threads ------------------------------------------------------------
    def start(self, timers=True):
        """Start scheduling (with `timers`, every timed source syncs now and then on its
        interval, probes watch them and pruning runs hourly) and the loaded-data monitor
        (daemon threads). Without `timers` (one-shot syncs), call `prune_if_due` at the end.
        """
        # Before any cycle of ours writes there: leftovers of a killed process.
        self._log_pruned(lambda: prune_lib.clean_tmp(self.config, self._clock()))
        self.scheduler.start(timers)
        if timers:
            self.probes.start()
            threading.Thread(target=self._prune_loop, name="tb-rsync-prune",
                             daemon=True).start()
        if self.reloader.kind != "none":
            threading.Thread(target=self._loaded_loop, name="tb-rsync-loaded",
                             daemon=True).start()
        atexit.register(self.stop)

    def prune_if_due(self):
        """For one-shot syncs, once they are done: prune unless a process did within the
        hour (prune.py). In the caller's thread: a daemon thread would die with the process."""
        if prune_lib.due(self.config, self._clock()):
            self._log_pruned(lambda: prune_lib.prune(self.config, self._clock()))

    def stop(self, keep_logins=False):
        """Cancel running rsyncs (their process groups are killed), stop threads, and
        stop the shared ssh logins, unless `keep_logins`: then they end by themselves
        (ControlPersist) and the next process rides them (a `tb-rsync sync` from cron).
        Only the first call acts (the one at exit, registered by `start`, then does not)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.probes.stop()
        self.scheduler.stop(STOP_WAIT_S)
        if not keep_logins:
            self._ssh.close()

    @property
    def stopped(self):
        """An Event set once `stop()` was called (threads of others wait on it)."""
        return self._stop

    def _prune_loop(self):
        """Keep the staging root within its limits (prune.py): now, then every hour."""
        while True:
            self._log_pruned(lambda: prune_lib.prune(self.config, self._clock()))
            if self._stop.wait(prune_lib.PRUNE_EVERY_S):
                return

    @staticmethod
    def _log_pruned(run):
        try:
            report = run()
        except Exception:  # never a reason to stop syncing
            logger.exception("tb-rsync: pruning the staging folder failed")
            return
        if report.removals or report.notes:
            for line in prune_lib.format_report(report):
                logger.info("tb-rsync: prune: %s", line)

    def _loaded_loop(self):
        while not self._stop.wait(LOADED_REFRESH_S):
            rewrites_lib.catch_up(self.journal, self.reloader, self.config.logdir,
                                  lambda name: self._locks.both(self.config, name),
                                  self.state, self._stop)
            self.state.follow(self.config.state_dir)  # what other processes synced
            runs = self.state.runs()
            if runs:
                self._refresh_loaded(runs)


def log_transition(end):
    """A scheduler listener for TensorBoard's log: a source going into error and coming
    back, once each (the CLI prints its own lines instead)."""
    if end.stopping:
        return
    if end.error is not None and not isinstance(end.error, SyncError):
        logger.error("tb-rsync: sync of %r failed unexpectedly", end.name,
                     exc_info=end.error)
    elif end.error is not None and end.previous_failures == 0:
        if end.retry_in_s:
            logger.warning("tb-rsync: sync of %r failed (retrying in %.0f s): %s", end.name,
                           end.retry_in_s, end.error)
        else:
            logger.warning("tb-rsync: sync of %r failed (next attempt when asked): %s",
                           end.name, end.error)
    elif end.recovered:
        logger.warning("tb-rsync: %r syncs again after %d failed attempt(s).", end.name,
                       end.previous_failures)


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
             if a.action == "skip" and report_lib.SYMLINK_NOT_FOLLOWED in a.detail]
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
        duration_s=first.duration_s + second.duration_s,
        api_requests=transfer_lib.add_requests(first.api_requests, second.api_requests))
