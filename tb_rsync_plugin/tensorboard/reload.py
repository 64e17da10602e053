"""Make TensorBoard show what was just published; the only module touching TB internals.

Three loaders, three behaviours:
- legacy (`--load_fast=false`, `context.multiplexer` is set): reload just the affected runs'
  accumulators right after publishing, add new runs, and rebuild a run's accumulator when
  its event file was rewritten or grew while not being the newest file of the run (the
  legacy directory watcher only tails the newest file). New data shows at once, even with
  `--reload_interval 0`.
- fast (the Rust data server): there is no reload API. Appended records show at the data
  server's next reload. A rewritten file would keep being read through the old inode, so the
  run is cycled: its event files are moved out of the logdir until the data server drops the
  run, then moved back, and a new loader reads them from offset 0 (DESIGN.md). The run is
  missing for one reload cycle. When that cannot work (`--reload_interval 0`, the holding
  folder on another filesystem, the run never dropped) the run's state says a restart is
  needed, and why.
- none (the CLI): nothing to reload.

All three also answer `loaded_wall_times(runs)`: the newest wall time TensorBoard serves per
run, read through the public data provider API, so the UI can tell "live" from "waiting".
"""

import logging
import os
import threading
import time

from tb_rsync_plugin import config

logger = logging.getLogger(__name__)

_RESTART_REASON = (
    "The source rewrote an event file of this run and TensorBoard's fast loader keeps "
    "reading the old copy (it never reopens a file); restart TensorBoard to see the new "
    "content. The old file is in the quarantine folder."
)


class NoReloader:
    """For the CLI: publishing only."""

    kind = "none"
    period_s = 0.0  # how long TensorBoard may take to show what was published
    note = "No TensorBoard attached: publishing only."
    not_live = ("unknown", "Published; no TensorBoard attached to ask what it shows.")

    def apply(self, logdir, report, cancel=None):
        """Returns {run: reason a restart is needed} for runs TensorBoard cannot update.

        `cancel` (a threading.Event) cuts any waiting short when tb-rsync stops.
        """
        return {}

    def loaded_wall_times(self, runs):
        return {}


class FastLoaderReloader(NoReloader):
    """Cycles rewritten runs through a holding folder so the data server re-reads them.

    Args:
      data_provider: TensorBoard's data provider; its run list tells when a run is gone.
      holding_dir: outside the logdir, on the same filesystem (files are moved by rename).
      reload_interval_s: TensorBoard's --reload_interval; 0 means it never reloads.
    """

    kind = "fast"

    def __init__(self, data_provider, holding_dir, reload_interval_s):
        self._data_provider = data_provider
        self.loaded_wall_times = LoadedTimes(data_provider)
        self._holding_dir = holding_dir
        self._reload_interval_s = self.period_s = reload_interval_s
        if reload_interval_s > 0:
            self.note = ("TensorBoard's fast loader has no reload API: new points show at its "
                         f"next reload (every {reload_interval_s:g} s, --reload_interval).")
            self.not_live = ("waiting", "Published; TensorBoard's fast loader shows it at its "
                                        f"next reload (every {reload_interval_s:g} s).")
        else:
            # The data server loaded the logdir once and never looks again: nothing published
            # after start-up shows until a restart. Say so instead of "waiting" forever.
            self.note = ("TensorBoard runs with --reload_interval 0: its fast loader read the "
                         "logdir once, so published data shows only after a restart (or run "
                         "TensorBoard with --load_fast=false, where tb-rsync reloads runs).")
            self.not_live = ("restart_needed", "Published; TensorBoard runs with "
                             "--reload_interval 0 and never reloads: restart it to see this.")

    def apply(self, logdir, report, cancel=None):
        notes = {}
        for run, update in sorted(report.runs.items()):
            if update.rewritten:
                reason = self._cycle_run(logdir, run, cancel or threading.Event())
                if reason:
                    notes[run] = reason
        return notes

    def _cycle_run(self, logdir, run, cancel):
        """Move the run's event files out until TensorBoard drops the run; None on success.

        Called with the source's lock held, so no publish of this run happens meanwhile;
        other sources' cycles only ever touch their own runs' holding folders.
        """
        if self._reload_interval_s <= 0:
            return _RESTART_REASON + " (TensorBoard runs with --reload_interval 0.)"
        run_dir = os.path.join(logdir, run)
        held_dir = os.path.join(self._holding_dir, run)
        names = [n for n in os.listdir(run_dir) if config.is_event_file(n)
                 and os.path.isfile(os.path.join(run_dir, n))]
        os.makedirs(held_dir, exist_ok=True)
        if os.stat(held_dir).st_dev != os.stat(run_dir).st_dev:
            return _RESTART_REASON + " (The staging folder is on another filesystem.)"
        try:
            for name in names:
                held, published = os.path.join(held_dir, name), os.path.join(run_dir, name)
                if not _link_once(published, held):  # never over another parked copy
                    return (_RESTART_REASON + f" (An older parked copy '{held}' is in the way; "
                            "compare it with the published file and remove it.)")
                os.unlink(published)
            gone = self._wait_until_dropped(run, cancel)
        finally:
            # Always put the files back, even if waiting failed: the logdir must converge.
            restore_held_files(held_dir, run_dir)
        if not gone:
            return _RESTART_REASON + " (TensorBoard did not drop the run in time.)"
        return None

    def _wait_until_dropped(self, run, cancel):
        from tensorboard import context as tb_context

        # The data server sleeps --reload_interval after each full cycle; a cycle over a big
        # logdir can take a while too, hence the margin.
        deadline = time.monotonic() + 3 * self._reload_interval_s + 30
        while time.monotonic() < deadline and not cancel.is_set():
            try:
                runs = self._data_provider.list_runs(tb_context.RequestContext(),
                                                     experiment_id="")
            except Exception as e:
                logger.debug("tb-rsync: list_runs failed: %s", e)
            else:
                if all(r.run_name != run for r in runs):
                    return True
            cancel.wait(0.25)
        return False


