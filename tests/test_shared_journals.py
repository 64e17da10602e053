"""A TensorBoard and a `tb-rsync sync` on one logdir and staging root follow each other's
state journals: the tab shows what the CLI published (issue: it showed step 0 as `live`
while TensorBoard served step 50, and never listed the CLI's new run)."""

import subprocess
import sys
import time

import pytest

from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until

pytestmark = pytest.mark.slow

EVENTS = event_file_name()


def rows(tb):
    return {r["run"]: r for r in tb.get_json("/data/plugin/rsync/status")["runs"]}


def test_tensorboard_shows_what_tb_rsync_sync_published(tmp_path, tensorboard_server):
    wall0 = time.time() - 100
    remote, logdir, staging = tmp_path / "remote", tmp_path / "logs", tmp_path / "staging"
    (remote / "job").mkdir(parents=True)
    logdir.mkdir()
    append_scalars(str(remote / "job" / EVENTS), range(1), wall_time0=wall0)
    tb = tensorboard_server(logdir, "--rsync_source", f"n={remote}/", "--rsync_interval", "0",
                            "--rsync_staging", staging, "--reload_interval", "1")
    tb.post_json("/data/plugin/rsync/sync", {})
    wait_until(lambda: rows(tb).get("n/job", {}).get("state") == "live", 60,
               message="step 0 live")

    append_scalars(str(remote / "job" / EVENTS), range(1, 51), wall_time0=wall0)
    (remote / "new").mkdir()
    append_scalars(str(remote / "new" / EVENTS), range(3), wall_time0=wall0)
    cli = subprocess.run(
        [sys.executable, "-m", "tb_rsync_plugin.cli", "sync", "--logdir", str(logdir),
         "--source", f"n={remote}/", "--staging", str(staging)],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr

    code, answer = tb.post_json("/data/plugin/rsync/sync", {})  # publishes nothing new
    assert code == 202, answer

    def converged():
        runs = rows(tb)
        job, new = runs.get("n/job", {}), runs.get("n/new", {})
        return job.get("source_step") == 50 and job.get("state") == "live" and \
            new.get("source_step") == 2 and new.get("state") == "live"

    wait_until(converged, 60, message="step 50 and the CLI's new run, live")
    assert [p[1] for p in tb.scalars("n/job")][-1] == 50
