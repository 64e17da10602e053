"""ssh.py's shared logins and ssh diagnoses, against real sshds on 127.0.0.1.

Logins are counted in sshd's log ("Accepted publickey for", one line per login).
"""

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tb_rsync_plugin import cli
from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.tensorboard import plugin as plugin_lib
from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.rsync import run_rsync
from tb_rsync_plugin.transports.ssh import SshConnections, ssh_command
from tests.events import append_scalars, event_file_name
from tests.fixtures_servers import remove_with_masters, start_sshd_or_skip, stop
from tests.processes import processes_mentioning, start_tb_rsync, stop_tb_rsync

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
EVENTS = event_file_name()
ROOT = Path(__file__).resolve().parents[1]
REFUSED = ("the server refused the connection: too many at once (sshd MaxStartups); sync "
           "fewer sources of this host at once, keep ssh connection sharing on, or raise "
           "MaxStartups")
SILENT = "connected, but the server never answered; "


@pytest.fixture(scope="module")
def roomy_sshd(tmp_path_factory):
    """An sshd that lets one connection carry 30 sessions (9 syncs x up to 3 rsyncs), and
    takes 18 logins at once (so the baseline without sharing counts logins, not refusals)."""
    proc, server = start_sshd_or_skip(tmp_path_factory.mktemp("sshd-sharing"),
                                      extra_config=["MaxSessions 30", "MaxStartups 100"])
    yield server
    stop(proc)


@pytest.fixture
def control_dir():
    """A short folder for control sockets (a unix socket path has 108 bytes at most).
    Masters a failed test left behind are told to exit."""
    folder = Path(tempfile.mkdtemp(prefix="tbr-", dir="/tmp")) / "ctl"
    yield folder
    remove_with_masters(folder.parent)


def logins(server):
    return server.log().count("Accepted publickey for")


def masters(folder):
    """Pids of processes whose command line names `folder` (ssh masters: 'ssh: PATH [mux]')."""
    return [pid for pid, _ in processes_mentioning(str(folder))]


def wait_until(condition, what, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s} s"
        time.sleep(0.05)


def make_sources(tmp_path, server, count, **options):
    sources = []
    for i in range(count):
        folder = tmp_path / "remote" / f"node{i}" / "run"
        folder.mkdir(parents=True)
        append_scalars(folder / EVENTS, range(50))
        sources.append(Source(f"node{i}", f"{server.host}:{folder.parent}/",
                              ssh=server.ssh_command, **options))
    return sources


