"""rsync.py against a real `rsync --daemon` on 127.0.0.1 (see tests/fixtures_servers.py)."""

import os
import shutil

import pytest

from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.rsync import run_rsync
from tests.events import append_scalars, event_file_name
from tests.fixtures_servers import free_port

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
EVENTS = event_file_name()


def sync(tmp_path, url):
    return run_rsync(RSYNC, Source("train", url), str(tmp_path / "staging"),
                     str(tmp_path / "tmp"))


def test_sync_and_append_through_daemon(tmp_path, rsync_daemon):
    run = os.path.join(rsync_daemon.path, "exp", "run1")
    os.makedirs(run)
    append_scalars(os.path.join(run, EVENTS), range(2000))
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write("{}")

    first = sync(tmp_path, rsync_daemon.url("exp/"))
    assert first.changed == ("run1/config.json", f"run1/{EVENTS}")

    added = append_scalars(os.path.join(run, EVENTS), range(2000, 2002))
    second = sync(tmp_path, rsync_daemon.url("exp/"))
    assert second.changed == (f"run1/{EVENTS}",)
    assert second.bytes_received < len(added) + 2000
    with open(os.path.join(run, EVENTS), "rb") as f:
        assert (tmp_path / "staging" / "run1" / EVENTS).read_bytes() == f.read()


def test_unknown_module_is_named(tmp_path, rsync_daemon):
    with pytest.raises(TransferError) as info:
        sync(tmp_path, f"rsync://127.0.0.1:{rsync_daemon.port}/nomodule/")
    assert "the rsync daemon has no such module" in str(info.value)
    assert "Unknown module" in info.value.details


def test_daemon_not_listening(tmp_path):
    with pytest.raises(TransferError) as info:
        sync(tmp_path, f"rsync://127.0.0.1:{free_port()}/logs/")
    assert "the host is unreachable (connection refused)" in str(info.value)


@pytest.mark.parametrize("subdir", ["", "a/b c/"])
def test_shrunk_file_restaged_through_daemon(tmp_path, rsync_daemon, subdir):
    folder = os.path.join(rsync_daemon.path, subdir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, EVENTS)
    append_scalars(path, range(100))
    assert sync(tmp_path, rsync_daemon.url(subdir)).changed == (EVENTS,)
    with open(path, "wb") as f:
        f.write(b"short")
    result = sync(tmp_path, rsync_daemon.url(subdir))
    assert result.restaged == (EVENTS,)
    assert (tmp_path / "staging" / EVENTS).read_bytes() == b"short"
