"""rclone into the staging tree, for object storage (`rclone:REMOTE:PATH` sources).

The same contract as rsync.py's `run_rsync` and `restage_files`; what differs is that an
object cannot be appended to: a writer re-uploads a grown event file whole. One sync:

1. ``rclone lsjson -R --files-only`` with the user's filters lists every object's size and
   modification time. ``--use-server-modtime``: the time of the upload, which is in the
   listing itself (S3 otherwise asks once per object for the writer's own mtime). A sync
   with nothing new is this one call.
   Where the remote lists hashes without reading the data (object storage: S3's ETag
   is an md5), the listing carries them (``--hash``), and the ones a staged copy was
   fetched with are kept on it (rclone_listing.py): S3 lists whole seconds, so an object
   replaced at the same size within the second of the sync that fetched it lists exactly
   as before, except for its hash.
2. Compared with the staged copies (whose mtimes are the listed ones):
   - an event file longer at the source: only its new tail, ``rclone cat --offset N
     --count M`` (a ranged read), appended to the staged copy, as ``rsync --append`` would
     (a 100 MiB object grown by 1 MiB moves 1 MiB: docs/BENCHMARKS.md, B8);
   - an event file shorter at the source, or of the same size with another mtime or hash
     (rewritten in place): fetched whole and reported in `TransferResult.restaged`;
   - any other new or changed file (size, mtime or hash): fetched whole.
   Whole fetches are one ``rclone copy --files-from-raw`` into a fresh folder under the
   staging root's tmp/, renamed into place after: nothing half-written sits in staging.
3. An object rewritten to a LONGER length gets its new tail appended to the old prefix; the
   publisher notices that those bytes do not continue its records and calls
   `restage_files`, which fetches it whole.
Nothing is deleted from staging. Tails run up to `MAX_PARALLEL_READS` at a time; every
process shares one deadline (`Source.timeout_s`) and one cancel flag, as in rsync.py.

Filters (`Source.include` / `Source.exclude`) mean what rsync.py's module docstring says:
excludes win, includes mean "only these files". In rclone's rules an exclude is also applied
to everything below a folder it names (rsync skips the folder), and rsync's ``folder/***``
is written ``folder/**``.
"""

import collections
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
import threading
import time

from tb_rsync_plugin.transports import process as process_lib
from tb_rsync_plugin.transports import rclone_listing as listing
from tb_rsync_plugin.transports import rclone_log
from tb_rsync_plugin.config import FOREIGN_TEMP_PATTERNS, STAGING_FLAGS, is_event_file
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.transfer import (VANISHED_TAIL, Progress, TransferResult,
                                                 make_folders)

MAX_PARALLEL_READS = 4
_LISTS_HASHES = {}  # (rclone, config, remote, flags) -> whether listing hashes is cheap
_CONNECT_TIMEOUT_S = 10
_STATS_RE = re.compile(r"([\d.]+) ([KMGTP]?i?B) / [\d.]+ [KMGTP]?i?B, (\d+)%, "
                       r"([\d.]+) ([KMGTP]?i?B)/s")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4,
          "PiB": 1024 ** 5}


def run_rclone(rclone_path, source, staging_dir, temp_dir, on_progress=None, cancel=None,
               before_write=None):
    """Bring `staging_dir` up to date with the rclone source (never deleting anything).

    Args and errors as `rsync.run_rsync`; `rclone_path` is the local rclone binary.
    """
    run = _Run(rclone_path, source, staging_dir, temp_dir, on_progress, cancel)
    with run.counted():
        tails, whole, restaged = [], [], set()
        for obj in run.list():
            path = os.path.join(staging_dir, obj.rel)
            try:
                staged = os.lstat(path)
            except FileNotFoundError:
                whole.append(obj)
                continue
            if not stat.S_ISREG(staged.st_mode):
                whole.append(obj)
                restaged.add(obj.rel)
            elif not is_event_file(obj.rel):
                if (staged.st_size, staged.st_mtime_ns) != (obj.size, obj.mtime_ns) or \
                        listing.replaced(path, obj):
                    whole.append(obj)
            elif staged.st_size < obj.size:
                tails.append((obj, staged.st_size))
            elif staged.st_size > obj.size or staged.st_mtime_ns != obj.mtime_ns or \
                    listing.replaced(path, obj):
                # Shrunk, or rewritten at the same size: no prefix of it can be trusted.
                whole.append(obj)
                restaged.add(obj.rel)
        if (tails or whole) and before_write is not None:
            before_write(bool(tails))
        run.read_tails(tails)
        run.fetch_whole(whole, restaged)
    return run.result()


