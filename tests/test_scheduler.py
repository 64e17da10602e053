"""The scheduler on its own: slots, lanes, backoff, joins, sources that come and go.

The cycle it runs is a function of the test's (the scheduler only ever calls a callable), and
the state is the real `SyncState`, so what the tab would show is checked too. Real rsync,
ssh and TensorBoard runs of the same scheduler are in tests/test_fleet.py.
"""

import threading
import time

import pytest

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.engine import scheduler as scheduler_lib
from tb_rsync_plugin.engine import state as state_lib
from tests.fixtures_tensorboard import wait_until


class Outcome:
    def __init__(self, changed):
        self.changed = changed


class Cycles:
    """A cycle function whose behaviour each test sets per source, counting concurrency."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = {}
        self.peak = 0
        self.peak_by_host = {}
        self.calls = []
        self.block = {}  # name -> Event the cycle waits for
        self.fail = set()
        self.changed = set()
        self.hosts = {}

    def __call__(self, name):
        with self.lock:
            self.calls.append(name)
            self.running[name] = True
            self.peak = max(self.peak, len(self.running))
            host = self.hosts.get(name)
            if host:
                on_host = sum(1 for n in self.running if self.hosts.get(n) == host)
                self.peak_by_host[host] = max(self.peak_by_host.get(host, 0), on_host)
        try:
            if name in self.block:
                self.block[name].wait(30)
            else:
                time.sleep(0.05)
            if name in self.fail:
                raise RuntimeError(f"{name} failed")
            return Outcome(name in self.changed)
        finally:
            with self.lock:
                del self.running[name]

    def count(self, name):
        with self.lock:
            return self.calls.count(name)


def make(sources, cycles, max_parallel=8, max_per_host=3, interval_s=0.0):
    config = config_lib.SyncConfig(logdir="/l", staging_root="/s", sources=tuple(sources),
                                   interval_s=interval_s, max_parallel=max_parallel,
                                   max_per_host=max_per_host)
    state = state_lib.SyncState(config.sources, config.interval_for)
    ends = []
    scheduler = scheduler_lib.Scheduler(cycles, state, max_parallel, on_end=[ends.append])
    scheduler.set_sources(config.sources, config.interval_for, config.host_limit_for)
    for source in sources:
        cycles.hosts[source.name] = source.host
    return scheduler, state, ends


def test_per_host_and_global_limits_hold_and_a_full_host_blocks_no_one_else():
    cycles = Cycles()
    remote = [config_lib.Source(f"r{i}", f"me@gpu1:/logs/{i}/") for i in range(12)]
    local = [config_lib.Source(f"l{i}", f"/logs/{i}/") for i in range(12)]
    release = threading.Event()
    for source in remote:
        cycles.block[source.name] = release
    scheduler, _, ends = make(remote + local, cycles, max_parallel=8, max_per_host=3)
    scheduler.start(timers=False)
    scheduler.request()  # the remote sources first: they fill their host, not the queue
    wait_until(lambda: all(cycles.count(s.name) == 1 for s in local), 20,
               message="every local source while gpu1's three slots are taken")
    assert cycles.peak_by_host["gpu1"] == 3 and cycles.peak <= 8
    release.set()
    assert scheduler.wait(timeout_s=30)
    assert cycles.peak_by_host["gpu1"] == 3
    assert sorted(e.name for e in ends) == sorted(s.name for s in remote + local)


def test_a_source_sets_a_lower_limit_for_its_host():
    cycles = Cycles()
    sources = [config_lib.Source(f"r{i}", f"gpu1:/logs/{i}/",
                                 max_per_host=1 if i == 0 else None) for i in range(5)]
    scheduler, _, _ = make(sources, cycles, max_per_host=3)
    scheduler.start(timers=False)
    scheduler.request()
    assert scheduler.wait(timeout_s=30)
    assert cycles.peak_by_host["gpu1"] == 1


def test_failing_sources_retry_in_their_own_lane(monkeypatch):
    """Eight hung hosts, already failing, cannot take the slots of a healthy source."""
    monkeypatch.setattr(scheduler_lib, "MIN_RETRY_S", 0.05)
    cycles = Cycles()
    hung = [config_lib.Source(f"h{i}", f"host{i}:/logs/") for i in range(8)]
    healthy = config_lib.Source("ok", "/logs/")
    scheduler, _, _ = make(hung + [healthy], cycles, max_parallel=2)
    for source in hung:
        cycles.fail.add(source.name)
    scheduler.start(timers=False)
    scheduler.request([s.name for s in hung])
    assert scheduler.wait(timeout_s=30)  # they failed once: from now on they are suspects
    release = threading.Event()
    for source in hung:
        cycles.block[source.name] = release  # and now they hang
    scheduler.request([s.name for s in hung])
    wait_until(lambda: len(cycles.running) == 2, 10, message="two hung retries running")
    scheduler.request(["ok"])
    wait_until(lambda: cycles.count("ok") == 1, 10, message="the healthy source to run")
    release.set()
    assert scheduler.wait(timeout_s=30)


def test_a_long_cycle_moves_to_the_slow_lane(monkeypatch):
    monkeypatch.setattr(scheduler_lib, "SLOW_AFTER_S", 0.3)
    cycles = Cycles()
    release = threading.Event()
    slow = config_lib.Source("slow", "/a/")
    quick = config_lib.Source("quick", "/b/")
    cycles.block["slow"] = release
    scheduler, _, _ = make([slow, quick], cycles, max_parallel=1)
    scheduler.start(timers=False)
    scheduler.request(["slow"])
    wait_until(lambda: cycles.count("slow") == 1, 10, message="the slow cycle to start")
    scheduler.request(["quick"])
    wait_until(lambda: cycles.count("quick") == 1, 10,
               message="the queued source once the slow one left the main lane")
    release.set()
    assert scheduler.wait(timeout_s=30)


def test_requests_join_a_queued_cycle():
    cycles = Cycles()
    release = threading.Event()
    cycles.block["first"] = release
    scheduler, state, _ = make([config_lib.Source("first", "/f/"),
                                config_lib.Source("a", "/a/")], cycles, max_parallel=1)
    scheduler.start(timers=False)
    scheduler.request(["first"])
    wait_until(lambda: cycles.count("first") == 1, 10, message="first running")
    assert scheduler.request(["a"]) == {"started": ["a"], "joined": [], "queued_after": []}
    for _ in range(20):
        assert scheduler.request(["a"]) == {"started": [], "joined": ["a"], "queued_after": []}
    release.set()
    assert scheduler.wait(timeout_s=10)
    assert cycles.count("a") == 1
    assert state.snapshot()["sources"][1]["state"] == "queued"  # the cycle sets the rest


def test_a_request_while_a_cycle_runs_gets_exactly_one_cycle_after_it():
    """The running cycle may have listed the source before the click (issue: a click right
    after a sync ended joined it and nothing ran): the source is queued again at its end."""
    cycles = Cycles()
    release = threading.Event()
    cycles.block["a"] = release
    ends = []
    scheduler, state, _ = make([config_lib.Source("a", "/a/")], cycles)
    scheduler.add_listener(lambda end: ends.append(state.source("a")["state"]))
    scheduler.start(timers=False)
    assert scheduler.request(["a"])["started"] == ["a"]
    wait_until(lambda: cycles.count("a") == 1, 10, message="a running")
    for _ in range(20):
        assert scheduler.request(["a"]) == {"started": [], "joined": [], "queued_after": ["a"]}
    state.begin("a")  # what the service's cycle does: the click must outlive its finish
    state.fail("a", "boom")
    assert state.source("a")["state"] == "queued", "never idle between the two cycles"
    release.set()
    assert scheduler.wait(timeout_s=10), "wait() covers the cycle queued after"
    assert cycles.count("a") == 2, "twenty clicks during one cycle make one more"
    assert len(ends) == 2


def test_a_request_at_the_very_end_of_a_cycle_is_not_lost():
    """A click between the cycle's return and the release of its slot (the status already
    says idle then) still gets a cycle of its own."""
    cycles = Cycles()
    scheduler, _, _ = make([config_lib.Source("a", "/a/")], cycles)
    answers = []
    in_listener = threading.Event()

    def click_from_listener(end):
        if not in_listener.is_set():  # listeners run after the cycle, before the release
            in_listener.set()
            answers.append(scheduler.request(["a"]))

    scheduler.add_listener(click_from_listener)
    scheduler.start(timers=False)
    scheduler.request(["a"])
    assert scheduler.wait(timeout_s=10)
    assert answers == [{"started": [], "joined": [], "queued_after": ["a"]}]
    assert cycles.count("a") == 2


def test_failures_back_off_exponentially_capped_and_a_click_retries_at_once(monkeypatch):
    monkeypatch.setattr(scheduler_lib, "RETRY_CAP_S", 0.8)
    cycles = Cycles()
    cycles.fail.add("a")
    scheduler, state, ends = make([config_lib.Source("a", "/a/", interval_s=0.1)], cycles)
    monkeypatch.setattr(scheduler_lib, "MIN_RETRY_S", 0.1)
    scheduler.start(timers=True)
    wait_until(lambda: len(ends) >= 4, 20, message="four failed attempts")
    delays = [e.retry_in_s for e in ends[:5]]
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert all(d == pytest.approx(0.8) for d in delays[3:])
    source = state.snapshot()["sources"][0]
    assert source["retrying"] and source["next_sync_unix_s"] is not None
    # A click does not wait for the retry time; success ends the backoff.
    cycles.fail.discard("a")
    before = len(ends)
    scheduler.request(["a"])
    wait_until(lambda: any(e.error is None for e in ends[before:]), 5, message="the click")
    ok = next(e for e in ends[before:] if e.error is None)
    assert ok.recovered and ok.retry_in_s == pytest.approx(0.1)
    scheduler.stop()


def test_idle_sources_back_off_to_four_intervals_and_return_at_the_first_change():
    cycles = Cycles()
    scheduler, state, ends = make([config_lib.Source("a", "/a/", interval_s=0.02)], cycles)
    scheduler.start(timers=True)
    wait_until(lambda: len(ends) >= 2 * scheduler_lib.IDLE_AFTER + 1, 30,
               message="enough idle syncs")
    delays = [e.retry_in_s for e in ends]
    after = scheduler_lib.IDLE_AFTER
    assert delays[after - 2] == pytest.approx(0.02)
    assert delays[after - 1] == pytest.approx(0.04)
    assert delays[2 * after - 1] == pytest.approx(0.08)
    assert state.snapshot()["sources"][0]["idle_factor"] == 4
    cycles.changed.add("a")
    count = len(ends)
    wait_until(lambda: len(ends) > count + 1, 10, message="a cycle with a change")
    assert ends[-1].retry_in_s == pytest.approx(0.02)
    assert state.snapshot()["sources"][0]["idle_factor"] == 1
    scheduler.stop()


def test_sources_come_and_go():
    cycles = Cycles()
    release = threading.Event()
    cycles.block["old"] = release
    old, new = config_lib.Source("old", "/a/"), config_lib.Source("new", "/b/")
    scheduler, state, ends = make([old], cycles)
    scheduler.start(timers=False)
    scheduler.request(["old"])
    wait_until(lambda: cycles.count("old") == 1, 10, message="old running")
    scheduler.set_sources([new], lambda s: 0.0, lambda s: 3)
    state.set_sources([new], lambda s: 0.0)
    with pytest.raises(KeyError):
        scheduler.request(["old"])
    scheduler.request(["new"])
    release.set()  # the removed source's running cycle ends normally
    assert scheduler.wait(timeout_s=10)
    assert sorted(e.name for e in ends) == ["new", "old"]
    assert [s["name"] for s in state.snapshot()["sources"]] == ["new"]


def test_stop_cancels_queued_cycles():
    cycles = Cycles()
    release = threading.Event()
    cycles.block["a"] = release
    scheduler, state, _ = make([config_lib.Source("a", "/a/"), config_lib.Source("b", "/b/")],
                               cycles, max_parallel=1)
    scheduler.start(timers=False)
    scheduler.request(["a", "b"])
    wait_until(lambda: cycles.count("a") == 1, 10, message="a running")
    threading.Timer(0.3, release.set).start()
    scheduler.stop(wait_s=10)
    assert cycles.count("b") == 0
    assert {s["name"]: s["state"] for s in state.snapshot()["sources"]}["b"] == "idle"


@pytest.mark.parametrize("source, host", [
    ("/local/dir/", None),
    ("gpu1:logs/", "gpu1"),
    ("me@gpu1.example.org:/logs/", "gpu1.example.org"),
    ("rsync://me@backup:8730/mod/dir/", "backup"),
    ("backup::mod/dir", "backup"),
    ("[::1]:logs/", "::1"),
])
def test_the_host_a_source_counts_against(source, host):
    assert config_lib.Source("n", source).host == host


def test_a_source_removed_and_added_back_while_it_syncs_stays_one_source():
    cycles = Cycles()
    release = threading.Event()
    cycles.block["a"] = release
    a = config_lib.Source("a", "/a/")
    scheduler, state, ends = make([a], cycles)
    scheduler.start(timers=False)
    scheduler.request(["a"])
    wait_until(lambda: cycles.count("a") == 1, 10, message="a running")
    scheduler.set_sources([], lambda s: 0.0, lambda s: 3)
    scheduler.set_sources([a], lambda s: 0.0, lambda s: 3)
    assert scheduler.request(["a"]) == {"started": [], "joined": [], "queued_after": ["a"]}, \
        "queued after the running cycle, not beside it"
    release.set()
    assert scheduler.wait(timeout_s=10)
    assert cycles.count("a") == 2 and cycles.peak == 1
    assert scheduler.request(["a"])["started"] == ["a"], "still scheduled after its cycle"
    assert scheduler.wait(timeout_s=10)
    scheduler.stop()
    assert scheduler.request(["a"]) == {"started": [], "joined": [], "queued_after": []}, \
        "nothing after stop"
