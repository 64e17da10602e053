"""Everything ssh: the command rsync runs, one shared login per host, what ssh's errors mean.

A sync starts up to three rsyncs at once, and each would log in on its own: two logins per
no-change sync, and a fleet of sources on one host trips sshd's MaxStartups (10 logins in
progress at once by default). `SshConnections` makes one login serve them all through
OpenSSH connection sharing: a master connection per sharing key (host, port, user and the
user's ssh command), reached through a socket in a private folder of ours, that stays
`CONTROL_PERSIST_S` after its last session and is stopped by `close()`.

Assumptions: OpenSSH's client, 6.8 or later (`ssh -G`); where `ssh -G` fails (an older or
another ssh, a broken `ssh` value) a source simply does not share. A ControlPath set by the
user's own ssh configuration wins: tb-rsync then rides the user's master (2FA login nodes:
the user logs in once by hand) and never opens or stops one there. Sessions over one master
count against sshd's MaxSessions (10 by default); a session the master refuses falls back
to a login of its own, so going over costs logins, not failures.
"""

import dataclasses
import json
import os
import re
import select
import shlex
import stat
import subprocess
import threading
import time

from tb_rsync_plugin.transports import process as process_lib
from tb_rsync_plugin.errors import TransferError

CONNECT_TIMEOUT_S = 10
CONTROL_PERSIST_S = 300
RECHECK_AFTER_S = 30.0  # well inside ControlPersist: a master checked this recently is used
_LOGIN_GRACE_S = 20  # past the connect timeout (which covers the banner): key exchange, auth
_PROBE_TIMEOUT_S = 10
_HOSTSPEC_RE = re.compile(r"^(?:(?P<user>[^@:/]*)@)?(?:\[(?P<v6>[^\]/]*)\]|(?P<host>[^:/]+)):")
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_./-]+$")  # ssh splits ControlPath on spaces, expands %
_SOCKET_TAKEN = b"already exists, disabling multiplexing"  # ssh's words when it cannot bind
_SOCKET_PATH_MAX = 80  # sun_path is 108 bytes and ssh binds a 17-character longer temp name