def restage_files(rclone_path, source, staging_dir, temp_dir, paths, on_progress=None,
                  cancel=None):
    """Fetch `paths` (staged names, relative to the source) whole, replacing their staged
    copies. Listed first, for their rclone names and hashes."""
    paths = set(paths)
    if not paths:
        return TransferResult()
    run = _Run(rclone_path, source, staging_dir, temp_dir, on_progress, cancel)
    with run.counted():
        listed = [obj for obj in run.list() if obj.rel in paths]
        run.fetch_whole(listed, paths, missing=len(paths) - len(listed))
    return run.result()


def filter_rules(source):
    """rclone `--filter` rules with rsync.py's meaning (see the module docstring)."""
    # Other tools' temporaries first: never fetched, whatever the user's rules say.
    rules = ["- " + p for p in FOREIGN_TEMP_PATTERNS]
    for pattern in source.exclude:
        if pattern == "*" and source.include:
            continue  # the classic rsync idiom next to includes: implied below
        pattern = _rclone_pattern(pattern)
        rules.append("- " + pattern)
        if not pattern.endswith(("/", "**")):
            rules.append("- " + pattern + "/**")  # a folder it names, with its contents
    if source.include:
        rules += ["+ " + _rclone_pattern(p) for p in source.include] + ["- *"]
    return [f"--filter={rule}" for rule in rules]


def remote_path(source, rel=""):
    """`REMOTE:PATH/rel`, without doubling a '/' or adding one after a bare `REMOTE:`."""
    base = source.rclone_remote
    if not rel:
        return base
    return base + rel if base.endswith((":", "/")) else base + "/" + rel


def _rclone_pattern(pattern):
    return pattern[:-3] + "**" if pattern.endswith("***") else pattern