def sync_at_once(tmp_path, connections, sources):
    """Every source's `prepare` + `run_rsync` in its own thread, started together."""
    barrier = threading.Barrier(len(sources))
    results, errors = {}, []

    def one(source):
        try:
            barrier.wait()
            connections.prepare(source)
            results[source.name] = run_rsync(
                RSYNC, source, str(tmp_path / "staging" / source.name), str(tmp_path / "tmp"),
                rsh=connections.rsh_for(source))
        except Exception as e:  # reported below with the others
            errors.append(e)

    threads = [threading.Thread(target=one, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, [f"{e}\n{getattr(e, 'details', '')}" for e in errors]
    assert all(results[s.name].changed == (f"run/{EVENTS}",) for s in sources)


def test_nine_concurrent_syncs_share_one_login(tmp_path, roomy_sshd, control_dir):
    sources = make_sources(tmp_path, roomy_sshd, 9)
    connections = SshConnections(control_dir=str(control_dir))
    before = logins(roomy_sshd)
    sync_at_once(tmp_path, connections, sources)
    assert logins(roomy_sshd) - before == 1
    assert len(list(control_dir.iterdir())) == 1  # one key: same host, port, user, ssh command
    connections.close()


def grow(tmp_path, sources):
    """Each source's event file grows: its next sync lists, then appends (two rsyncs)."""
    for source in sources:
        append_scalars(tmp_path / "remote" / source.name / "run" / EVENTS, range(50, 60))


def test_without_sharing_every_rsync_logs_in(tmp_path, roomy_sshd, control_dir):
    sources = make_sources(tmp_path, roomy_sshd, 9)
    connections = SshConnections(enabled=False, control_dir=str(control_dir))
    before = logins(roomy_sshd)
    sync_at_once(tmp_path, connections, sources)
    assert logins(roomy_sshd) - before == 9  # a first sync is one rsync
    grow(tmp_path, sources)
    before = logins(roomy_sshd)
    sync_at_once(tmp_path, connections, sources)
    assert logins(roomy_sshd) - before >= 18  # a listing and an append pass per sync
    assert not control_dir.exists()


def test_past_max_sessions_sessions_log_in_on_their_own(tmp_path, sshd_server, control_dir):
    # The default MaxSessions 10 and 18 rsyncs at once: the master refuses 8 or fewer
    # sessions, and each of those ssh clients logs in by itself instead of failing.
    sources = make_sources(tmp_path, sshd_server, 9)
    connections = SshConnections(control_dir=str(control_dir))
    sync_at_once(tmp_path, connections, sources)  # a first sync: one rsync per source
    grow(tmp_path, sources)
    before = logins(sshd_server)
    sync_at_once(tmp_path, connections, sources)
    assert 0 <= logins(sshd_server) - before <= 9
    connections.close()


def test_close_leaves_no_socket_and_no_master(tmp_path, sshd_server, control_dir):
    source, = make_sources(tmp_path, sshd_server, 1)
    connections = SshConnections(control_dir=str(control_dir))
    connections.prepare(source)
    assert len(list(control_dir.iterdir())) == 1 and masters(control_dir)
    connections.close()
    assert list(control_dir.iterdir()) == []
    wait_until(lambda: not masters(control_dir), "ended (the master)")
    connections.close()


def test_after_kill_9_the_next_start_reuses_or_replaces_the_master(tmp_path, sshd_server,
                                                                   control_dir):
    source, = make_sources(tmp_path, sshd_server, 1)
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from tb_rsync_plugin.config import Source\n"
         "from tb_rsync_plugin.transports.ssh import SshConnections\n"
         "SshConnections(control_dir=sys.argv[1]).prepare(Source('a', sys.argv[2], "
         "ssh=sys.argv[3]))\n"
         "print('ready', flush=True)\ntime.sleep(600)\n",
         str(control_dir), source.source, source.ssh],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "ready\n"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    socket_path, = control_dir.iterdir()

    def sync_once():
        connections = SshConnections(control_dir=str(control_dir))
        before = logins(sshd_server)
        connections.prepare(source)
        run_rsync(RSYNC, source, str(tmp_path / "staging"), str(tmp_path / "tmp"),
                  rsh=connections.rsh_for(source))
        return connections, logins(sshd_server) - before

    # The master outlived its owner (ControlPersist): ridden, no new login.
    connections, new_logins = sync_once()
    assert new_logins == 0

    # The master killed too: its socket stays behind, stale, and is replaced.
    check = subprocess.run(shlex.split(connections.rsh_for(source)) + ["-O", "check", "x"],
                           capture_output=True, text=True)
    pid = int(re.search(r"pid=(\d+)", check.stderr).group(1))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pid not in masters(control_dir), "gone (the killed master)")
    assert socket_path.exists()
    connections, new_logins = sync_once()
    assert new_logins == 1
    connections.close()
    assert list(control_dir.iterdir()) == []