def ssh_command(user_ssh):
    """The `-e` value: the user's ssh command with options that make it fail instead of ask.

    BatchMode goes right after the ssh program so it beats anything the user wrote (ssh keeps
    the first value it sees; command-line options beat ~/.ssh/config). The timeouts go last,
    so a user's own `-o ConnectTimeout=...` wins. Nothing else of the user's config changes:
    ProxyJump, ControlMaster, agents and identity files keep working.
    """
    words = shlex.split(user_ssh or "ssh")
    at = next((i + 1 for i, w in enumerate(words)
               if os.path.basename(w) in ("ssh", "ssh.exe")), 1)
    words[at:at] = ["-o", "BatchMode=yes"]
    words += ["-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
              "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    return shlex.join(words)


# (stderr regex, what happened; what to do) for ssh and network failures, first match wins.
# rsync.py puts these before its own, so they also beat rsync's generic "connection
# unexpectedly closed", which follows every one of them.
CONNECTION_DIAGNOSES = [
    ("Host key verification failed", "the host key of the server is unknown or changed; "
     "connect once with ssh by hand to check and accept it"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the host key of the server changed; "
     "check it and update known_hosts"),
    (r"Permission denied \((publickey|password|keyboard|gssapi|hostbased)",
     "ssh could not log in non-interactively; set up a key or agent "
     "(ssh-copy-id) so that 'ssh HOST' works without a password"),
    ("Too many authentication failures", "ssh could not log in non-interactively; "
     "set up a key or agent so that 'ssh HOST' works without a password"),
    ("Could not resolve hostname", "the host name could not be resolved; check its spelling "
     "and your DNS"),
    ("Name or service not known", "the host name could not be resolved; check its spelling"),
    # sshd drops connections past MaxStartups before its banner (OpenSSH 9.2 words it both
    # ways); so do PerSourcePenalties and tcp wrappers, rarer on a host that worked before.
    (r"kex_exchange_identification: (read: )?Connection (reset by peer|closed by remote host)",
     "the server refused the connection: too many at once (sshd MaxStartups); sync fewer "
     "sources of this host at once, keep ssh connection sharing on, or raise MaxStartups "
     "in the server's sshd_config"),
    # Before "Connection timed out": TCP got through, so the host is not unreachable.
    ("Connection timed out during banner exchange", "connected, but the server never "
     "answered; the host or its sshd is hung or overloaded, or the port is not an ssh "
     "server (check the port and try 'ssh HOST true')"),
    ("Connection refused", "the host is unreachable (connection refused); check the host, "
     "the port and that sshd or the rsync daemon is running"),
    ("Connection timed out", "the host is unreachable (connection timed out); check the host, "
     "port and network"),
    ("No route to host", "the host is unreachable (no route to host); check the network"),
    ("Network is unreachable", "the host is unreachable (network unreachable)"),
]


def diagnose(text, table=CONNECTION_DIAGNOSES):
    """The sentence part of the first `table` entry whose pattern is found in `text`, or None."""
    return next((fix for pattern, fix in table if re.search(pattern, text)), None)


def default_control_dir():
    """A short folder of this user's for control sockets: under $XDG_RUNTIME_DIR when that
    is short and plain, else /tmp (not $TMPDIR: macOS's is too long for a socket path)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    folder = os.path.join(runtime, "tb-rsync")
    if runtime and os.path.isdir(runtime) and _SAFE_PATH_RE.match(folder) \
            and len(folder) <= _SOCKET_PATH_MAX - 17:
        return folder
    return f"/tmp/tb-rsync-{os.geteuid()}"


@dataclasses.dataclass
class _Share:
    """One sharing key: the ssh words every session of it uses, and where its master is."""

    words: list  # ssh_command() of the user's ssh, split
    login: list  # what rsync puts after them: ["-l", user, host] or [host]
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    socket: str = None  # our ControlPath; None: the user's ssh config shares, or -G failed
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    checked_mono: float = float("-inf")  # when a master last answered (or was opened)
    master_pid: int = None  # the master that answered then
    probed: bool = False  # `ssh -G` asked (`SshConnections._probe`)

    def options(self):
        """The ssh command without the host: rsync's `--rsh`."""
        return self.words + ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.socket}",
                             "-o", f"ControlPersist={CONTROL_PERSIST_S}"]

    def args(self, *extra):
        """A whole ssh command line of our own, as rsync would start it."""
        return self.options() + list(extra) + self.login


