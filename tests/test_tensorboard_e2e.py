"""Real `tensorboard` processes with the installed plugin, asked over their own HTTP API."""

import os
import subprocess
import sys

import pytest

from tests.events import append_scalars, event_file_name, text_bytes
from tests.fixtures_tensorboard import wait_until
from tests.processes import processes_mentioning, slow_source_config

EVENTS = event_file_name()


def start_node(tmp_path, tensorboard_server, first_steps, *flags):
    """A remote with run `a`, and a TensorBoard syncing it as source `node`."""
    path = tmp_path / "remote" / "a" / EVENTS
    path.parent.mkdir(parents=True)
    append_scalars(str(path), first_steps)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = tensorboard_server(logdir, "--rsync_source", f"node={tmp_path / 'remote'}/",
                            "--rsync_staging", tmp_path / "staging", *flags)
    return tb, path, logdir


def steps(tb, run):
    return [point[1] for point in tb.scalars(run)]


def rsync_plain(src, dest):
    subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], check=True)


def sync_and_wait(tb, source=None):
    body = {} if source is None else {"source": source}
    code, answer = tb.post_json("/data/plugin/rsync/sync", body)
    assert code == 202, answer
    names = answer["started"] + answer["joined"]

    def done():
        sources = tb.get_json("/data/plugin/rsync/status")["sources"]
        return all(s["state"] in ("idle", "error") for s in sources if s["name"] in names)

    wait_until(done, 60, message="the sync to finish")
    return tb.get_json("/data/plugin/rsync/status")


@pytest.mark.tb_matrix
def test_fast_loader_plain_rsync_goes_stale_plugin_stays_live(tmp_path, tensorboard_server):
    remote = tmp_path / "remote"
    (remote / "run").mkdir(parents=True)
    append_scalars(str(remote / "run" / EVENTS), range(5))
    logdir = tmp_path / "logs"
    (logdir / "plain").mkdir(parents=True)
    rsync_plain(remote, logdir / "plain")
    tb = tensorboard_server(logdir, "--rsync_source", f"live={remote}/",
                            "--rsync_staging", tmp_path / "staging", "--reload_interval", "1")
    sync_and_wait(tb, "live")
    wait_until(lambda: len(steps(tb, "plain/run")) == 5 and len(steps(tb, "live/run")) == 5,
               30, message="both runs to show 5 points")

    append_scalars(str(remote / "run" / EVENTS), range(5, 15))
    # The problem: plain rsync replaces the file by rename; the fast loader keeps the old inode.
    rsync_plain(remote, logdir / "plain")
    status = sync_and_wait(tb, "live")
    assert status["loader"] == "fast"
    # A generous deadline, not a timing claim: a loaded 2-core machine (the version matrix)
    # once took over 11 s here with TensorBoard 2.10's data server.
    wait_until(lambda: len(steps(tb, "live/run")) == 15, 60,
               message="the synced growth to appear")
    assert len(steps(tb, "plain/run")) == 5, "plain rsync -a was expected to leave the run stale"
    run = wait_until(lambda: _run(tb, "live/run", "live"), 15, message="run state 'live'")
    assert run["source_step"] == 14


@pytest.mark.tb_matrix
def test_legacy_loader_shows_new_points_and_runs_without_reload(tmp_path, tensorboard_server):
    tb, path, _ = start_node(tmp_path, tensorboard_server, range(3),
                             "--load_fast=false", "--reload_interval", "0")
    remote = path.parent.parent
    status = sync_and_wait(tb)
    assert status["loader"] == "legacy"
    assert steps(tb, "node/a") == [0, 1, 2]

    append_scalars(str(remote / "a" / EVENTS), range(3, 6))
    (remote / "b c").mkdir()
    append_scalars(str(remote / "b c" / event_file_name(host="node2")), range(2))
    sync_and_wait(tb)
    # --reload_interval 0 means TensorBoard never reloads by itself: this is the plugin.
    assert steps(tb, "node/a") == [0, 1, 2, 3, 4, 5]
    assert steps(tb, "node/b c") == [0, 1]
    wait_until(lambda: _run(tb, "node/b c", "live"), 10, message="new run 'live'")


def test_a_text_only_run_counts_as_live(tmp_path, tensorboard_server):
    """Freshness looks at every kind of data a run may hold, not only scalars."""
    remote = tmp_path / "remote" / "notes"
    remote.mkdir(parents=True)
    (remote / EVENTS).write_bytes(text_bytes(range(3)))
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = tensorboard_server(logdir, "--rsync_source", f"node={remote.parent}/",
                            "--rsync_staging", tmp_path / "staging",
                            "--load_fast=false", "--reload_interval", "0")
    sync_and_wait(tb)
    wait_until(lambda: _run(tb, "node/notes", "live"), 10, message="the text-only run 'live'")


