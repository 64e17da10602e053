"""Many sources at once, with real parts: rsync, a loopback sshd with its default MaxStartups,
hosts that accept TCP and never answer, the CLI, and a TensorBoard whose config file changes.
"""

import os
import subprocess
import sys

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until

EVENTS = event_file_name()
CLI = [sys.executable, "-m", "tb_rsync_plugin.cli"]


def make_remote(folder, runs=("run",), steps=range(3)):
    for run in runs:
        (folder / run).mkdir(parents=True, exist_ok=True)
        append_scalars(str(folder / run / EVENTS), steps)
    return folder


def toml_sources(path, sources):
    """A config file of [[source]] tables from dicts (strings and numbers only)."""
    def value(v):
        return f'"{v}"' if isinstance(v, str) else str(v)
    path.write_text("\n".join(
        "[[source]]\n" + "\n".join(f"{k} = {value(v)}" for k, v in table.items()) + "\n"
        for table in sources))
    return path


def quick_ssh(server, connect_timeout_s=3):
    """The test sshd's command; ConnectTimeout short so a black hole fails fast (the user's
    own ConnectTimeout wins over tb-rsync's default)."""
    return server.command() + f" -o ConnectTimeout={connect_timeout_s}"


def test_thirty_ssh_sources_on_one_host_never_trip_maxstartups(tmp_path, sshd_server):
    """sshd's default MaxStartups 10:30:100 drops logins beyond 10 at once; 30 sources of one
    host must all sync (the per-host limit keeps at most 3 syncs on it)."""
    sources = []
    for i in range(30):
        make_remote(tmp_path / "remote" / f"n{i}")
        sources.append({"name": f"n{i}", "source": f"127.0.0.1:{tmp_path}/remote/n{i}/",
                        "ssh": sshd_server.command()})
    config = toml_sources(tmp_path / "sources.toml", sources)
    (tmp_path / "logs").mkdir()
    for sharing in ([], ["--no-ssh-sharing"]):
        logins = sshd_server.log().count("Accepted publickey for")
        result = subprocess.run(CLI + ["sync", "--logdir", str(tmp_path / "logs"), "--config",
                                       str(config), "--staging", str(tmp_path / "staging"),
                                       *sharing],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if "run(s) updated" in line]
        assert len(lines) == 30, result.stdout + result.stderr
        logins = sshd_server.log().count("Accepted publickey for") - logins
        # Shared: one login for all 30 sources. Not shared (a listing per source, the
        # second sync finds nothing new): one login per source, 3 at a time, none refused.
        assert logins == (1 if not sharing else 30), (sharing, logins)
    for i in range(30):
        assert (tmp_path / "logs" / f"n{i}" / "run" / EVENTS).exists()


