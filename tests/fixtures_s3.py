"""A real S3-compatible server on 127.0.0.1 (moto's server mode) and an rclone remote for it.

The remote is defined by environment variables only (`RCLONE_CONFIG_<NAME>_*`, with
`RCLONE_CONFIG=/dev/null`), so no rclone config file of the user's is read or written.
Writers upload with boto3, as a cloud training job does: a grown event file is re-uploaded
whole, since objects cannot be appended to.
"""

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from tests.fixtures_servers import free_port, stop, wait_for_port

REMOTE = "s3test"
_buckets = itertools.count()


@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str = "test-key"
    secret_key: str = "test-secret"

    def env(self, base=None, remote=REMOTE):
        """An environment in which `remote:` is this server for rclone."""
        env = dict(os.environ if base is None else base)
        # A CA bundle for https endpoints breaks plain-http S3 in some rclone versions.
        env.pop("AWS_CA_BUNDLE", None)
        prefix = f"RCLONE_CONFIG_{remote.upper()}_"
        env.update({"RCLONE_CONFIG": os.devnull, prefix + "TYPE": "s3",
                    prefix + "PROVIDER": "Other", prefix + "ENDPOINT": self.endpoint,
                    prefix + "ACCESS_KEY_ID": self.access_key,
                    prefix + "SECRET_ACCESS_KEY": self.secret_key,
                    prefix + "REGION": "us-east-1",
                    # What rclone does for AWS itself: listings URL-encoded, so an XML parser
                    # cannot turn a carriage return in a key into a line feed. rclone's
                    # default for provider "Other" is off (not every S3 clone supports it).
                    prefix + "LIST_URL_ENCODE": "true"})
        return env

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def new_bucket(self):
        name = f"bucket-{os.getpid()}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket, key, data):
        """Upload `data` whole (a re-upload replaces the object, as cloud writers do)."""
        self.client().put_object(Bucket=bucket, Key=key, Body=bytes(data))

    def start_recording(self):
        """Have moto record every request it serves from now on (its own request recorder,
        `/moto-api/recorder/`), forgetting earlier ones."""
        self._recorder("reset-recording", "POST")
        self._recorder("start-recording", "POST")

    def recorded(self, bucket, user_agent="rclone/"):
        """Stop recording; [(method, path)] of the recorded requests to `bucket` whose
        User-Agent starts with `user_agent` (rclone's, not the test's own boto3 uploads)."""
        self._recorder("stop-recording", "POST")
        requests = [json.loads(line) for line in
                    self._recorder("download-recording", "GET").splitlines() if line]
        out = []
        for request in requests:
            url = urllib.parse.urlsplit(request["url"])
            agent = {k.lower(): v for k, v in request["headers"].items()}.get("user-agent", "")
            if url.path.split("/")[1:2] == [bucket] and agent.startswith(user_agent):
                out.append((request["method"], url.path))
        return out

    def _recorder(self, action, method):
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}",
                                         method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode("utf-8")


def start_moto(tmp_dir, extra_env=None):
    port = free_port()
    log = open(os.path.join(tmp_dir, f"moto-{port}.log"), "wb")
    env = dict(os.environ, **(extra_env or {}))
    env.pop("AWS_CA_BUNDLE", None)
    # What its request recorder writes (else a file in the current folder).
    env["MOTO_RECORDER_FILEPATH"] = os.path.join(tmp_dir, f"moto-{port}-recording.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    wait_for_port(port, proc, timeout_s=60)
    return proc, log, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto server for the session; each test takes its own bucket (`new_bucket`)."""
    proc, log, endpoint = start_moto(str(tmp_path_factory.mktemp("moto")))
    try:
        yield S3Server(endpoint)
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's environment set up for the `s3test:` remote (rclone reads it)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    return s3_server
