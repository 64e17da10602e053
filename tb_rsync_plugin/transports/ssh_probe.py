"""The probe of ssh hosts: one long-lived session per host, over the shared login.

The session runs probe_agent.py with the node's `python3` (its source is sent over the
session: nothing is installed), or, where the session finds no python3, a POSIX `sh` loop that
checksums `ls -lnRai` of each tree. The node's login shell starts once per session, not once
per check. A session that dies or cannot start is restarted with backoff (`RESTART_MIN_S` up
to `RESTART_MAX_S`); its sources are reported unwatched meanwhile, and are listed by rsync.
"""

import json
import logging
import os
import select
import shlex
import subprocess
import threading
import time

from tb_rsync_plugin.transports.local_probe import MIN_INTERVAL_S
from tb_rsync_plugin.transports import probe_agent
from tb_rsync_plugin.transports import process as process_lib

logger = logging.getLogger(__name__)

RESTART_MIN_S = 5.0
RESTART_MAX_S = 300.0
PING_S = 30.0  # a silent session is asked for a pong this often...
PONG_WAIT_S = 30.0  # ...and restarted when none comes back in time
START_WAIT_S = 60.0  # login, shell start-up and the first walk of every tree
FIRST_WAIT_S = 30.0

# The sh fallback: reads the interval, then one root a line until an empty line; prints
# "changed I" (I counts roots from 1) when the checksum of a tree's listing changed, and
# "tick" after each round, so it dies of SIGPIPE within one interval of the session ending.
# Roots are only ever expanded inside double quotes (data, not code). No single quotes: it
# travels inside them.
_SH_AGENT = r"""
listing() { ls -lnRai --full-time -- "$1" 2>/dev/null || ls -lnRai -- "$1" 2>&1; }
IFS= read -r interval || exit 0
n=0
while IFS= read -r line && [ -n "$line" ]; do n=$((n+1)); eval "root_$n=\$line"; done
while :; do
  i=1
  while [ "$i" -le "$n" ]; do
    eval "r=\$root_$i"; eval "old=\${sig_$i-}"
    new=$(listing "$r" | cksum)
    if [ "$new" != "$old" ]; then eval "sig_$i=\$new"; echo "changed $i" || exit 0; fi
    i=$((i+1))
  done
  echo tick || exit 0
  sleep "$interval" || exit 0
done
"""

# Reads exactly N bytes of program from stdin (os.read: no buffer holds back later lines).
_PY_BOOT = """import os
n, b = {size}, b""
while len(b) < n:
    c = os.read(0, n - len(b))
    if not c:
        raise SystemExit(0)
    b += c
exec(compile(b, "tb-rsync-probe", "exec"))
"""


def remote_command(program_size):
    """What the node's login shell runs: say which agent it can start, then become it."""
    boot = _PY_BOOT.format(size=program_size)
    return ("N=; command -v nice >/dev/null 2>&1 && N='nice -n 10'; "
            "if command -v python3 >/dev/null 2>&1; then echo tb-rsync-probe python3; "
            f"exec $N python3 -u -c {shlex.quote(boot)}; fi; "
            "echo tb-rsync-probe sh; "
            f"exec $N sh -c {shlex.quote(_SH_AGENT)}")


def _program():
    with open(probe_agent.__file__, "rb") as f:
        return f.read()


def remote_root(source):
    """The folder the node's probe walks: what follows `host:` (relative: from the home)."""
    path = source.source.split(":", 1)[1] if not source.source.startswith("[") \
        else source.source.split("]:", 1)[1]
    if path.startswith("~/"):
        path = path[2:]
    return path.rstrip("/") or ("/" if path.startswith("/") else ".")


