"""Child processes of a transfer (rsync, rclone): started without a shell in their own
session, tied to our life, stopped as a whole group, and described for an error's details.
"""

import errno
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading

from tb_rsync_plugin.errors import TransferError

KILL_GRACE_S = 2.0
DETAIL_LINES = 20


@functools.lru_cache(maxsize=None)
def die_with_parent():
    """A command prefix that makes a child get SIGTERM when the thread that started it dies.

    The child runs in its own session (Ctrl-C in a terminal must not kill it half-way; we stop
    it ourselves), so a tb-rsync killed with SIGKILL would otherwise leave it running and
    still writing into staging without holding the source's lock. util-linux's `setpriv`
    sets PR_SET_PDEATHSIG and execs the command. Not a Python `preexec_fn`: that runs the
    interpreter's fork handlers in the child, and grpc's (TensorBoard loads grpc) abort it
    now and then (rsync "exit code -6"). Probed once, since util-linux before 2.33 (and
    busybox) have no --pdeathsig; without a working setpriv: no prefix.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if not setpriv:
        return ()
    prefix = (setpriv, "--pdeathsig", "TERM", "--")
    try:
        probe = run([*prefix, "true"], 10, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if probe.returncode == 0 else ()


# Python 3.9's subprocess forks the whole interpreter to start a child (3.10 and later use
# vfork), and fork() runs every pthread_atfork handler in the child. grpc's (TensorBoard's
# fast loader talks to its data server over grpc) abort the child now and then before it
# runs the program: measured, 68 of 1,500 children "killed by signal SIGABRT" while grpc
# calls ran, none through posix_spawn. subprocess starts a child by posix_spawn, which runs
# no fork handlers, when the program is a path, no descriptors are to be closed (ours are
# not inheritable anyway: PEP 446) and no new session is asked for; `setsid` (util-linux,
# busybox) then makes the session.
SPAWN_BY_PATH = sys.version_info < (3, 10) and getattr(subprocess, "_USE_POSIX_SPAWN", False)


def popen(args, new_session=True, env=None, **kwargs):
    """`subprocess.Popen(args, env=env, **kwargs)`, in a session of its own if asked, that
    never forks the interpreter where that can abort the child (`SPAWN_BY_PATH`).

    Raises:
      OSError: the program cannot be started (FileNotFoundError when it is missing).
    """
    if not SPAWN_BY_PATH:
        return subprocess.Popen(args, env=env, start_new_session=new_session, **kwargs)
    program = shutil.which(args[0], path=None if env is None else env.get("PATH"))
    if program is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), args[0])
    args = [os.path.abspath(program), *args[1:]]
    if new_session:
        setsid = _setsid()
        if setsid is None:  # no setsid program: fork, as before
            return subprocess.Popen(args, env=env, start_new_session=True, **kwargs)
        args = [setsid, *args]
    return subprocess.Popen(args, env=env, close_fds=False, **kwargs)


def run(args, timeout_s, **kwargs):
    """`subprocess.run(args, timeout=timeout_s, **kwargs)` with no input, through `popen`
    (no new session): a quick command, killed and `TimeoutExpired` past `timeout_s`."""
    with popen(args, new_session=False, stdin=subprocess.DEVNULL, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@functools.lru_cache(maxsize=None)
def _setsid():
    found = shutil.which("setsid")
    return os.path.abspath(found) if found else None


def start(args, env=None):
    """`Popen(args)` with stdout and stderr piped, in a new session, with the death prefix.

    Raises:
      OSError: the program cannot be started (FileNotFoundError when it is missing).
    """
    prefix = die_with_parent()
    if prefix and shutil.which(args[0]) is None:
        # setpriv would start and then fail to exec: say so here, as Popen would.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), args[0])
    return popen(
        [*prefix, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=dict(os.environ if env is None else env, LC_ALL="C"))


def start_read(job, args):
    """`start(args)` for `job`, whose `_read_stdout` and `_read_stderr` then run on daemon
    threads; `job.proc` and `job.err_thread` are set before either starts.

    A reader that cannot start ("can't start new thread") kills the process first: no
    child may run unwatched. `_read_stdout` ends with `reap(job)`.
    """
    job.proc = start(args)
    try:
        job.err_thread = threading.Thread(target=job._read_stderr, daemon=True)
        job.err_thread.start()
        threading.Thread(target=job._read_stdout, daemon=True).start()
    except BaseException:
        job.proc.kill()
        job.proc.wait()
        _close_pipes(job.proc)
        raise


def reap(job):
    """After `job`'s stdout ended (or its reader failed): wait for the process and its
    stderr reader, and close both pipes now.

    Left to the garbage collector, they stayed open: a job and its run refer to each
    other, so only a collection frees them (a long `watch` held hundreds of pipes). stdout
    is closed first, so a child still writing to it (its reader failed) gets EPIPE instead
    of blocking the wait forever.
    """
    job.proc.stdout.close()
    job.proc.wait()
    job.err_thread.join()
    _close_pipes(job.proc)


def _close_pipes(proc):
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()


def kill_group(proc):
    """Stop the child's whole process group (rsync and its ssh, say): TERM, then KILL."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            if proc.poll() is not None:
                return
            # Alive without a group of its own: `setsid` (popen) has not made it yet, and
            # has started nothing else.
            proc.send_signal(sig)
        if grace is None:
            break
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def details(args, returncode, stderr_lines):
    """An error's details: the command, its exit code and its stderr's tail, or "(none)"."""
    lines = list(stderr_lines)[-DETAIL_LINES:]
    return "command: " + shlex.join(args) + "\nexit code: " + str(returncode) + \
        "\nstderr:\n" + ("\n".join(lines) if lines else "(none)")


def cancelled(source):
    return TransferError(f"Sync of '{source.name}' was cancelled.")


def timed_out(source, details_text):
    """The whole run went past `source.timeout_s` (one deadline for all its processes)."""
    return TransferError(f"Sync of '{source.name}' timed out after {source.timeout_s:g} s; "
                         "the source is slow or unreachable (raise 'timeout' for this source "
                         "if it is just big).", details_text)
