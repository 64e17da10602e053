"""The probe of local folders: one thread walks every local source at its own interval.

An in-process walk (`probe_agent.tree_signature`: names, types, and the sizes, mtimes and
inodes of files), not inotify: shared filesystems (NFS, Lustre, GPFS) raise no event for
writes made on other machines, and a walk costs microseconds per file with no process.
"""

import logging
import os
import threading
import time

from tb_rsync_plugin.transports import probe_agent

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5  # no tree is walked more often than this


class LocalWalker:
    """One thread walking every local source at its own interval."""

    def __init__(self, on_change, stop):
        self._on_change = on_change
        self._stop = stop
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._sources = {}  # name -> (root, excludes, interval)
        self._signatures = {}
        self._due = {}
        self._thread = None

    def set_sources(self, members):
        with self._lock:
            new = {}
            for source, interval in members:
                root = os.path.abspath(os.path.expanduser(source.source_dir))
                new[source.name] = (root, tuple(source.exclude), max(interval, MIN_INTERVAL_S))
            for name in set(self._sources) | set(new):
                if self._sources.get(name) != new.get(name):
                    self._signatures.pop(name, None)
                    self._due[name] = 0.0
            self._sources = new
        self._wake.set()

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="tb-rsync-probe-local")
            self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [(n, s) for n, s in self._sources.items() if self._due.get(n, 0) <= now]
            for name, (root, excludes, interval) in due:
                try:
                    signature = probe_agent.tree_signature(root, excludes)
                except OSError as e:
                    signature = f"missing: {e}"  # the sync says what is wrong
                with self._lock:
                    if self._sources.get(name) != (root, excludes, interval):
                        continue  # edited meanwhile: walked again from scratch
                    changed = self._signatures.get(name) != signature
                    self._signatures[name] = signature
                    self._due[name] = time.monotonic() + interval
                if changed:
                    self._notify(name)
            with self._lock:
                wait = min(self._due.values(), default=now + 1.0) - time.monotonic()
            self._wake.wait(max(0.05, min(wait, 1.0)))
            self._wake.clear()

    def _notify(self, name):
        try:
            self._on_change(name)
        except Exception:
            logger.exception("tb-rsync: handling a change of %r failed", name)
