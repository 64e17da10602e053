"""rclone sources' API calls: the HTTP requests rclone makes, counted from its own log and
compared with what the storage (moto's real S3 server, with its request recorder) served;
nothing rclone logs at debug level (config values, secret keys included) is kept.
"""

import json
import logging

import pytest

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.config import Source
from tb_rsync_plugin.engine import metrics as metrics_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.transports import rclone_log
from tests.events import scalar_bytes
from tests.fixtures_s3 import REMOTE
from tests.test_cli import tb_rsync
from tests.test_metrics import samples, value
from tests.test_rclone import EVENTS, KEY, RCLONE, failure, silent_remote, sync  # noqa: F401

SECRET = "tb-rsync-test-secret-3f1c9"
FLAG_SECRET = "tb-rsync-test-flag-secret-77d2"


def start_service(tmp_path, sources=(), config_file=None):
    logdir = tmp_path / "logs"
    logdir.mkdir(exist_ok=True)
    config = config_lib.build_config(str(logdir), sources, config_file,
                                     str(tmp_path / "staging"))
    state = state_lib.SyncState(config.sources, config.interval_for)
    service = service_lib.SyncService(config, state, reload_lib.NoReloader())
    metrics = metrics_lib.SyncMetrics(service)
    service.start(timers=False)
    return service, metrics, logdir


def sync_once(service, name):
    """One cycle through the scheduler (its end reaches the metrics); the source's status."""
    service.request([name])
    assert service.wait([name], timeout_s=120)
    return service.state.source(name)


def test_the_requests_shown_are_the_ones_the_storage_served(tmp_path, s3_env):
    """Five syncs of one source (a first fetch, nothing new, a grown event file read by its
    tail, a failure on a deleted bucket, the bucket back): the status, the Prometheus
    counter and `tb-rsync status` all show what moto's recorder saw."""
    bucket = s3_env.new_bucket()
    data = scalar_bytes(range(3), header=True)
    s3_env.put(bucket, KEY, data)
    s3_env.put(bucket, "runs/a/notes.txt", b"lr=0.1")
    local = tmp_path / "local"
    local.mkdir()
    service, metrics, logdir = start_service(
        tmp_path, [f"cloud=rclone:{REMOTE}:{bucket}/runs/", f"disk={local}/"])
    try:
        s3_env.start_recording()
        assert sync_once(service, "cloud")["error"] is None
        assert sync_once(service, "cloud")["last_result"]["files_transferred"] == 0
        data += scalar_bytes(range(3, 6))
        s3_env.put(bucket, KEY, data)
        assert sync_once(service, "cloud")["last_result"]["files_transferred"] == 1
        client = s3_env.client()
        for key in (KEY, "runs/a/notes.txt"):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)
        assert "no such bucket" in sync_once(service, "cloud")["error"]["message"]
        client.create_bucket(Bucket=bucket)
        s3_env.put(bucket, KEY, data)
        status = sync_once(service, "cloud")
        assert status["error"] is None
        served = s3_env.recorded(bucket)
        # One listing per sync, the rest what the changes asked for.
        assert sum(path == f"/{bucket}" for _, path in served) >= 5  # a listing per sync
        assert {"HEAD", "GET"} <= {m for m, path in served if path.endswith(EVENTS)}
        assert status["api_requests"] == {"last_hour": len(served), "syncs": 5}
        assert sync_once(service, "disk")["api_requests"] is None  # rsync: no such figure

        parsed = samples(metrics.registry.collect())
        assert value(parsed, "tb_rsync_source_api_requests_total", source="cloud") == \
            len(served)
        assert not [key for key in parsed if key[0].startswith("tb_rsync_source_api_requests")
                    and ("source", "disk") in key[1]]

        # Another process reads the journal: the cycle that recovered was journalled.
        shown = tb_rsync("status", "--logdir", logdir, "--staging", tmp_path / "staging")
        assert f"{len(served)} rclone request(s) in the last hour (5 sync(s))" in \
            shown.stdout, shown.stdout
        assert shown.stdout.count("rclone request") == 1, shown.stdout  # not for 'disk'
    finally:
        service.stop()


def test_a_flag_that_undoes_server_modtime_shows_one_request_per_object(tmp_path, s3_env):
    """Without --use-server-modtime an S3 listing asks for each object's mtime: the count
    makes what a user flag costs visible."""
    bucket = s3_env.new_bucket()
    for i in range(5):
        s3_env.put(bucket, f"runs/a/file{i}.txt", b"x")
    plain = Source("n", f"rclone:{REMOTE}:{bucket}/runs/")
    sync(tmp_path / "plain", plain)
    s3_env.start_recording()
    assert sync(tmp_path / "plain", plain).api_requests == len(s3_env.recorded(bucket)) == 1
    undone = Source("n", f"rclone:{REMOTE}:{bucket}/runs/",
                    rclone_flags=("--use-server-modtime=false",))
    sync(tmp_path / "undone", undone)
    s3_env.start_recording()
    result = sync(tmp_path / "undone", undone)
    served = s3_env.recorded(bucket)
    assert result.api_requests == len(served) == 1 + 5
    assert sorted(m for m, _ in served) == ["GET"] + ["HEAD"] * 5


