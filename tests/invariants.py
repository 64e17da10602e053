"""DESIGN.md's invariants, checked on a real logdir against every version a source has had.

The invariants ("Invariants tests should hold", at every instant, after any crash or fault):
- every event file in the logdir is a record-aligned prefix of some version of its source,
  holding only valid records (a publisher killed mid-append may leave part of the next record
  after them: TensorBoard treats that as a record still being written);
- no other file in the logdir is partially written: its bytes equal some version at the
  source; nothing half-written with `tfevents` in its name ever sits in the logdir;
- nothing is written outside the logdir and the staging root (quarantine lives there);
- published complete records never disappear: a replaced event file is in quarantine;
- the next successful sync converges: complete records published == the source's complete
  records, other files equal.

`SourceFiles` is the source side: every write is recorded as a version before it reaches the
disk, so a reader that looks at the logdir first and at the versions second never misses
one. `LogdirChecker` judges a logdir against it and counts what it saw. Records are checked
with an independent CRC (google-crc32c), not with the code under test.
"""

import hashlib
import os
import struct
import threading

import google_crc32c

from tests.events import record_ends

TEMP_PREFIX, TEMP_SUFFIX = ".tb-rsync-", ".tmp"  # the publisher's temp names (atomic.py)
_MASK_DELTA = 0xA282EAD8


def masked_crc(data):
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload):
    """One TFRecord around `payload` (used to build corrupt records by hand)."""
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc(header)) + payload + \
        struct.pack("<I", masked_crc(payload))


def valid_end(data):
    """`(end, how)`: end of the last valid complete record; how the bytes after it look.

    `how` is "end" (nothing after), "partial" (an incomplete record) or "corrupt" (a
    complete record whose length or data CRC is wrong).
    """
    offset, size = 0, len(data)
    view = memoryview(data)
    while True:
        if offset == size:
            return offset, "end"
        if offset + 12 > size:
            return offset, "partial"
        header = view[offset:offset + 8]
        (length,), (length_crc,) = struct.unpack("<Q", header), \
            struct.unpack_from("<I", view, offset + 8)
        if masked_crc(header) != length_crc:
            return offset, "corrupt"
        end = offset + 12 + length + 4
        if end > size:
            return offset, "partial"
        (data_crc,) = struct.unpack_from("<I", view, end - 4)
        if masked_crc(view[offset + 12:end - 4]) != data_crc:
            return offset, "corrupt"
        offset = end


def is_aligned_prefix(data, version):
    """`data` is `version` cut at a record boundary (framing only)."""
    return version.startswith(data) and (not data or len(data) in record_ends(version))


def event_file_problem(data, versions, allow_partial):
    """None if `data` may sit in the logdir as an event file with these source versions."""
    if not data:
        return "is empty (an event file must appear with a complete record)"
    if not any(v.startswith(data) for v in versions):
        return f"({len(data)} bytes) is not a prefix of any of the {len(versions)} " \
               "version(s) its source had"
    end, how = valid_end(data)
    if how == "corrupt":
        return f"holds a corrupt record at byte {end}"
    if how == "partial" and not allow_partial:
        return f"ends with part of a record after byte {end}"
    return None


def quarantined(folder):
    """{rel: [bytes of every kept version]} from quarantine/<stamp>/<rel>."""
    kept = {}
    for stamp_dir, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(stamp_dir, name)
            rel = os.path.relpath(path, folder).split(os.sep, 1)[1].replace(os.sep, "/")
            with open(path, "rb") as f:
                kept.setdefault(rel, []).append(f.read())
    return kept


def is_event_name(rel):
    return "tfevents" in rel.rsplit("/", 1)[-1]


