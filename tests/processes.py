"""What is running, read from /proc, and `tb-rsync` started with set signal dispositions:
for tests that must leave no process behind."""

import os
import signal
import subprocess
import sys


def process_table():
    """{pid: (ppid, name, cmdline)} of every live (non-zombie) process but this one."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode("utf-8", "replace")
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] == b"Z":
            continue
        table[int(entry)] = (int(fields[1]), name, cmdline.strip())
    return table


def processes_mentioning(text, name=None):
    """[(pid, cmdline)] of processes whose command line contains `text` (and named `name`)."""
    return [(pid, cmdline) for pid, (_, proc_name, cmdline) in sorted(process_table().items())
            if text in cmdline and (name is None or proc_name == name)]


def slow_source_config(folder, mib, kib_per_s):
    """A TOML config with one source, `slow`, that keeps rsync busy for mib*1024/kib_per_s s.

    For tests that must catch a sync in flight (joining clicks, stopping mid-transfer).
    """
    remote = folder / "slow-remote"
    remote.mkdir()
    (remote / "big.bin").write_bytes(os.urandom(mib << 20))
    toml = folder / "sources.toml"
    toml.write_text(f'[[source]]\nname = "slow"\nsource = "{remote}/"\n'
                    f'bwlimit = {kib_per_s}\n')
    return toml


# Runs `tb-rsync ARGS...` after setting SIGINT, SIGTERM and SIGHUP to the dispositions its
# first argument names (the ignored ones, comma-separated): a test never depends on the ones
# pytest inherited (a shell's background job, say, starts with SIGINT ignored).
WITH_DISPOSITIONS = """
import os, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    ignored = name in sys.argv[1].split(",")
    signal.signal(getattr(signal, name), signal.SIG_IGN if ignored else signal.SIG_DFL)
os.execv(sys.executable, [sys.executable, "-m", "tb_rsync_plugin.cli", *sys.argv[2:]])
"""


def start_tb_rsync(*args, ignored=(), **kwargs):
    """`tb-rsync ARGS` in a session of its own (signals reach it alone), with exactly the
    signals in `ignored` ignored; stop it with `stop_tb_rsync`."""
    return subprocess.Popen([sys.executable, "-c", WITH_DISPOSITIONS, ",".join(ignored),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)


def stop_tb_rsync(proc, signum=signal.SIGINT):
    """Send `signum`; (stdout, stderr) once it exited. One that does not is killed (the test
    fails, and leaves nothing running)."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"tb-rsync did not stop on {signal.Signals(signum).name}:\n"
                             f"{out}\n{err}") from None
