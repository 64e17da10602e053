"""One publish's per-file decisions: append, create, rewrite, replace, wait or skip.

Event files (basename contains `tfevents`) only grow in place: TensorBoard's fast loader keeps
each file open by name and never reopens it, so a new inode under an old name is never seen.
We append complete, CRC-checked records and nothing else. When the staged file no longer
extends the published one (the source rewrote it), the old file goes to quarantine and the
new content replaces it atomically ("rewrite"). Other files are replaced atomically.

What is published is the truth; the manifest (per event file: record-aligned length, size,
inode, newest event) is a hint that keeps the cost proportional to the new bytes. A crash at
any instant leaves every published event file a record-aligned prefix of a version of its
source, possibly followed by part of the next record, which TensorBoard treats like a record
still being written; the next publish checks that partial record against the staged bytes and
completes it.

Staged event files are mostly dead weight once published: after each publish the staged
copy's prefix becomes a hole (`atomic.release_prefix`), keeping its size (all rsync
`--append` looks at) and its last `_KEEP_STAGED_BYTES` before the published length (the tail
check reads at most `_TAIL_CHECK_BYTES` of that). Code that reads a staged file from offset 0
(create, rewrite, the full compare of a restaged file) first checks for that hole and asks
for a whole fetch instead; a fetched file is a new, complete inode.
"""

import datetime
import os
import posixpath
import stat

from tb_rsync_plugin import config
from tb_rsync_plugin.errors import CorruptRecordError, PublishError
from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin.publishing import manifest as manifest_lib
from tb_rsync_plugin.publishing.report import (FileAction, IN_SYMLINKED_FOLDER, PublishReport,
                                               RunUpdate, SOURCE_SYMLINK, run_of)
from tb_rsync_plugin.publishing.tfrecord import scan_records

_COMPARE_BYTES = 1024 * 1024
# Before appending, the last bytes published are compared with the staged ones: a cheap
# guard against a damaged staged copy (rsync --append never rewrites those bytes, so a
# source rewrite is caught by the record checks, not here).
_TAIL_CHECK_BYTES = 4096
# Staged bytes kept before the published length when the prefix is released: far more than
# the tail check reads, in whole filesystem blocks.
_KEEP_STAGED_BYTES = 64 * 1024
_HOLE_BLOCK_BYTES = 4096
# Skip details that are no error of the run (see report.SYMLINK_NOT_FOLLOWED).
_NOT_AN_ERROR = (SOURCE_SYMLINK, IN_SYMLINKED_FOLDER)
_BEHIND = ("an older copy than the one published (another staging root published more of "
           "it); it catches up at the next sync")


