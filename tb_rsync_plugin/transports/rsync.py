"""rsync into the staging tree (process.py starts its processes; ssh.py gives its --rsh).

Event files and everything else need opposite handling. A sync of an idle source is one
walk of the source, and more processes only when that walk found something to move:

1. A listing: ``rsync --dry-run`` over the filtered tree itemizes every file whose size or
   mtime differs from its staged copy. When nothing changed this is the whole sync (one
   login, one walk, nothing written). For a source that changed at its last sync
   (``expect_growth``: a job is writing), the ``--append`` pass of event files (the user's
   filters narrowed to basenames containing ``tfevents``, ``--prune-empty-dirs``) runs
   beside the listing, so grown event files cost one round of wall time, not two; an event
   file that pass itemized is done, whatever the listing says (the source may have grown
   since, or the listing may have looked at the staged copy mid-append).
2. Then, side by side, each with ``--files-from`` (no second walk):
   - event files (basename contains ``tfevents``) that are new or longer at the source:
     ``rsync --append``, which moves just the new bytes (a 1 GB file grown by 1 MB: 0.02 s
     instead of 3.7 s). A file that grew again since the listing is appended up to its
     current length; the publisher only publishes whole records.
   - event files shorter at the source than staged (rewritten), or not a regular file in
     staging: fetched whole with ``--whole-file --ignore-times`` (``TransferResult.restaged``).
   - every other changed file (and symlink): rsync's default algorithm, written in
     ``--temp-dir`` and renamed into place (never ``--inplace``).
   Event files of the same size with another mtime are reported as
   ``TransferResult.same_size``, not fetched: the caller decides. A file rewritten to a longer
   length is appended onto the old prefix; the publisher notices when the new bytes do not
   start with a valid record and calls `restage_files` (a rewrite with the very same record
   sizes goes unnoticed: see docs/ARCHITECTURE.md).
All processes share one deadline and one cancel flag; a failure stops all of them and raises
one `TransferError`. A process that a daemon's ``max connections`` refused is started again
alone once the others are done. Measured (loopback, 2 busy cores): see docs/BENCHMARKS.md B1
and B3. Nothing is ever deleted from staging (files deleted at the source stay); the
publisher is told what changed, so nobody walks the tree.

Filter semantics (``Source.include`` / ``Source.exclude``), applied by the listing (the
transfers use its explicit file lists):
  1. ``exclude`` patterns come first and always win: a matching file or folder is skipped.
  2. Every other folder is descended into.
  3. With ``include`` patterns, only files matching one of them are synced ("only these");
     without, every file is. To select a folder's contents write ``folder/***``. An exclude of
     ``*`` next to includes (the classic rsync idiom) is implied and therefore dropped.
Patterns are rsync patterns: without a ``/`` they match a basename at any depth.
"""

import collections
import dataclasses
import errno
import os
import re
import shlex
import signal
import stat
import tempfile
import threading
import time
from typing import Tuple

from tb_rsync_plugin.transports import remote_shell
from tb_rsync_plugin.transports import process as process_lib
from tb_rsync_plugin.config import FOREIGN_TEMP_PATTERNS, STAGING_FLAGS, is_event_file
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.ssh import CONNECT_TIMEOUT_S, CONNECTION_DIAGNOSES, diagnose, ssh_command

