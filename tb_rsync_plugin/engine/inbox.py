"""Watched sources: a change in a local folder (an inbox nodes push into) asks for its sync.

Polling a big inbox is what this avoids: inotify (through watchdog) reports changes as they
happen, and `SourceWatcher` turns a burst of them into one or two `request([name])` calls.
It only ever asks; when and how a sync runs stays the service's business, and the source's
`interval` still applies as a fallback.

What counts as a change: a file or folder appearing under its final name (created, renamed
or moved in), a file written or closed after writing. Copy tools' temporaries
(`config.is_foreign_temp`: rsync's `.NAME.XXXXXX`, renamed into place when complete) and
anything under the logdir or the staging root (our own writes, should a user put them inside
an inbox) are ignored, and so are reads: a sync reading the inbox must not trigger the next
one.
"""

import atexit
import errno
import logging
import os
import threading
import time

from tb_rsync_plugin.config import is_foreign_temp

logger = logging.getLogger(__name__)

QUIET_S = 0.1  # a sync is asked for once no change came for this long...
MAX_DELAY_S = 0.4  # ...or this long after the first change, even while a push goes on
# This often, each watched source's path is checked to still lead to the watched folder,
# and a folder that does not exist (yet) is looked for.
RESCHEDULE_S = 2.0
STOP_WAIT_S = 5.0