class Publisher:
    """One publish call: per-file decisions, the manifest, and what to report."""

    def __init__(self, staging_dir, dest_root, name, quarantine_dir, manifest, restaged,
                 walked):
        self.staging_dir, self.dest_root, self.name = staging_dir, dest_root, name
        self.walked = walked  # every staged file, not only those the transport changed
        self.real_root = os.path.realpath(dest_root)
        self.quarantine_dir, self.manifest, self.restaged = quarantine_dir, manifest, restaged
        self.stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.actions, self.errors, self.needs_restage = [], [], []
        self.runs = {}  # run -> dict(wall, step, rewritten, files)
        self.dirty = False
        self.tidied = set()  # folders already cleared of temps a killed publisher left

    # -- one file ------------------------------------------------------------------------

    def publish_one(self, rel, problem):
        base = posixpath.basename(rel)
        if problem:
            return self._skip(rel, f"'{rel}' {problem}.", error=problem not in _NOT_AN_ERROR)
        if atomic.is_temp_name(base):
            return self._skip(rel, "a tb-rsync temp file; never published")
        if config.is_foreign_temp(base):
            return self._skip(rel, f"'{rel}' looks like a copy in progress at the source "
                                   "(another tool's temporary file); only the finished file "
                                   "is published.")
        if config.is_event_file(base) and base.startswith("."):
            # TensorBoard reads hidden event files too: a hidden copy beside the real one
            # would show every point twice.
            return self._skip(rel, f"'{rel}' is a hidden event file (a dot-file); hidden "
                                   "copies are never published.")
        src = os.path.join(self.staging_dir, rel)
        try:
            src_st = os.lstat(src)
        except FileNotFoundError:
            return self._skip(rel, "gone from staging; the published copy stays")
        if stat.S_ISLNK(src_st.st_mode):
            return self._skip(rel, f"'{rel}' {SOURCE_SYMLINK}.")
        if stat.S_ISDIR(src_st.st_mode):
            return None  # its files are listed on their own
        if not stat.S_ISREG(src_st.st_mode):
            return self._skip(rel, "not a regular file")
        dest = self._dest_path(rel)
        if dest is None:
            return None
        try:
            if config.is_event_file(base):
                self._event_file(rel, src, src_st, dest)
            else:
                self._other_file(rel, src, src_st, dest)
        except PublishError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno in atomic.FATAL_ERRNOS:
                raise
            self._fail(rel, str(e))
        except FileNotFoundError:
            # rsync is not running (we hold the lock), but a user may tidy the staging tree.
            self._skip(rel, "vanished from staging while publishing; the next sync retries")
        except OSError as e:
            self._fail(rel, f"'{dest}' could not be published ({e.strerror or e}); "
                             "fix the file or folder in the logdir and sync again.")
        return None

    def _dest_path(self, rel):
        """`dest_root/rel` if writing there stays inside `dest_root`, else None (reported).

        Existing folders on the way may be symlinks only if they resolve inside
        `dest_root`; missing folders are created later, only when a write needs them.
        """
        parts = rel.split("/")
        folder = self.dest_root
        for part in parts[:-1]:
            folder = os.path.join(folder, part)
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                break
            if stat.S_ISLNK(st.st_mode):
                if not config.is_within(os.path.realpath(folder), self.real_root):
                    self._skip(rel, f"'{folder}' in the logdir is a symlink leading out of "
                                    f"'{self.dest_root}'; tb-rsync never writes outside it.",
                               error=True)
                    return None
            elif not stat.S_ISDIR(st.st_mode):
                self._skip(rel, f"'{folder}' in the logdir is a file where the source has a "
                                "folder; move it away to publish this file.", error=True)
                return None
        dest = os.path.join(self.dest_root, *parts)
        if os.path.islink(dest):
            self._skip(rel, f"'{dest}' in the logdir is a symlink; tb-rsync never writes "
                            "through symlinks, so remove it to publish this file.", error=True)
            return None
        return dest

    def _other_file(self, rel, src, src_st, dest):
        try:
            pub_st = os.lstat(dest)
        except FileNotFoundError:
            pub_st = None
        if pub_st is not None:
            if stat.S_ISDIR(pub_st.st_mode):
                return self._fail(rel, f"'{dest}' is a folder in the logdir where the source "
                                        "has a file; move it away to publish the file.")
            # Hard-linked from staging means unchanged: rsync renames new versions into
            # staging, so a changed staged file always has a new inode. A copy (across
            # filesystems) with the same size, mtime and mode counts as unchanged only in a
            # walk: a file the transport fetched again may be other content with the same
            # stamp (rclone lists whole seconds for S3).
            same_inode = (pub_st.st_ino, pub_st.st_dev) == (src_st.st_ino, src_st.st_dev)
            same_meta = self.walked and \
                (pub_st.st_size, pub_st.st_mtime_ns, stat.S_IMODE(pub_st.st_mode)) == \
                (src_st.st_size, src_st.st_mtime_ns, stat.S_IMODE(src_st.st_mode))
            if same_inode or same_meta:
                return self._act(rel, "unchanged")
        self._make_parent(dest)
        atomic.replace_file(src, dest)
        return self._act(rel, "replace", src_st.st_size)

    def _event_file(self, rel, src, src_st, dest):
        try:
            pub_st = os.lstat(dest)
        except FileNotFoundError:
            if self._prefix_released(rel, src):
                return self._restage(rel, self.manifest.get(rel))
            return self._create_event(rel, src, src_st, dest)
        if not stat.S_ISREG(pub_st.st_mode):
            return self._fail(rel, f"'{dest}' in the logdir is not a regular file; move it "
                                    "away to publish this event file.")
        size, published = src_st.st_size, pub_st.st_size
        restaged = rel in self.restaged
        entry = self.manifest.get(rel)
        if not restaged and entry and entry.get("staged") == _stamp(src_st) \
                and entry["inode"] == pub_st.st_ino \
                and entry["aligned_len"] == entry["size"] == published == size:
            # Neither file changed since a publish that left them equal: no reads at all,
            # so walking a big tree costs two lstat() per unchanged event file.
            self._note_run(rel, entry, touched=False)
            return self._act(rel, "unchanged")
        aligned, entry = self._published_state(rel, dest, pub_st)
        if size < published and _is_prefix(src, dest, size):
            # Another staging root published more of this file than this copy holds: the
            # copy is behind, not rewritten. Replacing the longer file would send it back
            # in time under a new inode; rsync --append brings this copy up next sync.
            self._note_run(rel, entry, touched=False)
            return self._act(rel, "wait", 0, _BEHIND)
        if (size < published or restaged) and self._prefix_released(rel, src):
            return self._restage(rel, entry)  # both branches below read from offset 0
        if size < published:
            return self._rewrite(rel, src, src_st, dest, "shorter than the published file")
        if restaged:
            # Fetched whole: the only way to know it still extends what was published.
            if not _same_bytes(dest, src, 0, published):
                return self._rewrite(rel, src, src_st, dest, "rewritten at the source")
        elif not _same_bytes(dest, src, max(0, aligned - _TAIL_CHECK_BYTES), published):
            return self._restage(rel, entry)
        try:
            scan, corrupt = scan_records(src, aligned, size), None
        except CorruptRecordError as e:
            if e.offset == aligned and not restaged and not _known_corrupt(entry, e, size):
                # Maybe built by rsync --append on top of an old prefix: fetch it whole
                # first; only then is a bad record really the source's.
                return self._restage(rel, entry)
            scan, corrupt = e.scan, e
        new_end = scan.end_offset
        appended = 0
        if new_end > published:
            # A partial record already in the file (crash mid-append) was checked above
            # against the staged bytes, so only the rest of it is appended.
            appended = atomic.append_bytes(dest, (src, published, new_end))
            entry = _entry(new_end, new_end, pub_st.st_ino, entry, scan)
        else:
            entry = _entry(aligned, published, pub_st.st_ino, entry, scan)
        if corrupt is not None:
            # Remembered so an unchanged corrupt file is not fetched whole every sync.
            entry = dict(entry, corrupt_at=corrupt.offset, corrupt_staged_size=size)
        self._remember(rel, dict(entry, staged=_stamp(src_st)))
        self._release_staged(src, src_st, entry["aligned_len"])
        self._note_run(rel, entry, touched=appended > 0)
        if corrupt is not None:
            self._error(rel, str(corrupt))
            if not appended:
                return self._act(rel, "error", 0, str(corrupt))
        if appended:
            return self._act(rel, "append", appended, str(corrupt) if corrupt else "")
        waiting = scan.truncated or published > aligned
        return self._act(rel, "wait" if waiting else "unchanged", 0,
                         "the last record is incomplete" if waiting else "")

    def _published_state(self, rel, dest, pub_st):
        """`(aligned_len, entry)` of a published event file, trusting the manifest if it fits.

        A file longer than the manifest says was appended to by a publish that died before
        writing the manifest: only the bytes after the known length are scanned. Without a
        usable entry the whole published file is scanned once.
        """
        entry = self.manifest.get(rel)
        if entry and entry["inode"] == pub_st.st_ino \
                and entry["aligned_len"] <= entry["size"] <= pub_st.st_size:
            if entry["size"] == pub_st.st_size:
                return entry["aligned_len"], entry
            start = entry["aligned_len"]
        else:
            start, entry = 0, None
        try:
            scan = scan_records(dest, start, pub_st.st_size)
        except CorruptRecordError as e:
            scan = e.scan  # the staged bytes decide what this means
        entry = _entry(scan.end_offset, pub_st.st_size, pub_st.st_ino, entry, scan)
        self._remember(rel, entry)
        return scan.end_offset, entry

    def _scan_whole(self, rel, src, src_st):
        """Complete records of the whole staged file, and the corruption that ends them."""
        try:
            scan, corrupt = scan_records(src, 0, src_st.st_size), None
        except CorruptRecordError as e:
            scan, corrupt = e.scan, e
        if corrupt is not None:
            self._error(rel, str(corrupt))
        return scan, corrupt

    def _create_event(self, rel, src, src_st, dest):
        scan, corrupt = self._scan_whole(rel, src, src_st)
        if scan.end_offset == 0:
            # An empty file would be picked up by TensorBoard now and never again if it
            # were replaced; it appears only once it has a complete record.
            return self._act(rel, "error" if corrupt else "wait", 0,
                             str(corrupt) if corrupt else "no complete record yet")
        self._make_parent(dest)
        written = atomic.create_file(dest, src, 0, scan.end_offset)
        entry = _entry(written, written, os.stat(dest).st_ino, None, scan)
        self._remember(rel, entry)
        self._release_staged(src, src_st, written)
        self._note_run(rel, entry, touched=True)
        return self._act(rel, "create", written, str(corrupt) if corrupt else "")

    def _rewrite(self, rel, src, src_st, dest, why):
        """Quarantine the published file and publish the staged one's complete records."""
        scan, corrupt = self._scan_whole(rel, src, src_st)
        if scan.end_offset == 0:
            entry = self.manifest.get(rel)
            if entry:
                self._note_run(rel, entry, touched=False)
            return self._act(rel, "error" if corrupt else "wait", 0,
                             str(corrupt) if corrupt else
                             f"{why}; the old file stays until the new one has a record")
        keep_at = self._quarantine_path(rel)
        written = atomic.rewrite_file(dest, src, 0, scan.end_offset, keep_at)
        entry = _entry(written, written, os.stat(dest).st_ino, None, scan)
        self._remember(rel, entry)
        self._release_staged(src, src_st, written)
        self._note_run(rel, entry, touched=True, rewritten=True)
        return self._act(rel, "rewrite", written, f"{why}; old file kept at '{keep_at}'",
                         kept_at=keep_at)

    def _restage(self, rel, entry):
        self.needs_restage.append(rel)
        if entry:
            self._note_run(rel, entry, touched=False)
        return self._act(rel, "wait", 0, "does not continue the published records; "
                                         "needs a whole fetch")

    def _prefix_released(self, rel, src):
        """True if the staged prefix was released, so reading from offset 0 needs a fetch.

        In a restaged file that means the whole fetch did not happen (the file vanished at
        the source meanwhile, say); it is reported and the published file left alone.
        """
        if not atomic.has_leading_hole(src):
            return False
        if rel in self.restaged:
            self._error(rel, f"'{rel}' could not be fetched whole again; the published copy "
                             "stays as it is until a sync fetches it.")
        return True

    def _release_staged(self, src, src_st, published_len):
        """Free the staged blocks TensorBoard already has; see the module docstring."""
        end = (published_len - _KEEP_STAGED_BYTES) // _HOLE_BLOCK_BYTES * _HOLE_BLOCK_BYTES
        if end > 0:
            atomic.release_prefix(src, end, _stamp(src_st))

    def _quarantine_path(self, rel):
        folder, n = self.stamp, 1
        while os.path.lexists(os.path.join(self.quarantine_dir, folder, *rel.split("/"))):
            n += 1
            folder = f"{self.stamp}-{n}"
        return os.path.join(self.quarantine_dir, folder, *rel.split("/"))

    def _make_parent(self, dest):
        folder = os.path.dirname(dest)
        with atomic.publish_errors(folder):
            os.makedirs(folder, exist_ok=True)
        if folder not in self.tidied:
            self.tidied.add(folder)
            atomic.remove_stale_temps(folder)
        # A folder swapped for a symlink after _dest_path looked would show here.
        if not config.is_within(os.path.realpath(folder), self.real_root):
            raise PublishError(f"'{folder}' leads out of '{self.dest_root}'; tb-rsync never "
                               "writes outside the logdir, so replace the symlink with a folder.")

    # -- bookkeeping ---------------------------------------------------------------------

    def _remember(self, rel, entry):
        if self.manifest.get(rel) != entry:
            self.manifest[rel] = entry
            self.dirty = True

    def _note_run(self, rel, entry, touched, rewritten=False):
        info = self.runs.setdefault(run_of(self.name, rel), {"wall": None, "step": None, "rewritten": False,
                                          "files": []})
        info["wall"] = _max(info["wall"], entry["newest_wall_time"])
        info["step"] = _max(info["step"], entry["newest_step"])
        info["rewritten"] = info["rewritten"] or rewritten
        if touched:
            info["files"].append(rel)

    def _act(self, rel, action, nbytes=0, detail="", kept_at=""):
        self.actions.append(FileAction(rel, action, nbytes, detail, kept_at))

    def _skip(self, rel, detail, error=False):
        if error:
            self.errors.append((rel, detail))
        self._act(rel, "skip", 0, detail)

    def _error(self, rel, message):
        self.errors.append((rel, message))

    def _fail(self, rel, message):
        self._error(rel, message)
        self._act(rel, "error", 0, message)

    def save_manifest(self, manifest_path, quiet=False):
        # Also written when missing: a source without event files would otherwise have no
        # manifest, and a missing manifest makes every sync walk the whole staging tree.
        if not self.dirty and os.path.exists(manifest_path):
            return
        try:
            manifest_lib.save(manifest_path, self.manifest)
        except OSError as e:
            if not quiet:
                self.errors.append((manifest_path, f"The manifest '{manifest_path}' could not "
                                    f"be written ({e.strerror or e}); the next sync rescans the "
                                    "published event files once."))

    def report(self):
        runs = {run: RunUpdate(run, info["wall"], info["step"], info["rewritten"],
                               tuple(info["files"]))
                for run, info in sorted(self.runs.items())}
        return PublishReport(tuple(self.actions), runs, tuple(self.needs_restage),
                             tuple(self.errors))


