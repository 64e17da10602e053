"""rclone sources: the real rclone binary against moto's real S3 server on 127.0.0.1.

A writer re-uploads a grown event file whole (objects cannot be appended to); a sync fetches
only the new tail with a ranged read, a shrunk or rewritten object whole, and the publisher
appends whole records, as for rsync sources.
"""

import json
import os
import shutil
import socket
import sys
import threading

import pytest

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import config_file as config_file_lib
from tb_rsync_plugin.transports import rclone as rclone_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.transports import rsync as rsync_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.transports import transport
from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import ConfigError, TransferError
from tests.events import event_file_name, loaded_events, record_ends, scalar_bytes
from tests.fixtures_s3 import REMOTE, start_moto
from tests.fixtures_servers import stop
from tests.fixtures_tensorboard import wait_until
from tests.processes import processes_mentioning

RCLONE = shutil.which("rclone")
EVENTS = event_file_name()
KEY = f"runs/a/{EVENTS}"


def rclone_wrapper(tmp_path):
    """rclone, logging each command name (lsjson, cat, copy) to a file before running it
    (in a folder of its own, to be put first on PATH)."""
    log = tmp_path / "rclone-calls"
    path = tmp_path / "wrapper-bin" / "rclone"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    f"os.execv({RCLONE!r}, [{RCLONE!r}] + sys.argv[1:])\n")
    path.chmod(0o755)

    def calls(full=False):
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) if full else json.loads(line)[0] for line in lines]
    return str(path), calls


def sync(tmp_path, source, rclone=RCLONE, on_progress=None):
    return rclone_lib.run_rclone(rclone, source, str(tmp_path / "staging"), str(tmp_path / "tmp"),
                                 on_progress=on_progress)


def staged(tmp_path, rel):
    return (tmp_path / "staging" / rel).read_bytes()


def test_a_grown_object_is_fetched_by_a_ranged_read_of_its_tail(tmp_path, s3_env):
    bucket = s3_env.new_bucket()
    data = scalar_bytes(range(3), header=True)
    s3_env.put(bucket, KEY, data)
    s3_env.put(bucket, "runs/a/config.json", b'{"lr": 0.1}')
    source = Source("n", f"rclone:{REMOTE}:{bucket}/runs/")
    rclone, calls = rclone_wrapper(tmp_path)

    first = sync(tmp_path, source, rclone)
    assert first.changed == ("a/config.json", f"a/{EVENTS}") and first.restaged == ()
    assert staged(tmp_path, f"a/{EVENTS}") == data

    # A 100 kB object grown by a few records: re-uploaded whole, fetched by its tail only.
    data += scalar_bytes(range(3, 3000))
    s3_env.put(bucket, KEY, data)
    grown = data + scalar_bytes(range(3000, 3010))
    s3_env.put(bucket, KEY, grown)
    before, progress = len(calls()), []
    second = sync(tmp_path, source, rclone, on_progress=progress.append)
    assert second.changed == (f"a/{EVENTS}",) and second.restaged == ()
    assert progress[-1].phase == "events" and progress[-1].percent == 100
    assert progress[-1].bytes_done == second.bytes_received
    assert second.bytes_received == len(grown) - len(scalar_bytes(range(3), header=True))
    assert staged(tmp_path, f"a/{EVENTS}") == grown
    assert calls()[before:] == ["lsjson", "cat"]

    s3_env.put(bucket, KEY, grown + scalar_bytes(range(3010, 3012)))
    third = sync(tmp_path, source, rclone)
    assert third.bytes_received == len(scalar_bytes(range(3010, 3012)))
    assert staged(tmp_path, f"a/{EVENTS}") == grown + scalar_bytes(range(3010, 3012))

    # Nothing changed: one listing, nothing fetched, nothing left in tmp/.
    before = len(calls())
    assert sync(tmp_path, source, rclone).changed == ()
    assert calls()[before:] == ["lsjson"]
    assert os.listdir(tmp_path / "tmp") == []


