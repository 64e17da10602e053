"""`tb-rsync push`: a node's logdir pushed into a hub's watched inbox, again and again.

For nodes the TensorBoard host cannot reach but that can reach it (NAT, firewalled compute
nodes). The hub side is a watched inbox (`--rsync_watch`, `tb-rsync watch --watch-source`),
which publishes what lands there like any source. A push keeps the rules of a sync into
staging, the other way round:

- event files only grow: `rsync --append` moves just their new bytes and writes them in
  place. A push cut short leaves a prefix of the node's file, perhaps ending in half a
  record, which the hub's publisher never publishes: it waits for the rest (the next push
  appends it). An event file that is not longer at the node than at the hub (rewritten
  shorter, or the same size with another mtime) is pushed whole instead, since --append
  would skip it forever.
- every other file whole: rsync writes `.NAME.XXXXXX` beside it and renames it when
  complete; the hub never fetches or publishes such temporaries (`config.is_foreign_temp`),
  not even one a killed push leaves behind.
- one shared ssh login for every rsync of every push (`ssh.SshConnections`).
- a hub that cannot be reached is tried again after the scheduler's backoff
  (`scheduler.retry_delay_s`: the interval, at least 5 s, doubling, at most 5 min), each
  wait said on stderr.
- a stop signal (the job ending) pushes once more (`final`), then tb-rsync exits 128 + the
  signal (cli.py).
Imports stay light (no TensorBoard): this runs on training nodes.
"""

import os
import shutil
import sys
import tempfile
import time

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.config import is_event_file
from tb_rsync_plugin.engine.scheduler import retry_delay_s
from tb_rsync_plugin.errors import ConfigError, TransferError
from tb_rsync_plugin.transports.rsync_run import RsyncRun
from tb_rsync_plugin.transports.ssh import SshConnections

_NAME = "push"  # the Source's name; messages are reworded to name the logdir instead


def push_tree(rsync_path, target, logdir, temp_dir, rsh=None, cancel=None):
    """Push `logdir` into `target` (a `config.Source` naming where it goes) once.

    A dry-run listing first (one walk; when nothing changed that is all), then side by side
    `--append` for the event files it listed and rsync's default for the rest, then, whole,
    the listed event files the append pass did not take.

    Returns:
      transfer.TransferResult (`bytes_received` counts the bytes sent).
    Raises:
      TransferError: one sentence (worded for a sync: `Pusher` rewords it).
    """
    run = RsyncRun(rsync_path, target, logdir, temp_dir, None, cancel, rsh, push=True)
    (listing,) = run.settle([run.start("list", ["--dry-run"] + run.filters(), progress=False)])
    events, others = [], []
    for kind, _, _, path in listing.items:
        if kind.startswith(">f"):
            (events if is_event_file(path) else others).append(path)
        elif kind[1:2] == "L":
            others.append(path)
    jobs = []
    if events:
        jobs.append(run.start("events", ["--append"], files=events))
    if others:
        jobs.append(run.start("files", [], files=others))
    jobs = run.settle(jobs)
    appended = {path for job in jobs if job.phase == "events" for _, _, _, path in job.items}
    # Listed as different, not appended: the hub's copy is as long or longer (--append skips
    # those silently). A file that grew since the listing was appended, so it is not here.
    whole = [path for path in events if path not in appended]
    if whole:
        jobs += run.settle([run.start("whole", [], files=whole)])
    return run.result([listing] + jobs, restaged_phase="whole")


