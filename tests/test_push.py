"""`tb-rsync push` into a watched inbox over the test sshd, with the hub a real
`tb-rsync watch --watch-source` process: points arrive over one login, a killed push
publishes nothing half-written, a hub that is down is retried with backoff and caught up
with, and a stop signal pushes once more. Also the job script's EXIT trap from the README,
and `compress`.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tb_rsync_plugin import cli
from tests.events import append_scalars, event_file_name, scalar_bytes
from tests.fixtures_servers import SSHD, start_sshd_or_skip, stop, wait_for_port
from tests.fixtures_tensorboard import wait_until
from tests.invariants import event_file_problem, valid_end
from tests.processes import processes_mentioning, start_tb_rsync, stop_tb_rsync
from tests.test_ssh_sharing import logins, remove_with_masters

EVENTS = event_file_name()
ROOT = Path(__file__).resolve().parent.parent


class Lines:
    """A process's stdout and stderr, read by threads as they come: tests wait on them."""

    def __init__(self, proc):
        self.proc, self.text, self._lock = proc, "", threading.Lock()
        self._threads = [threading.Thread(target=self._read, args=(pipe,), daemon=True)
                         for pipe in (proc.stdout, proc.stderr)]
        for thread in self._threads:
            thread.start()

    def _read(self, pipe):
        for line in pipe:
            with self._lock:
                self.text += line

    def wait_for(self, pattern, what):
        return wait_until(lambda: re.search(pattern, self.text), 60, 0.05, what)

    def stop(self, signum=None):
        """Send `signum` (if any); the exit code once the process and its readers ended."""
        if signum is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"push did not stop:\n{self.text}") from None
        for thread in self._threads:
            thread.join(10)
        return code


@pytest.fixture
def runtime_dir():
    """XDG_RUNTIME_DIR for the pushes: their ssh masters' sockets, short and our own; any
    master a killed push left is told to exit."""
    folder = Path(tempfile.mkdtemp(prefix="tbp-", dir="/tmp"))
    folder.chmod(0o700)
    yield folder
    remove_with_masters(folder)


@pytest.fixture
def hub(tmp_path):
    """A watched inbox on this machine: `tb-rsync watch --watch-source inbox` publishing
    INBOX/<node>/... into LOGS/inbox/<node>/... (its interval an hour away)."""
    inbox, logs = tmp_path / "inbox", tmp_path / "logs"
    inbox.mkdir()
    logs.mkdir()
    proc = start_tb_rsync("watch", "--logdir", logs, "--staging", tmp_path / "staging",
                          "--source", f"inbox={inbox}/", "--watch-source", "inbox",
                          "--interval", "3600")
    yield inbox, logs / "inbox"
    stop_tb_rsync(proc)


def start_push(node, destination, runtime_dir, *args):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir))
    return Lines(start_tb_rsync("push", node, destination, *args, env=env))


def published_bytes(path):
    return path.read_bytes() if path.exists() else b""


def test_pushes_arrive_over_one_shared_login(tmp_path, hub, sshd_server, runtime_dir):
    """Three rounds of points, pushed every 0.2 s, reach the hub's logdir over a single ssh
    login (the rsyncs of every push ride it); Ctrl-C stops the push with 130."""
    inbox, published = hub
    node = tmp_path / "node"
    (node / "run").mkdir(parents=True)
    (node / "run" / "notes.txt").write_text("config")
    before = logins(sshd_server)
    push = start_push(node, f"127.0.0.1:{inbox}/node1/", runtime_dir, "--interval", "0.2",
                      "--ssh", sshd_server.ssh_command)
    try:
        for round_ in range(3):
            append_scalars(str(node / "run" / EVENTS), range(5 * round_, 5 * round_ + 5))
            wanted = (node / "run" / EVENTS).read_bytes()
            wait_until(lambda: published_bytes(published / "node1" / "run" / EVENTS) == wanted,
                       60, 0.05, f"round {round_ + 1} published")
        assert (published / "node1" / "run" / "notes.txt").read_text() == "config"
        assert logins(sshd_server) - before == 1, push.text
    finally:
        code = push.stop(signal.SIGINT)
    assert code == 130, push.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_pushes_what_was_written_just_before(tmp_path, hub, sshd_server,
                                                           runtime_dir, signum):
    """The job ends: a point written just before the signal reaches the hub through the
    final push (the next timed push is an hour away), and the push exits 128 + signal."""
    inbox, published = hub
    node = tmp_path / "node"
    (node / "run").mkdir(parents=True)
    append_scalars(str(node / "run" / EVENTS), range(5))
    push = start_push(node, f"127.0.0.1:{inbox}/node1/", runtime_dir, "--interval", "3600",
                      "--ssh", sshd_server.ssh_command)
    target = published / "node1" / "run" / EVENTS
    try:
        wanted = (node / "run" / EVENTS).read_bytes()
        wait_until(lambda: published_bytes(target) == wanted, 60, 0.05, "the first push")
        push.wait_for(r"push: 1 file\(s\)", "the first push's line")  # it is asleep now
        append_scalars(str(node / "run" / EVENTS), [5])
    finally:
        code = push.stop(signum)
    assert code == 128 + signum, push.text
    assert f"{signal.Signals(signum).name}: pushing once more" in push.text
    wanted = (node / "run" / EVENTS).read_bytes()
    wait_until(lambda: published_bytes(target) == wanted, 60, 0.05,
               "the point written before the signal published")


