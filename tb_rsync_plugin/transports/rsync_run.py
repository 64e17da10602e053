"""The rsync processes of one sync: started side by side, their output parsed, waited for
under one deadline and one cancel flag, and summed up in a `TransferResult`.

`rsync.py` decides which processes a sync needs (push.py, those of a push); this module
runs them. Each process's itemized lines (`--out-format`), progress (`--info=progress2`)
and stderr are read by threads; a failure stops all of them and raises one `TransferError`
(rsync_errors.py).
"""

import collections
import os
import re
import shlex
import tempfile
import threading
import time

from tb_rsync_plugin.config import FOREIGN_TEMP_PATTERNS
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports import process as process_lib
from tb_rsync_plugin.transports import remote_shell
from tb_rsync_plugin.transports.rsync_errors import details, explain, temp_write_error
from tb_rsync_plugin.transports.ssh import CONNECT_TIMEOUT_S, ssh_command
from tb_rsync_plugin.transports.transfer import (VANISHED_TAIL, Progress, TransferResult,
                                                 make_folders)

_PREFIX = b"<tb-rsync> "
_OUT_FORMAT = "--out-format=" + _PREFIX.decode() + "%i %l %b %n"
_PROGRESS_RE = re.compile(rb"^\s*([\d,]+)\s+(\d+)%\s+([\d.,]+)([kMGT]?B)/s")
_OCTAL_RE = re.compile(rb"\\#([0-7]{3})")
_RATE_UNITS = {b"B": 1, b"kB": 1024, b"MB": 1024 ** 2, b"GB": 1024 ** 3, b"TB": 1024 ** 4}


def io_timeout_s(timeout_s):
    """rsync's --timeout: no data for this long fails the transfer.

    Bounded to 30 s: it is also how long a daemon that accepted the connection and never
    answers can hold a slot (--contimeout covers only the TCP connect), and rsync sends
    keep-alives while it builds file lists, so a healthy but slow source does not trip it.
    """
    return int(min(max(timeout_s / 4, 10), 30))

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
            raise TransferError(temp_write_error(self.source, self.temp_dir, e)) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join((prefix + p).encode("utf-8", "surrogateescape") + b"\0"
                                 for p in files))
        except OSError as e:
            _unlink(path)
            raise TransferError(temp_write_error(self.source, self.temp_dir, e)) from None
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
                        raise explain(self.source, job)
                else:
                    return tolerated
                if self.cancel is not None and self.cancel.is_set():
                    self._stop()
                    raise process_lib.cancelled(self.source)
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    self._stop()
                    raise process_lib.timed_out(self.source, details(jobs[0]))
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