def restore_held_runs(holding_dir, logdir):
    """Put back every file under `holding_dir` into the same place under `logdir`."""
    if os.path.isdir(holding_dir):
        for folder, _, _ in os.walk(holding_dir):
            restore_held_files(folder, os.path.join(logdir, os.path.relpath(folder, holding_dir)))


def restore_held_files(held_dir, run_dir):
    """Move parked event files back into `run_dir`, never over a file of the same name.

    `os.link` fails on an existing name, unlike `os.rename`, so a file published under that
    name meanwhile is never replaced; the parked copy then stays, and a warning says where.
    """
    try:
        names = os.listdir(held_dir)
    except FileNotFoundError:
        return
    for name in names:
        held, dest = os.path.join(held_dir, name), os.path.join(run_dir, name)
        if not os.path.isfile(held):
            continue
        os.makedirs(run_dir, exist_ok=True)
        if not _link_once(held, dest):
            logger.warning("tb-rsync: '%s' exists, so its parked copy stays at '%s'; compare "
                           "them and move the one to keep into the logdir.", dest, held)
            continue
        os.unlink(held)


def _link_once(src, dest):
    """Link `src` as `dest`; False if `dest` is another file. If `dest` is `src` itself (a
    process killed between linking and unlinking), that counts as done."""
    try:
        os.link(src, dest)
        return True
    except FileExistsError:
        return os.path.samefile(src, dest)


# What the per-run reload calls on TensorBoard's EventMultiplexer (the last three are private:
# it has no public way to forget one run). Present in every tested TensorBoard (README).
MULTIPLEXER_NEEDS = ("Runs", "AddRun", "GetAccumulator", "_accumulators_mutex",
                     "_accumulators", "_paths")


class LegacyReloader(NoReloader):
    """Reloads affected runs of an `EventMultiplexer` in place.

    A multiplexer without what that needs (MULTIPLEXER_NEEDS) is left to TensorBoard's own
    reloads, and the tab says so instead of logging a failure at every publish.
    """

    kind = "legacy"
    note = "Runs are reloaded right after each publish (--load_fast=false)."
    not_live = ("waiting", "Published; TensorBoard is reloading this run.")

    def __init__(self, multiplexer, data_provider, reload_interval_s=0.0):
        self._multiplexer = multiplexer
        self.loaded_wall_times = LoadedTimes(data_provider)
        self._missing = [name for name in MULTIPLEXER_NEEDS if not hasattr(multiplexer, name)]
        if self._missing:
            self.period_s = reload_interval_s
            lacks = f"(its multiplexer lacks {', '.join(self._missing)})"
            if reload_interval_s > 0:
                self.note = (f"This TensorBoard has no per-run reload {lacks}; new data shows "
                             f"at its next reload (every {reload_interval_s:g} s, "
                             "--reload_interval).")
                self.not_live = ("waiting", "Published; this TensorBoard shows it at its next "
                                            f"reload (every {reload_interval_s:g} s).")
            else:
                self.note = (f"This TensorBoard has no per-run reload {lacks} and runs with "
                             "--reload_interval 0: published data shows only after a restart.")
                self.not_live = ("restart_needed", "Published; this TensorBoard has no per-run "
                                 "reload and never reloads: restart it to see this.")

    def apply(self, logdir, report, cancel=None):
        if self._missing:
            # Its own directory watcher tails the newest file by name and never reopens one.
            return {run: ("The source rewrote an event file of this run and this TensorBoard "
                          "has no per-run reload to read it again; restart TensorBoard to see "
                          "the new content. The old file is in the quarantine folder.")
                    for run, update in report.runs.items() if update.rewritten}
        for run, update in sorted(report.runs.items()):
            path = os.path.join(logdir, run)
            try:
                if update.rewritten or not _touches_only_newest(path, update.files):
                    self._rebuild(run, path)
                else:
                    self._reload(run, path)
            except Exception:  # TB internals may change; a failed reload must not fail a sync.
                logger.exception("tb-rsync: reloading run %r failed", run)
        return {}

    def _reload(self, run, path):
        if run not in self._multiplexer.Runs():
            # AddRun reloads the new accumulator itself once TensorBoard has reloaded once;
            # before that (or with --reload_interval 0) it only constructs it.
            self._multiplexer.AddRun(path, run)
        self._multiplexer.GetAccumulator(run).Reload()

    def _rebuild(self, run, path):
        """Drop the run's accumulator and read its files again from offset 0.

        The multiplexer has no public way to forget one run; `_accumulators` and `_paths`
        are guarded by `_accumulators_mutex`, so we take it like its own methods do.
        """
        mux = self._multiplexer
        with mux._accumulators_mutex:
            mux._accumulators.pop(run, None)
            mux._paths.pop(run, None)
        mux.AddRun(path, run)
        mux.GetAccumulator(run).Reload()