_PREFIX = b"<tb-rsync> "
_OUT_FORMAT = "--out-format=" + _PREFIX.decode() + "%i %l %b %n"
_PROGRESS_RE = re.compile(rb"^\s*([\d,]+)\s+(\d+)%\s+([\d.,]+)([kMGT]?B)/s")
_OCTAL_RE = re.compile(rb"\\#([0-7]{3})")
_RATE_UNITS = {b"B": 1, b"kB": 1024, b"MB": 1024 ** 2, b"GB": 1024 ** 3, b"TB": 1024 ** 4}


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report. `bytes_done` sums every rsync process of this sync; `percent` and
    `rate_bytes_s` are those of the process in `phase` ("events", "files" or "restage").
    The service adds two phases of its own: "connecting" (before rsync reports) and
    "reloading" (a fast-loader reload cycle)."""

    bytes_done: int
    percent: int
    rate_bytes_s: float
    phase: str


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """What one sync wrote into the staging tree.

    Attributes:
      changed: regular files rsync wrote (POSIX paths relative to the staging dir), sorted.
      restaged: the subset of `changed` fetched whole because the staged copy was not a
        prefix of the source any more (the source shrank, or `restage_files` was asked).
      bytes_received: bytes rsync reports moving for those files (protocol included).
      files_transferred: len(changed).
      warnings: sentences about problems that did not stop the sync (vanished files ...).
      duration_s: wall time of the whole sync.
      same_size: event files whose source changed (other mtime) but kept its size; this
        transfer did not fetch them (see `run_rsync`), the caller decides.
      grown: event files `--append` extended from an earlier staged copy (not new ones):
        the caller checks that their first records still match the source's (a restarted
        run reusing the name with the same record sizes would otherwise be spliced on).
    """

    changed: Tuple[str, ...] = ()
    restaged: Tuple[str, ...] = ()
    bytes_received: int = 0
    files_transferred: int = 0
    warnings: Tuple[str, ...] = ()
    duration_s: float = 0.0
    same_size: Tuple[str, ...] = ()
    grown: Tuple[str, ...] = ()


def run_rsync(rsync_path, source, staging_dir, temp_dir, on_progress=None, cancel=None,
              before_write=None, rsh=None, expect_growth=False):
    """Bring `staging_dir` up to date with `source` (never deleting anything).

    Args:
      rsync_path: the local rsync binary.
      source: a `config.Source`.
      staging_dir: rsync's destination; created if missing.
      temp_dir: rsync's --temp-dir, outside the staging tree on the same filesystem.
      on_progress: called with `Progress` from rsync's reader threads (never concurrently).
      cancel: a `threading.Event`; when set, rsync is stopped and TransferError raised.
      before_write: called once before the first process that writes into staging starts
        (never when nothing changed and not `expect_growth`), so the caller can mark staging
        as unpublished.
      expect_growth: the source changed at its last sync (a job is writing): run the
        `--append` pass of event files beside the listing, one round instead of two.
      rsh: the `--rsh` value for a `host:dir` source (`ssh.SshConnections.rsh_for`, which
        shares one login); default: `ssh.ssh_command(source.ssh)`.

    Raises:
      TransferError: one sentence naming the source; `details` holds the command and stderr.
    """
    run = RsyncRun(rsync_path, source, staging_dir, temp_dir, on_progress, cancel, rsh)
    if expect_growth:
        # An active source: its event files most likely grew, so the append pass runs beside
        # the listing (two walks, one round of wall time).
        if before_write is not None:
            before_write()
        listing = run.start("list", ["--dry-run"] + run.filters(), progress=False)
        events = run.start("events", ["--append", "--prune-empty-dirs"] +
                           run.filters(events=True))
        listing, events = run.settle([listing, events])
        appended, first = {path for _, _, _, path in events.items}, [listing, events]
    else:
        # An idle source: one walk. A sync that finds nothing ends here, having written
        # nothing.
        (listing,) = run.settle([run.start("list", ["--dry-run"] + run.filters(),
                                           progress=False)])
        appended, first = set(), [listing]
    append, whole, others, same_size = [], [], [], []
    for kind, length, _, path in listing.items:
        if kind[1:2] == "d":
            continue  # folders come with the files inside them
        event = is_event_file(path)
        if event and path in appended:
            # The append pass brought it up to date (or made the symlink). Never judged by
            # the listing's length: the source may have grown since, or the listing may have
            # looked at the staged copy half-way through the append.
            continue
        if not (kind.startswith(">f") and event):
            if kind.startswith(">f") or kind[1:2] == "L":
                others.append(path)
            continue
        # Not touched by an append pass this sync: its staged copy is as the previous sync
        # left it, so the listed length is a fair comparison.
        try:
            staged = os.lstat(os.path.join(staging_dir, path))
        except FileNotFoundError:
            append.append(path)  # new: --append writes it from byte 0
            continue
        if not stat.S_ISREG(staged.st_mode) or staged.st_size > length:
            whole.append(path)  # shrank at the source, or not a file here: fetch whole
        elif staged.st_size < length:
            append.append(path)  # grew: only the new bytes move
        else:
            # Same size, other mtime: --append would skip it. Reported, not fetched: a
            # corrupt record fixed in place at the source changes no size, and without this
            # the fix was never fetched (tests/test_faults.py, corrupt records case).
            same_size.append(path)
    jobs = []
    if (append or whole or others) and before_write is not None and not expect_growth:
        before_write()
    # --append with an explicit list: no second walk; a file that grew again since the
    # listing is appended up to its current length (the publisher keeps whole records).
    if append:
        jobs.append(run.start("events", ["--append"], files=append))
    if whole:
        jobs.append(run.start("restage", ["--whole-file", "--ignore-times"], files=whole))
    if others:
        jobs.append(run.start("files", [], files=others))
    jobs = run.settle(jobs)
    return dataclasses.replace(run.result(first + jobs, restaged_phase="restage"),
                               same_size=tuple(sorted(same_size)))


def io_timeout_s(timeout_s):
    """rsync's --timeout: no data for this long fails the transfer.

    Bounded to 30 s: it is also how long a daemon that accepted the connection and never
    answers can hold a slot (--contimeout covers only the TCP connect), and rsync sends
    keep-alives while it builds file lists, so a healthy but slow source does not trip it.
    """
    return int(min(max(timeout_s / 4, 10), 30))


def restage_files(rsync_path, source, staging_dir, temp_dir, paths, on_progress=None,
                  cancel=None, rsh=None):
    """Fetch `paths` (relative to the source) whole, replacing their staged copies.

    For event files the publisher found not to extend what it published: no append, no
    quick check (`--ignore-times`), so even a same-size rewrite is fetched.
    """
    run = RsyncRun(rsync_path, source, staging_dir, temp_dir, on_progress, cancel, rsh)
    paths = list(paths)
    if not paths:
        return TransferResult()
    job = run.start("restage", ["--whole-file", "--ignore-times"], files=paths)
    run.wait([job])
    return run.result([job], restaged_phase="restage")


def make_folders(source, staging_dir, temp_dir):
    """Create a transfer's staging and temporary folders, or say why they cannot be."""
    for folder, what in ((staging_dir, "staging"), (temp_dir, "temporary")):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise TransferError(
                f"Sync of '{source.name}' cannot create the {what} folder '{folder}' "
                f"({e.strerror}); check its permissions and free space.") from None


