"""A rewrite published by another process reaches every TensorBoard on the logdir (issue #11).

`tb-rsync sync` (a separate process, same staging folder) publishes a rewrite next to a
running TensorBoard that published the old content itself. The new content's newest wall
time equals the old one's, so comparing wall times cannot tell them apart. At every poll the
status may say "live" only if TensorBoard serves the new points; it must end with the new
points live, or "restart needed".
"""

import os
import subprocess
import sys
import time

import pytest

from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until

pytestmark = pytest.mark.slow

EVENTS = event_file_name()
RUN = "node/job"


def run_state(tb):
    return next((r for r in tb.get_json("/data/plugin/rsync/status")["runs"] if r["run"] == RUN),
                None)


@pytest.mark.tb_matrix
@pytest.mark.parametrize("loader", ["fast", "legacy"])
def test_rewrite_by_tb_rsync_sync_is_never_live_on_stale_data(tmp_path, tensorboard_server,
                                                               loader):
    if loader == "fast":
        pytest.importorskip("tensorboard_data_server")
    wall0 = time.time() - 100
    remote, logdir, staging = tmp_path / "remote", tmp_path / "logs", tmp_path / "staging"
    (remote / "job").mkdir(parents=True)
    logdir.mkdir()
    source_file = str(remote / "job" / EVENTS)
    append_scalars(source_file, range(20), wall_time0=wall0)
    flags = ["--load_fast=false"] if loader == "legacy" else []
    tb = tensorboard_server(logdir, "--rsync_source", f"node={remote}/", "--rsync_interval", "0",
                            "--rsync_staging", staging, "--reload_interval", "1", *flags)
    tb.post_json("/data/plugin/rsync/sync", {})
    wait_until(lambda: len(tb.scalars(RUN)) == 20, 60, message="the first 20 points")
    wait_until(lambda: (run_state(tb) or {}).get("state") == "live", 60, message="live")

    # A new training run under the same name: 10 points, the same newest wall time.
    os.unlink(source_file)
    append_scalars(source_file, range(10), wall_time0=wall0 + 10)
    cli = subprocess.run(
        [sys.executable, "-m", "tb_rsync_plugin.cli", "sync", "--logdir", str(logdir),
         "--source", f"node={remote}/", "--staging", str(staging)],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert f"rewritten node/job/{EVENTS}" in cli.stdout and "old copy kept at" in cli.stdout

    states = []

    def converged():
        row = run_state(tb)  # read first: what TensorBoard serves can only get newer
        points = tb.scalars(RUN)
        new = len(points) == 10 and points[0][0] == pytest.approx(wall0 + 10)
        states.append((row["state"], len(points)))
        assert row["state"] != "live" or new, f"live on stale data: {row}, {len(points)} points"
        return row["state"] == "restart_needed" or (row["state"] == "live" and new)

    wait_until(converged, 90, interval_s=0.1, message="the new points live, or restart needed")
    print("states seen:", states)
    row = run_state(tb)
    assert row["rewrite"]["by"] == "another process"
    assert row["rewrite"]["kept_at"].startswith(str(staging))
    assert os.path.exists(row["rewrite"]["kept_at"])

    status = subprocess.run(
        [sys.executable, "-m", "tb_rsync_plugin.cli", "status", "--logdir", str(logdir),
         "--staging", str(staging)], capture_output=True, text=True, timeout=60)
    assert "Recent rewrites" in status.stdout and row["rewrite"]["kept_at"] in status.stdout