def test_the_users_own_control_master_is_ridden(tmp_path, sshd_server, control_dir):
    # The 2FA login-node recipe: ControlMaster in the user's ssh config, one login by hand.
    theirs = Path(tempfile.mkdtemp(prefix="tbu-", dir="/tmp"))
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  ControlMaster auto\n  ControlPath {theirs}/%C\n"
                      "  ControlPersist 60\n")
    ssh = sshd_server.ssh_command.replace("-F /dev/null", f"-F {config}")
    source, = make_sources(tmp_path, sshd_server, 1)
    source = Source(source.name, source.source, ssh=ssh)
    connections = SshConnections(control_dir=str(control_dir))
    assert connections.rsh_for(source) == ssh_command(ssh)  # no ControlPath of ours
    try:
        before = logins(sshd_server)
        subprocess.run(shlex.split(ssh) + ["-fN", sshd_server.host], check=True, timeout=30)
        for _ in range(3):
            connections.prepare(source)
            run_rsync(RSYNC, source, str(tmp_path / "staging"), str(tmp_path / "tmp"),
                      rsh=connections.rsh_for(source))
        assert logins(sshd_server) - before == 1
        assert not control_dir.exists()
        connections.close()
        assert len(list(theirs.iterdir())) == 1  # tb-rsync never stops the user's master
    finally:
        subprocess.run(shlex.split(ssh) + ["-O", "exit", sshd_server.host], capture_output=True,
                       timeout=10)
        shutil.rmtree(theirs)


@pytest.mark.parametrize("enabled, sharing, ssh_option", [
    (False, True, ""), (True, False, ""), (True, True, " -o ControlMaster=no"),
    (True, True, " -S none")],
    ids=["switched off", "ssh_sharing = false", "ControlMaster=no in ssh", "-S none in ssh"])
def test_sharing_off_adds_no_control_options(tmp_path, sshd_server, control_dir, enabled,
                                             sharing, ssh_option):
    source, = make_sources(tmp_path, sshd_server, 1, ssh_sharing=sharing)
    source = Source(source.name, source.source, ssh=source.ssh + ssh_option,
                    ssh_sharing=sharing)
    connections = SshConnections(enabled=enabled, control_dir=str(control_dir))
    assert connections.rsh_for(source) == ssh_command(source.ssh)
    assert str(control_dir) not in connections.rsh_for(source)
    connections.prepare(source)
    assert not control_dir.exists()


def test_local_and_daemon_sources_are_untouched(tmp_path, control_dir):
    connections = SshConnections(control_dir=str(control_dir))
    for source in (Source("a", str(tmp_path)), Source("b", "rsync://127.0.0.1/logs/")):
        assert connections.rsh_for(source) is None
        connections.prepare(source)
    assert not control_dir.exists()


def sync_fails(tmp_path, source, connections):
    """The sentence of `prepare` and of a plain `run_rsync`, which must be the same."""
    with pytest.raises(TransferError) as prepared:
        connections.prepare(source)
    with pytest.raises(TransferError) as synced:
        run_rsync(RSYNC, source, str(tmp_path / "staging"), str(tmp_path / "tmp"))
    assert str(prepared.value) == str(synced.value), synced.value.details
    assert "exit code: 255" in prepared.value.details
    return str(synced.value)


def test_a_server_that_never_answers(tmp_path, sshd_server, control_dir):
    with socket.socket() as hung:  # accepts (the kernel does), never sends a banner
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]
        ssh = sshd_server.ssh_command.replace(f"-p {sshd_server.port}", f"-p {port}")
        source = Source("train", f"127.0.0.1:{tmp_path}/", ssh=ssh + " -o ConnectTimeout=2")
        message = sync_fails(tmp_path, source, SshConnections(control_dir=str(control_dir)))
    assert message == (f"Sync of 'train' from '127.0.0.1:{tmp_path}/' failed: " + SILENT +
                       "the host or its sshd is hung or overloaded, or the port is not an ssh "
                       "server (check the port and try 'ssh HOST true').")


def test_a_server_past_max_startups_refuses(tmp_path, control_dir):
    proc, server = start_sshd_or_skip(tmp_path / "sshd", extra_config=["MaxStartups 1:100:1"])
    held = []
    try:
        # One connection that never logs in fills MaxStartups 1 (once sshd counts it).
        def counted():
            held.append(socket.create_connection((server.host, server.port)))
            port = held[-1].getsockname()[1]
            wait_until(lambda: f"port {port} " in server.log() or f"]:{port} " in server.log(),
                       "logged (the held connection)")
            return f"port {port} " in server.log()
        wait_until(counted, "counted by sshd (a held connection)")
        source = Source("train", f"127.0.0.1:{tmp_path}/", ssh=server.ssh_command)
        message = sync_fails(tmp_path, source, SshConnections(control_dir=str(control_dir)))
        assert message.startswith(f"Sync of 'train' from '127.0.0.1:{tmp_path}/' failed: "
                                  + REFUSED)
    finally:
        for connection in held:
            connection.close()
        stop(proc)


