"""`tb-rsync` end to end in subprocesses: exit codes, messages, status output."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing import event_file_loader

from tests.events import append_scalars, event_file_name
from tests.processes import (processes_mentioning, slow_source_config, start_tb_rsync,
                             stop_tb_rsync)

EVENTS = event_file_name()


def tb_rsync(*args, timeout=60, **kwargs):
    return subprocess.run([sys.executable, "-m", "tb_rsync_plugin.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def steps_in(path):
    loader = event_file_loader.EventFileLoader(str(path))
    return [e.step for e in loader.Load() if e.summary.value]


def make_remote(tmp_path):
    remote = tmp_path / "remote"
    (remote / "run 1").mkdir(parents=True)
    append_scalars(str(remote / "run 1" / EVENTS), range(4))
    (remote / "run 1" / "notes.txt").write_text("hello")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    return remote, logdir


def test_help_lists_commands():
    result = tb_rsync("--help")
    assert result.returncode == 0
    for command in ("sync", "watch", "status"):
        assert command in result.stdout


def test_sync_then_status(tmp_path):
    remote, logdir = make_remote(tmp_path)
    staging = tmp_path / "staging"
    result = tb_rsync("sync", "--logdir", logdir, "--source", f"n1={remote}/",
                      "--staging", staging)
    assert result.returncode == 0, result.stderr
    assert "n1:" in result.stdout and "1 run(s) updated" in result.stdout
    published = logdir / "n1" / "run 1" / EVENTS
    assert steps_in(published) == [0, 1, 2, 3]
    assert (logdir / "n1" / "run 1" / "notes.txt").read_text() == "hello"

    append_scalars(str(remote / "run 1" / EVENTS), range(4, 6))
    inode = os.stat(published).st_ino
    assert tb_rsync("sync", "--logdir", logdir, "--source", f"n1={remote}/",
                    "--staging", staging).returncode == 0
    assert steps_in(published) == [0, 1, 2, 3, 4, 5]
    assert os.stat(published).st_ino == inode, "event files must grow in place"

    status = tb_rsync("status", "--logdir", logdir, "--staging", staging)
    assert status.returncode == 0, status.stderr
    assert "n1/run 1" in status.stdout
    line = next(l for l in status.stdout.splitlines() if l.startswith("n1/run 1"))
    assert " 5 " in line and "unknown" in line


def test_status_before_any_sync(tmp_path):
    result = tb_rsync("status", "--logdir", tmp_path, "--staging", tmp_path.parent / "st-none")
    assert result.returncode == 0
    assert "No sync has run" in result.stdout


def test_failure_is_one_error_line_and_exit_1(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    result = tb_rsync("sync", "--logdir", logdir, "--source", f"gone={tmp_path}/missing/",
                      "--staging", tmp_path / "staging")
    assert result.returncode == 1
    error_lines = [l for l in result.stderr.splitlines() if "error:" in l and not l.startswith(" ")]
    assert len(error_lines) == 1 and "gone" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert os.listdir(logdir) == []
    status = tb_rsync("status", "--logdir", logdir, "--staging", tmp_path / "staging")
    assert status.returncode == 1 and "error:" in status.stdout


def test_bad_arguments(tmp_path):
    no_source = tb_rsync("sync", "--logdir", tmp_path)
    assert no_source.returncode == 1 and "No sources given" in no_source.stderr
    bad_pair = tb_rsync("sync", "--logdir", tmp_path, "--source", "oops")
    assert bad_pair.returncode == 1 and "NAME=SOURCE" in bad_pair.stderr
    inside = tb_rsync("sync", "--logdir", tmp_path, "--source", "a=/x/",
                      "--staging", tmp_path / "st")
    assert inside.returncode == 1 and "outside the logdir" in inside.stderr
    overlap = tb_rsync("sync", "--logdir", tmp_path, "--source", f"a={tmp_path}/sub/",
                       "--staging", tmp_path.parent / "st")
    assert overlap.returncode == 1 and "overlaps the logdir" in overlap.stderr
    (tmp_path / "f").write_text("")
    not_a_folder = tb_rsync("sync", "--logdir", tmp_path / "f", "--source", "a=/x/")
    assert not_a_folder.returncode == 1 and "is a file, not a folder" in not_a_folder.stderr
    for interval, sentence in (("abc", "--interval must be a number of seconds, not 'abc'."),
                               ("0", "--interval must be more than 0 seconds."),
                               ("-1", "--interval must be more than 0 seconds.")):
        watch = tb_rsync("watch", "--logdir", tmp_path, "--source", "a=/x/",
                         "--interval", interval)
        assert (watch.returncode, watch.stderr) == (1, f"error: {sentence}\n")
    usage = tb_rsync("frobnicate")
    assert usage.returncode == 2


def test_a_config_file_without_sources_says_so(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    result = tb_rsync("sync", "--logdir", tmp_path / "logs", "--config", tmp_path / "empty.toml")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: The config file '{tmp_path / 'empty.toml'}' has no "
                                     "[[source]] or [[discover]] tables; add one or pass --source "
                                     "NAME=SOURCE.")


def test_missing_rsync_is_a_sentence(tmp_path):
    remote, logdir = make_remote(tmp_path)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # python, but no rsync
    result = tb_rsync("sync", "--logdir", logdir, "--source", f"n1={remote}/",
                      "--staging", tmp_path / "staging", env=env)
    assert result.returncode == 1
    assert "rsync is not installed" in result.stderr and "Traceback" not in result.stderr


def test_watch_syncs_until_ctrl_c(tmp_path):
    remote, logdir = make_remote(tmp_path)
    proc = start_tb_rsync("watch", "--logdir", logdir, "--source", f"n1={remote}/",
                          "--staging", tmp_path / "staging", "--interval", "0.5")
    published = logdir / "n1" / "run 1" / EVENTS
    try:
        deadline = time.time() + 30
        while not (published.exists() and steps_in(published) == [0, 1, 2, 3]):
            assert time.time() < deadline, "watch did not publish"
            time.sleep(0.2)
        append_scalars(str(remote / "run 1" / EVENTS), range(4, 8))
        while steps_in(published) != list(range(8)):
            assert time.time() < deadline, "watch did not publish the growth"
            time.sleep(0.2)
    finally:
        out, err = stop_tb_rsync(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


@pytest.mark.parametrize("signum, ignored, code, said", [
    (signal.SIGINT, ("SIGINT",), 130, "interrupted"),  # a background job of a script
    (signal.SIGTERM, (), 143, "tb-rsync: stopped (SIGTERM)"),  # systemd, docker stop, kill
    (signal.SIGHUP, (), 129, "tb-rsync: stopped (SIGHUP)")],  # the terminal closed
    ids=["SIGINT-while-ignored", "SIGTERM", "SIGHUP"])
def test_watch_stops_on_each_stop_signal(tmp_path, signum, ignored, code, said):
    remote, logdir = make_remote(tmp_path)
    proc = start_tb_rsync("watch", "--logdir", logdir, "--source", f"n1={remote}/",
                          "--staging", tmp_path / "staging", "--interval", "0.5",
                          ignored=ignored)
    try:
        assert proc.stdout.readline().startswith("tb-rsync: syncing 1 source(s)")
        assert proc.stdout.readline().startswith("n1: "), "the first sync's line"
    finally:
        out, err = stop_tb_rsync(proc, signum)
    assert (proc.returncode, err.strip()) == (code, said), err


def test_watch_under_nohup_outlives_sighup(tmp_path):
    """nohup ignores SIGHUP so that a closing terminal does not stop the job: that stays so.
    (Had SIGHUP stopped it, a SIGTERM sent after it could not change the exit code: 129.)"""
    remote, logdir = make_remote(tmp_path)
    proc = start_tb_rsync("watch", "--logdir", logdir, "--source", f"n1={remote}/",
                          "--staging", tmp_path / "staging", "--interval", "0.5",
                          ignored=("SIGHUP",))
    try:
        assert proc.stdout.readline().startswith("tb-rsync: syncing 1 source(s)")
        assert proc.stdout.readline().startswith("n1: ")
        proc.send_signal(signal.SIGHUP)
    finally:
        out, err = stop_tb_rsync(proc, signal.SIGTERM)
    assert proc.returncode == 143, err


def test_watch_prints_changes_errors_once_recoveries_and_a_summary(tmp_path):
    remote, logdir = make_remote(tmp_path)
    late = tmp_path / "late"
    proc = start_tb_rsync("watch", "--logdir", logdir, "--source", f"n1={remote}/",
                          "--source", f"late={late}/", "--staging", tmp_path / "staging",
                          "--interval", "0.3", "--summary-every", "1")
    try:
        time.sleep(3)  # about ten no-change syncs of n1, and late's first retry
        late.mkdir()
        append_scalars(str(late / EVENTS), range(3))
        deadline = time.time() + 40
        while not (logdir / "late" / EVENTS).exists():
            assert time.time() < deadline, "late did not recover"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        out, err = stop_tb_rsync(proc)
    assert proc.returncode == 130, err
    assert [line for line in out.splitlines() if line.startswith("n1:")] == [
        next(line for line in out.splitlines() if line.startswith("n1: "))], \
        "n1 changed once: one line, not one per sync\n" + out
    assert err.count("late: error: Sync of 'late'") == 1, err
    assert "late: retrying in 5 s" in err, err
    assert "late: syncs again after 1 failed attempt(s)" in out or \
        "late: syncs again after 2 failed attempt(s)" in out, out
    assert "tb-rsync: 1 of 2 source(s) ok;" in out and "failing: late" in out, out


def test_watch_source_syncs_a_pushed_inbox_between_intervals(tmp_path):
    """`--watch-source`: the hour-long interval never comes; the push is synced anyway."""
    remote, logdir = make_remote(tmp_path)
    proc = start_tb_rsync("watch", "--logdir", logdir, "--source", f"inbox={remote}/",
                          "--staging", tmp_path / "staging", "--interval", "3600",
                          "--watch-source", "inbox")
    published = logdir / "inbox" / "run 2" / EVENTS
    try:
        deadline = time.time() + 30
        while not (logdir / "inbox" / "run 1" / EVENTS).exists():  # the first pass
            assert time.time() < deadline, "watch did not publish"
            time.sleep(0.2)
        (tmp_path / "node" / "run 2").mkdir(parents=True)
        append_scalars(str(tmp_path / "node" / "run 2" / EVENTS), range(3))
        subprocess.run(["rsync", "-a", f"{tmp_path / 'node'}/", f"{remote}/"], check=True)
        while not (published.exists() and steps_in(published) == [0, 1, 2]):
            assert time.time() < deadline, "the pushed run was not published"
            time.sleep(0.1)
    finally:
        out, err = stop_tb_rsync(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "error" not in err, err


def test_watch_source_must_name_a_local_source(tmp_path):
    result = tb_rsync("watch", "--logdir", tmp_path, "--source", "far=gpu1:/logs/",
                      "--watch-source", "far", "--staging", tmp_path.parent / "st")
    assert result.returncode == 1
    assert "only applies to local folders" in result.stderr and "Traceback" not in result.stderr


def test_status_keeps_sources_synced_by_other_processes(tmp_path):
    remote, logdir = make_remote(tmp_path)
    staging = tmp_path / "staging"
    for name in ("n1", "n2"):
        result = tb_rsync("sync", "--logdir", logdir, "--source", f"{name}={remote}/",
                          "--staging", staging)
        assert result.returncode == 0, result.stderr
    status = tb_rsync("status", "--logdir", logdir, "--staging", staging).stdout
    assert "source n1" in status and "source n2" in status
    assert "n1/run 1" in status and "n2/run 1" in status


def test_publish_problems_are_printed(tmp_path):
    remote, logdir = make_remote(tmp_path)
    source_file = remote / "run 1" / EVENTS
    good = source_file.stat().st_size
    append_scalars(str(source_file), [4])
    data = bytearray(source_file.read_bytes())
    data[good + 14] ^= 0xFF  # inside the new record's data: its data CRC no longer matches
    source_file.write_bytes(bytes(data))
    result = tb_rsync("sync", "--logdir", logdir, "--source", f"n1={remote}/",
                      "--staging", tmp_path / "staging")
    assert result.returncode == 0, result.stderr
    assert "n1: warning: " in result.stderr and "corrupt record" in result.stderr
    assert steps_in(logdir / "n1" / "run 1" / EVENTS) == [0, 1, 2, 3]
    status = tb_rsync("status", "--logdir", logdir, "--staging", tmp_path / "staging")
    assert "n1/run 1: " in status.stdout and "corrupt record" in status.stdout
    assert str(remote) in status.stdout, "the message names the file at the source"
    assert "staging" not in status.stdout.split("n1/run 1: ")[1]


def test_a_folder_that_becomes_a_file_stops_only_that_path(tmp_path):
    """Staging is ours, so rsync makes way there; the logdir keeps the folder (nothing is
    deleted), so that one path is an error naming it and the other runs keep syncing."""
    remote, logdir = make_remote(tmp_path)
    (remote / "x").mkdir()
    (remote / "x" / "notes.txt").write_text("in a folder")
    args = ("--logdir", logdir, "--source", f"n1={remote}/", "--staging", tmp_path / "staging")
    assert tb_rsync("sync", *args).returncode == 0
    shutil.rmtree(remote / "x")
    (remote / "x").write_text("now a file")
    for steps in (range(4, 6), [6]):  # every sync says so, and the run keeps growing
        append_scalars(str(remote / "run 1" / EVENTS), steps)
        result = tb_rsync("sync", *args)
        assert result.returncode == 0, result.stderr
        assert f"n1: warning: '{logdir / 'n1' / 'x'}' is a folder in the logdir where the " \
               "source has a file" in result.stderr, result.stderr
        assert steps_in(logdir / "n1" / "run 1" / EVENTS) == list(range(steps[-1] + 1))
        assert (logdir / "n1" / "x" / "notes.txt").read_text() == "in a folder"
    (logdir / "n1" / "x").rename(tmp_path / "kept")  # the user moves the folder away
    result = tb_rsync("sync", *args)
    assert "warning" not in result.stderr, result.stderr
    assert (logdir / "n1" / "x").read_text() == "now a file"


def test_symlinks_at_the_source_are_a_warning_not_a_run_error(tmp_path):
    remote, logdir = make_remote(tmp_path)
    (remote / "run 1" / "latest").symlink_to("notes.txt")  # inside the tree: rsync keeps it
    result = tb_rsync("sync", "--logdir", logdir, "--source", f"n1={remote}/",
                      "--staging", tmp_path / "staging")
    assert result.returncode == 0, result.stderr
    assert "1 symlink(s) at the source were not published" in result.stderr
    assert not os.path.lexists(logdir / "n1" / "run 1" / "latest")
    status = tb_rsync("status", "--logdir", logdir, "--staging", tmp_path / "staging")
    assert "error" not in status.stdout


def test_killed_tb_rsync_takes_its_rsync_along(tmp_path):
    toml = slow_source_config(tmp_path, mib=4, kib_per_s=256)  # ~16 s of rsync
    staging = tmp_path / "staging"
    (tmp_path / "logs").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tb_rsync_plugin.cli", "sync", "--logdir",
                             str(tmp_path / "logs"), "--config", str(toml), "--staging",
                             str(staging)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while not processes_mentioning(str(staging), "rsync"):
        assert time.time() < deadline, "rsync did not start"
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no handler runs; the kernel's parent-death signal stops rsync
    proc.wait()
    deadline = time.time() + 10
    while processes_mentioning(str(staging), "rsync"):
        assert time.time() < deadline, "rsync outlived the tb-rsync that started it"
        time.sleep(0.1)


BUGGY_PUBLISHER = """
import sys
from tb_rsync_plugin import cli
from tb_rsync_plugin.publishing import publish
def broken_publish(*args, **kwargs):
    raise KeyError("injected bug")