def decode_name(raw):
    """rsync's itemized name (bytes, `\\#ooo` escapes for unprintables) to a str path."""
    raw = _OCTAL_RE.sub(lambda m: bytes([int(m.group(1), 8)]), raw)
    return raw.decode("utf-8", "surrogateescape")


class _Job:
    """One rsync process: its itemized lines, progress and stderr, read by threads."""

    def __init__(self, run, phase, args, files_from, progress, spec):
        self.run, self.phase, self.args, self.files_from = run, phase, args, files_from
        self.spec = spec  # the arguments of `RsyncRun.start`, to start it again
        self.items = []  # (itemize flags, length, bytes, path)
        self.stderr = collections.deque(maxlen=2000)
        self.bytes_done = 0
        self.done = threading.Event()
        self._progress = progress
        process_lib.start_read(self, args)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip("\r\n"))

    def _read_stdout(self):
        buffer = b""
        try:
            while True:
                chunk = self.proc.stdout.read1(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = re.split(rb"[\r\n]", buffer)
                for line in lines:
                    self._line(line)
            if buffer:
                self._line(buffer)
        finally:
            process_lib.reap(self)
            self.done.set()
            self.run.wakeup.set()

    def _line(self, line):
        if line.startswith(_PREFIX):
            # %i is padded: "*deleting  " (--force making way in staging) has two spaces.
            kind, rest = line[len(_PREFIX):].split(b" ", 1)
            # A push to another host itemizes a transfer as '<' (sent), not '>': the same.
            kind = b">" + kind[1:] if kind.startswith(b"<") else kind
            length, nbytes, name = rest.lstrip(b" ").split(b" ", 2)
            self.items.append((kind.decode("ascii", "replace"), int(length), int(nbytes),
                               decode_name(name)))
            return
        match = _PROGRESS_RE.match(line) if self._progress else None
        if match:
            self.bytes_done = int(match.group(1).replace(b",", b""))
            rate = float(match.group(3).replace(b",", b"")) * _RATE_UNITS[match.group(4)]
            self.run.report(self, int(match.group(2)), rate)

    def kill(self):
        process_lib.kill_group(self.proc)


class RsyncRun:
    """The processes of one sync of one source, sharing a deadline and a cancel flag.

    `staging_dir` is the local side: rsync's destination, or with `push` its source (the
    node's logdir; `source` is then where it goes, push.py). `temp_dir` holds the file
    lists; it is also rsync's --temp-dir, except for a push, whose temporaries are rsync's
    own `.NAME.XXXXXX` beside each file at the receiving end.
    """

    def __init__(self, rsync_path, source, staging_dir, temp_dir, on_progress, cancel, rsh,
                 push=False):
        self.rsync_path, self.source, self.rsh, self.push = rsync_path, source, rsh, push
        self.staging_dir, self.temp_dir = staging_dir, temp_dir
        self.on_progress, self.cancel = on_progress, cancel
        self.started = time.monotonic()
        self.deadline = self.started + source.timeout_s
        self.wakeup = threading.Event()
        self.jobs = []
        self._lock = threading.Lock()
        if not push:
            make_folders(source, staging_dir, temp_dir)

    def filters(self, events=False):
        """The user's rules: excludes win, every folder is descended, includes mean 'only'.

        With `events`, the same selection narrowed to event files (basename contains
        'tfevents'): a file passes both or neither rule set, except non-event files.
        """
        # Other tools' temporaries first: never fetched, whatever the user's rules say.
        rules = [f"--exclude={p}" for p in FOREIGN_TEMP_PATTERNS]
        rules += [f"--exclude={p}" for p in self.source.exclude
                  if not (p == "*" and self.source.include)]
        if events:
            rules += ["--include=*/", "--filter=-! *tfevents*"]
        if self.source.include:
            rules.append("--include=*/")
            rules += [f"--include={p}" for p in self.source.include]
            rules.append("--exclude=*")
        return rules

    def base_args(self):
        source, timeout_s = self.source, self.source.timeout_s
        # --modify-window=-1: compare mtimes to the nanosecond. rsync's default compares
        # whole seconds, so a file rewritten at the same size within the second of the last
        # sync (a checkpoint index, a config) was never fetched (tests/test_faults.py).
        # Needs the receiver, our local rsync, to be >= 3.1.3.
        # --force: a folder at the source that became a file replaces the staged folder
        # (staging is ours; without it every sync failed with exit 23, "could not make way
        # for new regular file"). It deletes only inside staging, only for that path: no
        # --delete, the logdir keeps the folder and the publisher reports that one path.
        args = [self.rsync_path, "-rlpt", "--safe-links", "--chmod=Du+rwx,Fu+rw",
                "--modify-window=-1", "--force", "--no-human-readable", _OUT_FORMAT,
                f"--timeout={io_timeout_s(timeout_s)}"]
        if not self.push:
            args.append(f"--temp-dir={os.path.abspath(self.temp_dir)}")
        if source.rsh:
            # Blocking I/O, as krsync and the docker recipes use: kubectl and docker
            # relay stdin/stdout themselves, unlike ssh (which prefers non-blocking).
            # --protect-args: paths go through rsync's protocol. On the command line rsync
            # escapes spaces for a remote shell that kubectl and docker do not run.
            args += ["--rsh=" + remote_shell.rsh_command(source.rsh), "--blocking-io",
                     "--protect-args"]
        elif source.is_remote_shell:
            args.append("--rsh=" + (self.rsh or ssh_command(source.ssh)))
        if source.is_daemon:
            args += [f"--contimeout={CONNECT_TIMEOUT_S}", "--no-motd"]
        if source.bwlimit_kib:
            args.append(f"--bwlimit={source.bwlimit_kib}")
        if source.compress:
            # Plain -z: rsync 3.2+ at both ends negotiates the algorithm, zstd first when both
            # have it (else lz4, zlibx, zlib); forcing --compress-choice=zstd would fail
            # against a remote rsync built without zstd. With an older end: zlib.
            args.append("--compress")
        return args

    def start(self, phase, options, files=None, progress=True):
        """Start one rsync; if that fails, the run's other processes are stopped too (they
        must not go on writing into staging after the caller gave up and let go of the lock).
        """
        try:
            return self._start(phase, options, files, progress)
        except BaseException:
            self._stop()
            raise

    def _start(self, phase, options, files, progress):
        args = self.base_args() + options
        remote = self.source.source_dir if not self.source.is_local \
            else os.path.abspath(os.path.expanduser(self.source.source_dir)) + "/"
        local = os.path.abspath(self.staging_dir) + "/"
        src, dest = (local, remote) if self.push else (remote, local)
        files_from = None
        if files is not None:
            src, prefix = (src, "") if self.push else _files_from_base(self.source, src)
            files_from = self._write_file_list(prefix, files)
            args += ["--from0", f"--files-from={files_from}"]
        if progress and self.on_progress is not None:
            args.append("--info=progress2")
        args += ["--", src, dest]
        try:
            job = _Job(self, phase, args, files_from, progress,
                       dict(phase=phase, options=options, files=files, progress=progress))
        except (OSError, RuntimeError) as e:  # RuntimeError: no thread to read its output
            if files_from:
                _unlink(files_from)
            raise TransferError(
                f"Sync of '{self.source.name}' could not start rsync '{self.rsync_path}' "
                f"({getattr(e, 'strerror', None) or e}); install rsync or fix the path.",
                shlex.join(args)) from None
        self.jobs.append(job)
        return job

    def _write_file_list(self, prefix, files):
        """rsync's --files-from list, in the temp folder; a write error is a sentence."""
        try:
            fd, path = tempfile.mkstemp(prefix=".tb-rsync-files-", dir=self.temp_dir)
        except OSError as e:
            raise TransferError(_temp_write_error(self.source, self.temp_dir, e)) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join((prefix + p).encode("utf-8", "surrogateescape") + b"\0"
                                 for p in files))
        except OSError as e:
            _unlink(path)
            raise TransferError(_temp_write_error(self.source, self.temp_dir, e)) from None
        return path

    def report(self, job, percent, rate):
        with self._lock:
            total = sum(j.bytes_done for j in self.jobs)
            self.on_progress(Progress(total, percent, rate, job.phase))

    def settle(self, jobs):
        """`wait` for `jobs`, which run concurrently, and return them (or their stand-ins).

        An rsync daemon with `max connections` may refuse some of them; a refused process did
        nothing, so it is started again alone, after the others (once; a second refusal is
        the error).
        """
        jobs = list(jobs)
        for job in self.wait(jobs, tolerate=_too_many_connections):
            again = self.start(**job.spec)
            self.wait([again])
            jobs[jobs.index(job)] = again
        return jobs

    def wait(self, jobs, tolerate=None):
        """Wait for `jobs`; on cancel, timeout or a failure, stop every process of the run.

        The first failed job in `jobs` order names the error (so two processes failing for
        the same reason give one message), and it is raised as soon as every job before it
        has finished, without waiting for the later ones. A failure for which
        `tolerate(job)` is true is not raised; such jobs are returned.
        """
        tolerated = []
        try:
            while True:
                tolerated = []
                for job in jobs:
                    if not job.done.is_set():
                        break
                    if job.proc.returncode not in (0, 24) and not _skipped_files(job):
                        if tolerate is not None and tolerate(job):
                            tolerated.append(job)
                            continue
                        self._stop()
                        raise _explain(self.source, job)
                else:
                    return tolerated
                if self.cancel is not None and self.cancel.is_set():
                    self._stop()
                    raise process_lib.cancelled(self.source)
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    self._stop()
                    raise process_lib.timed_out(self.source, _details(jobs[0]))
                self.wakeup.wait(min(remaining, 0.05))
                self.wakeup.clear()
        except BaseException as e:
            if not isinstance(e, Exception):
                # A stop signal raised here, in the main thread (`tb-rsync push`): rsync
                # runs in its own session and would go on pushing after we are gone.
                self._stop()
            raise
        finally:
            for job in jobs:
                if job.files_from and job.done.is_set():
                    _unlink(job.files_from)

    def _stop(self):
        for job in self.jobs:
            job.kill()
        for job in self.jobs:
            job.done.wait(5)
            if job.files_from:
                _unlink(job.files_from)

    def result(self, jobs, restaged_phase):
        """What `jobs` did. The listing and a transfer may both report a file that vanished
        or could not be read: the warnings count each message once."""
        changed, restaged, grown, warnings, nbytes = {}, set(), set(), [], 0
        vanished, some_vanished, skipped = {}, False, {}
        for job in jobs:
            for kind, _, size, path in job.items:
                if kind.startswith(">f") and job.phase != "list":  # the listing is a dry run
                    changed[path] = True
                    nbytes += size
                    if job.phase == restaged_phase:
                        restaged.add(path)
                    elif job.phase == "events" and "+" not in kind[2:]:
                        grown.add(path)  # ">f+++++++++" is a new file
            if job.proc.returncode == 24:
                some_vanished = True
                vanished.update((_vanished_name(l), True) for l in job.stderr if "vanished" in l)
            for line in _skipped_files(job):
                if _GONE in line:  # deleted or renamed away since the listing
                    some_vanished = True
                    vanished[_vanished_name(line)] = True
                else:
                    skipped[_vanished_name(line)] = line
        if some_vanished:
            warnings.append(
                f"Sync of '{self.source.name}': {len(vanished) or 'some'} file(s) vanished "
                f"{VANISHED_TAIL}")
        if skipped:
            first = next(iter(skipped.values()))
            warnings.append(
                f"Sync of '{self.source.name}': {len(skipped)} file(s) could not be read at "
                f"the source and were skipped (first: {first}).")
        return TransferResult(
            changed=tuple(sorted(changed)), restaged=tuple(sorted(restaged)),
            grown=tuple(sorted(grown - restaged)), bytes_received=nbytes, files_transferred=len(changed),
            warnings=tuple(warnings), duration_s=time.monotonic() - self.started)


