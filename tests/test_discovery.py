"""`[[discover]]` rules: sources found by real commands, a real Slurm, a real TensorBoard.

No Kubernetes runs here: `hosts_command` is tested with real commands (cat, sh) printing
hosts the way `kubectl get pods -o name` does (`pod/NAME`). Every host found is sent to the
tests' sshd on 127.0.0.1 (`ssh -o HostName=127.0.0.1`), never to another address.
"""

import json
import os
import sys
import threading
import time

import pytest
from tensorboard.compat.proto import event_pb2

from tb_rsync_plugin import cli, cli_output
from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import discover_rules
from tb_rsync_plugin.engine import discovery
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.errors import ConfigError
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tests.events import append_scalars, loaded_events
from tests.fixtures_tensorboard import wait_until
from tests.processes import processes_mentioning, start_tb_rsync, stop_tb_rsync

pytest_plugins = ["tests.fixtures_slurm"]

EVENTS = "events.out.tfevents.1700000000.node"


def write_config(path, *tables):
    """A TOML file of `(kind, {key: value})` tables; values written as JSON (valid TOML)."""
    text = ""
    for kind, table in tables:
        text += f"[[{kind}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    path.write_text(text)
    return path


def add_points(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    append_scalars(str(path), values)


def steps(path):
    """Steps of the scalar events in an event file, as TensorBoard's own loader reads it."""
    events = [event_pb2.Event.FromString(data) for data in loaded_events(str(path))]
    return [e.step for e in events if e.summary.value]


# --- rules parsed up front -----------------------------------------------------------
RULE = {"hosts_command": "cat hosts", "name": "{host}", "source": "{host}:/logs/"}


@pytest.mark.parametrize("change, said", [
    ({"slurm": "--me"}, "exactly one of 'slurm'"),
    ({"hosts_command": None}, "exactly one of 'slurm'"),
    ({"name": "{job}-{host}"}, "uses '{job}'; the placeholders here are {host}"),
    ({"name": "{host.__class__}"}, "uses '{host.__class__}'"),
    ({"source": "{host!r}:/x/"}, "uses '{host}'"),
    ({"name": "logs"}, "'name' must contain {host}"),
    ({"every": 0}, "'every' must be a number of seconds above 0"),
    ({"bwlimit": "fast"}, "'bwlimit' must be a whole number"),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"hosts_command": "sh -c 'x"}, "cannot be parsed"),
], ids=["both", "neither", "job-in-hosts", "attribute", "conversion", "no-host", "every",
        "source-key", "unknown", "quotes"])
def test_bad_rules_are_refused_with_a_sentence(tmp_path, change, said):
    table = {k: v for k, v in dict(RULE, **change).items() if v is not None}
    path = write_config(tmp_path / "c.toml", ("discover", table))
    with pytest.raises(ConfigError) as e:
        config_lib.build_config(str(tmp_path), config_file=str(path),
                                staging=str(tmp_path.parent / "st"))
    assert said in str(e.value) and "discover #1" in str(e.value)


def test_host_lines():
    assert discover_rules.parse_hosts("pod/a-0\n\nb.example\na-0\n", "x") == ["a-0", "b.example"]
    for bad in ("-oProxyCommand=touch x", "user@gpu1", "a b", "a:b"):
        with pytest.raises(ValueError, match="not a host name"):
            discover_rules.parse_hosts(bad + "\n", "The command")


