"""Lines on disk that tb-rsync did not write as it writes them: skipped, with one warning.

The state journals and the rewrite journal live in the staging root and are shared by every
process there; a line that is JSON of the wrong shape must not stop `tb-rsync`, nor make
TensorBoard drop the plugin, nor lead a reload outside the logdir.
"""

import json
import logging

from tensorboard.backend import application
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.tensorboard import plugin as plugin_lib
from tb_rsync_plugin.publishing import rewrites as rewrites_lib
from tb_rsync_plugin.engine import state as state_lib
from tests.events import append_scalars, event_file_name
from tests.test_cli import tb_rsync
from tests.test_plugin_wsgi import make_flags

EVENTS = event_file_name()
GOOD_RUN = {"run": "n/good", "source": "n", "source_wall_time": 5.0, "source_step": 4,
            "published_unix_s": 10.0, "loaded_wall_time": None, "state": "unknown",
            "state_detail": "", "behind_s": None, "rewritten_unix_s": None, "rewrite": None,
            "file_errors": {}}
DAMAGED_STATE_LINES = [
    0, [], None, "text", {"source": 3}, {"run": []}, {"source": {}, "run": {}},
    {"run": dict(GOOD_RUN, run="n/bad-step", source_step="4")},
    {"run": dict(GOOD_RUN, run="n/bad-errors", file_errors=["x"])},
    {"run": dict(GOOD_RUN, run="../secret")},
    {"run": dict(GOOD_RUN, run="other/run")},
    {"source": {"source": "/src/", "state": "idle", "last_end_unix_s": "yesterday"}},
    {"source": {"source": "/src/", "state": "error", "error": {"message": 3}}},
]


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def make_logdir(tmp_path):
    remote = tmp_path / "remote"
    (remote / "job").mkdir(parents=True)
    append_scalars(str(remote / "job" / EVENTS), range(3))
    logdir, staging = tmp_path / "logs", tmp_path / "staging"
    logdir.mkdir()
    return remote, logdir, staging


def test_damaged_state_lines_are_skipped_by_status_sync_and_the_plugin(tmp_path, caplog):
    remote, logdir, staging = make_logdir(tmp_path)
    journal = staging / "state" / "n.jsonl"
    write_lines(journal, DAMAGED_STATE_LINES + [{"run": GOOD_RUN}])
    args = ("--logdir", logdir, "--staging", staging)

    status = tb_rsync("status", *args)
    assert status.returncode == 0, status.stderr
    assert "n/good" in status.stdout and "secret" not in status.stdout
    assert status.stderr.count("skipping damaged line(s)") == 1, status.stderr

    synced = tb_rsync("sync", *args, "--source", f"n={remote}/")
    assert synced.returncode == 0, synced.stderr
    assert "n/job" in tb_rsync("status", *args).stdout

    # TensorBoard keeps the plugin and its routes; the warning is logged once per file,
    # however often the journal is read.
    flags = make_flags(logdir, [f"n={remote}/"], rsync_staging=str(staging))
    loader = plugin_lib.RsyncPluginLoader()
    loader.fix_flags(flags)
    with caplog.at_level(logging.WARNING):
        plugin = loader.load(base_plugin.TBContext(logdir=str(logdir), flags=flags,
                                                   multiplexer=None, data_provider=None))
        try:
            write_lines(journal, DAMAGED_STATE_LINES)
            plugin._service.state.follow(str(staging / "state"))
            response = werkzeug_test.Client(application.TensorBoardWSGI([plugin])).get(
                "/data/plugin/rsync/status")
            assert response.status_code == 200
            runs = [r["run"] for r in response.get_json()["runs"]]
            assert runs == ["n/good", "n/job"]
        finally:
            plugin._service.stop()
    assert sum("skipping damaged" in r.getMessage() for r in caplog.records) <= 1


def test_a_rewrite_line_of_the_wrong_type_does_not_break_status(tmp_path):
    remote, logdir, staging = make_logdir(tmp_path)
    args = ("--logdir", logdir, "--staging", staging)
    assert tb_rsync("sync", *args, "--source", f"n={remote}/").returncode == 0
    good = {"unix_s": 10.0, "source": "n", "run": "n/job", "file": f"n/job/{EVENTS}",
            "kept_at": "/q/old", "newest_wall_time": 1.0, "newest_step": 2, "writer": "h:1:x"}
    write_lines(staging / "rewrites.jsonl", [
        dict(good, unix_s="yesterday"), dict(good, newest_step=2.5), dict(good, file=None),
        [good], good])
    status = tb_rsync("status", *args)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("old copy at '/q/old'") == 1


def test_a_rewrite_line_never_leads_a_reload_outside_the_logdir(tmp_path):
    """A run or file of a rewrite line is only ever a folder of its source's own tree."""
    staging = tmp_path / "staging"
    path = str(staging / "rewrites.jsonl")
    journal = rewrites_lib.RewriteJournal(path)  # follows lines appended from now on
    state = state_lib.SyncState([config_lib.Source("n", "/src/")], lambda s: 0.0)
    base = {"unix_s": 10.0, "source": "n", "run": "n/job", "file": f"n/job/{EVENTS}",
            "kept_at": "/q/old", "newest_wall_time": 1.0, "newest_step": 2, "writer": "h:1:x"}
    write_lines(staging / "rewrites.jsonl", [
        dict(base, run="../secret", file=f"../secret/{EVENTS}"),
        dict(base, run="n/../../secret", file=f"n/../../secret/{EVENTS}"),
        dict(base, source="..", run="../secret", file=f"../secret/{EVENTS}"),
        dict(base, run="/abs", file=f"/abs/{EVENTS}"),
        dict(base, file=f"n/other/{EVENTS}"),
        dict(base, source="gone", run="gone/job", file=f"gone/job/{EVENTS}"),
        base])
    journal.notice(state)
    assert [e.run for e in journal.take_unapplied()] == ["n/job"], \
        "only the line inside a configured source's tree reaches a reload"
    assert [r["run"] for r in state.snapshot()["runs"]] == ["n/job"]