def _files_from_base(source, src):
    """The source argument and the entry prefix for a `--files-from` transfer.

    An rsync 3.5 daemon reports every `--files-from` entry as vanished when the source is a
    folder inside a module (`rsync://h/mod/sub/`), while the module root works. So daemon
    transfers name the module root and prefix each entry with `sub/./`: with --relative (which
    --files-from implies) the part before `/./` is not recreated at the destination.
    """
    if not source.is_daemon:
        return src, ""
    if src.startswith("rsync://"):
        head, _, rest = src[len("rsync://"):].partition("/")
        module, _, sub = rest.partition("/")
        base = f"rsync://{head}/{module}/"
    else:
        head, _, rest = src.partition("::")
        module, _, sub = rest.partition("/")
        base = f"{head}::{module}/"
    sub = sub.strip("/")
    return base, (sub + "/./" if sub else "")


# Exit 23's line for a listed file gone before its transfer (link_stat, or open in
# send_files): a vanished file, not an unreadable one.
_GONE = "No such file or directory (2)"
# After "N file(s) vanished " in rsync's and rclone's warning.
VANISHED_TAIL = ("at the source (deleted, or replaced by a rename) while being copied; the "
                 "next sync picks up what is left.")


def _vanished_name(line):
    """The quoted file name of an rsync message, or the whole line (to count it once)."""
    match = re.search(r'"(.*)"', line)
    return match.group(1) if match else line


