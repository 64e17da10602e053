"""Sources behind a remote shell that is not ssh (`kubectl exec`, `docker exec`).

The stand-ins below behave like those commands as rsync sees them: they check their own
arguments the way kubectl and docker parse them, drop the pod or container, and run the rest
here, with the PATH of the "image" (which may have no rsync).
"""

import os
import shutil

import pytest

from tb_rsync_plugin.config import Source
from tb_rsync_plugin.errors import TransferError
from tb_rsync_plugin.transports.rsync import run_rsync
from tests.events import append_scalars, event_file_name

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
EVENTS = event_file_name()
IMAGE_WITH_RSYNC = os.path.dirname(RSYNC or "/usr/bin/rsync") + ":/usr/bin:/bin"
OCI_NOT_FOUND = ('echo "error: Internal error occurred: error executing command in container: '
                 'OCI runtime exec failed: exec failed: unable to start container process: '
                 'exec: \\"$1\\": executable file not found in \\$PATH: unknown" >&2; exit 1')


def fake_kubectl(tmp_path, image_path, missing=None):
    """`kubectl exec -i POD -- COMMAND...`; `missing`: what the runtime prints without the
    command (None: the image's shell says it)."""
    path = tmp_path / "kubectl"
    not_found = f'command -v "$1" >/dev/null || {{ {missing}; }}\n' if missing else ""
    path.write_text(
        "#!/bin/sh\n"
        '[ "$1" = exec ] && [ "$2" = -i ] && [ "$4" = -- ] || '
        '{ echo "kubectl: bad arguments: $*" >&2; exit 2; }\n'
        f'echo "$3" >> {tmp_path / "pods.log"}\n'
        "shift 4\n"
        f"PATH={image_path}\n"
        + not_found +
        'exec "$@"\n')
    path.chmod(0o755)
    return str(path)


def fake_docker(tmp_path):
    """`docker exec -i CONTAINER COMMAND...`."""
    path = tmp_path / "docker"
    path.write_text(
        "#!/bin/sh\n"
        '[ "$1" = exec ] && [ "$2" = -i ] || { echo "docker: bad arguments: $*" >&2; exit 2; }\n'
        f'echo "$3" >> {tmp_path / "pods.log"}\n'
        "shift 3\n"
        f"PATH={IMAGE_WITH_RSYNC}\n"
        'exec "$@"\n')
    path.chmod(0o755)
    return str(path)


def remote(tmp_path):
    src = tmp_path / "in the pod"
    (src / "run").mkdir(parents=True)
    append_scalars(src / "run" / EVENTS, range(100))
    return src


def sync(tmp_path, source):
    return run_rsync(RSYNC, source, str(tmp_path / "staging"), str(tmp_path / "tmp"))


@pytest.mark.parametrize("pod", ["{host}", "deploy/{host}"])
def test_kubectl_exec_source_syncs_and_appends(tmp_path, pod):
    src = remote(tmp_path)
    source = Source("pod", f"trainer-0:{src}/",
                    rsh=f"{fake_kubectl(tmp_path, IMAGE_WITH_RSYNC)} exec -i {pod} --")
    assert sync(tmp_path, source).changed == (f"run/{EVENTS}",)
    added = append_scalars(src / "run" / EVENTS, range(100, 103))
    second = sync(tmp_path, source)
    assert second.changed == (f"run/{EVENTS}",)
    assert second.bytes_received < len(added) + 2000
    staged = tmp_path / "staging" / "run" / EVENTS
    assert staged.read_bytes() == (src / "run" / EVENTS).read_bytes()
    pods = set((tmp_path / "pods.log").read_text().split())
    # The pod went before `--`, rsync's command after it.
    assert pods == {pod.replace("{host}", "trainer-0")}


def test_docker_exec_source_gets_the_container_appended(tmp_path):
    src = remote(tmp_path)
    source = Source("box", f"my-container:{src}/", rsh=f"{fake_docker(tmp_path)} exec -i")
    assert sync(tmp_path, source).changed == (f"run/{EVENTS}",)
    assert set((tmp_path / "pods.log").read_text().split()) == {"my-container"}


@pytest.mark.parametrize("missing", [None, OCI_NOT_FOUND], ids=["shell", "oci-runtime"])
def test_image_without_rsync_is_a_sentence(tmp_path, missing):
    empty = tmp_path / "empty-image-bin"
    empty.mkdir()
    source = Source("pod", f"trainer-0:{remote(tmp_path)}/",
                    rsh=f"{fake_kubectl(tmp_path, empty, missing)} exec -i {{host}} --")
    with pytest.raises(TransferError) as info:
        sync(tmp_path, source)
    assert "rsync is not installed in the container; install it in the image" \
        in str(info.value), info.value.details
    assert "BatchMode" not in info.value.details  # no ssh options for kubectl


def test_missing_remote_shell_is_a_sentence(tmp_path):
    source = Source("pod", f"trainer-0:{remote(tmp_path)}/",
                    rsh=f"{tmp_path / 'no-kubectl'} exec -i {{host}} --")
    with pytest.raises(TransferError) as info:
        sync(tmp_path, source)
    assert "the 'rsh' command could not be started" in str(info.value), info.value.details
