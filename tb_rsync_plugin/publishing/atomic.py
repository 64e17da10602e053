"""Writing one file into the logdir so that no reader ever sees it half-written.

Three ways in, each safe against a crash at any instant:
- `replace_file`: a whole new version (checkpoints, profiles...): temp file in the target's
  own folder, fsync, `os.replace`, fsync the folder (the atomicwrites recipe).
- `append_bytes`: complete records onto an event file TensorBoard already holds open; the
  inode must stay the same or the fast loader never sees new data.
- `create_file` / `rewrite_file`: a new or rewritten event file appears whole, by rename.

`release_prefix` is the one function here that touches the staging tree: it frees the disk
blocks of a staged event file's already-published prefix (a hole, same size), so staging
costs about the unpublished tail instead of a second copy of every event file.

Temp names are `.tb-rsync-<random>.tmp`: TensorBoard reads every file whose name contains
`tfevents`, dot-files included, so a temp name must never contain it. OS errors the user can
act on become `PublishError` sentences here, in `publish_errors`, and nowhere else.
"""

import contextlib
import errno
import os
import stat
import tempfile

from tb_rsync_plugin.errors import PublishError

TEMP_PREFIX = ".tb-rsync-"
TEMP_SUFFIX = ".tmp"
COPY_BYTES = 4 * 1024 * 1024

# Errors about the disk or permissions, not about one file's content.
_SENTENCES = {
    errno.ENOSPC: "The disk holding '{path}' is full; free space and sync again.",
    errno.EDQUOT: "The disk quota for '{path}' is used up; free space or raise the quota "
                  "and sync again.",
    errno.EFBIG: "'{path}' would grow past the largest file allowed (a 'ulimit -f' limit on "
                 "this process, or the filesystem's maximum); raise the limit or move the "
                 "logdir to a filesystem that allows larger files.",
    errno.EACCES: "tb-rsync is not allowed to write '{path}'; give this user write "
                  "permission there and sync again.",
    errno.EPERM: "tb-rsync is not allowed to write '{path}'; give this user write "
                 "permission there and sync again.",
    errno.EROFS: "'{path}' is on a read-only filesystem; remount it read-write or choose "
                 "another logdir.",
}
# link() failing with these means "cannot link here", so copy instead.
_NO_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK})
# These concern the whole filesystem: continuing with the next file cannot help.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# fallocate(2) modes (linux/falloc.h); punching a hole needs KEEP_SIZE.
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_fallocate = None  # resolved on first use: a ctypes function, or False where unavailable


def is_temp_name(name):
    """True for our own temp files, which are never published."""
    return os.path.basename(name).startswith(TEMP_PREFIX)


@contextlib.contextmanager
def publish_errors(path):
    """Turn an actionable OSError into a PublishError naming `path`; others pass through.

    The original error stays reachable as `__cause__` (its errno tells fatal from per-file).
    """
    try:
        yield
    except OSError as e:
        sentence = _SENTENCES.get(e.errno)
        if sentence is None:
            raise
        raise PublishError(sentence.format(path=path), details=str(e)) from e