@pytest.mark.parametrize("flags, env", [
    (("-q",), {}), (("--log-level=INFO",), {}), (("--dump=bodies",), {}),
    (("--log-file={log}",), {}), ((), {"RCLONE_LOG_LEVEL": "NOTICE"}),
    ((), {"RCLONE_LOG_FILE": "{log}"}),
])
def test_the_users_own_logging_means_unknown_never_zero(tmp_path, s3_env, monkeypatch, flags,
                                                         env):
    """rclone_flags or RCLONE_* variables that set rclone's logging are left alone: the sync
    works (beside -vv, -q and --log-level make rclone refuse to start), a log file gets no
    debug line (no secret), and the requests are unknown, not 0."""
    log = tmp_path / "rclone.log"
    monkeypatch.setenv(f"RCLONE_CONFIG_{REMOTE.upper()}_SECRET_ACCESS_KEY", SECRET)
    for key, text in env.items():
        monkeypatch.setenv(key, text.format(log=log))
    bucket = s3_env.new_bucket()
    s3_env.put(bucket, KEY, scalar_bytes(range(3), header=True))
    config_file = tmp_path / "sources.toml"
    config_file.write_text(
        f'[[source]]\nname = "cloud"\nsource = "rclone:{REMOTE}:{bucket}/runs/"\n'
        f"rclone_flags = {json.dumps([f.format(log=log) for f in flags])}\n")
    service, metrics, _ = start_service(tmp_path, config_file=str(config_file))
    try:
        status = sync_once(service, "cloud")
        assert status["error"] is None, status["error"]
        assert status["api_requests"] == {"last_hour": None, "syncs": 1}
        assert not [key for key in samples(metrics.registry.collect())
                    if key[0].startswith("tb_rsync_source_api_requests")]
    finally:
        service.stop()
    assert not log.exists() or SECRET not in log.read_text()


def test_no_debug_line_reaches_a_failed_syncs_details_or_the_log(tmp_path, s3_env,
                                                                  monkeypatch, caplog):
    """rclone at -vv logs the config it reads from the environment, secret keys included,
    both before its JSON logger starts (plain text) and after; a failing sync's details,
    the state and tb-rsync's log keep rclone's error and none of that."""
    monkeypatch.setenv(f"RCLONE_CONFIG_{REMOTE.upper()}_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("RCLONE_S3_SECRET_ACCESS_KEY", FLAG_SECRET)  # the plain-text one
    caplog.set_level(logging.DEBUG)
    service, _, _ = start_service(tmp_path, [f"cloud=rclone:{REMOTE}:no-such-bucket/runs/"])
    try:
        status = sync_once(service, "cloud")
    finally:
        service.stop()
    error = status["error"]
    assert "directory not found" in error["details"]  # rclone's own error line is kept
    assert "--dump=headers" in error["details"]  # the command: the count was on
    assert status["api_requests"]["last_hour"] >= 1
    shown = json.dumps(status) + caplog.text
    for leaked in (SECRET, FLAG_SECRET, "HTTP REQUEST", "DEBUG :", '"level":"debug"',
                   "Authorization"):
        assert leaked not in shown


def test_a_sync_killed_mid_request_keeps_no_debug_line(tmp_path, silent_remote, monkeypatch):
    """The deadline kills rclone while its request hangs: the details' stderr tail has no
    debug line, and the request it sent is counted."""
    monkeypatch.setenv(f"RCLONE_CONFIG_{REMOTE.upper()}_SECRET_ACCESS_KEY", SECRET)
    error = failure(tmp_path, Source("n", f"rclone:{REMOTE}:{silent_remote}/", timeout_s=2))
    assert "timed out" in str(error)
    assert error.api_requests >= 1
    for leaked in (SECRET, "HTTP REQUEST", "DEBUG :", '"level":"debug"'):
        assert leaked not in error.details


def test_rclone_log_lines_cut_anywhere_never_keep_a_debug_message(tmp_path, s3_env,
                                                                   monkeypatch):
    """Real rclone stderr at -vv (config values with the secret, request dumps, a notice):
    each line cut at every offset (rclone killed while writing it) is dropped or kept
    whole; what is kept reads as rclone's text log."""
    import subprocess
    monkeypatch.setenv(f"RCLONE_CONFIG_{REMOTE.upper()}_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("RCLONE_S3_SECRET_ACCESS_KEY", FLAG_SECRET)
    bucket = s3_env.new_bucket()
    s3_env.put(bucket, "f.txt", b"x")
    err = subprocess.run([RCLONE, "copy", *rclone_log.COUNTING_FLAGS, "--stats=1ms",
                          "--stats-one-line", "--stats-log-level=NOTICE",
                          f"{REMOTE}:{bucket}", str(tmp_path / "out")],
                         capture_output=True, text=True, check=True).stderr
    lines = err.splitlines()
    assert SECRET in err and FLAG_SECRET in err and any(line.startswith('{"level":"notice"') or
                                 line.startswith('{"level":"warning"') for line in lines)
    reader = rclone_log.StderrReader(counting=True)
    kept = [out for line in lines for out in reader.lines(line)]
    assert reader.requests == err.count("HTTP REQUEST") >= 1
    assert any("NOTICE: " in line and "100%" in line for line in kept), kept
    for line in lines:
        for cut in range(len(line) + 1):
            for out in rclone_log.StderrReader(counting=True).lines(line[:cut]):
                for leaked in (SECRET, FLAG_SECRET, "HTTP REQUEST"):
                    assert leaked not in out, line[:cut]
