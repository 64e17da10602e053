"""`tb-rsync`: the sync engine without TensorBoard.

The error boundary lives here: a `SyncError` becomes one `error:` line (plus its details
when there are any) and exit 1; SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the syncs and the
shared ssh logins and exit 128 + the signal's number (130, 143, 129); anything else is a bug
and exits 3 with a traceback. Progress is a live line on a terminal and plain lines otherwise. `sync` and
`watch` run the same scheduler as TensorBoard (bounded parallelism, per-host limits,
backoff) and print each source's line the moment it ends.
"""

import argparse
import contextlib
import signal
import sys
import threading
import time
import traceback

from tb_rsync_plugin import __version__
from tb_rsync_plugin import cli_discover
from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import config_file as config_file_lib
from tb_rsync_plugin.cli_output import (CycleReporter, ProgressPrinter, format_status,
                                        print_error)
from tb_rsync_plugin.errors import SyncError

# The engine is imported by the subcommands that run it, not here: `tb-rsync --version`,
# `--help` and a mistyped flag answer at the interpreter's own start-up cost (BENCHMARKS.md).

EXIT_OK, EXIT_FAILED, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 3, 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived; unwinds the main thread as Ctrl-C's KeyboardInterrupt does."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP all stop tb-rsync, whatever it inherited.

    Set explicitly: a shell starts a background job (`tb-rsync watch &` in a script) with
    SIGINT ignored, and Python then never installs its Ctrl-C handler; SIGTERM (systemd,
    `docker stop`, `kill`) and SIGHUP would end the process without any cleanup, leaving
    the shared ssh logins up for ControlPersist. A SIGHUP that `nohup` ignores stays
    ignored: that is nohup's whole point. The first signal raises `Stopped` in the main
    thread; later ones are ignored while it stops (a bounded wait), and one that comes
    while the service is being stopped (`held`) waits until that is done.
    """

    def __init__(self):
        self.received = None
        self._held = self._pending = False

    @contextlib.contextmanager
    def installed(self):
        self.received, self._held, self._pending = None, False, False
        previous = {}
        for signum in STOP_SIGNALS:
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.received is not None:
            return
        self.received = signum
        if self._held:
            self._pending = True
        else:
            raise Stopped(signum)

    @contextlib.contextmanager
    def held(self):
        """Stopping the service: raising half-way would leave ssh logins and rsyncs up."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending:
            self._pending = False
            raise Stopped(self.received)