def _touches_only_newest(run_dir, files):
    """True if every touched event file is the newest (last by name) in its run folder.

    The legacy directory watcher reads files in name order and only tails the last one, so
    new records in an older file are only seen by a rebuilt accumulator.
    """
    try:
        names = sorted(n for n in os.listdir(run_dir) if config.is_event_file(n))
    except OSError:
        return False
    if not names:
        return True
    newest = names[-1]
    return all(os.path.basename(f) == newest for f in files)


def make_reloader(context, holding_dir):
    """Pick the reloader for this TensorBoard: legacy when a multiplexer exists."""
    if context is None:
        return NoReloader()
    reload_interval_s = float(getattr(context.flags, "reload_interval", 5) or 0)
    if getattr(context, "multiplexer", None) is not None:
        return LegacyReloader(context.multiplexer, context.data_provider, reload_interval_s)
    return FastLoaderReloader(context.data_provider, holding_dir, reload_interval_s)


class LoadedTimes:
    """The newest wall time TensorBoard serves per run, over every plugin's data.

    `list_plugins` names the plugins with data (scalars, histograms, text, images, PR
    curves, a custom plugin...). Each keeps its data in one of three classes; for the
    built-in ones the list call is known, for others the one that answers is learnt, so a
    refresh costs one call per plugin. An empty answer only means "not loaded yet" (or not
    for these runs) and is asked again next time: nothing is muted.
    """

    METHODS = ("list_scalars", "list_tensors", "list_blob_sequences")
    BUILT_IN = {"scalars": "list_scalars", "histograms": "list_tensors", "text": "list_tensors",
                "pr_curves": "list_tensors", "images": "list_blob_sequences",
                "audio": "list_blob_sequences"}

    def __init__(self, data_provider):
        self._data_provider = data_provider
        self._method_of = dict(self.BUILT_IN)  # plugin name -> the list call with its data

    def __call__(self, runs):
        """{run: newest wall time TensorBoard serves, or None}."""
        from tensorboard import context as tb_context
        from tensorboard.data import provider

        result = {run: None for run in runs}
        if self._data_provider is None or not runs:
            return result
        ctx = tb_context.RequestContext()
        run_filter = provider.RunTagFilter(runs=list(runs))
        try:
            plugins = self._data_provider.list_plugins(ctx, experiment_id="")
        except Exception as e:  # not ready yet
            logger.debug("tb-rsync: list_plugins failed: %s", e)
            return result
        if plugins is None:  # a provider that cannot list its plugins
            plugins = self.BUILT_IN
        for plugin in sorted(plugins):
            known = self._method_of.get(plugin)
            for method in (known,) if known else self.METHODS:
                try:
                    listing = getattr(self._data_provider, method)(
                        ctx, experiment_id="", plugin_name=plugin, run_tag_filter=run_filter)
                except Exception as e:  # data of another class, or not ready yet
                    logger.debug("tb-rsync: %s(%s) failed: %s", method, plugin, e)
                    continue
                if listing:
                    self._method_of[plugin] = method
                    _merge_newest(result, listing)
                    break
        return result


def _merge_newest(result, listing):
    for run, tags in listing.items():
        for series in tags.values():
            wall_time = series.max_wall_time
            if run in result and (result[run] is None or wall_time > result[run]):
                result[run] = wall_time
