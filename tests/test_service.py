"""The sync service's scheduling: the timer keeps the time the tab shows."""

import errno
import fcntl
import os
import threading
import time

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.engine import scheduler as scheduler_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tests.events import append_scalars, event_file_name
from tests.fixtures_tensorboard import wait_until

PROBED_INTERVAL_S = 0.3
SAFETY_S = 3.0  # scheduler.SAFETY_S for this test: 5 min would be a long wait


def source_of(snapshot):
    (source,) = snapshot["sources"]
    return source


def make_service(tmp_path, interval_s=0.0):
    remote, logdir = tmp_path / "remote", tmp_path / "logs"
    (remote / "run").mkdir(parents=True, exist_ok=True)
    logdir.mkdir(exist_ok=True)
    config = config_lib.build_config(str(logdir), [f"n={remote}/"], None,
                                     str(tmp_path / "staging"), interval_s)
    state = state_lib.SyncState(config.sources, config.interval_for)
    return lambda: service_lib.SyncService(config, state, reload_lib.NoReloader()), config


def test_timed_syncs_start_when_the_tab_said_and_a_click_postpones_them(tmp_path,
                                                                        monkeypatch):
    # A local folder is watched by its probe: its timed syncs come at the safety interval.
    monkeypatch.setattr(scheduler_lib, "SAFETY_S", SAFETY_S)
    delay = scheduler_lib.safety_interval_s("n", PROBED_INTERVAL_S)
    assert SAFETY_S * (1 - scheduler_lib.SAFETY_SPREAD) <= delay <= SAFETY_S
    new_service, _ = make_service(tmp_path, PROBED_INTERVAL_S)
    append_scalars(str(tmp_path / "remote" / "run" / event_file_name()), range(3))
    service = new_service()
    state = service.state
    service.start()
    try:
        wait_until(lambda: source_of(state.snapshot())["last_end_unix_s"], 10,
                   message="the first timed sync")
        for _ in range(2):
            before = source_of(state.snapshot())
            shown = before["next_sync_unix_s"]
            assert shown == before["last_end_unix_s"] + delay
            wait_until(lambda: (source_of(state.snapshot())["last_start_unix_s"] or 0) >
                       before["last_end_unix_s"], 10, message="the next timed sync")
            started = source_of(state.snapshot())["last_start_unix_s"]
            assert shown - 0.01 <= started <= shown + 1.0, (shown, started)
            wait_until(lambda: source_of(state.snapshot())["state"] == "idle", 10,
                       message="the timed sync to end")
        # A click: the next timed sync moves to its end + interval.
        service.request(["n"])
        service.wait(["n"], timeout_s=10)
        after = source_of(state.snapshot())
        assert after["next_sync_unix_s"] == after["last_end_unix_s"] + delay
        time.sleep(delay / 2)
        assert source_of(state.snapshot())["last_start_unix_s"] == after["last_start_unix_s"], \
            "no timed sync right after the click"
    finally:
        service.stop()


def park(config, data=b"parked events"):
    held = os.path.join(config.holding_dir, "n", "run")
    os.makedirs(held)
    with open(os.path.join(held, event_file_name()), "wb") as f:
        f.write(data)
    return os.path.join(config.logdir, "n", "run", event_file_name())


def test_files_parked_by_a_killed_process_are_put_back_at_start(tmp_path):
    new_service, config = make_service(tmp_path)
    published = park(config)
    new_service().stop()
    with open(published, "rb") as f:
        assert f.read() == b"parked events"
    assert os.listdir(os.path.join(config.holding_dir, "n", "run")) == []


def test_files_parked_by_a_live_process_are_left_to_it(tmp_path):
    """Another process holds the source while its run is parked: starting must not put the
    files back early, or TensorBoard would never drop the run."""
    new_service, config = make_service(tmp_path)
    published = park(config)
    os.makedirs(os.path.dirname(config.lock_path("n")), exist_ok=True)
    with open(config.lock_path("n"), "a") as held_lock:
        fcntl.flock(held_lock, fcntl.LOCK_EX)
        new_service().stop()
        assert not os.path.exists(published)
    new_service().stop()  # that process is gone now
    assert os.path.exists(published)