class SourceWatcher:
    """Calls `request([name])` soon after a watched source's folder changes, debounced.

    A request is handed over once the source has been quiet for `QUIET_S`, or `MAX_DELAY_S`
    after its first unhandled change. A change that lands while that source is syncing may
    come too late for that sync: the service then syncs it again once that sync ends (every
    request is served by a sync that starts after it). Each source is also asked for once
    when its watch begins: what arrived while nobody watched.

    Args:
      sources: `config.Source`s to watch (local folders).
      request: `SyncService.request`: takes a list of names, returns {"started": [...], ...};
        never blocks.
      ignore: folders whose changes are ours (the logdir, the staging root).
      clock: monotonic seconds; injected for tests.
    """

    def __init__(self, sources, request, ignore=(), clock=time.monotonic):
        self._roots = {s.name: os.path.realpath(os.path.expanduser(s.source_dir))
                       for s in sources}
        self._request = request
        self._ignore = tuple(os.path.realpath(p).rstrip(os.sep) + os.sep for p in ignore)
        self._clock = clock
        self._cond = threading.Condition()
        self._first, self._last = {}, {}  # per source with a change
        self._unwatched = set(self._roots)  # to schedule (again)
        self._identities = {}  # the (st_dev, st_ino) of each watched folder
        self._reported = set()  # sources whose missing folder was logged
        self._watches = {}
        self._stopping = False
        # Imported here: a TensorBoard without watched sources never needs watchdog.
        from watchdog import events
        from watchdog.observers import Observer
        # Kernel-side filter: no open/read events, so the sync's own reads wake nobody.
        # Folder deletions are watched only to notice the source folder going away.
        self._event_filter = [events.FileCreatedEvent, events.FileModifiedEvent,
                              events.FileMovedEvent, events.FileClosedEvent,
                              events.DirCreatedEvent, events.DirMovedEvent,
                              events.DirDeletedEvent]
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name="tb-rsync-inbox", daemon=True)

    def start(self):
        self._observer.start()
        self._thread.start()

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._observer.stop()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)
        if self._observer.is_alive():
            self._observer.join(STOP_WAIT_S)

    def changed(self, name):
        """Note a change of source `name` (from watchdog's thread, or anyone)."""
        now = self._clock()
        with self._cond:
            self._first.setdefault(name, now)
            self._last[name] = now
            self._cond.notify()

    # --- watchdog's side ---------------------------------------------------------------
    def _event(self, name, event):
        if event.event_type == "deleted":
            if event.src_path == self._roots[name]:  # the watch died with its folder
                with self._cond:
                    self._unwatched.add(name)
                    self._cond.notify()
            return
        path = event.dest_path if event.event_type == "moved" \
            else event.src_path
        if is_foreign_temp(path) or \
                (path + os.sep).startswith(self._ignore):
            return
        self.changed(name)

    # --- the thread that asks ----------------------------------------------------------
    def _run(self):
        next_check = 0.0
        while True:
            check = self._clock() >= next_check
            if check:
                self._check_paths()
            with self._cond:
                if self._stopping:
                    return
                lost = [n for n in self._unwatched if n in self._watches]
                watches = [self._watches.pop(n) for n in lost]
                reschedule = check and bool(self._unwatched)
            for watch in watches:
                self._observer.unschedule(watch)
            if reschedule:
                self._schedule()
            if check:
                next_check = self._clock() + RESCHEDULE_S
            with self._cond:
                now = self._clock()
                due = [n for n in self._first if now >= self._due_at(n)]
            for name in due:
                self._ask(name)
            with self._cond:
                now = self._clock()
                if self._stopping or any(now >= self._due_at(n) for n in self._first) \
                        or any(n in self._watches for n in self._unwatched):
                    continue
                wake = [self._due_at(n) for n in self._first] + [next_check]
                # changed() notifies under this lock, so no change slips in before the wait.
                self._cond.wait(max(0.0, min(wake) - now))

    def _check_paths(self):
        """Unwatch sources whose path no longer leads to the folder watched: inotify follows
        a folder, so an inbox renamed away (`mv inbox inbox.old; mkdir inbox`) would keep
        being watched under its new name while pushes land in the new one, unseen."""
        with self._cond:
            watched = {n: self._identities[n] for n in self._watches}
        moved = [n for n, identity in watched.items() if _identity(self._roots[n]) != identity]
        if moved:
            with self._cond:
                self._unwatched.update(moved)

    def _due_at(self, name):
        return min(self._last[name] + QUIET_S, self._first[name] + MAX_DELAY_S)

    def _ask(self, name):
        with self._cond:
            stamp = self._last[name]
        try:
            self._request([name])
        except Exception:  # a bug: keep watching (the change is dropped, not retried forever)
            logger.exception("tb-rsync: asking for a sync of watched source %r failed", name)
        with self._cond:
            if self._last[name] == stamp:
                del self._first[name], self._last[name]
            else:  # changed again while asking: asked for again once quiet
                self._first[name] = self._last[name]

    def _schedule(self):
        with self._cond:
            names = sorted(self._unwatched)
        for name in names:
            root = self._roots[name]
            try:
                # Before scheduling: a folder swapped in between is then noticed as moved.
                identity = _identity(root, strict=True)
                watch = self._observer.schedule(_Handler(self, name), root, recursive=True,
                                                event_filter=self._event_filter)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    if name not in self._reported:
                        self._reported.add(name)
                        logger.warning("tb-rsync: watched source %r: '%s' does not exist yet; "
                                       "it is watched as soon as it does.", name, root)
                    continue
                with self._cond:
                    self._unwatched.discard(name)
                logger.warning("tb-rsync: cannot watch '%s' for source %r (%s); it is synced "
                               "on its interval only (if the inotify limit was reached, raise "
                               "fs.inotify.max_user_watches).", root, name, e.strerror or e)
                continue
            with self._cond:
                self._watches[name] = watch
                self._identities[name] = identity
                self._unwatched.discard(name)
                self._reported.discard(name)
            self.changed(name)  # what arrived while nobody watched


def _identity(path, strict=False):
    """(st_dev, st_ino) of the folder at `path`; None when it is gone (OSError if `strict`)."""
    try:
        st = os.stat(path)
    except OSError:
        if strict:
            raise
        return None
    return st.st_dev, st.st_ino


class _Handler:
    """watchdog's handler interface (`dispatch`), bound to one source."""

    def __init__(self, watcher, name):
        self._watcher, self._name = watcher, name

    def dispatch(self, event):
        self._watcher._event(self._name, event)


def start_watching(config, request):
    """Watch the sources of `config` that have `watch`; None when there are none.

    Stopped at interpreter exit (before the service's own stop: atexit runs in reverse).
    """
    sources = [source for source in config.sources if source.watch]
    if not sources:
        return None
    watcher = SourceWatcher(sources, request, ignore=(config.logdir, config.staging_root))
    watcher.start()
    atexit.register(watcher.stop)
    return watcher