class SourceFiles:
    """A source folder whose writes are recorded as versions before they hit the disk.

    An event file's version is its whole intended content: appending extends the current
    version (what the file held before is a prefix of it), rewriting starts a new one. Any
    file's bytes on disk are at every instant a prefix of its newest version (whole for files
    replaced by rename). Thread-safe: a writer thread and a checker may share one.
    """

    def __init__(self, root, work_dir):
        self.root, self.work_dir = str(root), str(work_dir)  # work_dir: same fs, outside root
        self.versions = {}
        self._lock = threading.Lock()
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.work_dir, exist_ok=True)

    def path(self, rel):
        return os.path.join(self.root, *rel.split("/"))

    def append(self, rel, data, pieces=1):
        """Grow a file in place (a trainer writing records), in `pieces` write() calls."""
        with self._lock:
            history = self.versions.setdefault(rel, [b""])
            history[-1] += data
        self._make_parent(rel)
        with open(self.path(rel), "ab") as f:
            for piece in _split(data, pieces):
                f.write(piece)
                f.flush()

    def rewrite(self, rel, data, pieces=1):
        """Truncate and rewrite in place (a restarted run reusing the file name)."""
        with self._lock:
            self.versions.setdefault(rel, []).append(bytes(data))
        self._make_parent(rel)
        with open(self.path(rel), "r+b" if os.path.exists(self.path(rel)) else "wb") as f:
            f.truncate(0)
            f.flush()
            for piece in _split(data, pieces):
                f.write(piece)
                f.flush()

    def replace(self, rel, data):
        """A new version by rename (a checkpoint saved atomically): never seen half-written."""
        with self._lock:
            self.versions.setdefault(rel, []).append(bytes(data))
        self._make_parent(rel)
        temp = os.path.join(self.work_dir, "next-" + hashlib.sha1(rel.encode()).hexdigest())
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, self.path(rel))

    def snapshot(self):
        with self._lock:
            return {rel: list(v) for rel, v in self.versions.items()}

    def current(self, rel):
        with open(self.path(rel), "rb") as f:
            return f.read()

    def _make_parent(self, rel):
        os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)