publish.publish = broken_publish
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_bug_in_the_engine_exits_3_with_its_traceback(tmp_path):
    """A bug (here injected: the publisher raises KeyError) is not dressed up as a sync error."""
    remote, logdir = make_remote(tmp_path)
    result = subprocess.run([sys.executable, "-c", BUGGY_PUBLISHER, "sync", "--logdir",
                             str(logdir), "--source", f"n1={remote}/", "--staging",
                             str(tmp_path / "staging")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr
    assert "KeyError: 'injected bug'" in result.stderr
    assert result.stderr.rstrip().endswith("please report it with the traceback above.")
    assert [files for _, _, files in os.walk(logdir) if files] == [], "nothing was published"
    status = tb_rsync("status", "--logdir", logdir, "--staging", tmp_path / "staging")
    assert "Internal error in tb-rsync (KeyError" in status.stdout


def test_a_corrupt_file_keeps_its_run_in_error_while_another_file_grows(tmp_path):
    """The error belongs to the stuck file: new data in the run's other file does not hide it."""
    remote, logdir = make_remote(tmp_path)
    staging = tmp_path / "staging"
    stuck = remote / "run 1" / EVENTS
    good = stuck.stat().st_size
    append_scalars(str(stuck), [4])
    data = bytearray(stuck.read_bytes())
    data[good + 14] ^= 0xFF
    stuck.write_bytes(bytes(data))
    other = remote / "run 1" / event_file_name(pid=5678)
    append_scalars(str(other), [10])
    args = ("--logdir", logdir, "--source", f"n1={remote}/", "--staging", staging)
    assert tb_rsync("sync", *args).returncode == 0
    append_scalars(str(other), [11])
    assert tb_rsync("sync", *args).returncode == 0
    assert steps_in(logdir / "n1" / "run 1" / other.name) == [10, 11]
    status = tb_rsync("status", "--logdir", logdir, "--staging", staging).stdout
    assert "n1/run 1: " in status and "corrupt record" in status, status

    stuck.write_bytes(bytes(data[:good]))  # the trainer rewrites the file without the bad record
    append_scalars(str(stuck), [4, 5])
    assert tb_rsync("sync", *args).returncode == 0
    assert steps_in(logdir / "n1" / "run 1" / EVENTS) == [0, 1, 2, 3, 4, 5]
    status = tb_rsync("status", "--logdir", logdir, "--staging", staging).stdout
    assert "corrupt record" not in status, status


def test_plain_progress_lines_only_for_syncs_that_take_a_while():
    """Off a terminal a sync prints a progress line once it has run 5 s, then every 5 s;
    the next sync starts its own timer (a 0.1 s sync after a long one printed a line)."""
    from tb_rsync_plugin.cli_output import ProgressPrinter
    from tb_rsync_plugin.transports.transfer import Progress
    out = io.StringIO()  # not a terminal
    now = [0.0]
    printer = ProgressPrinter(out, clock=lambda: now[0])

    def report(at, percent):
        now[0] = at
        printer.update("gpu1", Progress(percent * 100, percent, 2048.0, "events"))

    report(0.0, 10)
    report(4.9, 20)
    assert out.getvalue() == "", "a short sync prints no progress snapshot"
    for at, percent in ((5.0, 40), (9.9, 50), (10.0, 60)):
        report(at, percent)
    assert out.getvalue() == ("gpu1: events 3.9 KiB 40% 2.0 KiB/s\n"
                              "gpu1: events 5.9 KiB 60% 2.0 KiB/s\n")
    printer.finished("gpu1")
    report(40.0, 10)
    report(40.1, 100)
    assert out.getvalue().count("\n") == 2, "the next, short sync prints nothing"


def test_watch_ends_each_syncs_progress_timer(tmp_path):
    """The CLI's cycle reporter ends each sync's timer: a sync that reports progress long
    after the previous one started prints no line of its own (real rsync, real scheduler)."""
    from tb_rsync_plugin import cli, cli_output
    remote, logdir = make_remote(tmp_path)
    out, now, seen = io.StringIO(), [0.0], []
    printer = cli_output.ProgressPrinter(out, clock=lambda: now[0])
    args = cli.build_parser().parse_args(["watch", "--logdir", str(logdir), "--source",
                                          f"n1={remote}/", "--staging",
                                          str(tmp_path / "staging")])
    service = cli._service(cli._config(args, 30.0), on_progress=lambda name, p: (
        seen.append(p), printer.update(name, p)))
    service.scheduler.add_listener(cli_output.CycleReporter(service, printer, True).on_end)
    service.start(timers=False)
    try:
        for at in (0.0, 100.0):  # two syncs, each appending to the event file
            now[0] = at
            append_scalars(str(remote / "run 1" / EVENTS), [int(at) + 10])
            reported = len(seen)
            service.request()
            assert service.wait(timeout_s=60)
            assert len(seen) > reported, "the sync reported progress"
    finally:
        service.stop()
    assert out.getvalue() == ""


def test_two_processes_with_their_own_staging_publish_each_record_once(tmp_path):
    """Two tb-rsync processes, each with its own staging root (so its own source lock), sync
    one source into one logdir at the same moment: the lock on LOGDIR/NAME keeps them from
    appending the same new records twice."""
    remote, logdir = make_remote(tmp_path)
    source_file = remote / "run 1" / EVENTS
    step = 4
    for round_ in range(12):
        append_scalars(str(source_file), range(step, step + 2000))  # ~100 KB per round
        step += 2000
        procs = [subprocess.Popen([sys.executable, "-m", "tb_rsync_plugin.cli", "sync",
                                   "--logdir", str(logdir), "--source", f"n1={remote}/",
                                   "--staging", str(tmp_path / f"staging{i}")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        published = (logdir / "n1" / "run 1" / EVENTS).read_bytes()
        assert published == source_file.read_bytes(), f"round {round_}: published differs"


def test_status_forgets_a_source_nobody_syncs_any_more(tmp_path):
    """One typo'd source would keep `status` in error (exit 1) for good; --forget drops it."""
    remote, logdir = make_remote(tmp_path)
    staging = tmp_path / "staging"
    args = ("--logdir", logdir, "--staging", staging)
    assert tb_rsync("sync", *args, "--source", f"typo={tmp_path / 'nope'}/").returncode == 1
    assert tb_rsync("sync", *args, "--source", f"n1={remote}/").returncode == 0
    assert tb_rsync("status", *args).returncode == 1
    result = tb_rsync("status", *args, "--forget", "typo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tb-rsync: forgot typo (published files stay in the logdir).")
    assert "source typo" not in result.stdout and "source n1" in result.stdout
    unknown = tb_rsync("status", *args, "--forget", "nobody")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().startswith("error: No source named 'nobody' in the saved state")


def test_status_says_when_a_failing_source_is_retried(tmp_path):
    """What a `watch` or TensorBoard journalled about a failing source, as `status` prints it."""
    from tb_rsync_plugin import cli_output, config
    from tb_rsync_plugin.engine import state, state_journal
    now = [1000.0]
    synced = state.SyncState([config.Source("gpu7", "gpu7:/logs/")], lambda s: 5.0,
                             clock=lambda: now[0])
    synced.fail("gpu7", "Sync of 'gpu7' from 'gpu7:/logs/' failed: the host is unreachable.")
    synced.set_schedule("gpu7", 40.0, retry=True)
    synced.save(str(tmp_path / "state"))
    text = cli_output.format_status(state_journal.load_snapshot(str(tmp_path / "state")),
                                    now[0] + 10)
    assert text.splitlines()[0] == \
        "source gpu7 (gpu7:/logs/): error, retrying in 30 s, last sync 10 s ago"
