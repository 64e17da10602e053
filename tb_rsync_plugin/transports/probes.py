"""Change probes: which sources changed, asked without starting processes per check.

The scheduler syncs a probed source when its probe reports a change, on a click, and at a
slow safety interval; a source without a working probe is listed by rsync at its interval,
as before. One small interface, `Probes`, whatever the transport:

- local folders: an in-process walk of the tree (probe_agent.tree_signature: names, types,
  sizes, mtimes, inodes) every interval, on one thread for all of them. No inotify: shared
  filesystems (NFS, Lustre, GPFS) raise no event for writes made on other machines, and the
  walk costs microseconds per file;
- `host:dir` over ssh: one long-lived session per host over the shared login, running
  probe_agent.py with the node's `python3` (its source is sent over the session; nothing is
  installed), or, where the session finds no python3, a POSIX `sh` loop that checksums
  `ls -lnRai` of each tree. The node's login shell starts once per session, not once per
  check. A session that dies or cannot start is restarted with backoff; meanwhile its
  sources are listed by rsync (mode "listing", with the reason);
- rsync daemons, rclone remotes, pods and containers (`rsh`) and watched inboxes keep their
  own mechanism: an rsync or rclone listing per interval, inotify for inboxes.

The walker of local folders is local_probe.py, the ssh sessions ssh_probe.py, and the
program both run probe_agent.py. Each source's mode is reported through `on_mode(name, mode, detail)`; a change through
`on_change(name)`. Both are called on the probes' threads.
"""

import os
import threading

from tb_rsync_plugin.transports import local_probe, probe_agent, ssh_probe

WALK = "walk"  # local folder walked in-process
PROBE = "probe"  # a probe session on the node (python3, or the sh fallback)
LISTING = "listing"  # rsync or rclone lists the source at its interval
INOTIFY = "inotify"  # a watched inbox (inbox.py)

def probe_kind(source):
    """The mode a source starts in, before any probe has answered."""
    if source.watch:
        return INOTIFY
    if source.is_local:
        return WALK
    if source.is_remote_shell and not source.rsh:
        return PROBE
    return LISTING


class Probes:
    """Every probe of one service: a walker for local folders, a session per ssh host.

    Args:
      ssh: the service's `ssh.SshConnections` (probe sessions ride the shared login).
      on_change: called with a source name when its probe saw it change.
      on_mode: called with (name, mode, detail) when a source's mode changes.
      interval_for: source -> its interval in seconds (how often its probe walks).
    """

    def __init__(self, ssh, on_change, on_mode, interval_for):
        self._ssh = ssh
        self._on_change = on_change
        self._on_mode = on_mode
        self._interval_for = interval_for
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._local = local_probe.LocalWalker(on_change, self._stop)
        self._hosts = {}  # group key -> ssh_probe.HostProbe
        self._started = False
        self._modes = {}  # name -> (mode, detail)
        self._kinds = {}  # name -> the kind of probe it was given (probe_kind)

    def set_sources(self, sources):
        """Watch `sources` (timed ones only: a source synced on request has no probe)."""
        with self._lock:
            local, groups = [], {}
            for source in sources:
                interval = self._interval_for(source)
                kind = probe_kind(source) if interval > 0 else LISTING
                if kind == WALK:
                    local.append((source, interval))
                elif kind == PROBE:
                    groups.setdefault(_group_key(source), []).append((source, interval))
                if self._kinds.get(source.name) != kind:  # new, or its kind changed
                    self._kinds[source.name] = kind
                    self._set_mode(source.name, *_initial_mode(kind, interval))
            self._local.set_sources(local)
            for key in list(self._hosts):
                if key not in groups:
                    self._hosts.pop(key).stop()
            for key, members in groups.items():
                host = self._hosts.get(key)
                if host is None:
                    host = self._hosts[key] = ssh_probe.HostProbe(
                        self._ssh, self._on_change, self._host_state, self._stop)
                    if self._started:
                        host.start()
                host.set_sources(members)
            for name in set(self._modes) - {s.name for s in sources}:
                del self._modes[name]
                self._kinds.pop(name, None)
            if self._started and local:
                self._local.start()

    def start(self):
        with self._lock:
            self._started = True
            self._local.start()
            for host in self._hosts.values():
                host.start()

    def stop(self):
        self._stop.set()
        with self._lock:
            hosts = list(self._hosts.values())
        for host in hosts:
            host.stop()

    def probed(self, name):
        """True while a working probe watches `name` (the scheduler's slow safety interval
        then replaces its listing interval)."""
        # PROBE is only ever set while a session watches it (`_host_state`).
        return self._modes.get(name, (LISTING, ""))[0] in (WALK, PROBE)

    def mode(self, name):
        return self._modes.get(name, (LISTING, ""))

    def first_record_query(self, source):
        """A session for `first_records` of `source`, opened now (before its transfer) and
        asked after it, where no live probe session on its host will answer (`tb-rsync
        sync`); None where none is needed or none can run. The caller closes it."""
        if probe_kind(source) != PROBE:
            return None
        host = self._host(source)
        if host is not None and host.answers_first_records:
            return None
        return ssh_probe.FirstRecordQuery(self._ssh, source)

    def first_records(self, source, paths, query=None):
        """{path: digest of its first record} for event files of `source`: read in-process,
        or from the node's probe session, or through `query` (`first_record_query`); None
        when no probe can say (see FAULTS.md)."""
        if source.is_local:
            root = os.path.abspath(os.path.expanduser(source.source_dir))
            return probe_agent.first_record_digests(root, paths)
        host = self._host(source)
        digests = None if host is None else host.first_records(source, paths)
        if digests is None and probe_kind(source) == PROBE:
            # No session answered (none was opened, or the host's went down since the
            # transfer started): one session now.
            query = query or ssh_probe.FirstRecordQuery(self._ssh, source)
            digests = query.ask(paths)
        return digests

    def _host(self, source):
        """The `HostProbe` of `source`'s host, if one was started."""
        with self._lock:
            return self._hosts.get(_group_key(source))

    def _host_state(self, name, watched, detail):
        self._set_mode(name, PROBE if watched else LISTING, detail)

    def _set_mode(self, name, mode, detail):
        if self._modes.get(name) != (mode, detail):
            self._modes[name] = (mode, detail)
            self._on_mode(name, mode, detail)


def _initial_mode(kind, interval):
    if interval <= 0:
        return LISTING, "Synced on request only: nothing watches it."
    return {
        WALK: (WALK, "Walked in-process every interval; a change syncs it at once."),
        PROBE: (LISTING, "Starting a probe session on the host; listed by rsync meanwhile."),
        INOTIFY: (INOTIFY, "A watched inbox: inotify asks for a sync at every change."),
        LISTING: (LISTING, "Listed by rsync (or rclone) every interval: this kind of source "
                           "has no probe."),
    }[kind]


def _group_key(source):
    """Sources one probe session serves: the same ssh command to the same login."""
    return (source.ssh or "", source.source.rsplit(":", 1)[0] if "]:" not in source.source
            else source.source.split("]:", 1)[0])
