"""The state journals are shared by every process syncing into one staging root."""

import json
import math
import os
import subprocess
import sys

from tb_rsync_plugin.engine import source_status
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.engine import state_journal

SAVES = 150

SAVER = """
import sys
from tb_rsync_plugin import config
from tb_rsync_plugin.engine import state
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
    saved = {s["name"]: s["error"]["message"] for s in state_journal.load_snapshot(path)["sources"]}
    assert saved == {name: f"save {SAVES - 1}" for name in names}


def make_state(clock):
    from tb_rsync_plugin import config
    return state_lib.SyncState([config.Source("n", "/src/")], lambda source: 5.0, clock=clock)


def report_for(runs, wall_time=1.0):
    from tb_rsync_plugin.publishing import report as report_lib
    return report_lib.PublishReport(actions=(), needs_restage=(), errors=(), runs={
        run: report_lib.RunUpdate(run, wall_time, int(wall_time)) for run in runs})


def test_journal_gets_only_what_changed_and_a_heartbeat(tmp_path):
    from tb_rsync_plugin.transports import transfer
    now = [1000.0]
    state = make_state(lambda: now[0])
    folder = str(tmp_path / "state")
    state.finish("n", transfer.TransferResult(changed=("a/x",)), report_for(["n/a", "n/b"]), {})
    assert state.save(folder) == 3  # the source and two runs
    for _ in range(5):
        now[0] += 1
        state.finish("n", transfer.TransferResult(duration_s=0.2), report_for([]), {})
        assert state.save(folder) == 0, "an unchanged sync writes nothing"
    state.finish("n", transfer.TransferResult(changed=("a/x",)), report_for(["n/a"], 2.0), {})
    assert state.save(folder) == 2
    now[0] += state_lib.HEARTBEAT_S
    state.finish("n", transfer.TransferResult(), report_for([]), {})
    assert state.save(folder) == 1, "a heartbeat once a minute keeps 'last sync' current"
    saved = state_journal.load_snapshot(folder)
    assert saved["sources"][0]["last_end_unix_s"] == now[0]
    assert {r["run"]: r["source_wall_time"] for r in saved["runs"]} == {"n/a": 2.0, "n/b": 1.0}


def test_journal_is_compacted_and_survives_a_cut_line(tmp_path):
    from tb_rsync_plugin.transports import transfer
    now = [1000.0]
    state = make_state(lambda: now[0])
    folder = str(tmp_path / "state")
    runs = [f"n/run{i}" for i in range(50)]
    for step in range(1, 60):
        state.finish("n", transfer.TransferResult(changed=("x",)), report_for(runs, float(step)),
                     {})
        state.save(folder)
    path = state_journal.journal_path(folder, "n")
    live = len(state_journal._journal_bytes(*state_journal._read_journal(path)))
    assert os.path.getsize(path) <= state_journal.COMPACT_FACTOR * live + 64 * 1024
    with open(path, "ab") as f:
        f.write(b'{"run":{"run":"n/run1","source_wall')  # a crash mid-line
    again = make_state(lambda: now[0])
    again.restore(folder)
    assert {r["run"]: r["source_wall_time"] for r in again.snapshot()["runs"]} == \
        {run: 59.0 for run in runs}


APPENDER = """
import os, sys
from tb_rsync_plugin.engine import state_journal
path = sys.argv[1]
reads = []
sys.addaudithook(lambda event, args: event == "open" and args[:2] == (path, "r") and
                 reads.append(args))
appends = 0
while not os.path.exists(path) or os.path.getsize(path) < 2 * state_journal.COMPACT_MIN_BYTES:
    state_journal.append_journal(path, [{"run": {"run": f"n/run{appends}", "source": "n",
                                                 "state": "unknown"}}])
    appends += 1
