"""The README's demo, run headless: both TensorBoards over HTTP, then Ctrl-C and no leftovers.

`demo/run_demo.py --compare` serves the plugin's logdir and a logdir fed by plain `rsync -a`
from the same simulated remote jobs. The plugin's run must keep growing; with the fast loader
the plain one must not (the problem the plugin exists for). Ctrl-C must stop every process the
demo started: any process whose command line names the demo's work folder is a leftover.
"""

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.fixtures_tensorboard import free_port, wait_until
from tests.processes import processes_mentioning

DEMO = Path(__file__).resolve().parents[1] / "demo" / "run_demo.py"
RUN = "node1/resnet lr=0.1"  # a space in the name on purpose
RUNS = {RUN, "node1/resnet lr=0.01", "node2/vit-small"}
RUN_STATES = {"live", "waiting", "restart_needed", "error", "unknown"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def load_demo():
    spec = importlib.util.spec_from_file_location("run_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_json(url, timeout_s=10):
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def loss_points(base_url, run=RUN):
    try:
        return get_json(f"{base_url}/data/plugin/scalars/scalars?"
                        + urlencode({"run": run, "tag": "loss"}))
    except urllib.error.HTTPError:  # 400 until TensorBoard has loaded the run
        return []


def test_a_port_held_only_in_time_wait_is_reused():
    """A demo just stopped leaves its port in TIME_WAIT; TensorBoard binds it anyway
    (SO_REUSEADDR), so the demo must not move on to the next port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the side that closes first keeps the port in TIME_WAIT
    client.recv(1)  # the end of the stream: the close arrived
    client.close()
    listener.close()
    in_time_wait = subprocess.run(["ss", "-Htan", "state", "time-wait", f"sport = :{port}"],
                                  capture_output=True, text=True)
    if in_time_wait.returncode or not in_time_wait.stdout.strip():
        pytest.skip("could not see the port in TIME_WAIT with ss")
    assert load_demo().first_free_port(port) == port


def test_demo_says_when_its_duration_ends(tmp_path):
    workdir = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, str(DEMO), "--duration", "2", "--workdir", str(workdir),
         "--port", str(free_port())],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "Stops after 2 s (--duration); Ctrl-C stops sooner." in lines, result.stdout
    assert lines[-1] == "--duration 2 s is over; stopping.", result.stdout
    assert processes_mentioning(str(workdir)) == [], "the demo left processes running"


# --duration is only a safety net here: the test sends Ctrl-C well before it ends.
def test_demo_compare_serves_both_and_stops_cleanly_on_ctrl_c(tmp_path):
    workdir = tmp_path / "demo work"
    output_path = tmp_path / "demo-output.txt"
    with open(output_path, "wb") as output:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO), "--compare", "--duration", "45",
             "--workdir", str(workdir), "--port", str(free_port())],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=tmp_path, start_new_session=True)  # any cwd works; its own session for SIGINT

    def output_text():
        return output_path.read_text(errors="replace")

    def urls():
        assert demo.poll() is None, f"demo exited {demo.returncode}:\n{output_text()}"
        sync = re.search(r"Sync TensorBoard:\s+(http://\S+?)/", output_text())
        plain = re.search(r"Plain TensorBoard:\s+(http://\S+?)/", output_text())
        return sync and plain and (sync.group(1), plain.group(1))

    try:
        sync_url, plain_url = wait_until(urls, 40, message="the demo to print both URLs")

        def status_complete():
            status = get_json(f"{sync_url}/data/plugin/rsync/status")
            return {run["run"] for run in status["runs"]} >= RUNS and status
        status = wait_until(status_complete, 20, message="the status to list every run")
        assert {s["name"] for s in status["sources"]} == {"node1", "node2"}
        assert {r["state"] for r in status["runs"]} <= RUN_STATES, status["runs"]
        assert {r["run"]: r["source"] for r in status["runs"]}[RUN] == "node1"

        wait_until(lambda: loss_points(sync_url) and loss_points(plain_url), 20,
                   message="both TensorBoards to show points for " + RUN)
        sync_before, plain_before = len(loss_points(sync_url)), len(loss_points(plain_url))
        time.sleep(8)
        sync_after, plain_after = len(loss_points(sync_url)), len(loss_points(plain_url))
        assert sync_after > sync_before, "the plugin's run stopped growing"
        if status["loader"] == "fast":
            # Measured: the plain run keeps the few points of the first file the fast loader
            # opened (e.g. 2 while the plugin's run went 16 -> 31). It could only grow if the
            # loader happened to read rsync's short-lived `.events...XXXXXX` temp file.
            assert plain_after == plain_before, \
                f"plain rsync -a was expected to go stale ({plain_before} -> {plain_after})"
            assert plain_after < sync_after

        demo.send_signal(signal.SIGINT)
        assert demo.wait(15) == 130, output_text()
        assert processes_mentioning(str(workdir)) == [], "the demo left processes running"
        assert "Traceback" not in output_text(), output_text()
    finally:
        if demo.poll() is None:  # a failure above: let the demo clean up, or force it
            demo.terminate()
            try:
                demo.wait(15)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        for pid, _ in processes_mentioning(str(workdir)):  # only ours: the path is unique
            os.kill(pid, signal.SIGKILL)