_stop_signals = _StopSignals()


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tb-rsync",
        description="Sync TensorBoard logs from remote machines into a local logdir so that "
                    "TensorBoard keeps showing new points (event files grow in place).")
    parser.add_argument("--version", action="version", version=f"tb-rsync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_common(sub, with_sources=True):
        sub.add_argument("--logdir", required=True, help="local TensorBoard logdir to publish into")
        sub.add_argument("--staging", help="staging folder (default: under ~/.cache/tb-rsync)")
        if with_sources:
            sub.add_argument("--source", action="append", default=[], metavar="NAME=SOURCE",
                             help="rsync source, or rclone:REMOTE:PATH, published under "
                                  "LOGDIR/NAME (repeatable)")
            sub.add_argument("--config", metavar="FILE", help="TOML file with [[source]] "
                                                               "tables and [[discover]] rules")
            sub.add_argument("--no-ssh-sharing", dest="ssh_sharing", action="store_false",
                             help="every rsync logs in on its own (no shared ssh connection)")

    def add_limits(sub):
        sub.add_argument("--max-parallel", type=int, default=config_lib.DEFAULT_MAX_PARALLEL,
                         metavar="N", help="at most N sources sync at once (default "
                                           "%(default)s)")
        sub.add_argument("--max-per-host", type=int, default=config_lib.DEFAULT_MAX_PER_HOST,
                         metavar="N", help="at most N sources sync at once from one host "
                                           "(default %(default)s)")

    def add_disk(sub):
        sub.add_argument("--quarantine-days", default=f"{config_lib.DEFAULT_QUARANTINE_DAYS:g}",
                         metavar="DAYS", help="remove quarantined old versions older than "
                         "this, except each file's newest (default %(default)s)")
        sub.add_argument("--quarantine-max-gib", metavar="GIB",
                         default=f"{config_lib.DEFAULT_QUARANTINE_MAX_GIB:g}",
                         help="keep the quarantine under this size, oldest versions removed "
                              "first (default %(default)s)")

    sync = commands.add_parser("sync", help="sync every source once, then exit")
    add_common(sync)
    add_limits(sync)
    add_disk(sync)
    watch = commands.add_parser("watch", help="sync every --interval seconds until Ctrl-C")
    add_common(watch)
    add_limits(watch)
    add_disk(watch)
    # Parsed in cmd_watch by config.parse_interval: the sentence --rsync_interval gets.
    watch.add_argument("--interval", default="30", help="seconds between syncs (default 30)")
    watch.add_argument("--summary-every", type=float, default=300.0, metavar="SECONDS",
                       help="print a one-line summary this often (default 300; 0: never)")
    watch.add_argument("--watch-source", action="append", default=[], metavar="NAME",
                       help="sync local source NAME (an inbox nodes push into) as soon as it "
                            "changes; the interval stays as a fallback (repeatable)")
    watch.add_argument("--metrics-port", type=int, metavar="PORT",
                       help="serve Prometheus metrics on this port (0: any free one)")
    watch.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                       help="address the metrics are served on (default %(default)s)")
    status = commands.add_parser("status", help="show per-run freshness")
    add_common(status, with_sources=False)
    status.add_argument("--forget", action="append", default=[], metavar="NAME",
                        help="drop a source you no longer sync (and its runs) from the saved "
                             "state first, and its staging folder; its published files "
                             "stay in the logdir")
    prune = commands.add_parser("prune", help="free disk in the staging folder now (old "
                                "quarantine, leftovers, unconfigured sources, long journals)")
    add_common(prune)
    add_disk(prune)
    prune.add_argument("--dry-run", action="store_true", help="show what would go; remove "
                                                              "nothing")
    push = commands.add_parser("push", help="push a node's logdir into a hub's watched inbox "
                                            "every --interval seconds (the node side)")
    _add_push_arguments(push)
    cli_discover.add_parser(commands)
    return parser


