"""A real Prometheus server (Debian's `prometheus`) on 127.0.0.1, one per test session.

It starts with no target; `scrape(job, url)` adds one, scraped every second, and reloads the
configuration over Prometheus's lifecycle API; `query(expr)` asks its HTTP API. Its storage
is a folder of its own, removed with the session's temporary folders.
"""

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.fixtures_tensorboard import free_port, wait_until


class PrometheusServer:
    def __init__(self, binary, folder):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._config_path = folder / "prometheus.yml"
        self._jobs = {}
        self._rules = None
        self._write_config()
        self.log_path = folder / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self._config_path}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        wait_until(self._ready, 60, message=f"Prometheus to start (log: {self.log_path})")

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _write_config(self):
        # JSON is YAML: no YAML library needed.
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"},
                  "rule_files": [str(self._rules)] if self._rules else [],
                  "scrape_configs": [
                      {"job_name": job, "scheme": parts.scheme,
                       "metrics_path": parts.path,
                       "static_configs": [{"targets": [parts.netloc]}]}
                      for job, parts in self._jobs.items()]}
        self._config_path.write_text(json.dumps(config, indent=1))

    def scrape(self, job, url):
        """Scrape `url` (http://HOST:PORT/PATH) every second as job `job`."""
        self._jobs[job] = urllib.parse.urlsplit(url)
        self._write_config()
        self._reload()

    def load_rules(self, path):
        """Evaluate the alerting rules in `path` every second (None: no rules)."""
        self._rules = path
        self._write_config()
        self._reload()

    def forget(self, job):
        self._jobs.pop(job, None)
        self._write_config()
        self._reload()

    def _reload(self):
        request = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200, r.read()

    def query(self, expr):
        """The instant vector `expr` evaluates to now: [(labels dict, float value)]."""
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("No prometheus binary; run scripts/install-system-deps.sh (it installs "
                    "Debian's 'prometheus' package for the metrics tests).")
    server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


def wait_for_series(server, expr, timeout_s=60):
    """The samples of `expr` once it has any (Prometheus scrapes every second)."""
    return wait_until(lambda: server.query(expr), timeout_s,
                      message=f"Prometheus to have {expr}")