@pytest.mark.parametrize("loader", ["--load_fast=false", "--load_fast=true"])
def test_a_run_with_only_another_plugins_data_counts_as_live(tmp_path, tensorboard_server,
                                                             loader):
    """A run holding only a plugin tb-rsync has no list for (a custom dashboard's tensors)
    is found through list_plugins, in both loaders."""
    remote = tmp_path / "remote" / "curves"
    remote.mkdir(parents=True)
    (remote / EVENTS).write_bytes(text_bytes(range(3), tag="pr", plugin_name="my_curves"))
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = tensorboard_server(logdir, "--rsync_source", f"node={remote.parent}/",
                            "--rsync_staging", tmp_path / "staging", loader,
                            "--reload_interval", "1")
    sync_and_wait(tb)
    wait_until(lambda: _run(tb, "node/curves", "live"), 20, message="the run 'live'")


@pytest.mark.tb_matrix
def test_legacy_loader_rebuilds_a_rewritten_run(tmp_path, tensorboard_server):
    tb, path, _ = start_node(tmp_path, tensorboard_server, range(10),
                             "--load_fast=false", "--reload_interval", "0")
    sync_and_wait(tb)
    assert len(steps(tb, "node/a")) == 10
    path.unlink()  # a new training run reusing the name: shorter, different content
    append_scalars(str(path), range(100, 103))
    sync_and_wait(tb)
    assert steps(tb, "node/a") == [100, 101, 102]
    quarantined = [f for _, _, files in os.walk(tmp_path / "staging" / "quarantine")
                   for f in files]
    assert quarantined == [EVENTS]


@pytest.mark.tb_matrix
def test_fast_loader_shows_a_rewritten_run_without_restart(tmp_path, tensorboard_server):
    tb, path, logdir = start_node(tmp_path, tensorboard_server, range(10),
                                  "--reload_interval", "1")
    sync_and_wait(tb)
    wait_until(lambda: len(steps(tb, "node/a")) == 10, 15, message="10 points")
    path.unlink()  # a new training run reusing the name
    append_scalars(str(path), range(100, 103))
    status = sync_and_wait(tb)
    assert status["sources"][0]["state"] == "idle", status["sources"][0]
    # The run was cycled out of the logdir and back: the data server re-read it from 0.
    wait_until(lambda: steps(tb, "node/a") == [100, 101, 102], 15,
               message="only the rewritten run's points")
    run = wait_until(lambda: _run(tb, "node/a", "live"), 15, message="run state 'live'")
    assert run["rewritten_unix_s"] is not None
    assert sorted(os.listdir(logdir / "node" / "a")) == [EVENTS]


def _run(tb, name, state):
    for run in tb.get_json("/data/plugin/rsync/status")["runs"]:
        if run["run"] == name and run["state"] == state:
            return run
    return None


@pytest.mark.parametrize("flags,needle", [
    (["--rsync_source", "oops"], "NAME=SOURCE"),
    (["--rsync_source", "a=/x/", "--rsync_interval", "often"], "--rsync_interval"),
])
def test_bad_flags_stop_tensorboard(tmp_path, flags, needle):
    result = subprocess.run([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path),
                             "--port", "0", *flags],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_fast_loader_without_reloads_says_restart_needed(tmp_path, tensorboard_server):
    tb, path, _ = start_node(tmp_path, tensorboard_server, range(4), "--reload_interval", "0")
    status = sync_and_wait(tb)
    # The data server read the (empty) logdir once at start-up and never looks again.
    assert "--reload_interval 0" in status["reload_note"]
    published = _run(tb, "node/a", "restart_needed")
    assert published is not None and "never reloads" in published["state_detail"]
    path.unlink()
    append_scalars(str(path), range(50, 52))
    sync_and_wait(tb)
    run = _run(tb, "node/a", "restart_needed")
    assert run is not None, tb.get_json("/data/plugin/rsync/status")["runs"]
    assert "restart TensorBoard" in run["state_detail"]
    assert "--reload_interval 0" in run["state_detail"]


def test_stopping_tensorboard_stops_its_rsync(tmp_path, tensorboard_server):
    # ~16 s of rsync: long enough to stop TensorBoard mid-way.
    toml = slow_source_config(tmp_path, mib=4, kib_per_s=256)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    staging = tmp_path / "staging"
    tb = tensorboard_server(logdir, "--rsync_config", toml, "--rsync_staging", staging)
    tb.post_json("/data/plugin/rsync/sync", {})
    wait_until(lambda: processes_mentioning(str(staging), "rsync"), 15, message="rsync to start")
    tb.proc.terminate()  # SIGTERM: TensorBoard runs atexit handlers, the plugin's included
    tb.proc.wait(30)
    wait_until(lambda: not processes_mentioning(str(staging), "rsync"), 10, message="rsync to be stopped")
    assert not (logdir / "slow" / "big.bin").exists()