# --- tb-rsync sources ------------------------------------------------------------------
def test_sources_prints_static_and_found_and_says_what_failed(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("pod/trainer-0\ntrainer-1\n")
    path = write_config(
        tmp_path / "c.toml", ("source", {"name": "static", "source": "/srv/logs/"}),
        ("discover", {"hosts_command": f"cat {hosts}", "name": "k-{host}",
                      "source": "{host}:/logs/", "rsh": "kubectl exec -i {host} --"}))
    assert cli.main(["sources", "--config", str(path)]) == 0
    rule = f"#1 hosts_command: cat {hosts}"
    assert capsys.readouterr().out.splitlines() == [
        "static\t/srv/logs/\tstatic", f"k-trainer-0\ttrainer-0:/logs/\t{rule}",
        f"k-trainer-1\ttrainer-1:/logs/\t{rule}"]

    hosts.write_text("static\n")  # found as 'static' again: a name used twice
    write_config(path, ("source", {"name": "static", "source": "/srv/logs/"}),
                 ("discover", {"hosts_command": f"cat {hosts}", "name": "{host}",
                               "source": "{host}:/logs/"}),
                 ("discover", {"hosts_command": f"cat {tmp_path}/missing", "name": "{host}",
                               "source": "{host}:/logs/"}))
    assert cli.main(["sources", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["static\t/srv/logs/\tstatic"]
    assert "error: Source name 'static' is used twice; give each source its own name. " \
           "Discovery rule #1 hosts_command" in err
    assert f"error: The command 'cat' of discovery rule #2 hosts_command: cat {tmp_path}" \
           "/missing failed (exit code 1)" in err
    assert "No such file or directory" in err  # cat's stderr, in the details


# --- a service following its rules -----------------------------------------------------
@pytest.fixture
def running(tmp_path):
    """Factory: a service and its Discovery on a config file, stopped at teardown."""
    started = []

    def start(config_path):
        config = load(config_path)
        state = state_lib.SyncState(config.sources, config.interval_for)
        service = service_lib.SyncService(config, state, reload_lib.NoReloader())
        cycles = []
        service.scheduler.add_listener(lambda end: cycles.append(end))
        found = discovery.Discovery(config, service, service.reconfigure)
        started.append((service, found))
        service.start(timers=True)
        found.start()
        return service, cycles, found

    def load(config_path):
        logdir = tmp_path / "logs"
        logdir.mkdir(exist_ok=True)
        return config_lib.build_config(str(logdir), config_file=str(config_path),
                                       staging=str(tmp_path / "staging"), interval_s=0.5)

    start.load = load
    yield start
    for service, found in started:
        service.stop()
        found.stop()


def rule_status(service):
    return service.state.snapshot()["discover"][0]


def test_a_host_that_leaves_gets_one_last_sync_then_stops(tmp_path, running):
    """Sources synced only on request (interval 0) show it: nothing syncs them but the last
    sync their leaving starts."""
    remote = tmp_path / "remote"
    for host in ("a", "b"):
        add_points(remote / host / "run" / EVENTS, range(3))
    hosts = tmp_path / "hosts"
    hosts.write_text("a\nb\n")
    rule = {"hosts_command": f"cat {hosts}", "name": "n-{host}",
            "source": f"{remote}/{{host}}/", "every": 0.2, "interval": 0}
    path = write_config(tmp_path / "c.toml", ("discover", rule))
    service, cycles, found = running(path)
    wait_until(lambda: {s.name for s in service.config.sources} == {"n-a", "n-b"}, 30,
               message="both hosts found")
    snapshot = service.state.snapshot()
    assert {s["name"]: s["found_by"] for s in snapshot["sources"]} == {
        "n-a": f"#1 hosts_command: cat {hosts}", "n-b": f"#1 hosts_command: cat {hosts}"}
    assert not cycles and not (tmp_path / "logs" / "n-a").exists()

    # An edit that only renumbers the rule and changes its pace keeps what it found (no
    # host leaves and comes back; set_base applies at once).
    write_config(path, ("discover", {"hosts_command": "true", "name": "x-{host}",
                                     "source": "{host}:/x/"}), ("discover", dict(rule, every=0.3)))
    found.set_base(running.load(path))
    assert {s.name for s in service.config.sources} == {"n-a", "n-b"} and not cycles
    assert not any(s["leaving"] for s in service.state.snapshot()["sources"])
    rule_label = f"#2 hosts_command: cat {hosts}"
    assert service.state.snapshot()["sources"][0]["found_by"] == rule_label

    hosts.write_text("b\n")
    wait_until(lambda: [s.name for s in service.config.sources] == ["n-b"], 30,
               message="n-a gone after its last sync")
    assert [end.name for end in cycles] == ["n-a"] and cycles[0].error is None
    assert steps(tmp_path / "logs" / "n-a" / "run" / EVENTS) == [0, 1, 2]
    assert [s["name"] for s in service.state.snapshot()["sources"]] == ["n-b"]
    with open(os.path.join(service.config.state_dir, discovery.RULES_FILE)) as f:
        assert json.load(f)[1]["sources"] == ["n-b"]  # for tb-rsync status


def test_a_failing_or_hanging_command_keeps_the_last_answer(tmp_path, running):
    remote = tmp_path / "remote"
    add_points(remote / "a" / "run" / EVENTS, range(2))
    script = tmp_path / "hosts.sh"
    script.write_text("echo a\n")
    path = write_config(tmp_path / "c.toml", ("discover", {
        "hosts_command": f"/bin/sh {script}", "name": "n-{host}",
        "source": f"{remote}/{{host}}/", "every": 0.2, "command_timeout": 1}))
    service, _, _ = running(path)
    wait_until(lambda: (tmp_path / "logs" / "n-a" / "run" / EVENTS).exists(), 30,
               message="a found and synced")

    def fails_with(text):
        status = rule_status(service)
        return status["error"] and text in status["error"]["message"]

    for body, said in (
            ("echo oops >&2; exit 3\n", "failed (exit code 3); the rule keeps its last answer"),
            # A child holding stdout open must not keep the rule waiting: the group is killed.
            ("sleep 300 & echo a; wait\n", "did not answer within 1 s"),
            ("echo 'Error from server (Forbidden)'\n", "which is not a host name")):
        script.write_text(body)
        wait_until(lambda: fails_with(said), 30, message=said)
        assert [s.name for s in service.config.sources] == ["n-a"]
        assert rule_status(service)["sources"] == ["n-a"]
    wait_until(lambda: not processes_mentioning("sleep 300"), 30, message="sleep killed")
    script.write_text("echo a\n")
    wait_until(lambda: rule_status(service)["error"] is None, 30, message="error cleared")
    assert rule_status(service)["last_ok_unix_s"] >= rule_status(service)["last_run_unix_s"]


# --- hosts_command while TensorBoard runs ----------------------------------------------
def test_hosts_come_and_go_while_tensorboard_runs(tmp_path, sshd_server, tensorboard_server):
    remote, logdir, hosts = tmp_path / "remote", tmp_path / "logs", tmp_path / "hosts"
    logdir.mkdir()
    for host in ("nodea", "nodeb"):
        add_points(remote / host / "train" / EVENTS, range(3))
    hosts.write_text("nodea\n")
    path = write_config(tmp_path / "c.toml", ("discover", {
        "hosts_command": f"cat {hosts}", "name": "pod-{host}",
        "source": f"{{host}}:{remote}/{{host}}/", "every": 0.5, "interval": 1,
        # Every host found is this machine's test sshd, whatever its name.
        "ssh": sshd_server.command() + " -o HostName=127.0.0.1"}))
    tb = tensorboard_server(logdir, "--rsync_config", path, "--rsync_staging",
                            tmp_path / "staging", "--load_fast=false", "--reload_interval", "0")

    def points(run):
        return [p[1] for p in tb.scalars(run)]

    wait_until(lambda: points("pod-nodea/train") == [0, 1, 2], 60, message="nodea's points")
    status = tb.get_json("/data/plugin/rsync/status")
    assert [(s["name"], s["found_by"]) for s in status["sources"]] == [
        ("pod-nodea", f"#1 hosts_command: cat {hosts}")]
    assert status["discover"][0]["last_run_unix_s"] <= status["server_unix_s"]

    hosts.write_text("pod/nodea\nnodeb\n")  # kubectl's `-o name` form
    wait_until(lambda: points("pod-nodeb/train") == [0, 1, 2], 60, message="nodeb's points")

    add_points(remote / "nodea" / "train" / EVENTS, range(3, 6))
    hosts.write_text("nodeb\n")
    wait_until(lambda: [s["name"] for s in tb.get_json("/data/plugin/rsync/status")["sources"]]
               == ["pod-nodeb"], 60, message="nodea gone")
    assert steps(logdir / "pod-nodea" / "train" / EVENTS) == list(range(6))
    assert points("pod-nodea/train") == list(range(6))  # its published files stay


# --- a real Slurm ----------------------------------------------------------------------
WRITER = """
import sys, time
from tensorboardX import SummaryWriter
writer = SummaryWriter(sys.argv[1])
step = 0
while True:
    writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.flush()
    step += 1
    time.sleep(0.2)
"""


def test_slurm_job_found_synced_and_left_after_scancel(tmp_path, slurm_cluster, sshd_server):
    jobs, logdir = tmp_path / "jobs", tmp_path / "logs"
    jobs.mkdir()
    logdir.mkdir()
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    path = write_config(tmp_path / "c.toml", ("discover", {
        "slurm": "--name tbtrain", "name": "{job}-{host}",
        "source": f"{{host}}:{jobs}/{{job}}/", "every": 1,
        "ssh": sshd_server.command() + " -o HostName=127.0.0.1"}))
    job = slurm_cluster.sbatch(
        "--job-name", "tbtrain", "--output", f"{tmp_path}/%j.out", "--chdir", str(tmp_path),
        "--wrap", f"exec {sys.executable} {writer} {jobs}/$SLURM_JOB_ID/run")
    name = f"{job}-{slurm_cluster.node}"
    proc = start_tb_rsync("watch", "--logdir", logdir, "--config", path, "--staging",
                          tmp_path / "staging", "--interval", "1", env=slurm_cluster.env)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    published = logdir / name / "run"
    try:
        wait_until(lambda: any(f"tb-rsync: discovered {name} " in l for l in lines), 60,
                   message=f"{name} discovered")

        def published_steps():
            files = list(published.glob("events.out.tfevents.*")) if published.exists() else []
            return steps(files[0]) if files else []

        wait_until(lambda: len(published_steps()) >= 5, 60, message="points published")
        slurm_cluster.run("scancel", job)
        wait_until(lambda: slurm_cluster.job_state(job) == "", 60, message="job ended")
        wait_until(lambda: any(f"tb-rsync: {name} stopped after its last sync" in l
                               for l in lines), 60, message=f"{name} left")
        (source_file,) = (jobs / job / "run").glob("events.out.tfevents.*")
        assert published_steps() == steps(source_file)  # the last sync caught up
    finally:
        out, err = stop_tb_rsync(proc)
    assert proc.returncode == 130, err
    status = cli_output.format_status(
        {"sources": [], "runs": [],
         "discover": discovery.load_rules(str(tmp_path / "staging" / "state"))}, time.time())
    assert "discovery #1 slurm: --name tbtrain: ran " in status and "0 source(s)" in status
