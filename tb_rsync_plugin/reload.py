"""Make TensorBoard show what was just published; the only module touching TB internals.

Three loaders, three behaviours:
- legacy (`--load_fast=false`, `context.multiplexer` is set): reload just the affected runs'
  accumulators right after publishing, add new runs, and rebuild a run's accumulator when
  its event file was rewritten or grew while not being the newest file of the run (the
  legacy directory watcher only tails the newest file). New data shows at once, even with
  `--reload_interval 0`.
- fast (the Rust data server): there is no reload API. Appended records show at the data
  server's next reload. A rewritten file keeps being read through the old inode, so that run
  needs a restart, and its state says so.
- none (the CLI): nothing to reload.

All three also answer `loaded_wall_times(runs)`: the newest wall time TensorBoard serves per
run, read through the public data provider API, so the UI can tell "live" from "waiting".
"""

import logging
import os

logger = logging.getLogger(__name__)

_RESTART_REASON = (
    "The source rewrote an event file of this run; TensorBoard's fast loader keeps reading "
    "the old copy (it never reopens a file). Restart TensorBoard, or run it with "
    "--load_fast=false, to see the new content. The old file is in the quarantine folder."
)


class NoReloader:
    """For the CLI: publishing only."""

    kind = "none"

    def apply(self, logdir, report):
        """Returns {run: reason a restart is needed} for runs TensorBoard cannot update."""
        return {}

    def loaded_wall_times(self, runs):
        return {}


class FastLoaderReloader(NoReloader):
    """The Rust data server reloads on its own schedule; rewritten runs need a restart."""

    kind = "fast"

    def __init__(self, data_provider):
        self._data_provider = data_provider

    def apply(self, logdir, report):
        return {run: _RESTART_REASON for run, update in report.runs.items() if update.rewritten}

    def loaded_wall_times(self, runs):
        return _loaded_wall_times(self._data_provider, runs)


class LegacyReloader(NoReloader):
    """Reloads affected runs of an `EventMultiplexer` in place."""

    kind = "legacy"

    def __init__(self, multiplexer, data_provider):
        self._multiplexer = multiplexer
        self._data_provider = data_provider

    def apply(self, logdir, report):
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

    def loaded_wall_times(self, runs):
        return _loaded_wall_times(self._data_provider, runs)


def _touches_only_newest(run_dir, files):
    """True if every touched event file is the newest (last by name) in its run folder.

    The legacy directory watcher reads files in name order and only tails the last one, so
    new records in an older file are only seen by a rebuilt accumulator.
    """
    try:
        names = sorted(n for n in os.listdir(run_dir) if "tfevents" in n)
    except OSError:
        return False
    if not names:
        return True
    newest = names[-1]
    return all(os.path.basename(f) == newest for f in files)


def make_reloader(context):
    """Pick the reloader for this TensorBoard: legacy when a multiplexer exists."""
    if context is None:
        return NoReloader()
    if getattr(context, "multiplexer", None) is not None:
        return LegacyReloader(context.multiplexer, context.data_provider)
    return FastLoaderReloader(context.data_provider)


# Which list call finds which kind of data: scalars, histograms/distributions (tensors),
# images (blob sequences). A run with any of them counts as loaded.
_LISTINGS = (
    ("list_scalars", "scalars"),
    ("list_tensors", "histograms"),
    ("list_blob_sequences", "images"),
)


def _loaded_wall_times(data_provider, runs):
    """{run: newest wall time TensorBoard serves, or None} through the data provider."""
    from tensorboard import context as tb_context
    from tensorboard.data import provider

    result = {run: None for run in runs}
    if data_provider is None or not runs:
        return result
    ctx = tb_context.RequestContext()
    run_filter = provider.RunTagFilter(runs=list(runs))
    for method, plugin_name in _LISTINGS:
        try:
            listing = getattr(data_provider, method)(
                ctx, experiment_id="", plugin_name=plugin_name, run_tag_filter=run_filter)
        except Exception as e:  # a loader without this kind of data, or not ready yet
            logger.debug("tb-rsync: %s(%s) failed: %s", method, plugin_name, e)
            continue
        for run, tags in listing.items():
            for series in tags.values():
                wall_time = series.max_wall_time
                if run in result and (result[run] is None or wall_time > result[run]):
                    result[run] = wall_time
    return result
