"""rsync.py through a real sshd on 127.0.0.1 (see tests/fixtures_servers.py)."""

import os
import shutil
import time

import pytest

from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.rsync import run_rsync
from tests.events import append_scalars, event_file_name
from tests.fixtures_servers import free_port, keygen

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
EVENTS = event_file_name()


def sync(tmp_path, source, ssh):
    return run_rsync(RSYNC, Source("train", source, ssh=ssh), str(tmp_path / "staging"),
                     str(tmp_path / "tmp"))


def failure(tmp_path, source, ssh, within_s):
    started = time.monotonic()
    with pytest.raises(TransferError) as info:
        sync(tmp_path, source, ssh)
    assert time.monotonic() - started < within_s, info.value.details
    return info.value


def test_full_sync_and_append_over_ssh(tmp_path, sshd_server):
    src = tmp_path / "remote logs"
    (src / "run 1").mkdir(parents=True)
    append_scalars(src / "run 1" / EVENTS, range(5000))
    (src / "run 1" / "ckpt.bin").write_bytes(os.urandom(50_000))
    source = f"{sshd_server.host}:{src}/"

    first = sync(tmp_path, source, sshd_server.ssh_command)
    assert first.changed == ("run 1/ckpt.bin", f"run 1/{EVENTS}")
    staged = tmp_path / "staging" / "run 1" / EVENTS
    inode = os.stat(staged).st_ino

    added = append_scalars(src / "run 1" / EVENTS, range(5000, 5003))
    second = sync(tmp_path, source, sshd_server.ssh_command)

    assert second.changed == (f"run 1/{EVENTS}",)
    assert second.bytes_received < len(added) + 2000
    assert staged.read_bytes() == (src / "run 1" / EVENTS).read_bytes()
    assert os.stat(staged).st_ino == inode
    assert sync(tmp_path, source, sshd_server.ssh_command).changed == ()


def test_compress_moves_fewer_bytes_and_the_same_file(tmp_path, sshd_server):
    """`compress = true` (rsync -z, zstd negotiated by both rsyncs here): scalar records
    cross the wire in a fraction of their size and arrive unchanged."""
    src = tmp_path / "remote"
    (src / "run").mkdir(parents=True)
    append_scalars(src / "run" / EVENTS, range(20000))
    size = (src / "run" / EVENTS).stat().st_size
    result = {}
    for compress in (False, True):
        source = Source("train", f"{sshd_server.host}:{src}/", ssh=sshd_server.ssh_command,
                        compress=compress)
        staging = tmp_path / f"staging-{compress}"
        result[compress] = run_rsync(RSYNC, source, str(staging), str(tmp_path / "tmp"))
        assert (staging / "run" / EVENTS).read_bytes() == (src / "run" / EVENTS).read_bytes()
    assert result[False].bytes_received >= size
    assert result[True].bytes_received < size / 3


def test_missing_remote_folder(tmp_path, sshd_server):
    error = failure(tmp_path, f"127.0.0.1:{tmp_path}/nope/", sshd_server.ssh_command, 10)
    assert "no such directory at the source" in str(error)


def test_wrong_port_fails_fast_as_refused(tmp_path, sshd_server):
    ssh = sshd_server.ssh_command.replace(f"-p {sshd_server.port}", f"-p {free_port()}")
    error = failure(tmp_path, f"127.0.0.1:{tmp_path}/", ssh, 5)
    assert str(error).startswith(f"Sync of 'train' from '127.0.0.1:{tmp_path}/' failed: "
                                 "the host is unreachable (connection refused)")
    assert "Connection refused" in error.details and "command: " in error.details


def test_refused_key_fails_fast_with_auth_message(tmp_path, sshd_server):
    other_key = keygen(tmp_path / "other_key")
    error = failure(tmp_path, f"127.0.0.1:{tmp_path}/", sshd_server.command(key=other_key), 10)
    assert "ssh could not log in non-interactively; set up a key or agent" in str(error)


def test_password_only_server_does_not_hang(tmp_path, password_only_sshd):
    # Even a user ssh command asking for BatchMode=no cannot make tb-rsync wait for a prompt.
    ssh = password_only_sshd.command() + " -o BatchMode=no"
    error = failure(tmp_path, f"127.0.0.1:{tmp_path}/", ssh, 15)
    assert "ssh could not log in non-interactively" in str(error)


@pytest.mark.parametrize("strict", ["yes", None])
def test_unknown_host_key_fails_fast(tmp_path, sshd_server, strict):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    error = failure(tmp_path, f"127.0.0.1:{tmp_path}/",
                    sshd_server.command(known_hosts=empty, strict=strict), 10)
    assert "host key" in str(error)
    assert empty.read_text() == ""


def test_unresolvable_host_name(tmp_path, sshd_server):
    error = failure(tmp_path, "no-such-host.invalid:/logs/", sshd_server.ssh_command, 15)
    assert "could not be resolved" in str(error)


def test_relative_remote_path_appends(tmp_path, sshd_server):
    src = tmp_path / "src"
    src.mkdir()
    append_scalars(src / EVENTS, range(100))
    source = f"127.0.0.1:..{src}/"  # relative to root's home folder
    assert sync(tmp_path, source, sshd_server.ssh_command).changed == (EVENTS,)
    append_scalars(src / EVENTS, range(100, 110))
    assert sync(tmp_path, source, sshd_server.ssh_command).changed == (EVENTS,)
    assert (tmp_path / "staging" / EVENTS).read_bytes() == (src / EVENTS).read_bytes()