def test_parking_never_replaces_an_older_parked_copy(tmp_path):
    """A copy left parked (its name was taken in the logdir meanwhile) stays; the rewritten
    run is not cycled and says why."""
    logdir, holding = tmp_path / "logs", tmp_path / "holding"
    (logdir / "n" / "run").mkdir(parents=True)
    (holding / "n" / "run").mkdir(parents=True)
    (logdir / "n" / "run" / event_file_name()).write_bytes(b"published")
    (holding / "n" / "run" / event_file_name()).write_bytes(b"older parked copy")
    reloader = reload_lib.FastLoaderReloader(None, str(holding), reload_interval_s=1.0)
    reason = reloader._cycle_run(str(logdir), "n/run", threading.Event())
    assert "An older parked copy" in reason and "is in the way" in reason
    assert (logdir / "n" / "run" / event_file_name()).read_bytes() == b"published"
    assert (holding / "n" / "run" / event_file_name()).read_bytes() == b"older parked copy"


def test_a_source_without_event_files_gets_a_manifest(tmp_path):
    """Without one, every later sync would walk the whole staging tree."""
    new_service, config = make_service(tmp_path)
    (tmp_path / "remote" / "run" / "notes.txt").write_text("no events here")
    service = new_service()
    try:
        service.run_cycle("n")
    finally:
        service.stop()
    assert os.path.exists(config.manifest_path("n"))


def test_a_park_cut_between_link_and_unlink_heals_at_start(tmp_path):
    """Killed after linking a file into holding/ but before unlinking it from the logdir:
    both names are one file; start-up drops the parked name instead of warning forever."""
    new_service, config = make_service(tmp_path)
    published = park(config, b"same file")
    os.makedirs(os.path.dirname(published))
    parked = os.path.join(config.holding_dir, "n", "run", event_file_name())
    os.link(parked, published)
    new_service().stop()
    assert not os.path.exists(parked)
    with open(published, "rb") as f:
        assert f.read() == b"same file"


def test_publishing_goes_on_where_the_logdir_cannot_be_locked(tmp_path, monkeypatch):
    """NFS answers flock on a directory with EBADF (emulated here: no NFS server can run in
    this sandbox); the sync must publish as it did before that lock existed."""
    new_service, config = make_service(tmp_path)
    append_scalars(str(tmp_path / "remote" / "run" / event_file_name()), range(3))
    real_flock = fcntl.flock

    def flock(fd, op):
        if isinstance(fd, int) and os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    service = new_service()
    try:
        service.run_cycle("n")
    finally:
        service.stop()
    assert os.path.getsize(os.path.join(config.logdir, "n", "run", event_file_name())) > 0


def test_a_sync_that_ends_while_its_source_is_out_of_the_configuration_is_kept(tmp_path):
    """An edit removes the source while its sync runs and another edit adds it back: the
    sync's result shows (the tab said step 0 'live' while TensorBoard served step 40)."""
    new_service, config = make_service(tmp_path)
    events = str(tmp_path / "remote" / "run" / event_file_name())
    append_scalars(events, range(1))
    service = new_service()
    state = service.state
    service.start(timers=False)
    lock = None
    try:
        service.request(["n"])
        assert service.wait(timeout_s=30)
        assert [r["source_step"] for r in state.snapshot()["runs"]] == [0]
        append_scalars(events, range(1, 41))
        lock = open(config.lock_path("n"), "a")  # another process holds the source
        fcntl.flock(lock, fcntl.LOCK_EX)
        service.request(["n"])
        wait_until(lambda: source_of(state.snapshot())["state"] == "syncing", 10,
                   message="the sync waiting for the source's lock")
        service.reconfigure(config_lib.build_config(config.logdir, [], None,
                                                    config.staging_root))
        assert state.snapshot()["sources"] == [] and state.snapshot()["runs"] == []
        lock.close()  # the sync goes on, and ends while the source is not configured
        assert service.wait(timeout_s=30)
        service.reconfigure(config)
        assert [r["source_step"] for r in state.snapshot()["runs"]] == [40]
        assert source_of(state.snapshot())["last_result"]["runs_updated"] == 1
    finally:
        if lock is not None:
            lock.close()
        service.stop()