def test_prepare_honours_cancel(tmp_path, sshd_server, control_dir):
    source, = make_sources(tmp_path, sshd_server, 1)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TransferError, match=r"^Sync of 'node0' was cancelled\.$"):
        SshConnections(control_dir=str(control_dir)).prepare(source, cancel)


def test_the_switches_reach_the_config(tmp_path):
    parser = argparse.ArgumentParser()
    plugin_lib.RsyncPluginLoader().define_flags(parser)
    for argv, sharing in (([], True), (["--rsync_ssh_sharing", "false"], False)):
        flags = parser.parse_args(["--rsync_source", "a=h:/x/", "--rsync_staging",
                                   str(tmp_path / "staging"), *argv])
        flags.logdir = str(tmp_path / "logs")
        os.makedirs(flags.logdir, exist_ok=True)
        assert plugin_lib._config_from_flags(flags).ssh_sharing is sharing
    for argv, sharing in (([], True), (["--no-ssh-sharing"], False)):
        args = cli.build_parser().parse_args(["sync", "--logdir", "x", *argv])
        assert args.ssh_sharing is sharing


@pytest.fixture
def cli_run(tmp_path, sshd_server):
    """`tb-rsync COMMAND` with 3 ssh sources of one host, in a private $XDG_RUNTIME_DIR
    (where the control sockets go); returns (command line, environment, runtime dir)."""
    sources = make_sources(tmp_path, sshd_server, 3)
    config = tmp_path / "sources.toml"
    config.write_text("".join(f'[[source]]\nname = "{s.name}"\nsource = "{s.source}"\n'
                              f"ssh = '{s.ssh}'\n" for s in sources))
    (tmp_path / "logs").mkdir()
    runtime = Path(tempfile.mkdtemp(prefix="tbx-", dir="/tmp"))

    def command(name, *flags):
        return [sys.executable, "-m", "tb_rsync_plugin.cli", name, "--logdir",
                str(tmp_path / "logs"), "--staging", str(tmp_path / "staging"), "--config",
                str(config), *flags]

    yield command, dict(os.environ, XDG_RUNTIME_DIR=str(runtime)), runtime
    remove_with_masters(runtime)


@pytest.mark.parametrize("flags, expected_logins", [((), 1), (("--no-ssh-sharing",), 6)],
                         ids=["shared", "--no-ssh-sharing"])