def _too_many_connections(job):
    """A daemon's `max connections` refused this process before it did anything."""
    return not job.items and any("max connections" in l for l in job.stderr)


def _skipped_files(job):
    """For exit 23 (partial transfer): the sender-side per-file errors, if those are all.

    An unreadable file, or one deleted between the listing and the append (link_stat), must not
    block the rest of the source forever; a missing source folder (change_dir) or anything on
    the receiving side (staging) still is an error.
    """
    if job.proc.returncode != 23:
        return []
    errors = [l for l in job.stderr if l.startswith("rsync: ")]
    if errors and all("[sender]" in l and "change_dir" not in l for l in errors):
        return errors
    return []


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _details(job):
    return process_lib.details(job.args, job.proc.returncode, job.stderr)


_NO_REMOTE_RSYNC = "rsync is not installed on the remote host; install it there"
_NO_CONTAINER_RSYNC = ("rsync is not installed in the container; install it in the image "
                       "(for example 'apt-get install rsync' in its Dockerfile)")
# (stderr regex, what happened; what to do). The first match decides; ssh's and the
# network's come first.
_DIAGNOSES = CONNECTION_DIAGNOSES + [
    ("Unknown module", "the rsync daemon has no such module; check the module name "
     "(list them with 'rsync rsync://HOST/')"),
    ("@ERROR: max connections", "the rsync daemon allows no more connections to this module "
     "(its 'max connections'); try again later or raise the limit"),
    ("@ERROR: auth failed", "the rsync daemon refused the login; tb-rsync cannot type a "
     "password, so use a module without auth or set RSYNC_PASSWORD"),
    ("No space left on device", "the disk holding the staging folder is full; free space "
     f"or choose another staging folder {STAGING_FLAGS}"),
    ("Disk quota exceeded", "the disk quota of the staging folder is exceeded; free space"),
    # EFBIG (a file-size limit such as 'ulimit -f', or the filesystem's largest file):
    # without this the user only read "rsync failed with exit code 11".
    ("File too large", "a staged file grew past the largest file allowed (the file-size "
     "limit 'ulimit -f' or the staging filesystem's maximum); raise the limit or choose "
     f"another staging folder {STAGING_FLAGS}"),
    # Before "command not found": rsync then adds "remote command not found (code 127)".
    ("tb-rsync: the remote shell '.*' could not be started", "the 'rsh' command could not be "
     "started (see the details); install it or fix 'rsh'"),
    ("command not found", _NO_REMOTE_RSYNC),
    ("rsync: not found", _NO_REMOTE_RSYNC),
    # docker and kubectl (OCI runtimes), podman (crun).
    (r'"rsync": executable file not found|executable file .rsync. not found', _NO_REMOTE_RSYNC),
    # A push (push.py) into an inbox folder that does not exist on the hub.
    (r'\[Receiver\] mkdir ".*" failed: No such file or directory', "the folder it goes into "
     "has no parent folder at the receiving end; create the inbox there first (mkdir -p) "
     "or fix the path"),
    ("timeout in data send/receive", "the connection stalled (no data for too long); "
     "check the network"),
    ("io timeout after", "the connection stalled (no data for too long); check the network"),
    ("connection unexpectedly closed", "the connection closed unexpectedly; check that "
     "'ssh HOST rsync --version' works"),
]