def fsync_dir(path):
    """Make a rename or a new name in `path` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some filesystems (and all of Windows) cannot fsync a folder; nothing more to do.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_stale_temps(folder):
    """Delete `.tb-rsync-*.tmp` files a killed publisher left in `folder`.

    Safe only because one publisher per source runs at a time (the service's lock): any
    temp file here is then a leftover, never one being written. They are harmless to
    TensorBoard (no `tfevents` in the name) but would pile up.
    """
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.startswith(TEMP_PREFIX)
                     and e.name.endswith(TEMP_SUFFIX) and e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for name in names:
        _unlink_quietly(os.path.join(folder, name))


def replace_file(src_path, dest_path, link_ok=True):
    """Publish `src_path` as `dest_path` in one atomic step, keeping its mode and mtime.

    With `link_ok`, the published file is a hard link to the staged one when both sit on one
    filesystem: zero copy, and safe because rsync replaces staged files by rename (a new
    inode), never by writing into the one we published. Otherwise the bytes are copied.
    """
    dest_dir = os.path.dirname(dest_path) or "."
    with publish_errors(dest_path):
        temp = _link_temp(src_path, dest_dir) if link_ok else None
        try:
            if temp is None:
                temp = _copy_temp(src_path, dest_dir)
            else:
                _fsync_path(temp)
            os.replace(temp, dest_path)
        except BaseException:
            _unlink_quietly(temp)
            raise
        fsync_dir(dest_dir)


def append_bytes(dest_path, data):
    """Append to an existing file with O_APPEND and fsync; returns the bytes written.

    `data` is bytes, an iterable of bytes, or `(src_path, start, end)` to copy a range. The
    file is never created or truncated here: that would change what a reader holds open. A
    crash part-way leaves a prefix of `data`; the publisher checks and completes it next time.
    """
    written = 0
    with publish_errors(dest_path):
        fd = os.open(dest_path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        try:
            for piece in _pieces(data):
                written += _write_all(fd, piece)
            os.fsync(fd)
        finally:
            os.close(fd)
    return written


def create_file(dest_path, src_path, start, end):
    """Publish bytes `[start, end)` of `src_path` as a new file, appearing whole by rename."""
    dest_dir = os.path.dirname(dest_path) or "."
    with publish_errors(dest_path):
        temp = _copy_temp(src_path, dest_dir, start, end, keep_mtime=False)
        _move_into_place(temp, dest_path)
        fsync_dir(dest_dir)
    return end - start


def rewrite_file(dest_path, src_path, start, end, keep_old_at):
    """Replace `dest_path` with bytes `[start, end)` of `src_path`, keeping the old file.

    The old inode is first linked (or copied) to `keep_old_at`, then the new file is renamed
    over the name: the name never goes missing and the old bytes are never lost, whatever
    instant a crash hits. A crash between the two steps leaves an extra kept copy, no loss.
    """
    dest_dir = os.path.dirname(dest_path) or "."
    with publish_errors(dest_path):
        temp = _copy_temp(src_path, dest_dir, start, end, keep_mtime=False)
        try:
            with publish_errors(keep_old_at):
                keep_file(dest_path, keep_old_at)
            os.replace(temp, dest_path)
        except BaseException:
            _unlink_quietly(temp)
            raise
        fsync_dir(dest_dir)
    return end - start


def keep_file(src_path, dest_path):
    """Hard-link `src_path` to the new name `dest_path`, or copy it there; never overwrite."""
    dest_dir = os.path.dirname(dest_path) or "."
    os.makedirs(dest_dir, exist_ok=True)
    try:
        os.link(src_path, dest_path, follow_symlinks=False)
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
        # Another filesystem (or none with hard links): copy. Like link(), refuse to
        # overwrite; the caller picks fresh names, so the check-then-rename race is moot.
        if os.path.lexists(dest_path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest_path) from None
        temp = _copy_temp(src_path, dest_dir)
        _move_into_place(temp, dest_path)
    fsync_dir(dest_dir)


def release_prefix(path, length, expect=None):
    """Punch a hole over bytes `[0, length)` of `path`, keeping its size, data after it and mtime.

    For staged event files whose prefix is published: rsync `--append` only looks at the
    staged size, and the publisher re-reads only the staged tail, so the prefix's blocks
    are dead weight. Reads of the hole return zeros, which `has_leading_hole` tells apart.
    The mtime is put back because rsync's quick check and the manifest's staged stamp use it.

    Args:
      expect: `(st_ino, st_size, st_mtime_ns)` the file must still have; otherwise (rsync
        replaced or grew it since) nothing is done.

    Returns:
      True if the hole was punched; False where unsupported (not Linux, a filesystem without
      hole punching) or on any error: the staged copy then simply keeps its blocks.
    """
    if length <= 0:
        return False
    fallocate = _fallocate_function()
    if not fallocate:
        return False
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or length > st.st_size or (
                expect is not None and list(expect) != [st.st_ino, st.st_size, st.st_mtime_ns]):
            return False
        if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length) != 0:
            return False  # EOPNOTSUPP, ENOSYS, EPERM...: not worth failing a publish for
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def has_leading_hole(path):
    """True if `path` starts with a hole, i.e. its prefix was released by `release_prefix`.

    rsync never writes holes (no `--sparse`), so a staged event file starting with one lost
    its prefix to us and must be fetched whole before anyone reads bytes from offset 0.
    False where the filesystem cannot tell (it then has no holes of ours either).
    """
    return data_start(path) > 0


def data_start(path):
    """Offset of `path`'s first byte that is not in a leading hole (its size if all hole).

    0 where the filesystem cannot tell; see `has_leading_hole`.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if size == 0 or not hasattr(os, "SEEK_DATA"):
            return 0
        try:
            return os.lseek(fd, 0, os.SEEK_DATA)
        except OSError as e:
            return size if e.errno == errno.ENXIO else 0  # ENXIO: no data at all
    finally:
        os.close(fd)


def _fallocate_function():
    global _fallocate
    if _fallocate is None:
        _fallocate = False
        # Imported here: ctypes costs a sync that releases nothing ~1.5 ms of start-up.
        import ctypes
        try:
            # The process's own symbols hold libc's where Python links it (Linux); looking
            # for libc by name runs `ldconfig -p`, a process more in every one-shot sync.
            libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(libc, "fallocate"):
                import ctypes.util
                libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            function = getattr(libc, "fallocate64", None) or libc.fallocate
            function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            function.restype = ctypes.c_int
            _fallocate = function
        except (OSError, AttributeError):
            pass  # no libc fallocate (macOS, Windows): staged copies keep their blocks
    return _fallocate


def write_bytes(dest_path, data):
    """Replace a small file (manifest, state) with `data` atomically and durably."""
    dest_dir = os.path.dirname(dest_path) or "."
    os.makedirs(dest_dir, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(temp)
        raise
    _move_into_place(temp, dest_path)
    fsync_dir(dest_dir)


def _move_into_place(temp, dest_path):
    """`os.replace`, removing the temp if that fails (the atomicwrites rollback)."""
    try:
        os.replace(temp, dest_path)
    except BaseException:
        _unlink_quietly(temp)
        raise


def _temp_name(dest_dir):
    return os.path.join(dest_dir, TEMP_PREFIX + os.urandom(8).hex() + TEMP_SUFFIX)


def _link_temp(src_path, dest_dir):
    """A temp hard link to `src_path` in `dest_dir`, or None when linking is impossible."""
    for _ in range(100):
        temp = _temp_name(dest_dir)
        try:
            os.link(src_path, temp, follow_symlinks=False)
            return temp
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in _NO_LINK_ERRNOS:
                return None
            raise
    raise FileExistsError(errno.EEXIST, "no free temp name", dest_dir)


def _copy_temp(src_path, dest_dir, start=0, end=None, keep_mtime=True):
    """Copy a byte range of `src_path` to a fsynced temp file in `dest_dir`; returns its path.

    The temp gets the source's permission bits: mkstemp's 0600 would otherwise be handed to
    the published file by the rename.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temp = _temp_name(dest_dir)
        try:
            fd = os.open(temp, flags, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temp name", dest_dir)
    try:
        with open(src_path, "rb") as src:
            src_stat = os.fstat(src.fileno())
            for piece in _file_range(src, start, end):
                _write_all(fd, piece)
        os.fchmod(fd, stat.S_IMODE(src_stat.st_mode))
        if keep_mtime:
            os.utime(fd, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    return temp


def _pieces(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield data
    elif isinstance(data, tuple) and len(data) == 3 and isinstance(data[1], int):
        src_path, start, end = data
        with open(src_path, "rb") as src:
            yield from _file_range(src, start, end)
    else:
        yield from data


def _file_range(f, start, end):
    """Bytes `[start, end)` of an open file in bounded pieces; `end=None` reads to EOF."""
    if start:
        f.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
        piece = f.read(COPY_BYTES if left is None else min(COPY_BYTES, left))
        if not piece:
            if left:
                raise EOFError(f"'{f.name}' ended {left} bytes early")
            return
        if left is not None:
            left -= len(piece)
        yield piece


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path):
    """Rollback: remove a temp file without hiding the error that caused the rollback."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass

