"""Watched inboxes: nodes push with plain `rsync -a`, a change asks for the source's sync.

Real parts: inotify through watchdog, the real rsync (pushing over the test sshd), the real
service, a real TensorBoard with `--load_fast=false`. Intervals are an hour (or 0), so only
the watcher can have started the syncs that make data arrive.
"""

import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.engine import inbox
from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until
from tests.test_rsync_local import rsync_wrapper
from tests.test_service import make_service

EVENTS = event_file_name()


class Requests:
    """Stands in for `SyncService.request`: records calls, answers "started"."""

    def __init__(self):
        self.calls = []
        self._lock = threading.Lock()

    def __call__(self, names):
        with self._lock:
            self.calls.append(list(names))
        return {"started": list(names), "joined": [], "queued_after": []}

    def count(self, name):
        with self._lock:
            return sum(call == [name] for call in self.calls)


def watcher_for(tmp_path, requests, *names, ignore=()):
    sources = []
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
        sources.append(config_lib.Source(name, f"{tmp_path / name}/", watch=True))
    watcher = inbox.SourceWatcher(sources, requests, ignore=ignore)
    watcher.start()
    return watcher


def push_like_rsync(folder, name, data):
    """What a default `rsync -a` push does: a `.NAME.XXXXXX` temp, then a rename."""
    temp = folder / f".{name}.Ab12Cd"
    temp.write_bytes(data)
    os.rename(temp, folder / name)


class SteppedClock:
    """A monotonic clock that moves only when the test says: the watcher's debounce then
    depends on what happened, not on how fast threads ran. `noted` counts its reads by
    watchdog's thread, which reads it once per change it hands to the watcher."""

    def __init__(self):
        self.now = 1000.0
        self.noted = 0

    def __call__(self):
        if threading.current_thread().name not in ("tb-rsync-inbox", "MainThread"):
            self.noted += 1
        return self.now

    def advance(self, seconds):
        self.now += seconds


def stepped_watcher(tmp_path):
    """A watcher of tmp_path/inbox on a `SteppedClock`, after its first request (asked for
    when the watch begins); returns (watcher, requests, clock, asked), where `asked(n)`
    moves the clock past any delay while fewer than `n` requests came (for `wait_until`)."""
    requests, clock = Requests(), SteppedClock()
    (tmp_path / "inbox").mkdir()
    watcher = inbox.SourceWatcher([config_lib.Source("inbox", f"{tmp_path / 'inbox'}/",
                                                     watch=True)], requests, clock=clock)
    watcher.start()

    def asked(count):
        if requests.count("inbox") < count:
            clock.advance(inbox.MAX_DELAY_S + 1)
        return requests.count("inbox") >= count

    try:
        wait_until(lambda: asked(1), 10, 0.01, "the sync asked for when the watch starts")
    except BaseException:
        watcher.stop()
        raise
    return watcher, requests, clock, asked


def test_a_burst_of_pushed_files_asks_for_one_sync_once_quiet(tmp_path):
    """300 pushes (rsync's temp, then a rename) while the clock stands still, however fast
    watchdog delivers them, are one change for the debounce: once all are noted and the
    clock moves past the quiet time, exactly one request (the temps ask for nothing)."""
    watcher, requests, clock, _ = stepped_watcher(tmp_path)
    try:
        noted = clock.noted
        for i in range(300):
            push_like_rsync(tmp_path / "inbox", f"events.out.tfevents.{i}", b"x" * 100)
        wait_until(lambda: clock.noted - noted >= 300, 30, 0.01, "every rename noted")
        clock.advance(inbox.QUIET_S * 2)
        wait_until(lambda: requests.count("inbox") == 2, 10, 0.01, "the burst's request")
    finally:
        watcher.stop()
    assert requests.count("inbox") == 2, requests.calls


def test_changes_that_go_on_ask_for_a_sync_after_the_longest_delay(tmp_path):
    """A push that never pauses for the quiet time is still synced MAX_DELAY_S after its
    first change (on the stepped clock: changes every 0.09 s, quiet time 0.1 s)."""
    watcher, requests, clock, _ = stepped_watcher(tmp_path)
    try:
        first, steps = clock.now, 0
        while clock.now - first < inbox.MAX_DELAY_S:
            watcher.changed("inbox")
            assert requests.count("inbox") == 1, "not asked before the quiet time or delay"
            clock.advance(inbox.QUIET_S * 0.9)
            steps += 1
        watcher.changed("inbox")
        wait_until(lambda: requests.count("inbox") == 2, 10, 0.01,
                   "a request MAX_DELAY_S after the first change")
        assert steps == 5
    finally:
        watcher.stop()


def test_temps_reads_and_our_own_folders_ask_for_nothing(tmp_path):
    (tmp_path / "inbox" / "run").mkdir(parents=True)
    (tmp_path / "inbox" / "run" / EVENTS).write_bytes(b"old")
    requests = Requests()
    own = tmp_path / "inbox" / "staging-inside"  # a staging root a user put in the inbox
    own.mkdir()
    watcher = watcher_for(tmp_path, requests, "inbox", "sentinel", ignore=[own])
    try:
        wait_until(lambda: requests.count("inbox") == 1 and requests.count("sentinel") == 1,
                   10, 0.01, "the syncs asked for when the watches start")
        temp = tmp_path / "inbox" / "run" / f".{EVENTS}.Xy12Z9"
        temp.write_bytes(b"half a push")  # rsync's temp: created, written, closed
        temp.unlink()
        (tmp_path / "inbox" / "run" / EVENTS).read_bytes()  # a sync reading the inbox
        (own / "published").write_bytes(b"ours")
        (tmp_path / "sentinel" / "file").write_bytes(b"x")
        wait_until(lambda: requests.count("sentinel") == 2, 10, 0.01, "the sentinel")
        assert requests.count("inbox") == 1, requests.calls
        push_like_rsync(tmp_path / "inbox" / "run", EVENTS, b"new")  # the rename counts
        wait_until(lambda: requests.count("inbox") == 2, 10, 0.01, "a sync for the rename")
    finally:
        watcher.stop()


def test_a_folder_created_after_start_is_watched(tmp_path):
    requests = Requests()
    source = config_lib.Source("late", f"{tmp_path / 'late'}/", watch=True)
    watcher = inbox.SourceWatcher([source], requests)
    watcher.start()
    try:
        (tmp_path / "late").mkdir()
        wait_until(lambda: requests.count("late") == 1, 10, 0.01, "the folder to be watched")
        (tmp_path / "late" / "file").write_bytes(b"x")
        wait_until(lambda: requests.count("late") == 2, 10, 0.01, "a sync for the new file")
    finally:
        watcher.stop()


def test_a_push_landing_during_a_sync_is_synced_after_it(tmp_path, monkeypatch):
    """The sync that is running has listed the inbox already; the watcher's request for the
    late push queues the source again for when that sync ends."""
    gate = tmp_path / "gate"
    gate.mkdir()
    wrapper = rsync_wrapper(tmp_path, (
        "code = rsync()\n"
        "if kind in ('list', 'other'):  # a first sync is one rsync, without a listing\n"
        f"    open(os.path.join({str(gate)!r}, 'reached-list'), 'w').close()\n"
        f"    wait_for(os.path.join({str(gate)!r}, 'go'))\n"
        "sys.exit(code)\n"))
    (tmp_path / "bin").mkdir()
    os.symlink(wrapper, tmp_path / "bin" / "rsync")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    new_service, config = make_service(tmp_path)
    remote = tmp_path / "remote"
    append_scalars(str(remote / "run" / EVENTS), range(3))
    service = new_service()
    service.start(timers=False)
    answers = []

    def request(names):
        answers.append(service.request(names))
        return answers[-1]

    watcher = inbox.start_watching(
        config_lib.build_config(config.logdir, [f"n={remote}/"], None, config.staging_root,
                                watch_names=["n"]), request)
    try:
        wait_until(lambda: (gate / "reached-list").exists(), 20, 0.01,
                   "the first sync's listing")
        late = remote / "late" / EVENTS
        late.parent.mkdir()
        append_scalars(str(late), range(2))
        # The watcher asks while the first sync still runs: one more sync comes after it.
        wait_until(lambda: any(a["queued_after"] for a in answers), 20, 0.01,
                   "a request for the late push while the first sync runs")
        (gate / "go").touch()
        published = os.path.join(config.logdir, "n", "late", EVENTS)
        wait_until(lambda: os.path.exists(published), 30, 0.05, "the late push published")
    finally:
        (gate / "go").touch()
        watcher.stop()
        service.stop()


def test_inbox_pushed_over_ssh_is_served_by_tensorboard(tmp_path, sshd_server,
                                                        tensorboard_server):
    """A node pushes with a plain `rsync -a` over ssh into INBOX/node1/; TensorBoard
    (`--load_fast=false --reload_interval 0`: only the plugin's reload can show the points)
    serves them, with the source's interval an hour away."""
    inbox_dir, node, logdir = tmp_path / "inbox", tmp_path / "node1", tmp_path / "logs"
    for folder in (inbox_dir, node / "run", logdir):
        folder.mkdir(parents=True)
    tb = tensorboard_server(logdir, "--rsync_source", f"inbox={inbox_dir}/",
                            "--rsync_watch", "inbox", "--rsync_interval", "3600",
                            "--rsync_staging", tmp_path / "staging",
                            "--load_fast=false", "--reload_interval", "0")

    def synced_once():
        (source,) = tb.get_json("/data/plugin/rsync/status")["sources"]
        return source["state"] == "idle" and source["last_end_unix_s"] is not None

    wait_until(synced_once, 60, message="the first sync of the empty inbox")
    latencies, total = [], 0
    for round_ in range(5):
        append_scalars(str(node / "run" / EVENTS), range(total, total + 5))
        total += 5
        subprocess.run(["rsync", "-a", "-e", sshd_server.ssh_command, f"{node}/",
                        f"{sshd_server.host}:{inbox_dir}/node1/"], check=True, timeout=60)
        pushed = time.monotonic()
        wait_until(lambda: len(tb.scalars("inbox/node1/run")) == total, 60, 0.02,
                   f"push {round_ + 1} to be served")
        latencies.append(time.monotonic() - pushed)
    print(f"\ninbox push -> served by TensorBoard (--load_fast=false): "
          f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s, "
          f"all {[round(s, 2) for s in latencies]}")
    (source,) = tb.get_json("/data/plugin/rsync/status")["sources"]
    assert source["error"] is None


def watched_service(tmp_path):
    """A real service (no timers) syncing the local folder tmp_path/remote/ as source 'n',
    watched; returns (service, watcher, remote, logdir)."""
    new_service, config = make_service(tmp_path)
    service = new_service()
    service.start(timers=False)
    watcher = inbox.start_watching(
        config_lib.build_config(config.logdir, [f"n={tmp_path / 'remote'}/"], None,
                                config.staging_root, watch_names=["n"]), service.request)
    return service, watcher, tmp_path / "remote", Path(config.logdir) / "n"


def hidden_files(folder):
    return sorted(os.path.relpath(os.path.join(d, name), folder)
                  for d, _, names in os.walk(folder) for name in names if name.startswith("."))


def test_a_checkpoint_being_pushed_is_never_published_half_written(tmp_path):
    """A node pushes a 30 MB checkpoint with plain `rsync -a` (slowed by --bwlimit) into a
    watched inbox; syncs run meanwhile (other files arrive), and the push is then killed,
    leaving rsync's `.model.ckpt.XXXXXX` behind for good. Neither the half-written temp nor
    the orphan ever reaches the logdir (nor staging); the finished file does."""
    node = tmp_path / "node"
    node.mkdir()
    checkpoint = node / "model.ckpt"
    checkpoint.write_bytes(os.urandom(30 * 1024 * 1024))
    service, watcher, remote, published = watched_service(tmp_path)
    try:
        push = subprocess.Popen(["rsync", "-a", "--bwlimit=2000", str(checkpoint),
                                 f"{remote}/run/"], start_new_session=True)
        try:
            temps = wait_until(lambda: [p for p in (remote / "run").iterdir()
                                        if p.name.startswith(".model.ckpt.")
                                        and p.stat().st_size > 1024 * 1024],
                               30, 0.05, "rsync's temp file to hold a part of the push")
            for name in ("notes-during.txt", "notes-after-kill.txt"):
                push_like_rsync(remote / "run", name, b"other file")
                wait_until(lambda: (published / "run" / name).exists(), 30, 0.05,
                           f"{name} published by a sync the watcher asked for")
                assert hidden_files(published) == []
                if push.poll() is None:
                    os.killpg(push.pid, signal.SIGKILL)
                    push.wait()
            assert temps[0].exists(), "the killed push left its temp file behind"
        finally:
            if push.poll() is None:
                os.killpg(push.pid, signal.SIGKILL)
                push.wait()
        subprocess.run(["rsync", "-a", str(checkpoint), f"{remote}/run/"], check=True,
                       timeout=60)
        wait_until(lambda: (published / "run" / "model.ckpt").exists(), 30, 0.05,
                   "the finished checkpoint published")
        assert (published / "run" / "model.ckpt").read_bytes() == checkpoint.read_bytes()
        assert hidden_files(published) == []
        assert hidden_files(tmp_path / "staging" / "staging") == []
    finally:
        watcher.stop()
        service.stop()


def test_an_inbox_renamed_away_and_made_again_is_watched_again(tmp_path):
    """`mv inbox inbox.old; mkdir inbox`: inotify keeps following the old folder, so the
    watcher checks that the path still leads to the folder it watches. A push into the new
    inbox is published without a timer (the service has none)."""
    service, watcher, remote, published = watched_service(tmp_path)
    try:
        push_like_rsync(remote / "run", "first.txt", b"1")
        wait_until(lambda: (published / "run" / "first.txt").exists(), 30, 0.05,
                   "the first push published")
        os.rename(remote, tmp_path / "remote.old")
        (remote / "run").mkdir(parents=True)
        push_like_rsync(remote / "run", "second.txt", b"2")
        wait_until(lambda: (published / "run" / "second.txt").exists(), 30, 0.05,
                   "a push into the new inbox published")
        push_like_rsync(remote / "run", "third.txt", b"3")
        wait_until(lambda: (published / "run" / "third.txt").exists(), 30, 0.05,
                   "the next push into the new inbox published")
    finally:
        watcher.stop()
        service.stop()
