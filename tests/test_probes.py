"""Change probes (probes.py, probe_agent.py) against local folders and a real sshd.

Nodes are played by sshds on 127.0.0.1: one as it comes (the node's python3), one whose
forced command hides python3 from the session's PATH (the sh fallback), one whose forced
command runs only `rsync --server` (no probe at all, like an rrsync key). Node-side
processes are found as descendants of that test's own sshd.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.transports import probe_agent
from tb_rsync_plugin.transports import probes as probes_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.engine import scheduler as scheduler_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.transports.ssh import SshConnections
from tests.events import append_scalars, event_file_name
from tests.fixtures_servers import start_sshd_or_skip, stop
from tests.fixtures_tensorboard import wait_until
from tests.processes import process_table

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["-rf x", "sp ace", "$(touch PWNED)", "new\nline", "uni·code ✓", "'q\"uote"]
NODE_TOOLS = ["rsync", "ls", "cksum", "sh", "nice", "sleep", "cat"]


def descendants(pid):
    """Live processes below `pid` (the node-side processes of one test's sshd)."""
    table = process_table()
    found, frontier = [], {pid}
    while frontier:
        children = [p for p, (ppid, _, _) in table.items() if ppid in frontier]
        found += [(p, table[p][2]) for p in children]
        frontier = set(children)
    return found


def agents(sshd_proc):
    return [(pid, cmd) for pid, cmd in descendants(sshd_proc.pid)
            if "tb-rsync-probe" in cmd or "listing()" in cmd]


@pytest.fixture
def node(tmp_path, request):
    """(sshd process, server, kind): kind "python3", "sh" (no python3 on the session's PATH)
    or "none" (a forced command that runs only `rsync --server`)."""
    kind = getattr(request, "param", "python3")
    proc, server = start_sshd_or_skip(tmp_path / "sshd")
    authorized = Path(server.folder) / "authorized_keys"
    key = authorized.read_text()
    if kind == "sh":
        tools = tmp_path / "node-bin"
        tools.mkdir()
        for tool in NODE_TOOLS:
            os.symlink(shutil.which(tool), tools / tool)
        authorized.write_text(f'command="PATH={tools}; export PATH; '
                              f'eval \\"$SSH_ORIGINAL_COMMAND\\"" {key}')
    elif kind == "none":
        authorized.write_text('command="case \\"$SSH_ORIGINAL_COMMAND\\" in \'rsync --server\'*) '
                              'eval \\"$SSH_ORIGINAL_COMMAND\\";; *) echo refused >&2; exit 1;; '
                              f'esac" {key}')
    yield proc, server, kind
    stop(proc)


class Recorder:
    """on_change / on_mode for `Probes`, with conditions to wait on."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changes = []
        self.modes = {}

    def changed(self, name):
        with self.lock:
            self.changes.append(name)

    def mode(self, name, mode, detail):
        with self.lock:
            self.modes[name] = (mode, detail)

    def count(self, name):
        with self.lock:
            return self.changes.count(name)


@contextlib.contextmanager
def watching(tmp_path, sources, interval_s=0.5):
    """Running `Probes` for `sources` -> (probes, what they reported); stopped after."""
    recorder = Recorder()
    connections = SshConnections(control_dir=str(tmp_path / "ctl"))
    probes = probes_lib.Probes(connections, recorder.changed, recorder.mode,
                               lambda source: interval_s)
    probes.set_sources(sources)
    probes.start()
    try:
        yield probes, recorder
    finally:
        probes.stop()
        connections.close()


def remote_source(tmp_path, server, name="n1", folder="remote"):
    """A `host:dir` source on the test's sshd, its folder holding one event file."""
    root = tmp_path / folder
    write(root / "run" / event_file_name())
    return root, config_lib.Source(name, f"127.0.0.1:{root}/", ssh=server.ssh_command)


def write(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def test_tree_signature_follows_sizes_names_and_mtimes_and_skips_excluded(tmp_path):
    root = tmp_path / "tree"
    write(root / "run" / "events.out.tfevents.1")
    first = probe_agent.tree_signature(str(root))
    assert probe_agent.tree_signature(str(root)) == first
    write(root / "run" / "events.out.tfevents.1")
    grown = probe_agent.tree_signature(str(root))
    assert grown != first
    write(root / "run" / "debug.log")
    assert probe_agent.tree_signature(str(root), ["*.log"]) == grown
    os.utime(root / "run" / "events.out.tfevents.1", ns=(1, 1))
    assert probe_agent.tree_signature(str(root), ["*.log"]) != grown
    for name in HOSTILE:
        write(root / name / "events.out.tfevents.2")
    assert probe_agent.tree_signature(str(root)) != grown
    with pytest.raises(OSError):
        probe_agent.tree_signature(str(tmp_path / "missing"))


def test_first_record_digest_tells_a_restarted_run_from_a_grown_one(tmp_path):
    path = tmp_path / event_file_name()
    append_scalars(str(path), range(3), wall_time0=1e9)
    before = probe_agent.first_record_digest(str(path))
    append_scalars(str(path), range(3, 9), wall_time0=1e9)
    assert probe_agent.first_record_digest(str(path)) == before  # grown: same first record
    path.unlink()
    append_scalars(str(path), range(9), wall_time0=2e9)
    assert probe_agent.first_record_digest(str(path)) != before  # restarted


@pytest.mark.parametrize("node", ["python3", "sh"], indirect=True)
def test_a_probe_session_reports_changes_under_hostile_names(tmp_path, node):
    sshd, server, kind = node
    sources, roots = [], {}
    for i, name in enumerate(HOSTILE):
        if kind == "sh" and "\n" in name:
            continue  # the sh probe reads roots as lines: see the next test
        root = tmp_path / "remote" / name
        write(root / "run" / event_file_name())
        roots[f"n{i}"] = root
        sources.append(config_lib.Source(f"n{i}", f"127.0.0.1:{root}/",
                                         ssh=server.ssh_command))
    with watching(tmp_path, sources) as (probes, seen):
        wait_until(lambda: all(probes.probed(s.name) for s in sources), 60,
                   message="every source watched by the probe")
        assert all(kind in seen.modes[s.name][1] for s in sources), seen.modes
        wait_until(lambda: all(seen.count(s.name) >= 1 for s in sources), 30,
                   message="the first walk's report")
        for name, root in roots.items():
            before = seen.count(name)
            write(root / "run" / "-new file")
            wait_until(lambda: seen.count(name) > before, 30, message=f"a change of {name}")
        assert not list(tmp_path.rglob("PWNED")) and not os.path.exists("PWNED")
        assert len(agents(sshd)) == 1, agents(sshd)  # one session for the host
    wait_until(lambda: not agents(sshd), 30, message="the node's probe to end")


@pytest.mark.parametrize("node", ["none"], indirect=True)
def test_a_host_that_runs_no_probe_is_listed_and_says_why(tmp_path, node):
    _, server, _ = node
    root, source = remote_source(tmp_path, server)
    with watching(tmp_path, [source]) as (probes, seen):
        wait_until(lambda: "forced command" in seen.modes["n1"][1], 60,
                   message="the probe's failure in the mode")
        assert seen.modes["n1"][0] == probes_lib.LISTING
        assert not probes.probed("n1")


def test_a_killed_probe_restarts_and_its_sources_are_listed_meanwhile(tmp_path, node):
    sshd, server, _ = node
    root, source = remote_source(tmp_path, server)
    with watching(tmp_path, [source]) as (probes, seen):
        wait_until(lambda: probes.probed("n1"), 60, message="the probe")
        (pid, _), = wait_until(lambda: agents(sshd), 30, message="the node's probe")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not probes.probed("n1"), 30, message="the fallback to listing")
        assert "probe restarts in" in seen.modes["n1"][1]
        wait_until(lambda: probes.probed("n1"), 60, message="the restarted probe")
        before = seen.count("n1")
        write(root / "run" / "more")
        wait_until(lambda: seen.count("n1") > before, 30, message="a change after the restart")


def make_service(tmp_path, source_spec, interval_s, ssh=None):
    logdir = tmp_path / "logs"
    logdir.mkdir(exist_ok=True)
    toml = tmp_path / "sources.toml"
    toml.write_text(f'[[source]]\nname = "n1"\nsource = "{source_spec}"\n' +
                    (f"ssh = '{ssh}'\n" if ssh else ""))
    config = config_lib.build_config(str(logdir), [], str(toml), str(tmp_path / "staging"),
                                     interval_s)
    state = state_lib.SyncState(config.sources, config.interval_for)
    return service_lib.SyncService(config, state, reload_lib.NoReloader())


@pytest.mark.parametrize("over", ["local", "ssh"])
def test_a_probed_source_syncs_when_it_changes_not_every_interval(tmp_path, request, over):
    remote = tmp_path / "remote"
    events = remote / "run" / event_file_name()
    events.parent.mkdir(parents=True)
    append_scalars(str(events), range(3))
    spec, ssh = f"{remote}/", None
    if over == "ssh":
        _, server, _ = request.getfixturevalue("node")
        spec, ssh = f"127.0.0.1:{remote}/", server.ssh_command
    service = make_service(tmp_path, spec, interval_s=0.5, ssh=ssh)
    starts = []  # the source of every cycle that ended
    service.scheduler.add_listener(lambda end: starts.append(end.name))
    service.start()
    published = tmp_path / "logs" / "n1" / "run" / event_file_name()
    try:
        wait_until(lambda: service.state.source("n1")["probe_mode"] != "listing", 60,
                   message="the probe")
        wait_until(lambda: published.exists() and
                   published.stat().st_size == events.stat().st_size, 60,
                   message="the first sync")
        service.wait(["n1"], timeout_s=60)
        before = len(starts)
        # Nothing changes: a listing source would sync every 0.5 s; a probed one waits for
        # its safety interval (5 min). The probe's first walk reports every tree (it cannot
        # know what changed before it started), and over ssh that report may come after the
        # first sync ended (that sync listed the source while the session started): one more
        # cycle at most. A loaded machine only makes this wait look shorter.
        threading.Event().wait(2.0)
        service.wait(["n1"], timeout_s=60)
        assert len(starts) - before <= (1 if over == "ssh" else 0), starts
        status = service.state.source("n1")
        assert status["next_sync_unix_s"] - status["last_end_unix_s"] >= \
            scheduler_lib.SAFETY_S * (1 - scheduler_lib.SAFETY_SPREAD), status
        append_scalars(str(events), range(3, 6))
        wait_until(lambda: published.stat().st_size == events.stat().st_size, 60,
                   message="the new points published")
    finally:
        service.stop()


def test_watch_killed_leaves_no_probe_on_the_node(tmp_path, node):
    sshd, server, _ = node
    remote = tmp_path / "remote"
    write(remote / "run" / event_file_name())
    toml = tmp_path / "sources.toml"
    toml.write_text(f'[[source]]\nname = "n1"\nsource = "127.0.0.1:{remote}/"\n'
                    f"ssh = '{server.ssh_command}'\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "logs").mkdir()
    watch = subprocess.Popen(
        [sys.executable, "-m", "tb_rsync_plugin.cli", "watch", "--logdir",
         str(tmp_path / "logs"), "--config", str(toml), "--staging", str(tmp_path / "st"),
         "--interval", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        wait_until(lambda: agents(sshd), 60, message="the node's probe")
        watch.send_signal(signal.SIGKILL)
        watch.wait(30)
        wait_until(lambda: not agents(sshd), 30, message="the probe to end with the session")
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
            watch.wait()
        for master in (tmp_path / "run" / "tb-rsync").glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={master}", "-O", "exit", "x"],
                           capture_output=True, stdin=subprocess.DEVNULL)


def test_a_source_edited_while_probed_is_watched_at_its_new_folder(tmp_path, node):
    _, server, _ = node
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        write(root / "run" / event_file_name())
    source = config_lib.Source("n1", f"127.0.0.1:{first}/", ssh=server.ssh_command)
    with watching(tmp_path, [source]) as (probes, seen):
        wait_until(lambda: probes.probed("n1") and seen.count("n1"), 60, message="the probe")
        # n1 moves to another folder; a new source n2 takes the first one: same session.
        probes.set_sources([config_lib.Source("n1", f"127.0.0.1:{second}/",
                                              ssh=server.ssh_command),
                            config_lib.Source("n2", f"127.0.0.1:{first}/",
                                              ssh=server.ssh_command)])
        wait_until(lambda: probes.probed("n2") and seen.count("n2"), 60, message="n2 watched")
        for name, root in (("n1", second), ("n2", first)):
            before = seen.count(name)
            write(root / "run" / "more")
            wait_until(lambda: seen.count(name) > before, 30, message=f"a change of {name}")


def test_a_killed_shared_master_takes_the_probe_down_and_it_comes_back(tmp_path, node):
    _, server, _ = node
    root, source = remote_source(tmp_path, server)
    with watching(tmp_path, [source]) as (probes, seen):
        wait_until(lambda: probes.probed("n1"), 60, message="the probe")
        (socket_path,) = list((tmp_path / "ctl").iterdir())
        check = subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "check", "x"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL)
        master = int(check.stderr.split("pid=")[1].split(")")[0])
        os.kill(master, signal.SIGKILL)
        wait_until(lambda: not probes.probed("n1"), 30, message="the fallback to listing")
        wait_until(lambda: probes.probed("n1"), 60, message="the probe over a new login")
        before = seen.count("n1")
        write(root / "run" / "more")
        wait_until(lambda: seen.count("n1") > before, 30, message="a change after the restart")
