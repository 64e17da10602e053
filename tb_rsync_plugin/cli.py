"""`tb-rsync`: the sync engine without TensorBoard.

The error boundary lives here: a `SyncError` becomes one `error:` line (plus its details
when there are any) and exit 1; Ctrl-C exits 130; anything else is a bug and exits 3 with a
traceback. Progress is a live line on a terminal and plain lines otherwise.
"""

import argparse
import sys
import threading
import time
import traceback

from tb_rsync_plugin import __version__
from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import reload as reload_lib
from tb_rsync_plugin import rewrites as rewrites_lib
from tb_rsync_plugin import service as service_lib
from tb_rsync_plugin import state as state_lib
from tb_rsync_plugin.errors import SyncError

EXIT_OK, EXIT_FAILED, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 3, 130


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
                             help="rsync source published under LOGDIR/NAME (repeatable)")
            sub.add_argument("--config", metavar="FILE", help="TOML file with [[source]] tables")

    add_common(commands.add_parser("sync", help="sync every source once, then exit"))
    watch = commands.add_parser("watch", help="sync every --interval seconds until Ctrl-C")
    add_common(watch)
    watch.add_argument("--interval", type=float, default=30.0,
                       help="seconds between syncs (default 30)")
    status = commands.add_parser("status", help="show per-run freshness")
    add_common(status, with_sources=False)
    status.add_argument("--forget", action="append", default=[], metavar="NAME",
                        help="drop a source you no longer sync (and its runs) from the saved "
                             "state first; its published files stay in the logdir")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SyncError as e:
        _print_error(e)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("error: this is a bug in tb-rsync; please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_BUG


def _print_error(error):
    print(f"error: {error}", file=sys.stderr)
    if getattr(error, "details", ""):
        for line in error.details.rstrip().splitlines():
            print(f"  {line}", file=sys.stderr)


def _service(args, interval_s=0.0):
    config = config_lib.build_config(args.logdir, args.source, args.config, args.staging,
                                     interval_s)
    if not config.sources and args.config:
        raise config_lib.ConfigError(f"The config file '{args.config}' has no [[source]] "
                                     "tables; add one or pass --source NAME=SOURCE.")
    if not config.sources:
        raise config_lib.ConfigError("No sources given; add --source NAME=SOURCE or --config FILE.")
    config_lib.find_rsync()
    state = state_lib.SyncState(config.sources, config.interval_for)
    return service_lib.SyncService(config, state, reload_lib.NoReloader())


def cmd_sync(args):
    service = _service(args)
    try:
        return EXIT_OK if _sync_all(service) else EXIT_FAILED
    finally:
        service.stop()  # on Ctrl-C too: cancels rsync children


def cmd_watch(args):
    if args.interval <= 0:
        raise config_lib.ConfigError("--interval must be more than 0 seconds.")
    service = _service(args, args.interval)
    print(f"tb-rsync: syncing {len(service.config.sources)} source(s) into "
          f"{service.config.logdir} every {args.interval:g} s (or each source's own "
          "'interval'); Ctrl-C stops.", flush=True)
    due = {source.name: time.monotonic() for source in service.config.sources}
    try:
        while True:
            now = time.monotonic()
            names = [name for name, when in due.items() if when <= now]
            if names:
                _sync_sources(service, names)
                for name in names:
                    interval = service.config.interval_for(service.config.source(name))
                    # interval = 0 means "only when asked": synced once, at the start.
                    due[name] = now + interval if interval > 0 else float("inf")
            if all(when == float("inf") for when in due.values()):
                print("tb-rsync: every source has interval 0 (sync only when asked); "
                      "nothing more to do.", flush=True)
                return EXIT_OK
            time.sleep(max(0.05, min(due.values()) - time.monotonic()))
    finally:
        service.stop()


def _sync_all(service):
    """One pass over every source; True when all succeeded."""
    _sync_sources(service, [s.name for s in service.config.sources])
    return all(s["state"] != "error" for s in service.state.snapshot()["sources"])


def _sync_sources(service, names):
    """Sync `names` in parallel, printing one result line per source and every problem.

    An unexpected exception in a worker thread (a bug) is raised here, after the report, so
    the error boundary in main() exits 3 instead of the thread swallowing it.
    """
    progress = ProgressPrinter(sys.stderr)
    failures, bugs = {}, []

    def run(name):
        try:
            service.run_cycle(name, on_progress=progress.update)
        except SyncError as e:
            failures[name] = e
        except Exception as e:  # recorded in state too; re-raised in the main thread
            bugs.append(e)

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # join with a timeout so Ctrl-C is delivered
    progress.clear()
    snapshot = service.state.snapshot()
    for source in snapshot["sources"]:
        name = source["name"]
        if name not in names:
            continue
        if name in failures:
            print(f"{name}: ", end="", file=sys.stderr)
            _print_error(failures[name])
            continue
        result = source["last_result"] or {}
        print(f"{name}: {_bytes(result.get('bytes_received', 0))} received, "
              f"{result.get('files_published', 0)} file(s) published, "
              f"{result.get('runs_updated', 0)} run(s) updated "
              f"in {result.get('duration_s', 0):.1f} s", flush=True)
        for warning in source["warnings"]:
            print(f"{name}: warning: {warning}", file=sys.stderr, flush=True)
    print_rewrites(service.journal.take_written())
    if bugs:
        raise bugs[0]


def print_rewrites(rewrites):
    """One line per event file this process rewrote, saying where the old copy went."""
    for r in rewrites:
        print(f"{r.source}: rewritten {r.file} (the source rewrote it); old copy kept at "
              f"'{r.kept_at}'", flush=True)


def cmd_status(args):
    config = config_lib.build_config(args.logdir, staging=args.staging)
    if args.forget:
        found = state_lib.forget_sources(config.state_path, args.forget)
        missing = [name for name in args.forget if name not in found]
        if missing:
            raise config_lib.ConfigError(
                f"No source named {', '.join(repr(n) for n in missing)} in the saved state of "
                f"logdir '{config.logdir}'; 'tb-rsync status' lists the ones there.")
        print(f"tb-rsync: forgot {', '.join(found)} (published files stay in the logdir).")
    snapshot = state_lib.load_snapshot(config.state_path)
    if snapshot is None:
        print(f"No sync has run for logdir '{config.logdir}' yet "
              f"(no state in '{config.staging_root}'). Run 'tb-rsync sync' first.")
        return EXIT_OK
    now = time.time()
    print(format_status(snapshot, now, rewrites_lib.recent(config.rewrites_path)))
    return EXIT_FAILED if any(s["state"] == "error" for s in snapshot["sources"]) else EXIT_OK


def format_status(snapshot, now, rewrites=()):
    """The freshness table: sources first, then one line per run, then recent rewrites."""
    lines = []
    for s in snapshot["sources"]:
        lines.append(f"source {s['name']} ({s['source']}): {s['state']}, last sync "
                     f"{_age(s['last_end_unix_s'], now)}")
        if s.get("error"):
            lines.append(f"  error: {s['error']['message']}")
    rows = [("RUN", "SOURCE", "NEWEST EVENT", "STEP", "PUBLISHED", "STATE")]
    problems = []
    for r in snapshot["runs"]:
        rows.append((r["run"], r["source"], _age(r["source_wall_time"], now),
                     "-" if r["source_step"] is None else str(r["source_step"]),
                     _age(r["published_unix_s"], now), r["state"]))
        if r["state"] in ("error", "restart_needed"):
            problems.append(f"{r['run']}: {r['state_detail']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                 for row in rows)
    if len(rows) == 1:
        lines.append("(no runs published yet)")
    if problems:
        lines.append("")
        lines.extend(problems)
    if rewrites:
        lines.extend(["", "Recent rewrites (newest first):"])
        lines.extend(f"  {_age(r.unix_s, now)}: {r.file}, old copy at '{r.kept_at}'"
                     for r in rewrites)
    return "\n".join(lines)


def _age(unix_s, now):
    if unix_s is None:
        return "never"
    seconds = max(0, now - unix_s)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class ProgressPrinter:
    """A live progress line on a terminal; a plain line every few seconds otherwise.

    Off a terminal the first line comes only after `plain_every_s`: a sync that ends sooner
    is reported by its result line alone, not by a snapshot of a progress bar.
    """

    def __init__(self, stream, plain_every_s=5.0):
        self._stream = stream
        self._tty = stream.isatty()
        self._lock = threading.Lock()
        self._last_plain = {}
        self._plain_every_s = plain_every_s
        self._shown = False

    def update(self, name, progress):
        text = (f"{name}: {progress.phase} {_bytes(progress.bytes_done)} "
                f"{progress.percent}% {_bytes(progress.rate_bytes_s)}/s")
        with self._lock:
            if self._tty:
                self._stream.write("\r\x1b[K" + text)
                self._shown = True
            elif time.monotonic() - self._last_plain.setdefault(name, time.monotonic()) \
                    >= self._plain_every_s:
                self._last_plain[name] = time.monotonic()
                self._stream.write(text + "\n")
            self._stream.flush()

    def clear(self):
        with self._lock:
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()


COMMANDS = {"sync": cmd_sync, "watch": cmd_watch, "status": cmd_status}

if __name__ == "__main__":
    sys.exit(main())