class _Job:
    """One rclone process: stdout handed to `sink` in chunks, stderr kept for the details
    (without debug messages) and its HTTP requests counted (rclone_log.py)."""

    def __init__(self, run, args, sink, phase, expected_bytes=0):
        """`expected_bytes`: for a ranged read, its length; its stdout is then the progress
        (rclone prints stats only for copies)."""
        self.run, self.args, self.sink, self.phase = run, args, sink, phase
        self.expected_bytes = expected_bytes
        self.started = time.monotonic()
        self.stderr = collections.deque(maxlen=2000)
        self.log = rclone_log.StderrReader(run.counting)
        self.bytes_done = 0
        self.write_error = None
        self.done = threading.Event()
        process_lib.start_read(self, args)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            for line in self.log.lines(raw.decode("utf-8", "replace").rstrip("\r\n")):
                self.stderr.append(line)
                match = _STATS_RE.search(line) if self.phase != "list" else None
                if match:
                    self.bytes_done = int(float(match.group(1)) * _UNITS[match.group(2)])
                    self.run.report(self, int(match.group(3)),
                                    float(match.group(4)) * _UNITS[match.group(5)])

    def _read_stdout(self):
        try:
            while True:
                chunk = self.proc.stdout.read1(1 << 20)
                if not chunk:
                    break
                if self.write_error is None:
                    try:
                        self.sink(chunk)
                    except OSError as e:  # the staging disk, not the source
                        self.write_error = e
                        process_lib.kill_group(self.proc)
                if self.expected_bytes:
                    self.bytes_done += len(chunk)
                    elapsed = max(time.monotonic() - self.started, 1e-6)
                    self.run.report(self, min(100, 100 * self.bytes_done // self.expected_bytes),
                                    self.bytes_done / elapsed)
        finally:
            process_lib.reap(self)
            self.done.set()
            self.run.wakeup.set()

    @property
    def failed(self):
        return self.write_error is not None or self.proc.returncode != 0


class _Tail:
    """Appends a ranged read to the staged copy; the listed mtime (and hashes) only once it
    is complete."""

    def __init__(self, path, offset, obj):
        self.path, self.offset, self.obj = path, offset, obj
        self.count, self.mtime_ns = obj.size - offset, obj.mtime_ns
        self.file = None
        self.received = 0

    def open(self):
        self.file = open(self.path, "ab")
        if self.file.tell() != self.offset:  # nobody else writes staging: a bug if so
            self.file.close()
            raise RuntimeError(f"staged '{self.path}' changed size during the sync")

    def write(self, chunk):
        chunk = chunk[:self.count - self.received]
        self.file.write(chunk)
        self.received += len(chunk)

    def close(self, complete):
        if self.file is None:
            return
        self.file.close()
        self.file = None
        if complete and self.received == self.count:
            listing.record_hashes(self.path, self.obj.hashes)
            os.utime(self.path, ns=(self.mtime_ns, self.mtime_ns))
        else:
            listing.record_hashes(self.path, {})  # part of another version: hashes unknown


class _Run:
    """The rclone processes of one sync of one source: one deadline, one cancel flag."""

    def __init__(self, rclone_path, source, staging_dir, temp_dir, on_progress, cancel):
        self.rclone_path, self.source = rclone_path, source
        self.staging_dir, self.temp_dir = staging_dir, temp_dir
        self.on_progress, self.cancel = on_progress, cancel
        self.started = time.monotonic()
        self.deadline = self.started + source.timeout_s
        self.wakeup = threading.Event()
        self.jobs = []
        self.changed, self.restaged, self.warnings = set(), set(), []
        self.bytes_received = 0
        self.counting = rclone_log.can_count(source.rclone_flags)
        self._lock = threading.Lock()
        make_folders(source, staging_dir, temp_dir)

    def args(self, command, *options):
        source = self.source
        args = [self.rclone_path, command]
        if source.rclone_config:
            args.append(f"--config={source.rclone_config}")
        args += ["--use-server-modtime", f"--contimeout={_CONNECT_TIMEOUT_S}s",
                 f"--timeout={int(min(max(source.timeout_s / 4, 10), 120))}s"]
        if source.bwlimit_kib:
            args.append(f"--bwlimit={source.bwlimit_kib}K")
        if self.counting:
            args += rclone_log.COUNTING_FLAGS
        # The user's flags last: rclone keeps the last value of a flag given twice.
        return args + list(options) + list(source.rclone_flags)

    def list(self):
        """The `ListedObject`s that pass the filters, with hashes where the remote lists them
        cheaply (object storage; not a local disk or sftp, which would read every file)."""
        out = bytearray()
        hashes = ["--hash"] if self.lists_hashes() else []
        self.run([(self.args("lsjson", "-R", "--files-only", "--no-mimetype", *hashes,
                             *filter_rules(self.source), remote_path(self.source)),
                   out.extend, "list", 0)])
        try:
            listed = listing.parse_listing(bytes(out))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TransferError(f"Sync of '{self.source.name}' could not read rclone's "
                                f"listing ({e}); check that 'rclone lsjson' works for "
                                f"'{self.source.rclone_remote}'.") from None
        unsafe = [obj.remote for obj in listed if not listing.is_safe(obj.rel)]
        if unsafe:
            self.warnings.append(
                f"Sync of '{self.source.name}': {len(unsafe)} object name(s) at the source "
                f"cannot be a file path (first: '{unsafe[0]}') and were skipped.")
        return [obj for obj in listed if listing.is_safe(obj.rel) and obj.size >= 0]

    def lists_hashes(self):
        """Whether this remote lists hashes without reading the data (`rclone backend
        features`: hashes, and not SlowHash); asked once per process and remote."""
        source = self.source
        key = (self.rclone_path, source.rclone_config, source.rclone_remote,
               source.rclone_flags)
        if key not in _LISTS_HASHES:
            out = bytearray()
            self.run([(self.args("backend", "features", remote_path(source)), out.extend,
                       "list", 0)])
            try:
                features = json.loads(bytes(out))
                _LISTS_HASHES[key] = bool(features.get("Hashes")) and \
                    features.get("Features", {}).get("SlowHash") is False
            except (ValueError, AttributeError):
                return False  # not what rclone prints: no hashes, asked again next sync
        return _LISTS_HASHES[key]

    def read_tails(self, tails):
        """Append the new bytes of grown event files [(`ListedObject`, staged size)],
        `MAX_PARALLEL_READS` at a time."""
        for start in range(0, len(tails), MAX_PARALLEL_READS):
            batch = [_Tail(os.path.join(self.staging_dir, obj.rel), offset, obj)
                     for obj, offset in tails[start:start + MAX_PARALLEL_READS]]
            try:
                specs = []
                for tail in batch:
                    tail.open()
                    specs.append((self.args("cat", f"--offset={tail.offset}",
                                            f"--count={tail.count}",
                                            remote_path(self.source, tail.obj.remote)),
                                  tail.write, "events", tail.count))
                self.run(specs)
            except BaseException:
                for tail in batch:
                    tail.close(complete=False)
                raise
            for tail in batch:
                tail.close(complete=True)
                if tail.received:
                    self.changed.add(tail.obj.rel)
                    self.bytes_received += tail.received

    def fetch_whole(self, objects, restaged, missing=0):
        """Copy `objects` into a fresh folder under tmp/, then rename each into staging
        with the hashes it was listed with; `missing`: objects already known vanished."""
        if not objects:
            self._vanished(missing)
            return
        try:
            folder = tempfile.mkdtemp(prefix=".tb-rclone-", dir=self.temp_dir)
            list_path = folder + ".files"
            with open(list_path, "wb") as f:
                # rclone's names: a control character is a symbol there, so one a line.
                f.write(b"".join(o.remote.encode("utf-8", "surrogateescape") + b"\n"
                                 for o in objects))
        except OSError as e:
            raise TransferError(self._write_error(self.temp_dir, e)) from None
        try:
            self.run([(self.args("copy", f"--files-from-raw={list_path}", "--no-traverse",
                                 "--retries=1", "--stats=1s", "--stats-one-line",
                                 "--stats-log-level=NOTICE", remote_path(self.source),
                                 folder), None,
                       "restage" if {o.rel for o in objects} <= restaged else "files", 0)])
            for obj in objects:
                rel = obj.rel
                fetched, staged = os.path.join(folder, rel), os.path.join(self.staging_dir, rel)
                try:
                    size = os.lstat(fetched).st_size
                except FileNotFoundError:
                    missing += 1  # deleted at the source since the listing
                    continue
                listing.record_hashes(fetched, obj.hashes)
                try:
                    os.makedirs(os.path.dirname(staged), exist_ok=True)
                    os.replace(fetched, staged)
                except OSError as e:
                    self.warnings.append(
                        f"Sync of '{self.source.name}': '{rel}' could not be put into the "
                        f"staging folder ({e.strerror}); a file and a folder of that name?")
                    continue
                self.changed.add(rel)
                self.bytes_received += size
                if rel in restaged:
                    self.restaged.add(rel)
            self._vanished(missing)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            _unlink(list_path)

    def _vanished(self, count):
        if count:
            self.warnings.append(
                f"Sync of '{self.source.name}': {count} file(s) vanished {VANISHED_TAIL}")

    def run(self, specs):
        """Start `specs` [(args, stdout sink or None, phase, expected bytes)] together and
        wait for all of them; on cancel, timeout or a failure every process of the run is
        stopped."""
        jobs = []
        try:
            for args, sink, phase, expected_bytes in specs:
                try:
                    job = _Job(self, args, sink or (lambda chunk: None), phase, expected_bytes)
                except (OSError, RuntimeError) as e:
                    raise TransferError(
                        f"Sync of '{self.source.name}' could not start rclone "
                        f"'{self.rclone_path}' ({getattr(e, 'strerror', None) or e}); install "
                        "rclone or fix the path.", shlex.join(args)) from None
                jobs.append(job)
                self.jobs.append(job)
            while True:
                failed = next((j for j in jobs if j.done.is_set() and j.failed), None)
                if failed is not None:
                    raise self._explain(failed)
                if all(j.done.is_set() for j in jobs):
                    return jobs
                if self.cancel is not None and self.cancel.is_set():
                    raise process_lib.cancelled(self.source)
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    job = next(j for j in jobs if not j.done.is_set())
                    raise process_lib.timed_out(
                        self.source, process_lib.details(job.args, "(still running)",
                                                         job.stderr))
                self.wakeup.wait(min(remaining, 0.05))
                self.wakeup.clear()
        except BaseException:
            for job in jobs:
                process_lib.kill_group(job.proc)
            for job in jobs:
                job.done.wait(5)
            raise

    def requests(self):
        """The HTTP requests of every rclone command of this sync so far (None: not counted);
        a killed command's, up to where it was killed."""
        return sum(job.log.requests for job in self.jobs) if self.counting else None

    @contextlib.contextmanager
    def counted(self):
        """A `TransferError` raised inside carries the requests made up to then."""
        try:
            yield
        except TransferError as e:
            e.api_requests = self.requests()
            raise

    def report(self, job, percent, rate):
        if self.on_progress is None:
            return
        with self._lock:
            total = sum(j.bytes_done for j in self.jobs)
            self.on_progress(Progress(total, percent, rate, job.phase))

    def result(self):
        return TransferResult(
            changed=tuple(sorted(self.changed)), restaged=tuple(sorted(self.restaged)),
            bytes_received=self.bytes_received, files_transferred=len(self.changed),
            warnings=tuple(self.warnings), duration_s=time.monotonic() - self.started,
            api_requests=self.requests())

    def _write_error(self, where, error):
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        return (f"Sync of '{self.source.name}' could not write into '{where}' "
                f"({error.strerror}); " + (f"free space on that disk or choose another "
                                           f"staging folder {STAGING_FLAGS}." if full else
                                           "check that the staging folder is writable."))

    def _explain(self, job):
        """rclone's stderr (or a staging write error) to one sentence naming the source."""
        if job.write_error is not None:
            return TransferError(self._write_error(self.staging_dir, job.write_error),
                                 process_lib.details(job.args, job.proc.returncode,
                                                     job.stderr))
        code = job.proc.returncode
        what = rclone_log.explain("\n".join(job.stderr), code,
                                  self.source.rclone_remote.partition(":")[0])
        return TransferError(
            f"Sync of '{self.source.name}' from '{self.source.source}' failed: {what}.",
            process_lib.details(job.args, code, job.stderr))


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
