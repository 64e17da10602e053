"""A `tb-rsync sync` that finds nothing new (cron's usual case): its cost is mostly the
interpreter's start-up and imports (docs/BENCHMARKS.md B3), so it imports only what it runs."""

import subprocess
import sys

from tests.events import append_scalars, event_file_name
from tests.test_cli import tb_rsync

# Imported where they are used: by an ssh or rclone source, a publish that checks records or
# releases staged blocks, a rewrite, discovery rules, `watch`'s metrics, the plugin.
NOT_FOR_A_LOCAL_NO_OP = {
    "hashlib", "socket", "uuid", "secrets", "ctypes", "google_crc32c", "tensorboard",
    "google.protobuf", "grpc", "prometheus_client", "tb_rsync_plugin.transports.rclone",
    "tb_rsync_plugin.engine.discovery", "tb_rsync_plugin.engine.metrics",
}
LOADED_BY_MAIN = """
import sys
before = set(sys.modules)
from tb_rsync_plugin import cli
code = cli.main(sys.argv[1:])
print("loaded:", " ".join(sorted(set(sys.modules) - before)))
sys.exit(code)
"""


def test_a_local_sync_that_finds_nothing_imports_only_what_it_runs(tmp_path):
    remote, logdir, staging = tmp_path / "remote", tmp_path / "logs", tmp_path / "staging"
    (remote / "run").mkdir(parents=True)
    append_scalars(str(remote / "run" / event_file_name()), range(3))
    (remote / "run" / "notes.txt").write_text("hello")
    logdir.mkdir()
    args = ("sync", "--logdir", logdir, "--staging", staging, "--source", f"n={remote}/")
    assert tb_rsync(*args).returncode == 0  # publishes everything
    again = subprocess.run([sys.executable, "-c", LOADED_BY_MAIN, *map(str, args)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    loaded = set(again.stdout.rsplit("loaded:", 1)[1].split())
    assert "tb_rsync_plugin.engine.service" in loaded, "it did sync"
    assert sorted(loaded & NOT_FOR_A_LOCAL_NO_OP) == []