def _temp_write_error(source, temp_dir, error):
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return (f"Sync of '{source.name}' could not write its file list into '{temp_dir}' "
            f"({error.strerror}); " + ("free space on that disk or choose another staging "
                                       f"folder {STAGING_FLAGS}." if full else
                                       "check that the staging folder is writable."))


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _explain(source, job):
    """rsync's exit code and stderr to a TransferError sentence naming the source."""
    text = "\n".join(job.stderr)
    code = job.proc.returncode
    what = diagnose(text, _DIAGNOSES)
    if what == _NO_REMOTE_RSYNC and source.rsh:
        what = _NO_CONTAINER_RSYNC
    if what is None and re.search(r'(change_dir|link_stat) ".*" failed: No such file', text):
        what = "there is no such directory at the source; check the path"
    if what is None and re.search(r'change_dir ".*" failed: Not a directory', text):
        what = "the source is a file, not a directory; name the folder that holds the runs"
    if what is None and "Permission denied" in text:
        what = "permission was denied reading the source or writing the staging folder"
    if what is None:
        what = {1: "rsync rejected its arguments", 2: "the rsync versions are incompatible",
                5: "the rsync daemon refused the session", 10: "the connection failed",
                12: "the connection to the source failed", 20: "rsync was killed",
                30: "the connection stalled", 35: "the rsync daemon did not answer in time",
                255: "ssh failed"}.get(code, f"rsync failed with exit code {code}")
        if code < 0:
            what = f"rsync was killed by signal {_signal_name(-code)}"
    return TransferError(f"Sync of '{source.name}' from '{source.source}' failed: {what}.",
                         _details(job))
