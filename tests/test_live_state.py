"""Run states under steady writing, with an injected clock (issue #11): no flicker, no lies.

The demo's rates: a sync every 3 s, TensorBoard's fast loader reloading every 2 s, the
loaded-data check every 2 s. TensorBoard is then always a reload or so behind the newest
published event; that is "live" with "N s behind", and "waiting" only when it falls further
behind than one reload period allows.
"""

from tb_rsync_plugin import config
from tb_rsync_plugin.publishing import report as report_lib
from tb_rsync_plugin.publishing import rewrites
from tb_rsync_plugin.transports import transfer as transfer_lib
from tb_rsync_plugin.engine import state as state_lib

RUN = "node/job"
RELOAD_S, CHECK_S, SYNC_S = 2.0, 2.0, 3.0


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def make_state(clock):
    state = state_lib.SyncState([config.Source("node", "/src/")], lambda s: SYNC_S,
                                clock=clock, reload_period_s=RELOAD_S,
                                grace_s=2 * RELOAD_S + CHECK_S)
    state.loader, state.not_live = "fast", ("waiting", "Published; waiting for a reload.")
    return state


def publish_newest(state, wall_time, step, rewritten=False):
    transfer = transfer_lib.TransferResult((), (), 0, 0, (), 0.0)
    actions = (report_lib.FileAction("job/events.out.tfevents.1", "rewrite", 10,
                                     kept_at="/q/job/events.out.tfevents.1"),) if rewritten else ()
    report = report_lib.PublishReport(
        actions, {RUN: report_lib.RunUpdate(RUN, wall_time, step, rewritten)}, (), ())
    state.begin("node")
    state.finish("node", transfer, report, {})


def run(state):
    return next(r for r in state.snapshot()["runs"] if r["run"] == RUN)


def test_steady_writing_stays_live_with_how_far_behind():
    clock = Clock()
    state = make_state(clock)
    seen = []
    # One event per second at the source; TensorBoard serves what was published 2 s ago
    # (one reload), its loaded time checked every 2 s.
    for tick in range(60):
        clock.now += 1
        if tick % SYNC_S == 0:
            publish_newest(state, clock.now - 0.5, tick)
        if tick % CHECK_S == 0:
            state.set_loaded({RUN: clock.now - 0.5 - RELOAD_S - 1})
        seen.append(run(state)["state"])
    assert set(seen[3:]) == {"live"}
    row = run(state)
    assert row["behind_s"] > 0 and "s behind" in row["state_detail"]


def test_falling_behind_more_than_a_reload_period_is_waiting():
    clock = Clock()
    state = make_state(clock)
    publish_newest(state, clock.now, 1)
    state.set_loaded({RUN: clock.now})
    assert run(state)["state"] == "live"
    clock.now += 3
    publish_newest(state, clock.now, 2)  # TensorBoard keeps serving step 1
    assert run(state)["state"] == "live"  # within the grace: a reload is on its way
    clock.now += 2 * RELOAD_S + CHECK_S + 1
    row = run(state)
    assert row["state"] == "waiting" and row["behind_s"] == 3
    state.set_loaded({RUN: clock.now - 2 * RELOAD_S - CHECK_S - 1})
    assert run(state)["state"] == "live"


def test_rewrite_elsewhere_is_not_live_until_reloaded(tmp_path):
    """Same newest wall time before and after: only the journal tells them apart."""
    clock = Clock()
    state = make_state(clock)
    publish_newest(state, clock.now, 19)
    state.set_loaded({RUN: clock.now})
    assert run(state)["state"] == "live"

    path = str(tmp_path / "rewrites.jsonl")
    ours, theirs = rewrites.RewriteJournal(path, clock), rewrites.RewriteJournal(path, clock)
    report = report_lib.PublishReport(
        (report_lib.FileAction("job/events.out.tfevents.1", "rewrite", 10, kept_at="/q/x"),),
        {RUN: report_lib.RunUpdate(RUN, clock.now, 9, True)}, (), ())
    written = theirs.record("node", report)
    assert [(w.run, w.file, w.kept_at, w.newest_step) for w in written] == \
        [(RUN, "node/job/events.out.tfevents.1", "/q/x", 9)]
    assert theirs.take_written() == written and theirs.take_written() == []

    ours.notice(state)
    state.set_loaded({RUN: clock.now})  # TensorBoard still serves the old copy
    row = run(state)
    assert row["state"] == "waiting" and row["rewrite"]["by"] == "another process"
    assert row["source_step"] == 9
    applied = ours.take_unapplied()
    assert [e.gen for e in applied] == [w.gen for w in written]
    state.rewrites_applied(applied, {})
    assert run(state)["state"] == "waiting"  # loaded again from scratch: not known yet
    state.set_loaded({RUN: clock.now})
    assert run(state)["state"] == "live"

    ours.notice(state)  # nothing new; our own lines are never "new"
    assert ours.take_unapplied() == []
    ours.record("node", report)
    ours.notice(state)
    assert ours.take_unapplied() == []
    assert [r.kept_at for r in rewrites.recent(path)] == ["/q/x", "/q/x"]


def test_reload_failure_after_a_rewrite_elsewhere_says_restart_needed(tmp_path):
    clock = Clock()
    state = make_state(clock)
    publish_newest(state, clock.now, 19)
    path = str(tmp_path / "rewrites.jsonl")
    ours, theirs = rewrites.RewriteJournal(path, clock), rewrites.RewriteJournal(path, clock)
    theirs.record("node", report_lib.PublishReport(
        (report_lib.FileAction("job/e.tfevents.1", "rewrite", 10, kept_at="/q/y"),),
        {RUN: report_lib.RunUpdate(RUN, clock.now, 9, True)}, (), ()))
    ours.notice(state)
    state.rewrites_applied(ours.take_unapplied(), {RUN: "restart TensorBoard"})
    assert run(state)["state"] == "restart_needed"


def test_own_rewrite_is_shown_with_the_old_copy():
    clock = Clock()
    state = make_state(clock)
    publish_newest(state, clock.now, 19, rewritten=True)
    assert run(state)["rewrite"] == {"unix_s": clock.now, "file": "node/job/events.out.tfevents.1",
                                     "kept_at": "/q/job/events.out.tfevents.1",
                                     "by": "this process"}
