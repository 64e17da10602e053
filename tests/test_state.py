"""The state journals are shared by every process syncing into one staging root."""

import subprocess
import sys

from tb_rsync_plugin import state as state_lib

SAVES = 150

SAVER = """
import sys
from tb_rsync_plugin import config, state
name, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = state.SyncState([config.Source(name, "/src/")], lambda source: 0)
for i in range(count):
    s.fail(name, f"save {i}")
    s.save(path)
"""


def test_concurrent_savers_keep_each_others_last_update(tmp_path):
    """Four processes save as fast as they can; none may lose another's final word."""
    path = str(tmp_path / "state")
    names = [f"p{i}" for i in range(4)]
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, name, path, str(SAVES)])
              for name in names]
    assert [p.wait(timeout=120) for p in savers] == [0] * len(savers)
    saved = {s["name"]: s["error"]["message"] for s in state_lib.load_snapshot(path)["sources"]}
    assert saved == {name: f"save {SAVES - 1}" for name in names}