def _add_push_arguments(parser):
    """`tb-rsync push`'s arguments (push.py takes them: `push.from_arguments`)."""
    parser.add_argument("logdir", metavar="LOGDIR", help="the node's folder of runs")
    parser.add_argument("destination", metavar="HUB:INBOX/NAME/",
                        help="this node's own folder in the hub's watched inbox")
    # Parsed by config.parse_interval: the sentence --rsync_interval gets.
    parser.add_argument("--interval", default="30",
                        help="seconds between pushes (default %(default)s)")
    parser.add_argument("--once", action="store_true", help="push once, then exit (the last "
                        "push of a job script's EXIT trap)")
    parser.add_argument("--bwlimit", type=int, metavar="KIB",
                        help="at most KIB KiB/s (rsync --bwlimit)")
    parser.add_argument("--compress", action="store_true",
                        help="compress on the wire (rsync -z, zstd when both ends have it)")
    parser.add_argument("--ssh", metavar="CMD", help="the ssh command (\"ssh -p 2222 -J "
                        "login\"); tb-rsync adds only options that make it fail, not ask")
    parser.add_argument("--timeout", default=str(config_lib.DEFAULT_TIMEOUT_S), metavar="S",
                        help="longest one push may take (default %(default)s)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Signal handlers can only be set from the main thread (a test may call main elsewhere).
    handling = threading.current_thread() is threading.main_thread()
    try:
        with _stop_signals.installed() if handling else contextlib.nullcontext():
            return COMMANDS[args.command](args)
    except SyncError as e:
        print_error(e)
        return EXIT_FAILED
    except Stopped as e:
        _say_stopped(e.signum)
        return 128 + e.signum
    except Exception:
        traceback.print_exc()
        print("error: this is a bug in tb-rsync; please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_BUG


def _say_stopped(signum):
    try:
        print("\ninterrupted" if signum == signal.SIGINT else
              f"tb-rsync: stopped ({signal.Signals(signum).name})", file=sys.stderr)
    except OSError:
        pass  # SIGHUP: the terminal may be gone


def _config(args, interval_s=0.0, watch_names=()):
    for flag in ("max_parallel", "max_per_host"):
        if getattr(args, flag) < 1:
            raise config_lib.ConfigError(f"--{flag.replace('_', '-')} must be at least 1.")
    config = config_lib.build_config(args.logdir, args.source, args.config, args.staging,
                                     interval_s, watch_names, max_parallel=args.max_parallel,
                                     max_per_host=args.max_per_host,
                                     ssh_sharing=args.ssh_sharing, disk=_disk(args))
    if not config.sources and not config.discover and args.config:
        raise config_lib.ConfigError(
            f"The config file '{args.config}' has no [[source]] or "
            "[[discover]] tables; add one or pass --source NAME=SOURCE.")
    if not config.sources and not config.discover:
        raise config_lib.ConfigError("No sources given; add --source NAME=SOURCE or --config FILE.")
    return config


def _service(config, on_progress=None):
    from tb_rsync_plugin.engine import service as service_lib
    from tb_rsync_plugin.engine import state as state_lib
    from tb_rsync_plugin.tensorboard import reload as reload_lib
    from tb_rsync_plugin.transports import transport
    transport.find_tools(config.sources)
    state = state_lib.SyncState(config.sources, config.interval_for)
    return service_lib.SyncService(config, state, reload_lib.NoReloader(),
                                   on_progress=on_progress)


def _disk(args):
    return config_file_lib.parse_disk_limits(args.quarantine_days, args.quarantine_max_gib,
                                             tensorboard=False)


def cmd_prune(args):
    """What `prune.py` frees, now: one line per item with its size, and a total."""
    from tb_rsync_plugin.engine import prune as prune_lib
    config = config_lib.build_config(args.logdir, args.source, args.config, args.staging,
                                     disk=_disk(args))
    now = time.time()
    report = prune_lib.clean_tmp(config, now, args.dry_run) + \
        prune_lib.prune(config, now, args.dry_run)
    print("\n".join(prune_lib.format_report(report, args.dry_run)))
    return EXIT_OK


def cmd_sync(args):
    progress = ProgressPrinter(sys.stderr)
    config, rules = cli_discover.discover_now(_config(args))
    if not config.sources:
        print("tb-rsync: the discovery rules found no sources; nothing to sync.", flush=True)
        return EXIT_FAILED if any(rule.error for rule in rules) else EXIT_OK
    service = _service(config, on_progress=progress.update)
    cli_discover.record(service, rules)
    report = CycleReporter(service, progress, quiet_when_unchanged=False)
    service.scheduler.add_listener(report.on_end)
    finished = False
    try:
        service.start(timers=False)
        service.request()
        _wait_interruptibly(service)
        report.raise_bug()
        service.prune_if_due()
        finished = True
        failed = report.failing or any(rule.error for rule in rules)
        return EXIT_OK if not failed else EXIT_FAILED
    finally:
        with _stop_signals.held():
            # A finished sync leaves its shared ssh logins up for ControlPersist (5 min), so
            # the next `tb-rsync sync` (cron every minute) logs in zero times, not once. On a
            # stop signal they go with it, as rsync children do.
            service.stop(keep_logins=finished)


def cmd_watch(args):
    from tb_rsync_plugin.engine import inbox
    from tb_rsync_plugin.engine import metrics as metrics_lib
    interval_s = config_lib.parse_interval(args.interval, "--interval", zero_ok=False)
    progress = ProgressPrinter(sys.stderr)
    service = _service(_config(args, interval_s, args.watch_source),
                       on_progress=progress.update)
    config = service.config
    watcher = found = metrics_server = None
    report = CycleReporter(service, progress, quiet_when_unchanged=True)
    service.scheduler.add_listener(report.on_end)
    rules = f" and what {len(config.discover)} discovery rule(s) find" if config.discover \
        else ""
    print(f"tb-rsync: syncing {len(config.sources)} source(s){rules} into {config.logdir}: "
          f"checked every {interval_s:g} s (or each source's own 'interval'), synced when "
          "they change; Ctrl-C stops.", flush=True)
    try:
        if args.metrics_port is not None:
            metrics_server, url = metrics_lib.SyncMetrics(service).serve(args.metrics_host,
                                                                         args.metrics_port)
            print(f"tb-rsync: Prometheus metrics at {url}", flush=True)
        service.start(timers=True)
        # interval = 0 means "only when asked": synced once, at the start.
        service.request([s.name for s in config.sources if config.interval_for(s) <= 0])
        watcher = inbox.start_watching(config, service.request)
        if config.discover:
            found = cli_discover.start_watching(service)
        elif all(config.interval_for(s) <= 0 for s in config.sources) and watcher is None:
            _wait_interruptibly(service)
            report.raise_bug()
            print("tb-rsync: every source has interval 0 (sync only when asked); "
                  "nothing more to do.", flush=True)
            return EXIT_OK
        next_summary = time.monotonic() + args.summary_every
        while True:
            time.sleep(0.2)
            report.raise_bug()
            if args.summary_every > 0 and time.monotonic() >= next_summary:
                next_summary = time.monotonic() + args.summary_every
                report.print_summary(args.summary_every)
    finally:
        with _stop_signals.held():
            if watcher is not None:
                watcher.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            service.stop()
            if found is not None:
                found.stop()


def _wait_interruptibly(service):
    while not service.wait(timeout_s=0.2):
        pass  # a short wait so a stop signal is acted on at once


def cmd_status(args):
    from tb_rsync_plugin.engine import prune as prune_lib
    from tb_rsync_plugin.engine import discovery
    from tb_rsync_plugin.engine import state_journal
    from tb_rsync_plugin.publishing import rewrites as rewrites_lib
    config = config_lib.build_config(args.logdir, staging=args.staging)
    if args.forget:
        found, report = prune_lib.forget(config, args.forget)
        missing = [name for name in args.forget if name not in found]
        if missing:
            raise config_lib.ConfigError(
                f"No source named {', '.join(repr(n) for n in missing)} in the saved state of "
                f"logdir '{config.logdir}'; 'tb-rsync status' lists the ones there.")
        print(f"tb-rsync: forgot {', '.join(found)} (published files stay in the logdir). "
              f"{prune_lib.format_bytes(report.total_bytes)} freed in the staging folder.")
    snapshot = state_journal.load_snapshot(config.state_dir)
    if snapshot is None:
        print(f"No sync has run for logdir '{config.logdir}' yet "
              f"(no state in '{config.staging_root}'). Run 'tb-rsync sync' first.")
        return EXIT_OK
    now = time.time()
    snapshot["discover"] = discovery.load_rules(config.state_dir)
    print(format_status(snapshot, now, rewrites_lib.recent(config.rewrites_path)))
    return EXIT_FAILED if any(s["state"] == "error" for s in snapshot["sources"]) else EXIT_OK


def cmd_push(args):
    from tb_rsync_plugin import push as push_lib
    pusher = push_lib.from_arguments(args, print_error=print_error)
    try:
        pusher.run(once=args.once)
        return EXIT_OK
    except Stopped as e:
        pusher.final(signal.Signals(e.signum).name)  # later signals are ignored meanwhile
        raise
    finally:
        with _stop_signals.held():
            pusher.close()  # stops the shared ssh login


COMMANDS = {"sync": cmd_sync, "watch": cmd_watch, "status": cmd_status, "push": cmd_push,
            "sources": cli_discover.cmd_sources, "prune": cmd_prune}

if __name__ == "__main__":
    sys.exit(main())