def test_tb_rsync_sync_from_cron_logs_in_once(sshd_server, cli_run, flags, expected_logins):
    """A finished sync leaves its shared login up (ControlPersist): the next sync rides it."""
    command, env, runtime = cli_run
    before = logins(sshd_server)
    for _ in range(2):
        result = subprocess.run(command("sync", *flags), capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, result.stderr
    # Sharing: one login for both syncs. Without: one per rsync (a first sync is one rsync a
    # source, a no-change sync one listing a source; neither asks for first records).
    assert logins(sshd_server) - before == expected_logins
    sockets = list(runtime.glob("tb-rsync/*"))
    assert len(sockets) == (1 if not flags else 0)
    assert bool(masters(runtime)) is (not flags)


def test_a_stopped_tb_rsync_sync_stops_its_master(tmp_path, sshd_server, cli_run):
    """Ctrl-C or SIGTERM during a sync: the shared login goes with it, as rsync does."""
    command, env, runtime = cli_run
    stalling = tmp_path / "stalling-ssh"  # logs in as ssh does; its rsync sessions never start
    stalling.write_text('#!/bin/sh\ncase "$*" in *"rsync --server"*) exec sleep 3600;; esac\n'
                        'exec ssh "$@"\n')
    stalling.chmod(0o755)
    config = tmp_path / "sources.toml"
    config.write_text(config.read_text().replace("ssh = 'ssh ", f"ssh = '{stalling} "))
    sync = start_tb_rsync(*command("sync")[3:], env=env)
    try:
        wait_until(lambda: list(runtime.glob("tb-rsync/*")) and masters(runtime),
                   "up (the master)")
    finally:
        out, err = stop_tb_rsync(sync, signal.SIGTERM)
    assert sync.returncode == 143, err
    assert not list(runtime.glob("tb-rsync/*"))
    wait_until(lambda: not masters(runtime), "ended (the master)")


def first_syncs_ended(watch, count):
    """Read `watch`'s output until each of its `count` sources printed its first result."""
    synced = 0
    while synced < count:
        line = watch.stdout.readline()
        assert line, "tb-rsync watch ended"
        synced += line.startswith("node")


def test_after_kill_9_of_tb_rsync_watch_the_next_run_rides_its_master(sshd_server, cli_run):
    command, env, runtime = cli_run
    before = logins(sshd_server)
    watch = subprocess.Popen(command("watch", "--interval", "3600"), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        first_syncs_ended(watch, 3)
    finally:
        watch.send_signal(signal.SIGKILL)
        watch.wait()
    (socket,) = runtime.glob("tb-rsync/*")
    master = master_pid(socket)
    result = subprocess.run(command("sync"), capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert logins(sshd_server) - before == 1
    assert master_pid(socket) == master


def test_sigterm_on_tb_rsync_watch_stops_its_master(sshd_server, cli_run):
    """systemd, `docker stop` and `kill` send SIGTERM: the shared login goes with the watch
    instead of staying logged in for ControlPersist."""
    command, env, runtime = cli_run
    watch = start_tb_rsync(*command("watch", "--interval", "3600")[3:], env=env)
    try:
        first_syncs_ended(watch, 3)
        assert len(list(runtime.glob("tb-rsync/*"))) == 1 and masters(runtime)
    finally:
        out, err = stop_tb_rsync(watch, signal.SIGTERM)
    assert watch.returncode == 143, err
    assert not list(runtime.glob("tb-rsync/*"))
    wait_until(lambda: not masters(runtime), "ended (the master)")


def test_a_sync_riding_an_earlier_syncs_master_asks_ssh_for_no_configuration(
        tmp_path, sshd_server, cli_run):
    """The next sync from cron finds the master: it runs no `ssh -G` (two processes fewer).
    If that master has died (its socket left behind), the configuration is asked again
    before the login, which happens once."""
    command, env, runtime = cli_run
    calls = tmp_path / "ssh-calls"
    logging_ssh = tmp_path / "logging-ssh"
    logging_ssh.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n'
                           'exec ssh "$@"\n')
    logging_ssh.chmod(0o755)
    config = tmp_path / "sources.toml"
    config.write_text(config.read_text().replace("ssh = 'ssh ", f"ssh = '{logging_ssh} "))

    def sync():
        calls.write_text("")
        result = subprocess.run(command("sync"), capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return sum("-G" in line.split() for line in calls.read_text().splitlines())

    before = logins(sshd_server)
    assert sync() == 2  # the user's configuration, then ours (one host, three sources)
    assert sync() == 0
    assert logins(sshd_server) - before == 1
    (socket,) = runtime.glob("tb-rsync/*")
    os.kill(master_pid(socket), signal.SIGKILL)
    assert sync() == 2
    assert logins(sshd_server) - before == 2


def master_pid(socket_path):
    check = subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket_path}",
                            "-O", "check", "x"], capture_output=True, text=True, timeout=10)
    return int(re.search(r"pid=(\d+)", check.stderr).group(1))