def big_event_bytes(records, tag_bytes=1000):
    """About `records` KiB of scalar records (long tags), led by a file_version header."""
    return scalar_bytes(range(records), tag="t" * tag_bytes, header=True)


def hidden_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def test_a_push_killed_midway_publishes_nothing_half_written(tmp_path, hub, sshd_server,
                                                             runtime_dir):
    """A push slowed by --bwlimit is killed (SIGKILL, as when the epilog kills a job) while
    an event file is half-appended and a checkpoint half-written into the inbox; the hub
    publishes complete records only and not the checkpoint; a later `push --once`
    converges."""
    inbox, published = hub
    node = tmp_path / "node"
    (node / "run").mkdir(parents=True)
    (node / "run" / EVENTS).write_bytes(big_event_bytes(3000))
    (node / "run" / "model.ckpt").write_bytes(os.urandom(3 << 20))
    push = start_push(node, f"127.0.0.1:{inbox}/node1/", runtime_dir, "--interval", "3600",
                      "--bwlimit", "256", "--ssh", sshd_server.ssh_command)
    pushed = inbox / "node1" / "run"
    full = (node / "run" / EVENTS).read_bytes()

    def midway():
        size = len(published_bytes(pushed / EVENTS))
        return 256 << 10 < size < len(full) and \
            any(p.name.startswith(".model.ckpt.") for p in pushed.iterdir())

    try:
        wait_until(midway, 60, 0.02, "an event file half-appended, a checkpoint half-written")
    finally:
        os.killpg(push.proc.pid, signal.SIGKILL)
        push.stop()
    wait_until(lambda: not [c for _, c in processes_mentioning(str(inbox), "rsync")
                            if "--server" in c], 60, 0.05, "the hub's rsync receiver to end")
    # The hub publishes the complete records that arrived, and waits for the rest.
    left = published_bytes(pushed / EVENTS)
    complete = left[:valid_end(left)[0]]
    target = published / "node1" / "run" / EVENTS
    wait_until(lambda: published_bytes(target) == complete, 60, 0.05,
               "the complete records of the killed push published")
    assert event_file_problem(complete, [full], allow_partial=False) is None
    assert not (published / "node1" / "run" / "model.ckpt").exists()
    assert hidden_files(published) == []
    done = start_push(node, f"127.0.0.1:{inbox}/node1/", runtime_dir, "--once",
                      "--ssh", sshd_server.ssh_command)
    assert done.stop() == 0, done.text
    wait_until(lambda: published_bytes(target) == full and
               published_bytes(published / "node1" / "run" / "model.ckpt")
               == (node / "run" / "model.ckpt").read_bytes(), 60, 0.05, "the whole push")
    assert hidden_files(published) == []


def restart_sshd(folder, port):
    """The test sshd of `folder` again, on its port (its config names the port)."""
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port, proc)
    return proc


def test_a_hub_that_is_down_is_retried_with_backoff_then_caught_up_with(tmp_path, hub,
                                                                        runtime_dir):
    """The hub's sshd is down when the push starts: it says why and when it tries again
    (at least 5 s, though the interval is 0.2 s), once per failure; once sshd is back on
    its port, the next try pushes everything."""
    inbox, published = hub
    folder = tmp_path / "hub-sshd"
    proc, server = start_sshd_or_skip(folder)
    stop(proc)
    node = tmp_path / "node"
    (node / "run").mkdir(parents=True)
    append_scalars(str(node / "run" / EVENTS), range(5))
    push = start_push(node, f"127.0.0.1:{inbox}/node1/", runtime_dir, "--interval", "0.2",
                      "--ssh", server.ssh_command)
    proc = None
    try:
        push.wait_for(r"retrying in 5 s \(1 failed attempt", "the first retry's line")
        assert "the host is unreachable (connection refused)" in push.text
        proc = restart_sshd(folder, server.port)
        wanted = (node / "run" / EVENTS).read_bytes()
        target = published / "node1" / "run" / EVENTS
        wait_until(lambda: published_bytes(target) == wanted, 60, 0.05, "the catch-up")
        push.wait_for(r"pushing again after \d+ failed attempt", "the recovery line")
    finally:
        push.stop(signal.SIGTERM)
        if proc is not None:
            stop(proc)
    assert push.text.count("connection refused") == 1, push.text  # said once, not per retry