def test_a_shrunk_object_and_a_changed_file_are_fetched_whole(tmp_path, s3_env):
    bucket = s3_env.new_bucket()
    s3_env.put(bucket, KEY, scalar_bytes(range(10), header=True))
    s3_env.put(bucket, "runs/a/notes.txt", b"one")
    source = Source("n", f"rclone:{REMOTE}:{bucket}/runs")
    sync(tmp_path, source)

    shorter = scalar_bytes(range(4), header=True, wall_time0=1_800_000_000.0)
    s3_env.put(bucket, KEY, shorter)
    s3_env.put(bucket, "runs/a/notes.txt", b"two, longer")
    progress = []
    result = sync(tmp_path, source, on_progress=progress.append)
    assert (progress[-1].phase, progress[-1].percent) == ("files", 100)  # rclone's own stats
    assert result.changed == (f"a/{EVENTS}", "a/notes.txt")
    assert result.restaged == (f"a/{EVENTS}",)
    assert staged(tmp_path, f"a/{EVENTS}") == shorter
    assert staged(tmp_path, "a/notes.txt") == b"two, longer"
    assert result.bytes_received == len(shorter) + len(b"two, longer")
    assert os.listdir(tmp_path / "tmp") == []


def test_object_names_never_lead_out_of_staging(tmp_path, s3_env):
    """Object keys are not paths: `runs//x` lists as `/x` (skipped with a warning), and rclone
    itself encodes a `..` segment (as full-width dots), so nothing lands outside staging."""
    bucket = s3_env.new_bucket()
    for key in ["runs//double.txt", "runs/../escape.txt", "runs/ok.txt"]:
        s3_env.put(bucket, key, b"x")
    result = sync(tmp_path, Source("n", f"rclone:{REMOTE}:{bucket}/runs/"))
    assert "ok.txt" in result.changed
    assert any("1 object name(s) at the source cannot be a file path (first: '/double.txt')"
               in w for w in result.warnings)
    inside = tmp_path / "staging"
    for folder, _, names in os.walk(tmp_path):
        for name in names:
            path = os.path.join(folder, name)
            assert path.startswith(str(inside) + os.sep) or not path.endswith(".txt"), path


def test_a_missing_rclone_shows_in_the_service_banner_only_with_rclone_sources(
        tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("rsync"), bin_dir / "rsync")
    monkeypatch.setenv("PATH", str(bin_dir))
    (tmp_path / "remote").mkdir()
    for sources, banner in [((f"{tmp_path / 'remote'}/",), None),
                            ((f"{tmp_path / 'remote'}/", "rclone:s3:bucket/"),
                             "rclone is not installed or not on PATH")]:
        service, _ = make_service(tmp_path, sources[0],
                                  [f"m{i}={s}" for i, s in enumerate(sources[1:])])
        try:
            shown = service.state.snapshot()["rsync_error"]
            assert shown == banner if banner is None else shown.startswith(banner)
        finally:
            service.stop()


def make_service(tmp_path, source_text, extra=()):
    logdir = tmp_path / "logs"
    logdir.mkdir(exist_ok=True)
    config = config_lib.build_config(str(logdir), [f"n={source_text}", *extra], None,
                                     str(tmp_path / "staging"))
    state = state_lib.SyncState(config.sources, config.interval_for)
    return service_lib.SyncService(config, state, reload_lib.NoReloader()), logdir


def test_an_object_rewritten_longer_is_republished_through_the_rewrite_path(tmp_path, s3_env,
                                                                           monkeypatch):
    """The tail of a longer rewrite lands on the old prefix; the publisher sees that the new
    bytes do not continue its records and asks `transport.refetch` for the whole object."""
    rclone, calls = rclone_wrapper(tmp_path)
    monkeypatch.setenv("PATH", os.path.dirname(rclone) + os.pathsep + os.environ["PATH"])
    bucket = s3_env.new_bucket()
    s3_env.put(bucket, KEY, scalar_bytes(range(3), header=True))
    service, logdir = make_service(tmp_path, f"rclone:{REMOTE}:{bucket}/runs/")
    try:
        service.run_cycle("n")
        published = logdir / "n" / "a" / EVENTS
        assert len(loaded_events(str(published))) == 4

        rewritten = scalar_bytes(range(50), header=True, tag="acc", wall_time0=1_800_000_000.0)
        s3_env.put(bucket, KEY, rewritten)
        before = len(calls())
        service.run_cycle("n")
        # The whole fetch lists again first, for the object's rclone name and hashes.
        assert calls()[before:] == ["lsjson", "cat", "lsjson", "copy"]
        run = service.state.snapshot()["runs"][0]
        assert published.read_bytes() == rewritten
        assert run["rewritten_unix_s"] is not None
        assert os.listdir(tmp_path / "staging" / "quarantine" / "n")

        # Publishing left the staged copies as listed (a released prefix keeps its mtime):
        # the next sync without changes is one listing.
        before = len(calls())
        service.run_cycle("n")
        assert calls()[before:] == ["lsjson"]
    finally:
        service.stop()


