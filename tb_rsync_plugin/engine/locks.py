"""The locks a source's cycle holds, shared with every other tb-rsync process.

Two processes (a TensorBoard and a `tb-rsync watch`, say) may share a staging root: an
`flock` on `locks/<name>.lock` there keeps them from syncing the same source at once. A
process with another staging root publishing the same source into the same logdir is held
off by an `flock` on `LOGDIR/<name>` itself, taken before publishing (else both would append
the same new records) and while a fast-loader reload parks the source's files.
"""

import contextlib
import fcntl
import logging
import os
import time

from tb_rsync_plugin.errors import SyncError

logger = logging.getLogger(__name__)

LOCK_WAIT_S = 600.0


class SourceLocks:
    """The locks of one service's cycles; `stop` (an Event) ends a wait for one."""

    def __init__(self, stop):
        self._stop = stop
        self._publish_lock_warned = False

    @contextlib.contextmanager
    def source(self, config, name):
        """An exclusive `flock` on the source, shared with other tb-rsync processes."""
        with _open_source_lock(config, name) as f:
            self._flock(f.fileno(), name, f.name)
            yield

    @contextlib.contextmanager
    def publish(self, config, name):
        """An exclusive `flock` on `LOGDIR/NAME` itself (nothing is written for it)."""
        path = os.path.join(config.logdir, name)
        try:
            try:
                os.mkdir(path)  # publishing creates it anyway
            except FileExistsError:
                pass
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # a symlink: publish() judges it
        except OSError:
            yield  # unusable: publish() refuses it with a sentence
            return
        try:
            try:
                self._flock(fd, name, path)
            except OSError as e:
                # NFS emulates flock with write locks (EBADF on a directory), Lustre without
                # -o flock has none (ENOSYS): publish as before this lock existed.
                if not self._publish_lock_warned:
                    self._publish_lock_warned = True
                    logger.warning("tb-rsync: cannot lock '%s' (%s); two tb-rsync processes "
                                   "with different staging folders must not sync one source "
                                   "at once.", path, e.strerror or e)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def both(self, config, name):
        """Both locks of a cycle, for reloading runs another process rewrote."""
        with self.source(config, name), self.publish(config, name):
            yield

    def _flock(self, fd, name, path):
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self._stop.is_set() or time.monotonic() > deadline:
                    raise SyncError(
                        f"Source '{name}' is being synced by another tb-rsync process "
                        f"(lock '{path}'); wait for it or stop that process.") from None
                self._stop.wait(0.2)


@contextlib.contextmanager
def source_unless_busy(config, name):
    """The source's lock if nobody holds it now (yields True), else no wait (False): for
    putting back parked files and for pruning, which must never wait on a running cycle."""
    with _open_source_lock(config, name) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _open_source_lock(config, name):
    path = config.lock_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "a")