def _entry(aligned_len, size, inode, old, scan):
    """A manifest entry; the newest event is the max of what was known and what was scanned."""
    return {
        "aligned_len": aligned_len,
        "size": size,
        "inode": inode,
        "newest_wall_time": _max(old and old["newest_wall_time"], scan.newest_wall_time),
        "newest_step": _max(old and old["newest_step"], scan.newest_step),
    }


def _stamp(st):
    """What identifies a staged file's version: rsync renames new versions in (new inode)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _known_corrupt(entry, error, staged_size):
    """True if this bad record was already confirmed as the source's, in an unchanged file."""
    return bool(entry) and entry.get("corrupt_at") == error.offset \
        and entry.get("corrupt_staged_size") == staged_size


def _max(a, b):
    if a is None:
        return b
    return a if b is None else max(a, b)


def _is_prefix(src, dest, size):
    """True if staged `src`'s first `size` bytes are the published `dest`'s.

    A prefix this publisher released (a hole) is not compared: what follows it is.
    """
    start = atomic.data_start(src)
    return start < size and _same_bytes(dest, src, start, size)


def _same_bytes(path_a, path_b, start, end):
    """True if both files hold the same bytes in `[start, end)` (read in bounded pieces)."""
    if end <= start:
        return True
    with open(path_a, "rb") as a, open(path_b, "rb") as b:
        a.seek(start)
        b.seek(start)
        left = end - start
        while left > 0:
            n = min(_COMPARE_BYTES, left)
            piece = a.read(n)
            if len(piece) != n or piece != b.read(n):
                return False
            left -= n
    return True