print(appends, len(reads))
"""


def test_an_append_reads_the_journal_back_only_at_check_points(tmp_path):
    """Whether a journal needs compacting takes reading and checking all of it: a one-line
    append (the heartbeat of a `tb-rsync sync` from cron) does that only when it takes the
    journal past 64 KiB or past another eighth of growth, not every time."""
    path = str(tmp_path / "n.jsonl")
    result = subprocess.run([sys.executable, "-c", APPENDER, path], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    appends, reads = map(int, result.stdout.split())
    growth = math.log(2) / math.log(state_journal.COMPACT_CHECK_GROWTH)
    assert appends > 1000 and reads == 1 + int(growth), (appends, reads)


def test_last_change_says_when_a_source_last_moved_data_and_survives_a_restart(tmp_path):
    """The latest sync often moves nothing: `last_change` keeps the one that did."""
    from tb_rsync_plugin.transports import transfer
    now = [1000.0]
    state = make_state(lambda: now[0])
    folder = str(tmp_path / "state")
    state.finish("n", transfer.TransferResult(), report_for([]), {})
    assert state.snapshot()["sources"][0]["last_change"] is None
    runs = [f"n/run{i}" for i in range(7)]
    state.finish("n", transfer.TransferResult(changed=("x",)), report_for(runs), {})
    changed_at = now[0]
    now[0] += 30
    state.finish("n", transfer.TransferResult(), report_for([]), {})
    state.save(folder)
    change = state.snapshot()["sources"][0]["last_change"]
    assert change["unix_s"] == changed_at and change["runs_updated"] == 7
    assert change["runs"] == runs[:source_status.LAST_CHANGE_RUNS]
    again = make_state(lambda: now[0])
    again.restore(folder)
    assert again.snapshot()["sources"][0]["last_change"] == change


def test_a_process_follows_another_ones_journal_across_compactions(tmp_path):
    """What a `tb-rsync sync` journals reaches a TensorBoard's state; a compaction (a new
    file) is read from its start, and lines older than what the reader knows change nothing."""
    from tb_rsync_plugin.transports import transfer
    now = [1000.0]
    writer, reader = make_state(lambda: now[0]), make_state(lambda: now[0])
    folder = str(tmp_path / "state")
    path = state_journal.journal_path(folder, "n")
    runs = [f"n/run{i}" for i in range(50)]
    writer.finish("n", transfer.TransferResult(changed=("x",)), report_for(runs, 1.0), {})
    writer.save(folder)
    reader.follow(folder)
    assert {r["source_step"] for r in reader.snapshot()["runs"]} == {1}
    compactions, size = 0, os.path.getsize(path)
    for step in range(2, 60):
        now[0] += 1
        writer.finish("n", transfer.TransferResult(changed=("x",)), report_for(runs, float(step)),
                      {})
        writer.save(folder)
        compactions += os.path.getsize(path) < size
        size = os.path.getsize(path)
    # Several compactions: a new file may even get the inode number the reader last saw
    # (freed by the first compaction), which the reader must not take for its old file.
    assert compactions >= 2, compactions
    reader.follow(folder)
    assert {r["source_step"] for r in reader.snapshot()["runs"]} == {59}
    assert reader.source("n")["last_end_unix_s"] == now[0]
    reader.restore(folder)  # everything again: nothing older wins
    assert {r["source_step"] for r in reader.snapshot()["runs"]} == {59}


def test_rclone_requests_of_the_last_hour_survive_a_restart_and_old_journals_load(tmp_path):
    """An rclone source's requests are summed over the syncs that ended in the last hour
    (per minute; failed ones included; unknown once one was not counted); the journal
    keeps them for `tb-rsync status` and the next start. A journal line of an older
    tb-rsync (without them) loads; a damaged one is skipped."""
    from tb_rsync_plugin import config
    from tb_rsync_plugin.cli_output import format_status
    from tb_rsync_plugin.transports import transfer
    now = [1000.0]
    sources = [config.Source("c", "rclone:s3:bucket/"), config.Source("n", "/src/")]
    state = state_lib.SyncState(sources, lambda source: 5.0, clock=lambda: now[0])
    folder = str(tmp_path / "state")

    def shown(s=state):
        return {src["name"]: src["api_requests"] for src in s.snapshot()["sources"]}

    assert shown() == {"c": {"last_hour": 0, "syncs": 0}, "n": None}
    state.finish("c", transfer.TransferResult(api_requests=3), report_for([]), {})
    now[0] = 1030.0
    state.finish("c", transfer.TransferResult(api_requests=2), report_for([]), {})
    now[0] = 1100.0
    state.fail("c", "Sync of 'c' failed: there is no such bucket.", "", api_requests=4)
    state.finish("n", transfer.TransferResult(), report_for([]), {})
    state.fail("n", "Sync of 'n' failed.", "")
    assert shown() == {"c": {"last_hour": 9, "syncs": 3}, "n": None}
    state.save(folder)

    again = state_lib.SyncState(sources, lambda source: 5.0, clock=lambda: now[0])
    again.restore(folder)
    assert shown(again)["c"] == {"last_hour": 9, "syncs": 3}
    table = format_status(state_journal.load_snapshot(folder), now[0])
    assert "source c (rclone:s3:bucket/): error, last sync 0 s ago, 9 rclone request(s) in " \
        "the last hour (3 sync(s))" in table
    assert "source n (/src/): error, last sync 0 s ago\n" in table
    # An hour after the first minute, its syncs leave the sum.
    now[0] = 960 + source_status.REQUESTS_WINDOW_S + 1
    assert shown(again)["c"] == {"last_hour": 6, "syncs": 2}
    assert "6 rclone request(s) in the last hour (2 sync(s))" in \
        format_status(state_journal.load_snapshot(folder), now[0])
    again.finish("c", transfer.TransferResult(api_requests=None), report_for([]), {})
    assert shown(again)["c"] == {"last_hour": None, "syncs": 3}
    again.save(folder)
    assert "rclone requests in the last hour unknown (rclone_flags or RCLONE_* variables " \
        "set rclone's logging)" in format_status(state_journal.load_snapshot(folder), now[0])

    # An older tb-rsync's line (no such field), then a damaged one: the former is used.
    path = state_journal.journal_path(folder, "c")
    old = dict(state_journal.load_snapshot(folder)["sources"][0], last_end_unix_s=now[0] + 1)
    del old["api_request_minutes"]
    damaged = dict(old, last_end_unix_s=now[0] + 2, api_request_minutes=[[960, 1, -3, 0]])
    with open(path, "a") as f:
        f.write(json.dumps({"source": old}) + "\n" + json.dumps({"source": damaged}) + "\n")
    restarted = state_lib.SyncState(sources, lambda source: 5.0, clock=lambda: now[0])
    restarted.restore(folder)
    assert restarted.snapshot()["sources"][0]["last_end_unix_s"] == now[0] + 1
    assert shown(restarted)["c"] == {"last_hour": 0, "syncs": 0}


def test_run_lines_are_folded_when_a_run_is_first_needed_in_journal_order(tmp_path, caplog):
    """A process starting on a journal takes in its source line at once and its run lines
    (most of it) only once a run is needed, which a sync that publishes nothing never does,
    or once another process's run lines come (so they cannot pile up): then in the order
    they were written, a damaged one skipped with the one warning, and a line that only
    looks like a run's read for what it is."""
    import logging
    from tb_rsync_plugin.transports import transfer
    now = [1000.0]
    writer, reader = make_state(lambda: now[0]), make_state(lambda: now[0])
    folder = str(tmp_path / "state")
    path = state_journal.journal_path(folder, "n")
    writer.finish("n", transfer.TransferResult(changed=("x",)), report_for(["n/a", "n/b"]), {})
    writer.save(folder)
    now[0] += 1
    writer.finish("n", transfer.TransferResult(changed=("x",)), report_for(["n/a"], 2.0), {})
    writer.save(folder)
    with open(path, "ab") as f:
        f.write(b'{"run":{"run":"../secret","source":"n","state":"unknown"}}\n')
        # Duplicate keys: the last "run" wins, so this is a source line (a hand edit, say).
        f.write(b'{"run":{"run":"n/z"},"run":null,"source":{"source":"/src/","state":"idle",'
                b'"last_end_unix_s":5000.0}}\n')

    def warned():
        return sum("skipping damaged" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING):
        reader.restore(folder)
        assert reader.source("n")["last_end_unix_s"] == 1001.0 and warned() == 0
        now[0] += 1
        writer.fail("n", "a source line only")
        writer.save(folder)
        reader.follow(folder)
        assert reader.source("n")["error"]["message"] == "a source line only"
        assert warned() == 0, "a heartbeat or a failure does not fold the run lines"
        now[0] += 1
        writer.finish("n", transfer.TransferResult(changed=("x",)), report_for(["n/b"], 3.0), {})
        writer.save(folder)
        reader.follow(folder)
        assert warned() == 1, "another process's run lines fold what restore left first"
        runs = {r["run"]: r["source_wall_time"] for r in reader.snapshot()["runs"]}
    assert runs == {"n/a": 2.0, "n/b": 3.0}
    assert warned() == 1
    assert reader.source("n")["last_end_unix_s"] == 5000.0
