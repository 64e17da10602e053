"""What `tb-rsync` prints: errors, each cycle's line as it ends, the progress line and the
`status` table; cli.py wires these to its commands.

Like cli.py, nothing here imports the engine when it loads (`tb-rsync --version` stays at
the interpreter's start-up cost).
"""

import sys
import threading
import time

from tb_rsync_plugin.errors import SyncError


def print_error(error):
    """A `SyncError` as the CLI prints it: `error: ` + its sentence, then its details."""
    print(f"error: {error}", file=sys.stderr)
    if getattr(error, "details", ""):
        for line in error.details.rstrip().splitlines():
            print(f"  {line}", file=sys.stderr)


class CycleReporter:
    """Prints each source's line as soon as its cycle ends, from the scheduler's threads.

    `sync` prints every source; `watch` (`quiet_when_unchanged`) prints only changes, errors
    (once, and again when the sentence changes) and recoveries, and a summary now and then.
    A bug in a cycle (not a `SyncError`) is kept and raised in the main thread, so the error
    boundary in main() exits 3 instead of a thread swallowing it.
    """

    def __init__(self, service, progress, quiet_when_unchanged):
        self._service = service
        self._progress = progress
        self._quiet = quiet_when_unchanged
        self._lock = threading.Lock()
        self._shown_error = {}
        self._shown_warnings = {}
        self._bugs = []
        self.failing = set()
        self._totals = {"syncs": 0, "files": 0, "bytes": 0}

    def on_end(self, end):
        status = self._service.state.source(end.name)
        with self._lock:
            self._progress.finished(end.name)
            if end.stopping:
                return  # a stop signal: "interrupted" (or "stopped") says it all
            self._totals["syncs"] += 1
            if end.error is not None:
                self.failing.add(end.name)
                if not isinstance(end.error, SyncError):
                    self._bugs.append(end.error)
                    return
                if self._quiet and self._shown_error.get(end.name) == str(end.error):
                    return
                self._shown_error[end.name] = str(end.error)
                print(f"{end.name}: ", end="", file=sys.stderr)
                print_error(end.error)
                if self._quiet and end.retry_in_s:
                    print(f"{end.name}: retrying in {end.retry_in_s:.0f} s", file=sys.stderr,
                          flush=True)
                return
            self.failing.discard(end.name)
            self._shown_error.pop(end.name, None)
            result = status["last_result"] or {}
            self._totals["files"] += result.get("files_published", 0)
            self._totals["bytes"] += result.get("bytes_received", 0)
            if end.recovered:
                print(f"{end.name}: syncs again after {end.previous_failures} failed "
                      "attempt(s)", flush=True)
            if end.changed or not self._quiet:
                print(f"{end.name}: {_bytes(result.get('bytes_received', 0))} received, "
                      f"{result.get('files_published', 0)} file(s) published, "
                      f"{result.get('runs_updated', 0)} run(s) updated "
                      f"in {result.get('duration_s', 0):.1f} s", flush=True)
            print_rewrites(self._service.journal.take_written())
            warnings = list(status["warnings"])
            if not self._quiet or warnings != self._shown_warnings.get(end.name, []):
                for warning in warnings:
                    print(f"{end.name}: warning: {warning}", file=sys.stderr, flush=True)
            self._shown_warnings[end.name] = warnings

    def print_summary(self, window_s):
        with self._lock:
            total = len(self._service.config.sources)
            totals, self._totals = self._totals, {"syncs": 0, "files": 0, "bytes": 0}
            failing = sorted(self.failing)
            self._progress.clear()
        line = (f"tb-rsync: {total - len(failing)} of {total} source(s) ok; "
                f"{totals['syncs']} sync(s), {totals['files']} file(s) and "
                f"{_bytes(totals['bytes'])} published in the last {_duration(window_s)}")
        if failing:
            shown = ", ".join(failing[:5]) + (" ..." if len(failing) > 5 else "")
            line += f"; failing: {shown}"
        print(line, flush=True)

    def raise_bug(self):
        with self._lock:
            if self._bugs:
                raise self._bugs[0]


def _duration(seconds):
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def print_rewrites(rewrites):
    """One line per event file this process rewrote, saying where the old copy went."""
    for r in rewrites:
        print(f"{r.source}: rewritten {r.file} (the source rewrote it); old copy kept at "
              f"'{r.kept_at}'", flush=True)


def format_status(snapshot, now, rewrites=()):
    """The freshness table: sources first, then one line per run, then recent rewrites."""
    lines = []
    for s in snapshot["sources"]:
        retry = s.get("next_sync_unix_s") if s.get("retrying") else None
        retrying = "" if retry is None else \
            (f", retrying in {retry - now:.0f} s" if retry > now else ", retrying now")
        found_by = f", found by {s['found_by']}" if s.get("found_by") else ""
        lines.append(f"source {s['name']} ({s['source']}): {s['state']}{retrying}, last sync "
                     f"{_age(s['last_end_unix_s'], now)}{found_by}{_requests(s, now)}")
        if s.get("error"):
            lines.append(f"  error: {s['error']['message']}")
    for rule in snapshot.get("discover", ()):
        lines.append(f"discovery {rule['rule']}: ran {_age(rule.get('last_run_unix_s'), now)}, "
                     f"{len(rule.get('sources') or [])} source(s)")
        if rule.get("error"):
            lines.append(f"  error: {rule['error']['message']}")
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


def _requests(source, now):
    """", 42 rclone requests in the last hour (12 syncs)" for an rclone source (its
    journalled minutes), "" for others."""
    from tb_rsync_plugin.engine.source_status import requests_last_hour
    counted = requests_last_hour(source["source"], source.get("api_request_minutes"), now)
    if counted is None:
        return ""
    if counted["last_hour"] is None:
        return (", rclone requests in the last hour unknown (rclone_flags or RCLONE_* "
                "variables set rclone's logging)")
    return (f", {counted['last_hour']} rclone request(s) in the last hour "
            f"({counted['syncs']} sync(s))")


def _bytes(n):
    from tb_rsync_plugin.engine.prune import format_bytes
    return format_bytes(n)


class ProgressPrinter:
    """A live progress line on a terminal; a plain line every few seconds otherwise.

    Off a terminal the timer is per sync: a line once that sync has reported progress for
    `plain_every_s`, then one every `plain_every_s`, so a sync that ends sooner is reported
    by its result line alone, not by a snapshot of a progress bar. `finished(name)` ends a
    sync (the CLI calls it when the scheduler says the cycle ended).
    """

    def __init__(self, stream, plain_every_s=5.0, clock=time.monotonic):
        self._stream = stream
        self._tty = stream.isatty()
        self._lock = threading.Lock()
        self._clock = clock
        self._syncs = {}  # name -> when its running sync's timer started or last printed
        self._plain_every_s = plain_every_s
        self._shown = False

    def update(self, name, progress):
        text = (f"{name}: {progress.phase} {_bytes(progress.bytes_done)} "
                f"{progress.percent}% {_bytes(progress.rate_bytes_s)}/s")
        with self._lock:
            if self._tty:
                self._stream.write("\r\x1b[K" + text)
                self._shown = True
            else:
                now = self._clock()
                if now - self._syncs.setdefault(name, now) < self._plain_every_s:
                    return
                self._syncs[name] = now
                self._stream.write(text + "\n")
            self._stream.flush()

    def finished(self, name):
        """`name`'s sync ended: clear the live line; its next sync starts its own timer."""
        with self._lock:
            self._syncs.pop(name, None)
        self.clear()

    def clear(self):
        with self._lock:
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