@pytest.mark.parametrize("rules", [
    {"exclude": ["ckpt"]},
    {"include": ["*tfevents*"]},
    {"include": ["*tfevents*"], "exclude": ["sub/"]},
    {"include": ["run1/***"], "exclude": ["*.txt"]},
    {"include": ["*tfevents*", "*.txt"], "exclude": ["*"]},
    {"exclude": ["/top.txt", "run2"]},
])
def test_filters_select_the_same_files_as_for_rsync(tmp_path, rules):
    """Excludes win, includes mean "only these": the same tree through rsync and rclone
    (a local folder as rclone's remote) stages the same files."""
    tree = tmp_path / "tree"
    for rel in ["run1/" + EVENTS, "run1/sub/" + EVENTS, "run1/x.txt", "ckpt/model.bin",
                "run2/" + EVENTS, "run2/ckpt/w.bin", "top.txt"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"x")
    patterns = {k: tuple(v) for k, v in rules.items()}
    by_rsync = rsync_lib.run_rsync(shutil.which("rsync"), Source("n", f"{tree}/", **patterns),
                                   str(tmp_path / "s1"), str(tmp_path / "t1")).changed
    by_rclone = rclone_lib.run_rclone(RCLONE, Source("n", f"rclone:{tree}/", **patterns),
                                      str(tmp_path / "s2"), str(tmp_path / "t2")).changed
    assert by_rclone == by_rsync and by_rclone


def failure(tmp_path, source, rclone=RCLONE):
    with pytest.raises(TransferError) as info:
        sync(tmp_path, source, rclone)
    error = info.value
    assert str(error).startswith(f"Sync of '{source.name}' ")
    assert "command: " in error.details and "exit code: " in error.details
    return error


def test_an_unknown_remote_is_a_sentence(tmp_path, s3_env):
    error = failure(tmp_path, Source("n", "rclone:nosuchremote:bucket/runs/"))
    assert "rclone has no remote named 'nosuchremote'; list them with 'rclone listremotes'" \
        in str(error)


def test_a_missing_bucket_is_a_sentence(tmp_path, s3_env):
    error = failure(tmp_path, Source("n", f"rclone:{REMOTE}:no-such-bucket/runs/"))
    assert "there is no such bucket or folder at the source; check the bucket name" in str(error)