class FirstRecordQuery:
    """`Probes.first_records` through a short session of its own, for a process without a
    probe session on the host (`tb-rsync sync`, or while the probe restarts).

    Opened when a sync is about to write into staging and asked once the transfer is done:
    the node's login shell and python3 start while rsync moves the bytes, so the check adds
    no round of session start-up to the sync (docs/BENCHMARKS.md, B1 over ssh). `ask`
    returns None where the host cannot run the python3 probe.
    """

    def __init__(self, ssh, source):
        self._source, self._program = source, _program()
        try:
            self._proc = _open_session(ssh, source, self._program)
        except OSError:
            self._proc = None

    def ask(self, paths):
        proc = self._proc
        if proc is None:
            return None
        try:
            lines, never = _LineReader(proc.stdout.fileno()), threading.Event()
            deadline = time.monotonic() + FIRST_WAIT_S
            request = json.dumps({"first": [1, remote_root(self._source), list(paths)]})
            while True:
                line = lines.next(max(0.0, deadline - time.monotonic()), never)
                if line is None or line == b"tb-rsync-probe sh":
                    return None
                if line == b"tb-rsync-probe python3":
                    proc.stdin.write(self._program + request.encode() + b"\n")
                    proc.stdin.close()  # the agent answers, then ends at this EOF
                elif line.startswith(b'{"first"'):
                    digests = json.loads(line).get("digests")
                    return digests if isinstance(digests, dict) else None
        except (OSError, ValueError):
            return None
        finally:
            self.close()

    def close(self):
        """End the session (asked or not): the agent waiting for its program exits."""
        if self._proc is not None:
            _end(self._proc)
            self._proc = None