TRAIN = """
import os, signal, sys, time
sys.path.insert(0, os.environ["TEST_ROOT"])
from tests.events import append_scalars
path = os.path.join(sys.argv[sys.argv.index("--logdir") + 1], "run", os.environ["EVENTS"])
os.makedirs(os.path.dirname(path), exist_ok=True)

def stop(*_):
    append_scalars(path, [99])  # the last point, written as training stops
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
append_scalars(path, range(5))
if os.environ["ENDING"] == "finished":
    stop()
open("ready", "w").close()
while True:
    signal.pause()
"""


def job_script_lines():
    """The README's job script from the line after `HUB=...` on: what runs on the node."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("#### Keep the logs of a job that ends", 1)[1]
    script = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return script.split("\nHUB=", 1)[1].split("\n", 1)[1]


@pytest.mark.parametrize("ending", ["finished", "SIGTERM"])
def test_the_job_scripts_exit_trap_pushes_the_last_point(tmp_path, hub, sshd_server,
                                                         runtime_dir, ending):
    """The README's job script, with `tb-rsync` and `python` on PATH: when the training
    finishes, or the script gets SIGTERM (Slurm's --signal=B:TERM, or scancel), the point
    training writes as it stops reaches the hub, and nothing of the job keeps running."""
    inbox, published = hub
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("tb-rsync", '"$PYTHON" -m tb_rsync_plugin.cli "$@" --ssh "$SSH"'),
                          ("python", '"$PYTHON" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "train.py").write_text(TRAIN)
    logs = tmp_path / "scratch" / "tb"
    (tmp_path / "job.sh").write_text(f"LOGS={logs}\nHUB=127.0.0.1:{inbox}/node1/\n"
                                     + job_script_lines())
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable,
               SSH=sshd_server.ssh_command, PYTHONPATH=str(ROOT), TEST_ROOT=str(ROOT),
               EVENTS=EVENTS, ENDING=ending, XDG_RUNTIME_DIR=str(runtime_dir))
    job = subprocess.Popen(["bash", "job.sh"], cwd=tmp_path, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if ending == "SIGTERM":
            wait_until(lambda: (tmp_path / "ready").exists(), 60, 0.05, "training to run")
            job.send_signal(signal.SIGTERM)  # the script alone, as --signal=B:TERM does
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    # After its EXIT trap, bash ends the way the signal would have ended it.
    assert job.returncode == (-signal.SIGTERM if ending == "SIGTERM" else 0), output
    wanted = (logs / "run" / EVENTS).read_bytes()
    assert wanted.endswith(scalar_bytes([99]))
    wait_until(lambda: published_bytes(published / "node1" / "run" / EVENTS) == wanted, 60,
               0.05, "the last point published")
    assert not processes_mentioning(str(logs)), "a process of the job is still running"


def test_compress_pushes_scalars_in_a_fraction_of_their_size(tmp_path, sshd_server,
                                                             runtime_dir):
    node, inbox = tmp_path / "node", tmp_path / "inbox"
    (node / "run").mkdir(parents=True)
    inbox.mkdir()
    append_scalars(str(node / "run" / EVENTS), range(20000))
    size = (node / "run" / EVENTS).stat().st_size
    push = start_push(node, f"127.0.0.1:{inbox}/node1/", runtime_dir, "--once", "--compress",
                      "--ssh", sshd_server.ssh_command)
    assert push.stop() == 0, push.text
    sent = int(re.search(r"push: 1 file\(s\), ([\d,]+) bytes sent", push.text)[1]
               .replace(",", ""))
    assert sent < size / 3
    assert (inbox / "node1" / "run" / EVENTS).read_bytes() == \
        (node / "run" / EVENTS).read_bytes()


@pytest.mark.parametrize("args,needle", [
    (["--compress"], "--compress (destination '{dest}') only applies to HOST:DIR and rsync "
                     "daemon sources, and '{dest}' is a local folder"),
    (["--ssh", "ssh -p 2"], "--ssh only applies to a HOST:DIR destination"),
    (["--interval", "0"], "--interval must be more than 0 seconds"),
    (["--bwlimit", "-1"], "--bwlimit must be a whole number"),
    (["--once"], "Nothing to push: '{logdir}' does not exist."),
])
def test_bad_push_arguments_are_one_sentence(tmp_path, capsys, args, needle):
    logdir, dest = tmp_path / "missing", str(tmp_path / "inbox") + "/"
    assert cli.main(["push", str(logdir), dest, *args]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"error: {needle.format(dest=dest, logdir=logdir)}" in err, err


def test_an_rclone_destination_or_a_file_as_logdir_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main(["push", str(tmp_path), "rclone:s3:bucket/"]) == cli.EXIT_FAILED
    assert "is an rclone remote; tb-rsync push writes with rsync" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path / "file"), "h:/inbox/"]) == cli.EXIT_FAILED
    assert "is a file, not a folder" in capsys.readouterr().err
