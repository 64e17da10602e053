"""Real `tensorboard` processes with the plugin, found through its entry point.

`tensorboard_server(logdir, *flags)` starts one on 127.0.0.1 and a free port, waits until it
answers, and stops it (and its children, such as the Rust data server) at teardown.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardProcess:
    """A running tensorboard; `get_json` / `post_json` talk to it over loopback HTTP."""

    def __init__(self, logdir, flags, log_path, env=None, executable=None):
        """`executable`: the argv prefix that starts TensorBoard."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # This interpreter's TensorBoard: the one the plugin is installed into.
        tensorboard = executable or [sys.executable, "-m", "tensorboard.main"]
        self.argv = [*tensorboard, "--logdir", str(logdir), "--host", "127.0.0.1",
                     "--port", str(self.port), *map(str, flags)]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env)

    def wait_ready(self, timeout_s=60):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tensorboard exited {self.proc.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(self.url + "/data/plugins_listing", timeout=2).read()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"tensorboard did not answer in {timeout_s} s:\n{self.log()}")

    def log(self):
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def get(self, path, timeout_s=10):
        with urllib.request.urlopen(self.url + path, timeout=timeout_s) as r:
            return r.status, r.read()

    def get_json(self, path, timeout_s=10):
        return json.loads(self.get(path, timeout_s)[1])

    def post_json(self, path, body, headers=None, timeout_s=10):
        data = json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", "X-TB-Rsync": "1"}
        all_headers.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, headers=all_headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def scalars(self, run, tag="loss"):
        """Points TensorBoard serves for (run, tag), or [] when it has none yet."""
        from urllib.parse import urlencode
        query = urlencode({"run": run, "tag": tag})
        try:
            return self.get_json("/data/plugin/scalars/scalars?" + query)
        except urllib.error.HTTPError:
            return []

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def tensorboard_server(tmp_path):
    """Factory: `tensorboard_server(logdir, *flags)` -> a ready TensorBoardProcess."""
    started = []

    def start(logdir, *flags, wait=True, env=None):
        tb = TensorBoardProcess(logdir, flags, tmp_path / f"tensorboard-{len(started)}.log",
                                env=env)
        started.append(tb)
        return tb.wait_ready() if wait else tb

    yield start
    for tb in started:
        tb.stop()


def wait_until(predicate, timeout_s, interval_s=0.2, message="condition"):
    """Poll `predicate` until truthy; returns its value or fails with `message`."""
    deadline = time.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(interval_s)