def _split(data, pieces):
    if pieces <= 1 or len(data) < 2:
        return [data]
    step = -(-len(data) // pieces)
    return [data[i:i + step] for i in range(0, len(data), step)]


class Sandbox:
    """A test root laid out so that a write anywhere unexpected is seen.

    `root/src` (the source), `root/logs` (the logdir), `root/staging` (staging root, with
    quarantine), `root/work` (the source writer's temp files), `root/home` (HOME and
    XDG_CACHE_HOME of the processes under test), `root/tmp` (their TMPDIR), `root/outside`
    (a sentinel). Anything else appearing in the root, or in home/tmp/outside, is a write
    outside the logdir and staging.
    """

    FOLDERS = ("src", "logs", "staging", "work", "home", "tmp", "outside", "conf")

    def __init__(self, root, extra=()):
        self.root = str(root)
        for name in self.FOLDERS:
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        with open(os.path.join(self.root, "outside", "sentinel"), "wb") as f:
            f.write(b"untouched")
        self.allowed = set(self.FOLDERS) | set(extra)

    def __getattr__(self, name):
        if name in self.FOLDERS:
            return os.path.join(self.root, name)
        raise AttributeError(name)

    def env(self):
        env = dict(os.environ, HOME=self.home, XDG_CACHE_HOME=os.path.join(self.home, ".cache"),
                   TMPDIR=self.tmp, PYTHONPATH=os.path.dirname(os.path.dirname(
                       os.path.abspath(__file__))))
        return env

    def problems(self):
        found = []
        extra = set(os.listdir(self.root)) - self.allowed
        if extra:
            found.append(f"written outside the logdir and staging: {sorted(extra)}")
        for folder, ignore in ((self.home, ()), (self.tmp, (".tensorboard-info",))):
            stray = [n for n in os.listdir(folder) if n not in ignore]
            if stray:
                found.append(f"written into {folder}: {sorted(stray)}")
        if os.listdir(self.outside) != ["sentinel"] or \
                open(os.path.join(self.outside, "sentinel"), "rb").read() != b"untouched":
            found.append("the sentinel folder outside the logdir changed")
        return found


class LogdirChecker:
    """Judges `logdir/<name>` against a `SourceFiles`, keeping counts across checks.

    Counts: `checks`, `invalid` (checks that found a problem), `bytes_lost` (complete-record
    bytes seen published earlier that are now neither in the logdir file nor in any
    quarantined copy), `partial_seen` (event files ending in part of a record, allowed only
    where the caller says a publisher may have died mid-append), `stale_temps` (publisher temp
    files a killed process left; never with `tfevents` in the name), `quarantined`.
    """

    def __init__(self, sandbox, source, name, others=()):
        self.sandbox, self.source, self.name = sandbox, source, name
        self.logdir = sandbox.logs
        self.dest = os.path.join(self.logdir, name)
        self.quarantine = os.path.join(sandbox.staging, "quarantine", name)
        self.others = set(others)  # other sources' folders in the same logdir
        self.seen = {}  # rel -> (length, sha256) of complete records once published
        self.checks = self.invalid = self.bytes_lost = 0
        self.partial_seen = self.stale_temps = self.quarantined = 0
        self.problems = []  # (when, problem), every one ever found

    def check(self, when="", allow_partial=False, allow_temps=None):
        """Check every invariant now; returns this check's problems (also recorded)."""
        allow_temps = allow_partial if allow_temps is None else allow_temps
        problems, files, temps, partial = [], {}, 0, 0
        for entry in os.listdir(self.logdir):
            if entry != self.name and entry not in self.others:
                problems.append(f"unexpected entry '{entry}' at the top of the logdir")
        for folder, dirs, names in os.walk(self.dest):
            for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, self.dest).replace(os.sep, "/")
                if os.path.islink(path):
                    problems.append(f"'{rel}' is a symlink in the logdir")
                elif name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) \
                        and "tfevents" not in name:
                    temps += 1
                else:
                    with open(path, "rb") as f:
                        files[rel] = f.read()
        kept = quarantined(self.quarantine) if os.path.isdir(self.quarantine) else {}
        in_source = list(_walk_files(self.source.root))  # before the versions, like files
        versions = self.source.snapshot()  # after reading: covers every published byte
        for rel, data in sorted(files.items()):
            history = versions.get(rel)
            if history is None:
                problems.append(f"'{rel}' in the logdir is no file of the source "
                                "(a temp or half-written file?)")
            elif is_event_name(rel):
                problem = event_file_problem(data, history, allow_partial)
                if problem:
                    problems.append(f"event file '{rel}' {problem}")
                elif valid_end(data)[1] == "partial":
                    partial += 1
            elif not any(data == v for v in history):
                problems.append(f"'{rel}' ({len(data)} bytes) equals no version of its source "
                                "(partially written?)")
        if temps and not allow_temps:
            problems.append(f"{temps} publisher temp file(s) left in the logdir")
        for rel, copies in kept.items():
            for data in copies:
                problem = "is no event file" if not is_event_name(rel) else \
                    event_file_problem(data, versions.get(rel, []), allow_partial=True)
                if problem:
                    problems.append(f"quarantined '{rel}' {problem}")
        problems += self._ledger(files, kept)
        problems += self.sandbox.problems()
        extra_src = [rel for rel in in_source if rel not in versions]
        if extra_src:
            problems.append(f"files appeared in the source: {extra_src[:5]}")
        self.checks += 1
        self.partial_seen += partial
        self.stale_temps += temps
        self.quarantined = sum(len(c) for c in kept.values())
        if problems:
            self.invalid += 1
            self.problems += [(when, p) for p in problems]
        return problems

    def _ledger(self, files, kept):
        """Complete records once published must still be published or in quarantine."""
        problems = []
        for rel, (length, digest) in list(self.seen.items()):
            if _has_prefix(files.get(rel), length, digest) or \
                    any(_has_prefix(c, length, digest) for c in kept.get(rel, ())):
                continue
            self.bytes_lost += length
            problems.append(f"{length} published bytes of '{rel}' are neither in the logdir "
                            "nor in quarantine")
        for rel, data in files.items():
            if is_event_name(rel):
                end = valid_end(data)[0]
                self.seen[rel] = (end, hashlib.sha256(data[:end]).digest())
        return problems

    def converged(self):
        """Problems if the logdir does not match the source at rest (after a good sync)."""
        problems = []
        for rel in sorted(self.source.snapshot()):
            try:
                source = self.source.current(rel)
            except FileNotFoundError:
                continue
            path = os.path.join(self.dest, *rel.split("/"))
            published = open(path, "rb").read() if os.path.exists(path) else None
            if is_event_name(rel):
                expected = source[:valid_end(source)[0]]
                if expected and published != expected:
                    problems.append(
                        f"event file '{rel}': published {None if published is None else len(published)}"
                        f" bytes, the source has {len(expected)} in complete records")
            elif published != source:
                problems.append(f"'{rel}' differs from the source")
        return problems

    def figures(self):
        return {"checks": self.checks, "logdirs_invalid": self.invalid,
                "bytes_lost": self.bytes_lost, "partial_records_seen": self.partial_seen,
                "stale_temps_seen": self.stale_temps, "quarantined_versions": self.quarantined,
                "problems": [f"{w}: {p}" for w, p in self.problems[:20]]}


def _has_prefix(data, length, digest):
    return data is not None and len(data) >= length and \
        hashlib.sha256(data[:length]).digest() == digest


def _walk_files(root):
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