def _open_session(ssh, source, program):
    """An ssh session to `source`'s host that starts a probe agent for `program` (whose
    bytes the caller then sends), in its own session and tied to our life."""
    return process_lib.popen(
        [*process_lib.die_with_parent(), *ssh.session_args(source),
         remote_command(len(program))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)


def _end(proc):
    """Stop a probe session's ssh (its group) and close our ends of its pipes now."""
    process_lib.kill_group(proc)
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


def _watched(agent):
    how = "python3" if agent == "python3" else "sh: no python3 found there"
    return f"Watched by a probe session on the host ({how}); a change syncs it at once."


class HostProbe:
    """One probe session on one host (one ssh login), watching all its sources.

    Args:
      ssh: the service's `ssh.SshConnections`.
      on_change: called with a source name when the node saw it change.
      on_state: called with (name, watched, detail): whether the session watches it now.
      stopping: the service's stop Event.
    """

    def __init__(self, ssh, on_change, on_state, stopping):
        self._ssh = ssh
        self._on_change = on_change
        self._on_state = on_state
        self._stopping = stopping
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._members = []  # [(source, interval)]
        self._ids = {}  # id sent to the node -> source name
        self._proc = None
        self._agent = None  # "python3" | "sh" while a session is up
        self._thread = None
        self._pending = {}  # request number -> [Event, digests]
        self._request = 0
        self._restarts = 0

    def set_sources(self, members):
        with self._lock:
            old, self._members = self._members, list(members)
            agent = self._agent
        if old != members and agent == "python3":
            self._send_watch()
            for source, _ in members:  # the session watches the new set from now on
                self._on_state(source.name, True, _watched(agent))
        elif old != members and agent == "sh":
            self._kill()  # the sh agent reads its roots once: start it again

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="tb-rsync-probe-host")
            self._thread.start()

    def stop(self):
        self._stop.set()
        self._kill()

    @property
    def answers_first_records(self):
        """Whether `first_records` can be asked now (a python3 session is up)."""
        with self._lock:
            return self._agent == "python3"

    def first_records(self, source, paths):
        with self._lock:
            if self._agent != "python3":
                return None
            self._request += 1
            number, done = self._request, threading.Event()
            self._pending[number] = [done, None]
        if not self._write({"first": [number, remote_root(source), list(paths)]}) or \
                not done.wait(FIRST_WAIT_S):
            self._pending.pop(number, None)
            return None
        return self._pending.pop(number)[1]

    # --- the session -------------------------------------------------------------------
    def _loop(self):
        while not (self._stop.is_set() or self._stopping.is_set()):
            with self._lock:
                members = list(self._members)
            if not members:
                self._stop.wait(1.0)
                continue
            why = self._session(members)
            if self._stop.is_set() or self._stopping.is_set():
                return
            self._restarts += 1
            delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** min(self._restarts - 1, 8))
            for source, _ in members:
                self._on_state(source.name, False,
                               f"The probe session stopped ({why}); listed by rsync at its "
                               f"interval, probe restarts in {delay:.0f} s.")
            self._stop.wait(delay)

    def _session(self, members):
        """Run one session until it ends; returns why it ended (a short phrase)."""
        source = members[0][0]
        try:
            self._ssh.prepare(source, cancel=self._stop)
            program = _program()
            proc = _open_session(self._ssh, source, program)
        except Exception as e:  # TransferError sentences, a missing ssh
            return str(e).rstrip(".") or type(e).__name__
        with self._lock:
            self._proc = proc
        try:
            return self._converse(proc, members, program)
        finally:
            with self._lock:
                self._agent, self._proc = None, None
                for pending in self._pending.values():
                    pending[0].set()
            _end(proc)

    def _converse(self, proc, members, program):
        lines = _LineReader(proc.stdout.fileno())
        agent, deadline = None, time.monotonic() + START_WAIT_S
        while agent is None:  # a login script may print lines of its own first
            first = lines.next(max(0.0, deadline - time.monotonic()), self._stop)
            if first is None:
                return "the host ran something else (a forced command?)" if lines.closed \
                    else "no answer from the host"
            if first.startswith(b"tb-rsync-probe "):
                agent = first[len(b"tb-rsync-probe "):].decode("ascii", "replace")
        if agent not in ("python3", "sh"):
            return "the host ran something else (a forced command?)"
        try:
            if agent == "python3":
                proc.stdin.write(program)
                proc.stdin.flush()
            else:
                roots = [remote_root(s) for s, _ in members]
                if any("\n" in r for r in roots):
                    return "a folder name holds a newline, which the sh probe cannot take"
                interval = max(1, round(min(i for _, i in members)))
                proc.stdin.write((f"{interval}\n" + "".join(r + "\n" for r in roots) + "\n")
                                 .encode("utf-8", "surrogateescape"))
                proc.stdin.flush()
        except OSError:
            return "the session closed"
        with self._lock:
            self._agent = agent
            self._ids = {str(i + 1): s.name for i, (s, _) in enumerate(members)}
        if agent == "python3":
            ready = lines.next(START_WAIT_S, self._stop)
            if ready is None or not ready.startswith(b'{"ready"'):
                return "the host's python3 did not start the probe"
            self._send_watch()
        self._restarts = 0
        for source, _ in members:
            self._on_state(source.name, True, _watched(agent))
        return self._listen(lines, agent)

    def _listen(self, lines, agent):
        ping, asked = 0, None
        last_heard = time.monotonic()
        while not self._stop.is_set():
            line = lines.next(1.0, self._stop)
            now = time.monotonic()
            if line is None:
                if lines.closed:
                    return "the connection closed"
                if agent == "python3":
                    if asked is not None and now - asked > PONG_WAIT_S:
                        return f"no answer for {PONG_WAIT_S:.0f} s"
                    if asked is None and now - last_heard > PING_S:
                        ping += 1
                        asked = now
                        self._write({"ping": ping})
                elif now - last_heard > PING_S + PONG_WAIT_S + self._sh_interval():
                    return "no tick from the sh probe"
                continue
            last_heard, asked = now, None
            self._handle(line, agent)
        return "stopped"

    def _sh_interval(self):
        with self._lock:
            return min((i for _, i in self._members), default=1.0)

    def _handle(self, line, agent):
        if agent == "sh":
            if line.startswith(b"changed "):
                self._changed(line[len(b"changed "):].decode("ascii", "replace"))
            return
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "changed" in message:
            self._changed(str(message["changed"]))
        elif "missing" in message and isinstance(message["missing"], list):
            self._changed(str(message["missing"][0]))  # the sync says what is wrong
        elif "first" in message:
            with self._lock:
                pending = self._pending.get(message["first"])
                if pending is not None and isinstance(message.get("digests"), dict):
                    pending[1] = message["digests"]
                    pending[0].set()

    def _changed(self, key):
        with self._lock:
            name = self._ids.get(key)
        if name is not None:
            try:
                self._on_change(name)
            except Exception:
                logger.exception("tb-rsync: handling a change of %r failed", name)

    def _send_watch(self):
        with self._lock:
            members = list(self._members)
            self._ids = {str(i + 1): s.name for i, (s, _) in enumerate(members)}
        self._write({"watch": {str(i + 1): [remote_root(s), list(s.exclude)]
                               for i, (s, _) in enumerate(members)},
                     "interval": max(MIN_INTERVAL_S, min((i for _, i in members),
                                                          default=1.0))})

    def _write(self, message):
        with self._lock:
            proc = self._proc
            if proc is None:
                return False
            try:
                proc.stdin.write(json.dumps(message).encode("utf-8") + b"\n")
                proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def _kill(self):
        with self._lock:
            proc = self._proc
        if proc is not None:
            process_lib.kill_group(proc)


class _LineReader:
    """Lines from a pipe, with a timeout, without a thread."""

    def __init__(self, fd):
        self._fd = fd
        self._buffer = b""
        self.closed = False

    def next(self, timeout_s, stop):
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            if self.closed or stop.is_set():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    self.closed = True
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line