def test_sync_prints_each_source_when_it_ends(tmp_path, sshd_server, black_hole):
    """A hung host does not hold back the line of a source that is done."""
    make_remote(tmp_path / "remote")
    (tmp_path / "logs").mkdir()
    server = sshd_server
    config = toml_sources(tmp_path / "sources.toml", [
        {"name": "hung", "source": f"127.0.0.1:{tmp_path}/remote/",
         "ssh": f"ssh -F /dev/null -p {black_hole} -o ConnectTimeout=20 "
                f"-o UserKnownHostsFile={server.known_hosts}"},
        {"name": "fast", "source": f"{tmp_path}/remote/"}])
    proc = subprocess.Popen(CLI + ["sync", "--logdir", str(tmp_path / "logs"), "--config",
                                   str(config), "--staging", str(tmp_path / "staging")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        still_running = proc.poll() is None
    finally:
        out, err = proc.communicate(timeout=120)
    assert first.startswith("fast: ") and "1 run(s) updated" in first, (first, out, err)
    assert still_running, "the fast source's line came only when the hung one gave up"
    assert proc.returncode == 1 and "hung: error: Sync of 'hung'" in err, err


def test_hung_hosts_never_starve_a_healthy_source(tmp_path, sshd_server, black_hole):
    """Six ssh sources and a daemon source on a host that never answers, one healthy local
    source, two slots: after their first failure the hung sources retry in the slow lane, and
    the healthy one keeps syncing at every change its probe sees."""
    make_remote(tmp_path / "remote")
    (tmp_path / "logs").mkdir()
    hung_ssh = (f"ssh -F /dev/null -p {black_hole} -o ConnectTimeout=2 "
                f"-o UserKnownHostsFile={sshd_server.known_hosts}")
    tables = [{"name": f"hung{i}", "source": f"127.0.0.1:{tmp_path}/remote/", "ssh": hung_ssh}
              for i in range(6)]
    tables.append({"name": "daemon", "source": f"rsync://127.0.0.1:{black_hole}/mod/",
                   "timeout": 4})
    tables.append({"name": "healthy", "source": f"{tmp_path}/remote/", "interval": 0.5})
    config = config_lib.build_config(
        str(tmp_path / "logs"), (), str(toml_sources(tmp_path / "s.toml", tables)),
        str(tmp_path / "staging"), interval_s=1.0, max_parallel=2)
    state = state_lib.SyncState(config.sources, config.interval_for)
    service = service_lib.SyncService(config, state, reload_lib.NoReloader())
    service.start()
    try:
        def source(name):
            return state.source(name)

        wait_until(lambda: all(source(t["name"])["failures"] >= 2 for t in tables[:-1]), 90,
                   message="every hung source to fail twice")
        ok_before = source("healthy")["last_ok_unix_s"]
        syncs_seen = set()

        def healthy_keeps_syncing():
            # The healthy folder keeps changing, as a job writing to it: its probe asks for a
            # sync each time (an unchanged local folder only syncs at its safety interval).
            with open(tmp_path / "remote" / "growing.txt", "a") as f:
                f.write("x")
            syncs_seen.add(source("healthy")["last_ok_unix_s"])
            return len(syncs_seen) >= 6

        # Hung sources keep retrying meanwhile (their backoff starts at 5 s).
        wait_until(healthy_keeps_syncing, 30, interval_s=0.05,
                   message="the healthy source to keep syncing")
        assert source("healthy")["last_ok_unix_s"] > ok_before
        daemon = source("daemon")
        assert daemon["state"] in ("error", "queued", "syncing")
        assert daemon["error"]["message"].startswith("Sync of 'daemon' timed out after 4 s")
        hung = source("hung0")
        assert hung["retrying"] or hung["state"] in ("queued", "syncing")
        assert "connected, but the server never answered" in hung["error"]["message"]
    finally:
        service.stop()


def test_a_sync_that_changes_nothing_writes_nothing(tmp_path):
    remote = make_remote(tmp_path / "remote", runs=[f"run{i}" for i in range(20)])
    (remote / "ckpt.index").write_bytes(b"v1")
    (tmp_path / "logs").mkdir()
    config = config_lib.build_config(str(tmp_path / "logs"), [f"n={remote}/"], None,
                                     str(tmp_path / "staging"))
    state = state_lib.SyncState(config.sources, config.interval_for)
    service = service_lib.SyncService(config, state, reload_lib.NoReloader())
    assert service.run_cycle("n").changed
    assert not service.run_cycle("n").changed

    def tree():
        found = {}
        for root in (tmp_path / "staging", tmp_path / "logs"):
            for folder, dirs, files in os.walk(root):
                for name in dirs + files:
                    st = os.lstat(os.path.join(folder, name))
                    found[os.path.join(folder, name)] = (st.st_ino, st.st_size,
                                                         st.st_mtime_ns, st.st_ctime_ns)
        return found

    before = tree()
    assert not service.run_cycle("n").changed
    assert tree() == before
    append_scalars(str(remote / "run3" / EVENTS), range(3, 6))
    assert service.run_cycle("n").changed
    assert tree() != before


def test_tensorboard_follows_edits_of_its_config_file(tmp_path, tensorboard_server):
    for name in "abc":
        make_remote(tmp_path / "remote" / name)
    logdir = tmp_path / "logs"
    logdir.mkdir()

    def table(name):
        return {"name": name, "source": f"{tmp_path}/remote/{name}/"}

    config = toml_sources(tmp_path / "sources.toml", [table("a")])
    tb = tensorboard_server(logdir, "--rsync_config", config, "--rsync_interval", "1",
                            "--rsync_staging", tmp_path / "staging", "--load_fast=false")

    def status():
        return tb.get_json("/data/plugin/rsync/status")

    def published(names):
        runs = {r["run"] for r in status()["runs"] if r["published_unix_s"]}
        return all(f"{n}/run" in runs for n in names)

    wait_until(lambda: published("a"), 60, message="source a to publish")
    toml_sources(config, [table("a"), table("b")])
    wait_until(lambda: published("ab"), 60, message="added source b to publish")
    toml_sources(config, [table("b")])
    wait_until(lambda: [s["name"] for s in status()["sources"]] == ["b"], 30,
               message="removed source a to leave the tab")
    assert (logdir / "a" / "run" / EVENTS).exists(), "a removed source's files stay"
    config.write_text("[[source]]\nname = 'c'\nsorce = 'typo'\n")
    wait_until(lambda: status()["config_error"], 30, message="the bad edit to be shown")
    assert "sorce" in status()["config_error"]
    assert [s["name"] for s in status()["sources"]] == ["b"], "the running config stays"
    assert "sorce" in tb.log()
    toml_sources(config, [table("b"), table("c")])
    wait_until(lambda: published("bc") and status()["config_error"] is None, 60,
               message="the fixed file to be followed")


def test_limits_are_validated_with_a_sentence(tmp_path):
    (tmp_path / "logs").mkdir()
    result = subprocess.run(CLI + ["sync", "--logdir", str(tmp_path / "logs"), "--source",
                                   f"n={tmp_path}/", "--max-per-host", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --max-per-host must be at least 1."