def test_a_master_killed_mid_sync_is_replaced_within_the_cycle(tmp_path, sshd_server,
                                                                monkeypatch):
    """The shared login dies while rsync runs over it (killed, or its connection dropped):
    the cycle logs in again once and syncs, instead of failing with "the connection closed
    unexpectedly" (or, at the next cycle, waiting out a login raced by rsync's own ssh)."""
    runtime = Path(tempfile.mkdtemp(prefix="tbx-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # where the service's sockets go
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "big.bin").write_bytes(os.urandom(2 << 20))
    toml = tmp_path / "sources.toml"
    toml.write_text(f'[[source]]\nname = "slow"\nsource = "{sshd_server.host}:{remote}/"\n'
                    f"ssh = '{sshd_server.ssh_command}'\nbwlimit = 256\n")  # ~8 s of rsync
    (tmp_path / "logs").mkdir()
    config = config_lib.build_config(str(tmp_path / "logs"), config_file=str(toml),
                                     staging=str(tmp_path / "staging"))
    service = service_lib.SyncService(config, state_lib.SyncState(config.sources,
                                                                  config.interval_for),
                                      reload_lib.NoReloader())
    transferring, ended = threading.Event(), {}

    def progress(name, p):
        if p.phase == "files" and p.bytes_done:
            transferring.set()

    def cycle():
        try:
            ended["outcome"] = service.run_cycle("slow", on_progress=progress)
        except Exception as e:  # checked below
            ended["error"] = e

    before = logins(sshd_server)
    thread = threading.Thread(target=cycle)
    thread.start()
    try:
        assert transferring.wait(60), "rsync did not start moving data"
        socket_path, = runtime.glob("tb-rsync/*")
        os.kill(master_pid(socket_path), signal.SIGKILL)
        thread.join(120)
        error = ended.get("error")
        assert error is None, f"{error}\n{getattr(error, 'details', '')}"
        assert ended["outcome"].transfer.changed == ("big.bin",)
        assert (tmp_path / "logs" / "slow" / "big.bin").read_bytes() == \
            (remote / "big.bin").read_bytes()
        assert logins(sshd_server) - before == 2, "the first master, then one fresh login"
    finally:
        service.stop()
        thread.join(60)
        remove_with_masters(runtime)


def test_a_socket_held_by_something_else_is_said_at_once(tmp_path, sshd_server, control_dir):
    """Our login finds the socket taken (ssh: "already exists, disabling multiplexing"): it
    is not left hanging as a plain connection until "the ssh login did not finish within
    30 s" about a healthy host; it rides the master there, or says what is wrong."""
    source, = make_sources(tmp_path, sshd_server, 1)
    connections = SshConnections(control_dir=str(control_dir))
    connections.prepare(source)
    socket_path, = control_dir.iterdir()
    connections.close()
    squatter = socket.socket(socket.AF_UNIX)  # listens, but speaks no ssh multiplexing
    squatter.bind(str(socket_path))
    squatter.listen(16)
    stop_squatting = threading.Event()

    def hang_up():
        squatter.settimeout(0.1)
        while not stop_squatting.is_set():
            try:
                squatter.accept()[0].close()
            except socket.timeout:
                pass

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with pytest.raises(TransferError) as error:
            SshConnections(control_dir=str(control_dir)).prepare(source)
    finally:
        stop_squatting.set()
        thread.join()
        squatter.close()
    assert f"the socket of its shared ssh connection, '{socket_path}', is held by something " \
           "that does not answer as an ssh master" in str(error.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_control_folder_of_another_user_is_refused(tmp_path, sshd_server, control_dir):
    source, = make_sources(tmp_path, sshd_server, 1)
    control_dir.mkdir(mode=0o700)
    os.chown(control_dir, 65534, 65534)
    with pytest.raises(TransferError, match=r"for shared ssh connections is not a private "
                                            r"folder of this user; remove it"):
        SshConnections(control_dir=str(control_dir)).prepare(source)
    assert list(control_dir.iterdir()) == []


def test_an_open_control_folder_of_ours_is_made_private(tmp_path, sshd_server, control_dir):
    source, = make_sources(tmp_path, sshd_server, 1)
    control_dir.mkdir(mode=0o755)
    os.chmod(control_dir, 0o755)
    connections = SshConnections(control_dir=str(control_dir))
    connections.prepare(source)
    assert control_dir.stat().st_mode & 0o777 == 0o700
    connections.close()