class SshConnections:
    """Shared ssh logins for the `host:dir` sources of one service, for its lifetime.

    Thread-safe. `prepare` before a source's first rsync of a cycle, `rsh_for` for every
    rsync's `--rsh`, `close` once the service's syncs have stopped (a master opened after
    that ends by itself, ControlPersist after its last session). Local and daemon sources,
    sources with `ssh_sharing = false` and `enabled=False` get the plain `ssh_command`.
    """

    def __init__(self, enabled=True, control_dir=None):
        self.enabled = enabled
        self.control_dir = control_dir or default_control_dir()
        self._lock = threading.Lock()
        self._shares = {}  # sharing key -> _Share
        self._used = {}  # socket path -> _Share whose master we checked or opened
        self._dir_ready = False

    def rsh_for(self, source):
        """rsync's `--rsh` value for `source`, or None when rsync reaches it without ssh (a
        local folder, a daemon, or a pod or container through its own `rsh`)."""
        if not source.is_remote_shell or source.rsh:
            return None
        share = self._share(source)
        if share is None or share.socket is None:
            return ssh_command(source.ssh)
        return shlex.join(share.options())

    def session_args(self, source):
        """A whole ssh command line to `source`'s host, riding the shared login when there is
        one; the remote command goes after it (the probe sessions of probes.py)."""
        share = self._share(source)
        if share is not None and share.socket is not None:
            return share.args()
        match = _HOSTSPEC_RE.match(source.source)
        host = match.group("v6") or match.group("host")
        return shlex.split(ssh_command(source.ssh)) + \
            (["-l", match.group("user")] if match.group("user") else []) + [host]

    def prepare(self, source, cancel=None):
        """Make sure the one shared login of `source`'s key exists, opening it if needed.

        Serialized per key: rsyncs started at once would otherwise each log in (and race
        to become the master). A master left by a killed tb-rsync is reused; a stale socket
        is replaced (ssh's ControlMaster=auto unlinks it).

        Raises:
          TransferError: the login failed (the sentence rsync would give), took longer than
            the connect timeout plus a grace, or `cancel` was set.
        """
        share = self._share(source)
        if share is None or share.socket is None:
            return
        while True:
            _raise_if_cancelled(source, cancel)
            if share.lock.acquire(timeout=0.05):
                break
        try:
            # Checked a moment ago: skip the `ssh -O check` process. An idle fleet syncs every
            # host's sources every few seconds, and if the master did die meanwhile, rsync's
            # ssh (ControlMaster=auto) logs in by itself and becomes the new master.
            # (The socket must still be there: another process's close() removes it at once.)
            if time.monotonic() - share.checked_mono >= RECHECK_AFTER_S or \
                    not os.path.exists(share.socket):
                self._make_dir()
                if not self._check(share):
                    if not share.probed:  # the master found at the start has gone
                        self._probe(share, share.socket)
                        if share.socket is None:
                            return  # the user's ssh configuration shares (or forbids) now
                    self._open(share, source, cancel)
                share.checked_mono = time.monotonic()
            with self._lock:
                self._used[share.socket] = share
        finally:
            share.lock.release()

    def run(self, source, transfer, cancel=None):
        """`transfer(rsh)` over `source`'s shared login (`prepare`d first, `rsh_for`).

        When it fails and the master that carried it is gone (killed, or its connection
        dropped; rsync then only says "connection unexpectedly closed"), the sync is run
        again once over a fresh login, within the same cycle. If that fails because the
        shared connection closed again, the sentence says so.

        Raises:
          TransferError: from `prepare` or `transfer`.
        """
        self.prepare(source, cancel)
        share = self._share(source)
        if share is None or share.socket is None:
            return transfer(self.rsh_for(source))
        for attempt in (1, 2):
            master = share.master_pid
            try:
                return transfer(self.rsh_for(source))
            except TransferError as e:
                if cancel is not None and cancel.is_set() or not self._lost(share, master):
                    raise
                if attempt == 2:
                    raise TransferError(
                        f"Sync of '{source.name}' from '{source.source}' failed: the shared "
                        "ssh connection closed during the sync, again after a fresh login; "
                        "check what ends ssh processes or connections here, or turn sharing "
                        "off for this source (ssh_sharing = false).", e.details) from None
            self.prepare(source, cancel)

    def _lost(self, share, master):
        """The master `master` (pid) that a transfer rode has gone: not answering, or
        replaced (rsync's own ssh becomes the master when it finds none). Either way the
        next `prepare` checks again."""
        with share.lock:
            if self._check(share) and share.master_pid == master:
                return False
            share.checked_mono = float("-inf")
            return True

    def close(self):
        """Stop every master this object used and remove its socket; safe to call twice.

        `-O stop`, not `-O exit`: the master stops listening at once and ends when its last
        session does, so another tb-rsync process riding it is not cut off mid-transfer.
        """
        with self._lock:
            used, self._used = list(self._used.values()), {}
        for share in used:
            share.checked_mono = float("-inf")
            if _run(share.args("-O", "stop")) is None or os.path.exists(share.socket):
                _remove_if_stale(share.socket)

    def _share(self, source):
        """The `_Share` of `source`, probed once; None when the source does not share."""
        if not (self.enabled and source.ssh_sharing and source.is_remote_shell) or source.rsh:
            return None
        match = _HOSTSPEC_RE.match(source.source)
        if match is None:
            return None
        host = match.group("v6") or match.group("host")
        login = (["-l", match.group("user")] if match.group("user") else []) + [host]
        words = shlex.split(ssh_command(source.ssh))
        import hashlib  # only for ssh sources: a local sync starts ~2 ms sooner without it
        key = hashlib.sha256(json.dumps([words, login]).encode()).hexdigest()[:16]
        with self._lock:  # not the key's lock, which `prepare` holds while logging in
            if key not in self._shares:
                share = self._shares[key] = _Share(words, login)
                socket = os.path.join(self.control_dir, key)
                if _is_socket(socket):
                    # An earlier tb-rsync probed this key and opened a master there (a sync
                    # from cron): ride it; `ssh -G` runs only if a login is needed after all.
                    share.socket = socket
                else:
                    self._probe(share, socket)
            return self._shares[key]

    def _probe(self, share, our_socket):
        """Set `share.socket` when tb-rsync's sharing applies, from `ssh -G` (the effective
        configuration). A ControlPath of the user's own (with any ControlMaster, even "no":
        then they open masters by hand) is ridden, not replaced. Options in the user's `ssh`
        value come before ours and win: `-o ControlMaster=no` or `-S none` there means no
        sharing (a master would never be opened, and the login would wait for nothing)."""
        share.probed, share.socket = True, None
        config = _effective_config(share.words + ["-G"] + share.login)
        if config is None or config.get("controlpath", "none") != "none":
            return  # no config: a broken ssh command, which rsync reports as it always did
        share.socket = our_socket
        ours = _effective_config(share.args("-G"))
        if ours is None or (ours.get("controlmaster"), ours.get("controlpath"),
                            ours.get("controlpersist")) != ("auto", our_socket,
                                                            str(CONTROL_PERSIST_S)):
            share.socket = None
            return
        timeout = ours.get("connecttimeout", "")
        share.connect_timeout_s = float(timeout) if timeout.isdigit() else CONNECT_TIMEOUT_S

    def _make_dir(self):
        """Create the control folder, refusing one another user could reach into."""
        if self._dir_ready:
            return
        try:
            os.makedirs(self.control_dir, mode=0o700, exist_ok=True)
            info = os.lstat(self.control_dir)
            if info.st_uid == os.geteuid() and info.st_mode & 0o077:
                os.chmod(self.control_dir, 0o700)
                info = os.lstat(self.control_dir)
        except OSError as e:
            raise TransferError(
                f"The folder '{self.control_dir}' for shared ssh connections cannot be created "
                f"({e.strerror}); check that its parent folder is writable, or turn sharing off "
                "(--rsync_ssh_sharing false, tb-rsync --no-ssh-sharing).") from None
        if not os.path.isdir(self.control_dir) or os.path.islink(self.control_dir) \
                or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise TransferError(
                f"The folder '{self.control_dir}' for shared ssh connections is not a private "
                "folder of this user; remove it (tb-rsync recreates it) or turn sharing off "
                "(--rsync_ssh_sharing false, tb-rsync --no-ssh-sharing).")
        self._dir_ready = True

    def _check(self, share):
        """Does a master answer on `share.socket`? Notes its pid in `share.master_pid`.

        Its own words, not the exit code: when the socket's listener is not an ssh master
        ("master hello exchange failed"), ssh logs in normally instead, and exits 0.
        """
        result = _run(share.args("-O", "check"))
        match = result and result.returncode == 0 and \
            re.search(r"Master running \(pid=(\d+)\)", result.stderr)
        share.master_pid = int(match.group(1)) if match else None
        return bool(match)

    def _open(self, share, source, cancel):
        """Log in once: a master in the background (ControlPersist) once the login is done.

        `-N` runs nothing on the server (keys restricted to rrsync work). The foreground
        ssh exits when the master is listening; if it lost a race to another master it
        says so and would stay a plain connection: it is stopped and that master ridden.
        """
        args = share.args("-N", "-T")
        limit_s = min(share.connect_timeout_s + _LOGIN_GRACE_S, source.timeout_s)
        deadline = time.monotonic() + limit_s
        try:
            proc = process_lib.popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise TransferError(
                f"Sync of '{source.name}' could not start ssh '{args[0]}' ({e.strerror}); "
                "install the OpenSSH client or fix 'ssh' for this source.", shlex.join(args)
            ) from None
        stderr, eof, fd = b"", False, proc.stderr.fileno()
        try:
            while True:
                if eof:
                    try:
                        proc.wait(0.05)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                elif select.select([fd], [], [], 0.05)[0]:
                    chunk = os.read(fd, 65536)
                    eof, stderr = not chunk, stderr + chunk
                    if _SOCKET_TAKEN in stderr:
                        # Another ssh became the master between our check and our bind
                        # (rsync's own, when the master died mid-sync): this one would stay
                        # a plain connection, and the login look hung until the deadline.
                        _stop(proc)
                        return self._ridden(share, source, args, stderr)
                if cancel is not None and cancel.is_set() or time.monotonic() > deadline:
                    _stop(proc)
                    _raise_if_cancelled(source, cancel)
                    if self._check(share):
                        return  # another master won the race; this one was a plain connection
                    raise TransferError(
                        f"Sync of '{source.name}' from '{source.source}' failed: "
                        f"the ssh login did not finish within {limit_s:g} s; "
                        "check that 'ssh HOST true' works without a prompt.",
                        _details(args, None, stderr))
        finally:
            proc.stderr.close()
        if proc.returncode != 0:
            text = stderr.decode("utf-8", "replace")
            what = diagnose(text) or f"ssh failed with exit code {proc.returncode}"
            raise TransferError(f"Sync of '{source.name}' from '{source.source}' failed: "
                                f"{what}.", _details(args, proc.returncode, stderr))
        self._check(share)  # the new master's pid, to tell later whether it was replaced

    def _ridden(self, share, source, args, stderr):
        """Our login found the socket taken: ride the master there, or say what holds it."""
        if self._check(share):
            return
        raise TransferError(
            f"Sync of '{source.name}' from '{source.source}' failed: the socket of its shared "
            f"ssh connection, '{share.socket}', is held by something that does not answer as "
            "an ssh master; remove it, or turn sharing off for this source "
            "(ssh_sharing = false).", _details(args, None, stderr))


def _stop(proc):
    """Only the foreground ssh: a master it may have forked must live on."""
    proc.kill()
    proc.wait()


def _raise_if_cancelled(source, cancel):
    if cancel is not None and cancel.is_set():
        raise TransferError(f"Sync of '{source.name}' was cancelled.")


def _effective_config(args):
    """`ssh -G`'s "key value" lines as a dict, or None when ssh refuses the options."""
    result = _run(args)
    if result is None or result.returncode != 0:
        return None
    return dict(line.partition(" ")[::2] for line in result.stdout.splitlines())


def _run(args):
    """A quick local ssh (`-G`, `-O`): its CompletedProcess, or None if it could not run."""
    try:
        return process_lib.run(args, _PROBE_TIMEOUT_S, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    except (OSError, subprocess.SubprocessError):
        return None


def _remove_if_stale(path):
    """Unlink a socket no master listens on (its master was killed); a live one stays."""
    import socket  # only for ssh sources, as hashlib above
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:
        pass
    finally:
        probe.close()


def _details(args, code, stderr):
    return process_lib.details(args, "none (stopped)" if code is None else code,
                               stderr.decode("utf-8", "replace").splitlines())


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False