def test_refused_credentials_are_a_sentence(tmp_path, monkeypatch):
    """moto checks credentials when asked to (INITIAL_NO_AUTH_ACTION_COUNT): these keys are
    unknown to it, so S3 answers 403 as it would for a wrong key."""
    proc, log, endpoint = start_moto(str(tmp_path), {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        from tests.fixtures_s3 import S3Server
        for key, value in S3Server(endpoint, "AKIAWRONGKEY", "wrong").env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        error = failure(tmp_path, Source("n", f"rclone:{REMOTE}:bucket/runs/"))
        assert "the storage refused rclone's credentials; check the keys in rclone's config " \
               f"or environment ('rclone lsd {REMOTE}:' must work)" in str(error)
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def silent_remote(s3_server, monkeypatch):
    """The `s3test:` remote pointed at a server that accepts connections and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = s3_server.env()
        env[f"RCLONE_CONFIG_{REMOTE.upper()}_ENDPOINT"] = \
            f"http://127.0.0.1:{silent.getsockname()[1]}"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        yield f"silent-{silent.getsockname()[1]}"  # a bucket name only this test uses


def test_a_silent_endpoint_times_out_with_a_sentence(tmp_path, silent_remote):
    """The whole run's deadline stops rclone (its process group) and says so."""
    error = failure(tmp_path, Source("n", f"rclone:{REMOTE}:{silent_remote}/", timeout_s=2))
    assert "timed out after 2 s; the source is slow or unreachable" in str(error)
    assert processes_mentioning(silent_remote) == []


def test_a_cancelled_sync_stops_rclone(tmp_path, silent_remote):
    cancel = threading.Event()
    source = Source("n", f"rclone:{REMOTE}:{silent_remote}/")
    threading.Thread(target=lambda: wait_until(
        lambda: processes_mentioning(silent_remote), 30, 0.05) and cancel.set()).start()
    with pytest.raises(TransferError) as info:
        rclone_lib.run_rclone(RCLONE, source, str(tmp_path / "staging"), str(tmp_path / "tmp"),
                              cancel=cancel)
    assert str(info.value) == "Sync of 'n' was cancelled."
    assert processes_mentioning(silent_remote) == []


def test_rclone_config_bwlimit_and_flags_reach_rclone(tmp_path, s3_server, monkeypatch):
    """A remote defined only in the file named by `rclone_config` (nothing in the
    environment); `bwlimit` becomes rclone's --bwlimit in KiB/s; `rclone_flags` go last."""
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    bucket = s3_server.new_bucket()
    s3_server.put(bucket, KEY, scalar_bytes(range(3), header=True))
    conf = tmp_path / "team.conf"
    conf.write_text(f"[team]\ntype = s3\nprovider = Other\nendpoint = {s3_server.endpoint}\n"
                    f"access_key_id = {s3_server.access_key}\n"
                    f"secret_access_key = {s3_server.secret_key}\nregion = us-east-1\n")
    toml = tmp_path / "sources.toml"
    toml.write_text(f'[[source]]\nname = "n"\nsource = "rclone:team:{bucket}/runs/"\n'
                    f'rclone_config = "{conf}"\nbwlimit = 50000\n'
                    f'rclone_flags = ["--s3-list-chunk=500"]\n')
    (source,) = config_file_lib.load_config_file(str(toml))
    rclone, calls = rclone_wrapper(tmp_path)
    assert sync(tmp_path, source, rclone).changed == (f"a/{EVENTS}",)
    assert calls() == ["backend", "lsjson", "copy"]  # backend features: cheap hashes?
    for argv in calls(full=True):
        assert f"--config={conf}" in argv and "--bwlimit=50000K" in argv
        assert argv[-1] == "--s3-list-chunk=500"

    bad = Source("n", source.source, rclone_config=str(conf), rclone_flags=("--no-such-flag",))
    error = failure(tmp_path, bad)
    assert "rclone rejected a flag; check 'rclone_flags'" in str(error)


def test_a_missing_rclone_is_a_sentence_only_for_rclone_sources(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("rsync"), bin_dir / "rsync")
    monkeypatch.setenv("PATH", str(bin_dir))
    rsync_only = [Source("a", f"{tmp_path}/")]
    transport.find_tools(rsync_only)  # no rclone source: rclone is not asked for
    with pytest.raises(ConfigError) as info:
        transport.find_tools(rsync_only + [Source("b", "rclone:s3:bucket/")])
    assert str(info.value).startswith("rclone is not installed or not on PATH, and rclone: "
                                      "sources need it; install it (for example ")
    with pytest.raises(ConfigError):
        transport.fetch(Source("b", "rclone:s3:bucket/"), str(tmp_path / "s"),
                        str(tmp_path / "t"))


@pytest.mark.parametrize("table, message", [
    ({"source": "rclone:"}, "names no rclone remote; write it like 'rclone:s3:my-bucket/runs/'"),
    ({"source": "rclone:s3:b/", "ssh": "ssh -p 2"}, "is an rclone remote; remove 'ssh'"),
    ({"source": "host:dir/", "rclone_flags": ["--fast-list"]},
     "'rclone_config' and 'rclone_flags' only apply to rclone sources"),
    ({"source": "rclone:s3:b/", "rclone_flags": "--fast-list"},
     "'rclone_flags' must be a list of rclone flags, each with its value in the same string"),
    ({"source": "rclone:s3:b/", "rclone_flags": ["--s3-chunk-size", "64M"]},
     "'rclone_flags' must be a list of rclone flags"),
    ({"source": "rclone:s3:b/", "rclone_config": "/nonexistent/rclone.conf"},
     "rclone config file '/nonexistent/rclone.conf' does not exist; check 'rclone_config'"),
])
def test_rclone_options_are_checked(tmp_path, table, message):
    path = tmp_path / "sources.toml"
    lines = ["[[source]]", 'name = "n"']
    for key, value in table.items():
        lines.append(f"{key} = " + (f'"{value}"' if isinstance(value, str) else
                                     "[" + ", ".join(f'"{v}"' for v in value) + "]"))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        config_file_lib.load_config_file(str(path))
    assert message in str(info.value)


def test_an_rclone_source_is_neither_local_nor_ssh_nor_a_daemon(tmp_path):
    conf = tmp_path / "rclone.conf"
    conf.write_text("")
    for text in ["rclone:s3:bucket/runs/", "rclone::s3,provider=Other:bucket/", "rclone:/data/"]:
        source = config_file_lib.parse_source_pair(f"n={text}")
        assert source.is_rclone and not (source.is_local or source.is_remote_shell
                                         or source.is_daemon)
    path = tmp_path / "sources.toml"
    path.write_text(f'[[source]]\nname = "n"\nsource = "rclone:s3:b/"\nbwlimit = 100\n'
                    f'rclone_config = "{conf}"\nrclone_flags = ["--fast-list"]\n')
    (source,) = config_file_lib.load_config_file(str(path))
    assert (source.rclone_config, source.rclone_flags) == (str(conf), ("--fast-list",))
    assert not config_file_lib.parse_source_pair("n=s3:bucket/").is_rclone  # an ssh host:dir


@pytest.mark.parametrize("loader", ["--load_fast=false", "--load_fast=true"])
def test_points_written_to_s3_appear_in_tensorboard(tmp_path, s3_server, tensorboard_server,
                                                    monkeypatch, loader):
    """tensorboardX writes straight to the bucket (each flush re-uploads the whole grown
    file through boto3); TensorBoard, started with the rclone remote in its environment as a
    user's would be, shows every point."""
    from tensorboardX import SummaryWriter

    from tests.test_tensorboard_e2e import steps, sync_and_wait
    for key, value in {"S3_ENDPOINT": s3_server.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": s3_server.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    bucket = s3_server.new_bucket()
    writer = SummaryWriter(f"s3://{bucket}/runs/a")

    def uploaded(records):
        """tensorboardX's flush() uploads what its writer thread has written so far, which
        may not be every queued event yet: flush until the object holds `records`."""
        def done():
            writer.flush()
            (key,) = [o["Key"] for o in s3_server.client().list_objects_v2(
                Bucket=bucket)["Contents"]]
            body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            return len(record_ends(body)) == records
        wait_until(done, 30, message=f"tensorboardX to upload {records} records")

    try:
        for step in range(3):
            writer.add_scalar("loss", 0.5 * step, step)
        uploaded(1 + 3)
        logdir = tmp_path / "logs"
        logdir.mkdir()
        tb = tensorboard_server(logdir, "--rsync_source",
                                f"cloud=rclone:{REMOTE}:{bucket}/runs/",
                                "--rsync_staging", tmp_path / "staging", loader,
                                "--reload_interval", "1", env=s3_server.env())
        status = sync_and_wait(tb)
        assert status["sources"][0]["error"] is None, status["sources"][0]
        wait_until(lambda: steps(tb, "cloud/a") == [0, 1, 2], 30, message="the first 3 points")
        for step in range(3, 6):
            writer.add_scalar("loss", 0.5 * step, step)
        uploaded(1 + 6)
        status = sync_and_wait(tb)
        assert status["sources"][0]["error"] is None, status["sources"][0]
        wait_until(lambda: steps(tb, "cloud/a") == list(range(6)), 30, message="all 6 points")
    finally:
        writer.close()


def test_syncs_leave_no_pipe_open_for_the_garbage_collector(tmp_path, s3_env):
    """rclone's pipes are closed when it ends, as rsync's are (tests/test_rsync_local.py)."""
    import gc
    bucket = s3_env.new_bucket()
    s3_env.put(bucket, KEY, scalar_bytes(range(3), header=True))
    source = Source("n", f"rclone:{REMOTE}:{bucket}/runs/")
    sync(tmp_path, source)
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for i in range(3):
            s3_env.put(bucket, KEY, scalar_bytes(range(4 + i), header=True))
            sync(tmp_path, source)  # a listing, then a ranged read of the tail
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        gc.enable()


def test_an_object_replaced_at_the_same_size_within_its_listed_second_is_fetched(tmp_path,
                                                                               s3_env):
    """S3 lists whole seconds: a `notes.txt` and an event file replaced by other content of
    the same size within the second of the sync that fetched them list exactly as before.
    The hashes the listing carries (S3's ETag) tell; the replacement is published (the
    event file as a rewrite). Uploads start just after a second begins, and the case is
    tried again until both versions did share their second: only then is it this case."""
    import time
    new = scalar_bytes(range(5), header=True, wall_time0=1_800_000_000.0)
    for attempt in range(20):
        bucket = s3_env.new_bucket()
        client = s3_env.client()

        def second_of(key):
            return client.head_object(Bucket=bucket, Key=key)["LastModified"]

        time.sleep(1 - time.time() % 1)
        s3_env.put(bucket, KEY, scalar_bytes(range(5), header=True))
        s3_env.put(bucket, "runs/a/notes.txt", b"one")
        (tmp_path / str(attempt)).mkdir()
        service, logdir = make_service(tmp_path / str(attempt),
                                       f"rclone:{REMOTE}:{bucket}/runs/")
        try:
            service.run_cycle("n")
            first = (second_of(KEY), second_of("runs/a/notes.txt"))
            s3_env.put(bucket, KEY, new)
            s3_env.put(bucket, "runs/a/notes.txt", b"two")
            if (second_of(KEY), second_of("runs/a/notes.txt")) != first:
                continue  # the second passed: not the case under test
            for _ in range(2):  # and every later sync agrees
                service.run_cycle("n")
                assert (logdir / "n" / "a" / "notes.txt").read_bytes() == b"two"
                assert (logdir / "n" / "a" / EVENTS).read_bytes() == new
            assert service.state.snapshot()["runs"][0]["rewritten_unix_s"] is not None
            return
        finally:
            service.stop()
    pytest.fail("no attempt landed both versions of the objects in one second")


def test_object_names_with_a_tab_or_a_carriage_return_are_published(tmp_path, s3_env):
    """rclone lists control characters as symbols (`␉`) and writes the raw ones; the staged
    and published names are the raw ones, and nothing is reported vanished."""
    bucket = s3_env.new_bucket()
    names = ["a/tab\there.txt", "a/cr\rhere.txt", f"run\t2/{EVENTS}", "a/lit\u2409.txt"]
    for rel in names:
        s3_env.put(bucket, "runs/" + rel,
                   scalar_bytes(range(3), header=True) if "tfevents" in rel else rel.encode())
    service, logdir = make_service(tmp_path, f"rclone:{REMOTE}:{bucket}/runs/")
    try:
        for _ in range(2):
            service.run_cycle("n")
            source = service.state.snapshot()["sources"][0]
            assert source["error"] is None and not source["warnings"], source
        for rel in names:
            published = logdir / "n" / rel
            assert published.read_bytes() == (scalar_bytes(range(3), header=True)
                                              if "tfevents" in rel else rel.encode()), rel
    finally:
        service.stop()


def test_other_tools_temporaries_in_a_bucket_are_not_fetched(tmp_path, s3_env):
    bucket = s3_env.new_bucket()
    for key in ["runs/a/.model.ckpt.Ab12Cd", "runs/a/model.ckpt.partial",
                "runs/a/.syncthing.model.ckpt.tmp", "runs/a/model.ckpt"]:
        s3_env.put(bucket, key, b"x")
    result = sync(tmp_path, Source("n", f"rclone:{REMOTE}:{bucket}/runs/"))
    assert result.changed == ("a/model.ckpt",)