class Pusher:
    """Pushes one logdir to one destination: `run` loops (or pushes once), `final` pushes
    once more when the job ends, `close` stops the shared ssh login.

    Args:
      logdir: the node's folder of runs; it may not exist yet (pushed once it does).
      destination: `HOST:INBOX/NAME/` (or `user@host:...`, `rsync://...`, a local folder).
      ssh: the user's ssh command (`ssh -p 2222 -J login`).
      print_error: prints a `SyncError` (the CLI's own format).
      out, err: where progress lines and errors go.
    """

    def __init__(self, logdir, destination, interval_s, bwlimit_kib=None,
                 compress=False, ssh=None, timeout_s=config_lib.DEFAULT_TIMEOUT_S,
                 print_error=None, out=None, err=None):
        self.logdir = os.path.abspath(os.path.expanduser(logdir))
        self.destination = destination
        self.target = _target(destination, ssh, bwlimit_kib, compress, timeout_s)
        if os.path.lexists(self.logdir) and not os.path.isdir(self.logdir):
            raise ConfigError(f"'{self.logdir}' is a file, not a folder; pass the folder that "
                              "holds the runs to push.")
        self.interval_s = interval_s
        self.rsync = config_lib.find_rsync()
        self._print_error = print_error or (
            lambda e: print(f"error: {e}", file=self._err or sys.stderr))
        self._out, self._err = out, err  # None: sys.stdout, sys.stderr at the time
        self._connections = SshConnections()
        self._temp_dir = tempfile.mkdtemp(prefix="tb-rsync-push-")
        self._told_missing = False

    def run(self, once=False):
        """Push every `interval_s` until stopped; with `once`, push once and return.

        Raises:
          SyncError: with `once`, when that push failed.
        """
        print(f"tb-rsync: pushing '{self.logdir}' to '{self.destination}' "
              + ("once" if once else f"every {self.interval_s:g} s; TERM or Ctrl-C pushes "
                 "once more, then stops") + ".", file=self._out, flush=True)
        failures, shown = 0, None
        while True:
            try:
                self.push_once(required=once)
            except TransferError as e:
                if once:
                    raise
                failures += 1
                if str(e) != shown:
                    shown = str(e)
                    self._print_error(e)
                delay = retry_delay_s(self.interval_s, failures)
                print(f"push: retrying in {delay:g} s ({failures} failed attempt(s) in a row)",
                      file=self._err or sys.stderr, flush=True)
            else:
                if once:
                    return
                if failures:
                    print(f"push: pushing again after {failures} failed attempt(s)",
                          file=self._out, flush=True)
                failures, shown, delay = 0, None, self.interval_s
            time.sleep(delay)

    def final(self, signal_name):
        """One last push after a stop signal (the job is ending); errors are printed."""
        print(f"push: {signal_name}: pushing once more before stopping", file=self._out,
              flush=True)
        try:
            self.push_once()
        except TransferError as e:
            self._print_error(e)

    def push_once(self, required=False):
        """One push, its result printed when it moved anything.

        Raises:
          TransferError: the push failed (worded for a push); ConfigError: `required` and
            the logdir does not exist.
        """
        if not os.path.isdir(self.logdir):
            if required:
                raise ConfigError(f"Nothing to push: '{self.logdir}' does not exist.")
            if not self._told_missing:
                self._told_missing = True
                print(f"push: '{self.logdir}' does not exist yet; pushing once it does.",
                      file=self._out, flush=True)
            return None
        try:
            result = self._connections.run(
                self.target, lambda rsh: push_tree(self.rsync, self.target, self.logdir,
                                                   self._temp_dir, rsh))
        except TransferError as e:
            raise TransferError(self._reworded(str(e)), e.details) from None
        for warning in result.warnings:
            print(f"push: warning: {self._reworded(warning)}", file=self._err or sys.stderr,
                  flush=True)
        if result.changed:
            print(f"push: {len(result.changed)} file(s), {result.bytes_received:,} bytes sent "
                  f"in {result.duration_s:.1f} s", file=self._out, flush=True)
        return result

    def close(self):
        """Stop the shared ssh login and remove the file lists' folder."""
        self._connections.close()
        shutil.rmtree(self._temp_dir, ignore_errors=True)

    def _reworded(self, text):
        """rsync.py and ssh.py word their sentences for a sync ("Sync of 'NAME' from ...")."""
        for prefix in (f"Sync of '{_NAME}' from '{self.target.source}'", f"Sync of '{_NAME}'"):
            if text.startswith(prefix):
                return f"Push of '{self.logdir}' to '{self.destination}'" + text[len(prefix):]
        return text


def from_arguments(args, print_error=None):
    """A `Pusher` from `add_arguments`' values; ConfigError sentences for bad ones."""
    if args.bwlimit is not None and args.bwlimit < 0:
        raise ConfigError("--bwlimit must be a whole number of KiB/s >= 0.")
    return Pusher(args.logdir, args.destination,
                  interval_s=config_lib.parse_interval(args.interval, "--interval",
                                                       zero_ok=False),
                  bwlimit_kib=args.bwlimit, compress=args.compress, ssh=args.ssh,
                  timeout_s=config_lib.parse_interval(args.timeout, "--timeout",
                                                      zero_ok=False),
                  print_error=print_error)


def _target(destination, ssh, bwlimit_kib, compress, timeout_s):
    """The destination as a `config.Source` (rsync's and ssh's code take one), checked."""
    if not destination or not destination.strip():
        raise ConfigError("No destination given; write it like 'tbhost:/srv/inbox/node1/'.")
    target = config_lib.Source(name=_NAME, source=destination.strip(), ssh=ssh,
                               bwlimit_kib=bwlimit_kib or None, compress=compress,
                               timeout_s=timeout_s)
    if target.is_rclone:
        raise ConfigError(f"'{destination}' is an rclone remote; tb-rsync push writes with "
                          "rsync: give HOST:INBOX/NAME/ (or an rsync daemon or a folder).")
    if ssh and not target.is_remote_shell:
        raise ConfigError(f"--ssh only applies to a HOST:DIR destination, and '{destination}' "
                          "is not one; remove --ssh or write it as HOST:DIR.")
    if compress:
        config_lib.check_compress(target, f"--compress (destination '{destination}')")
    return target
