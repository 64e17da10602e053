"""Fault injection against real `tb-rsync sync` processes, real rsync, a real TensorBoard.

Each case injects one kind of fault many times while the sources change, and after every
fault checks DESIGN.md's invariants with `tests.invariants.LogdirChecker` (every event file a
record-aligned prefix of a version of its source; no partially written file; nothing with
'tfevents' half-written; nothing written outside logdir/staging; replaced files in
quarantine; no published record ever lost), then checks that the next successful sync
converges to the source. Figures go to test-artifacts/faults.json; docs/FAULTS.md has the
figures of a run and what they mean.

Run: python -m pytest tests/test_faults.py -q   (about two minutes on 2 cores)
"""

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from tb_rsync_plugin.engine import state_journal
from tests.events import big_event_bytes, file_version_event, make_event, scalar_bytes
from tests.fixtures_tensorboard import TensorBoardProcess, wait_until
from tests.invariants import LogdirChecker, Sandbox, SourceFiles, frame
from tests.processes import process_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACT = os.path.join(ROOT, "test-artifacts", "faults.json")
CLI = [sys.executable, "-m", "tb_rsync_plugin.cli"]
SMALL = ("events.out.tfevents.1700000000.node1.11.0",
         "run b/events.out.tfevents.1700000001.node2.22.0")
BIG = "big run/events.out.tfevents.1700000002.node3.33.0"
CKPT, NOTES = "ckpt/model.ckpt-data", "run b/notes.txt"
FIGURES = {}
_BLOBS = []


def blobs():
    """Big records (built once: TensorBoard's RecordWriter CRCs in pure Python)."""
    if not _BLOBS:
        _BLOBS.extend(big_event_bytes(100_000 + i, size)
                      for i, size in enumerate((64_000, 256_000, 1_000_000)))
    return _BLOBS


@pytest.fixture(scope="module", autouse=True)
def figures_file():
    """Write every case's figures, passed or not, when the module ends."""
    started = time.monotonic()
    yield
    cases = dict(sorted(FIGURES.items()))
    total = {key: sum(c.get(key, 0) for c in cases.values())
             for key in ("faults_injected", "checks", "bytes_lost", "logdirs_invalid")}
    os.makedirs(os.path.dirname(ARTIFACT), exist_ok=True)
    with open(ARTIFACT, "w") as f:
        json.dump({"command": "python -m pytest tests/test_faults.py -q",
                   "cases_run": len(cases), **total,
                   "cases_passed": sum(1 for c in cases.values() if c["passed"]),
                   "duration_s": round(time.monotonic() - started, 1),
                   "cases": cases}, f, indent=1)


class Case:
    """One case's figures; recorded even when the case fails part-way."""

    def __init__(self, name, checker):
        self.name, self.checker, self.faults, self.extra = name, checker, 0, {}

    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, kind, value, tb):
        FIGURES[self.name] = {"passed": kind is None, "faults_injected": self.faults,
                              "duration_s": round(time.monotonic() - self.started, 1),
                              **self.checker.figures(), **self.extra}
        return False

    def assert_clean(self):
        fig = self.checker.figures()
        assert fig["logdirs_invalid"] == 0 and fig["bytes_lost"] == 0, fig["problems"]


# --- a source that grows like a training job --------------------------------------------

class Trainer:
    """Grows event files (scalars written in pieces, big records) and saves checkpoints."""

    def __init__(self, source, rng, big=True):
        self.source, self.rng, self.big = source, rng, big
        self.step = dict.fromkeys(SMALL, 0)

    def grow(self, scale=1.0):
        rng = self.rng
        for i, rel in enumerate(SMALL):
            count = rng.randrange(1, 60)
            data = scalar_bytes(range(self.step[rel], self.step[rel] + count),
                                tag="loss" * (1 + i), wall_time0=1.7e9 + 1000 * i,
                                header=self.step[rel] == 0)
            self.step[rel] += count
            self.source.append(rel, data, pieces=rng.randrange(1, 4))
        if self.big:
            for _ in range(rng.choice((0, 0, 1)) if scale >= 1 else 1):
                self.source.append(BIG, rng.choice(blobs()), pieces=rng.randrange(1, 3))
        if rng.random() < 0.5 or not os.path.exists(self.source.path(CKPT)):
            self.source.replace(CKPT, os.urandom(int(rng.randrange(50_000, 400_000) * scale)))
        if rng.random() < 0.3 or not os.path.exists(self.source.path(NOTES)):
            self.source.replace(NOTES, f"note {rng.random()}\n".encode())


# --- running tb-rsync -------------------------------------------------------------------

def write_config(sandbox, bwlimit=None, names=("n1",), source_dir=None, ssh=None):
    path = os.path.join(sandbox.conf, "sources.toml")
    with open(path, "w") as f:
        for name in names:
            src = source_dir or sandbox.src
            f.write(f'[[source]]\nname = "{name}"\nsource = "{src}/"\n')
            if bwlimit:
                f.write(f"bwlimit = {bwlimit}\n")
            if ssh:
                f.write(f"ssh = {json.dumps(ssh)}\n")
    return path


def sync_args(sandbox, config):
    return CLI + ["sync", "--logdir", sandbox.logs, "--config", config,
                  "--staging", sandbox.staging]


def start_sync(sandbox, config, preexec_fn=None):
    return subprocess.Popen(sync_args(sandbox, config), env=sandbox.env(), cwd=sandbox.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=preexec_fn)


def run_sync(sandbox, config, preexec_fn=None, timeout=90):
    proc = start_sync(sandbox, config, preexec_fn)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def error_lines(stderr):
    """The `error:` sentences (details are indented under them)."""
    return [l for l in stderr.splitlines() if "error:" in l and not l.startswith(" ")]


def assert_failed_with_a_sentence(rc, out, err, *words):
    assert rc == 1, (rc, out, err)
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].rstrip().endswith("."), lines[0]
    if words:
        assert any(w in lines[0] for w in words), lines[0]
    return lines[0]


def assert_ok(rc, out, err):
    assert rc == 0 and "Traceback" not in err, (rc, out, err)


def converge(case, sandbox, config, when):
    """The next sync succeeds and the logdir equals the source."""
    assert_ok(*run_sync(sandbox, config))
    assert case.checker.check(when) == []
    assert case.checker.converged() == [], when


def load_status(sandbox):
    return state_journal.load_snapshot(os.path.join(sandbox.staging, "state"))


# --- process trees ----------------------------------------------------------------------

def rsync_descendants(pid, table=None):
    table = process_table() if table is None else table
    found, frontier = [], {pid}
    while frontier:
        children = {p for p, (pp, _, _) in table.items() if pp in frontier}
        found += [p for p in children if table[p][1] == "rsync"]
        frontier = children
    return found


def rsync_owners(staging_dir):
    """{staging folder of one source: set of non-rsync processes running rsync into it}."""
    table, owners = process_table(), {}
    for pid, (ppid, name, cmdline) in table.items():
        if name != "rsync":
            continue
        match = re.search(r"(\S*/staging/staging/[^/ ]+)/\s*$", cmdline)
        if not match or not match.group(1).startswith(staging_dir):
            continue
        owner = ppid
        while owner in table and table[owner][1] == "rsync":
            owner = table[owner][0]
        owners.setdefault(match.group(1), set()).add(owner)
    return owners


def kill_an_rsync(proc, delay_s, rng):
    """Once `proc` runs rsync, wait `delay_s`, then SIGKILL one of its rsync processes."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and not rsync_descendants(proc.pid):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)
    time.sleep(delay_s)
    victims = rsync_descendants(proc.pid)
    if not victims or proc.poll() is not None:
        return None
    victim = rng.choice(victims)
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return victim


# --- 1. rsync killed ---------------------------------------------------------------------

# The kill cases go on until this many kills landed, however slow the machine: a bound on
# attempts, not on time (a busy machine once stopped a 50 s loop at 48 kills). The timeout
# only catches a hang.
KILLS = 50
MAX_ATTEMPTS = 500


@pytest.mark.timeout(1200)
def test_rsync_sigkilled_mid_transfer(tmp_path):
    """rsync (any of its processes, any phase) SIGKILLed while the sources grow."""
    rng = random.Random(1)
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    trainer, config = Trainer(source, rng), write_config(sandbox, bwlimit=4096)
    checker = LogdirChecker(sandbox, source, "n1")
    with Case("1_rsync_sigkill", checker) as case:
        ok_syncs, failed = 0, 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if case.faults >= KILLS:
                break
            trainer.grow()
            proc = start_sync(sandbox, config)
            victim = kill_an_rsync(proc, rng.uniform(0, 0.12), rng)
            out, err = proc.communicate(timeout=60)
            case.faults += victim is not None
            assert checker.check(f"after rsync kill {case.faults}") == []
            if proc.returncode == 0:
                ok_syncs += 1  # the kill missed: the sources were at rest, so it converged
                assert checker.converged() == [], "a successful sync did not converge"
            else:
                failed += 1
                assert_failed_with_a_sentence(proc.returncode, out, err, "Sync of 'n1'")
        case.extra.update(syncs_failed=failed, syncs_ok=ok_syncs)
        converge(case, sandbox, config, "after the last rsync kill")
        assert case.faults >= KILLS, f"only {case.faults} kills landed in {attempt} attempts"
        case.assert_clean()


# --- 2. tb-rsync killed -------------------------------------------------------------------

@pytest.mark.timeout(1200)
def test_tb_rsync_sigkilled_at_random_moments(tmp_path):
    """Whole `tb-rsync sync` processes SIGKILLed (like the OOM killer) while sources grow."""
    rng = random.Random(2)
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    trainer, config = Trainer(source, rng), write_config(sandbox, bwlimit=8192)
    checker = LogdirChecker(sandbox, source, "n1")
    staging_dir = os.path.join(sandbox.staging, "staging")
    with Case("2_tb_rsync_sigkill", checker) as case:
        orphans, finished = 0, 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if case.faults >= KILLS:
                break
            trainer.grow(scale=rng.choice((0.2, 1.0)))
            proc = start_sync(sandbox, config)
            time.sleep(rng.uniform(0.1, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                case.faults += 1
            out, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                finished += 1
                assert checker.converged() == [], "a successful sync did not converge"
            # An append killed part-way leaves part of a record (TensorBoard waits for the
            # rest) and a killed replace may leave its temp file: both allowed here.
            assert checker.check(f"after kill {case.faults}", allow_partial=True) == []
            # rsync runs in its own session: killing tb-rsync does not kill it.
            orphans += len(rsync_owners(staging_dir))
        case.extra.update(syncs_finished_before_kill=finished,
                          orphaned_rsync_seen_after_kill=orphans)
        converge(case, sandbox, config, "after the last kill")
        assert checker.partial_seen == 0 or checker.check("final", allow_partial=False) == []
        assert case.faults >= KILLS, f"only {case.faults} kills landed in {attempt} attempts"
        case.assert_clean()


# --- 3. disk full, file too large ---------------------------------------------------------

def fsize_limit(limit_bytes):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return preexec


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                                capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def umount(path):
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=20)


@pytest.mark.timeout(120)
def test_file_size_limit_while_publishing_and_staging(tmp_path):
    """RLIMIT_FSIZE hit by the publisher (EFBIG) and by rsync; then lifted."""
    rng = random.Random(3)
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    trainer, config = Trainer(source, rng), write_config(sandbox)
    checker = LogdirChecker(sandbox, source, "n1")
    with Case("3a_file_size_limit", checker) as case:
        trainer.grow()
        source.append(BIG, blobs()[0])
        converge(case, sandbox, config, "first sync")
        # Staging gets ahead of the logdir: a sync into a logdir that refuses writes (an
        # immutable folder: root passes permission checks) fails after rsync, so the next
        # publish has more to write than rsync.
        for _ in range(3):
            trainer.grow()
        source.append(BIG, blobs()[1])
        subprocess.run(["chattr", "+i", os.path.join(sandbox.logs, "n1")], check=True)
        try:
            assert_failed_with_a_sentence(*run_sync(sandbox, config), "not writable")
        finally:
            subprocess.run(["chattr", "-i", os.path.join(sandbox.logs, "n1")], check=True)
        published = os.path.getsize(os.path.join(sandbox.logs, "n1", BIG))
        limit = published + len(blobs()[0]) // 2  # mid-record of the big file's new bytes
        rc, out, err = run_sync(sandbox, config, preexec_fn=fsize_limit(limit))
        case.faults += 1
        # Per file: the other files are published; the big one is reported, in one line.
        assert_ok(rc, out, err)
        warnings = [l for l in (out + err).splitlines() if "warning:" in l]
        assert len(warnings) == 1 and BIG in warnings[0] and "largest file" in warnings[0], \
            (out, err)
        assert checker.check("publisher hit RLIMIT_FSIZE", allow_partial=True,
                             allow_temps=False) == []
        run = next(r for r in load_status(sandbox)["runs"] if r["run"] == "n1/big run")
        assert run["state"] == "error" and "largest file" in run["state_detail"]
        converge(case, sandbox, config, "after lifting the file-size limit")

        trainer.grow()
        source.append(BIG, blobs()[0])
        staged = os.path.getsize(os.path.join(sandbox.staging, "staging", "n1", BIG))
        rc, out, err = run_sync(sandbox, config, preexec_fn=fsize_limit(staged + 1000))
        case.faults += 1
        assert_failed_with_a_sentence(rc, out, err, "largest file allowed")
        assert checker.check("rsync hit RLIMIT_FSIZE") == []
        converge(case, sandbox, config, "after lifting the limit again")
        case.assert_clean()


@pytest.mark.timeout(120)
def test_disk_full_while_publishing_and_staging(tmp_path):
    """A small tmpfs holds the logdir (then the staging root) and fills up; then grows."""
    rng = random.Random(4)
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    trainer, config = Trainer(source, rng), write_config(sandbox)
    checker = LogdirChecker(sandbox, source, "n1")
    mounted = []
    try:
        with Case("3b_disk_full", checker) as case:
            if not mount_tmpfs(sandbox.logs, "3m"):
                case.extra["skipped"] = "cannot mount a tmpfs here (needs root)"
                pytest.skip("cannot mount a tmpfs here (needs root); RLIMIT case still runs")
            mounted.append(sandbox.logs)
            trainer.grow(scale=0.2)
            converge(case, sandbox, config, "first sync into the small logdir")
            for _ in range(3):
                trainer.grow()
                source.append(BIG, blobs()[2])
            rc, out, err = run_sync(sandbox, config)
            case.faults += 1
            assert_failed_with_a_sentence(rc, out, err, "is full")
            assert checker.check("logdir full", allow_partial=True, allow_temps=False) == []
            subprocess.run(["mount", "-o", "remount,size=256m", sandbox.logs], check=True)
            converge(case, sandbox, config, "after the logdir grew")

            # The staging root fills up instead: rsync fails, the logdir is untouched.
            if mount_tmpfs(sandbox.staging + "-small", "2m"):
                mounted.append(sandbox.staging + "-small")
                sandbox.allowed.add("staging-small")
                small_config = os.path.join(sandbox.conf, "small.toml")
                with open(small_config, "w") as f:
                    f.write(f'[[source]]\nname = "n1"\nsource = "{sandbox.src}/"\n')
                args = CLI + ["sync", "--logdir", sandbox.logs, "--config", small_config,
                              "--staging", sandbox.staging + "-small"]
                for _ in range(2):
                    trainer.grow()
                result = subprocess.run(args, env=sandbox.env(), capture_output=True,
                                        text=True, timeout=90)
                case.faults += 1
                assert_failed_with_a_sentence(result.returncode, result.stdout, result.stderr,
                                              "full")
                assert checker.check("staging full") == []
            converge(case, sandbox, config, "after the staging disk was replaced")
            case.assert_clean()
    finally:
        for path in mounted:
            umount(path)


# --- 4. the source vanishes -------------------------------------------------------------

@pytest.mark.timeout(120)
def test_source_vanishes_mid_sync(tmp_path):
    """The source folder is renamed away (or wiped) during slow, bandwidth-limited syncs."""
    rng = random.Random(5)
    sandbox = Sandbox(tmp_path, extra=("src-away",))
    source = SourceFiles(sandbox.src, sandbox.work)
    trainer, config = Trainer(source, rng), write_config(sandbox, bwlimit=1024)
    checker = LogdirChecker(sandbox, source, "n1")
    away = os.path.join(sandbox.root, "src-away")
    with Case("4_source_vanishes", checker) as case:
        outcomes = []
        for i, delay in enumerate((0.05, 0.25, 0.6, 1.0, 1.5)):
            trainer.grow()
            proc = start_sync(sandbox, config)
            time.sleep(delay)
            os.rename(sandbox.src, away)
            wiped = i % 2 == 1
            if wiped:  # a node wiped and recreated empty: published files must stay
                os.mkdir(sandbox.src)
            case.faults += 1
            out, err = proc.communicate(timeout=60)
            if proc.returncode == 1:
                outcomes.append("error")
                assert_failed_with_a_sentence(proc.returncode, out, err, "n1")
            else:
                assert_ok(proc.returncode, out, err)
                outcomes.append("warning" if "warning:" in out else "ok")
            assert checker.check(f"source gone at {delay} s") == []
            # While it is gone, a sync says so (or, wiped, publishes nothing new).
            rc, out, err = run_sync(sandbox, config)
            if wiped:
                assert_ok(rc, out, err)
                os.rmdir(sandbox.src)
            else:
                assert_failed_with_a_sentence(rc, out, err, "no such directory")
            assert checker.check("while gone") == []
            os.rename(away, sandbox.src)
            converge(case, sandbox, config, f"source back after {delay} s")
        case.extra["outcomes"] = outcomes
        case.assert_clean()


# --- 5. corrupt records at the source ------------------------------------------------------

def corrupt(data, where, kind):
    """Flip one bit of the length CRC or of the data of the record at offset `where`."""
    data = bytearray(data)
    data[where + (9 if kind == "length_crc" else 14)] ^= 0x10
    return bytes(data)


@pytest.mark.timeout(120)
def test_corrupt_records_at_the_source(tmp_path):
    """Good records before a corrupt one are published, nothing after; a fix converges."""
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    config = write_config(sandbox)
    checker = LogdirChecker(sandbox, source, "n1")
    files = {"length_crc": "a/events.out.tfevents.1.node.1.0",
             "data_crc": "b/events.out.tfevents.2.node.2.0",
             "length_crc_fixed_in_place": "c/events.out.tfevents.3.node.3.0",
             "data_crc_fixed_in_place": "d/events.out.tfevents.4.node.4.0"}
    with Case("5_corrupt_records", checker) as case:
        good_end = {}
        for kind, rel in files.items():
            source.append(rel, scalar_bytes(range(10), header=True))
        converge(case, sandbox, config, "before corruption")
        for kind, rel in files.items():
            before = len(source.current(rel))
            new = scalar_bytes(range(10, 30))
            cut = len(scalar_bytes(range(10, 17)))  # the 8th new record goes bad
            source.append(rel, corrupt(new, cut, kind.replace("_fixed_in_place", "")))
            good_end[rel] = before + cut
            case.faults += 1
        rc, out, err = run_sync(sandbox, config)
        assert_ok(rc, out, err)
        assert (out + err).count("warning: Event file") == len(files), (out, err)
        assert checker.check("corrupt records at the source") == []
        status = {r["run"]: r for r in load_status(sandbox)["runs"]}
        for rel in files.values():
            published = os.path.join(sandbox.logs, "n1", rel)
            assert os.path.getsize(published) == good_end[rel], rel
            run = status["n1/" + rel.split("/")[0]]
            assert run["state"] == "error" and "corrupt record" in run["state_detail"] \
                and run["state_detail"].endswith("."), run
        # The trainer goes on writing after the bad record: still nothing after it.
        for rel in files.values():
            source.append(rel, scalar_bytes(range(30, 40)))
        assert_ok(*run_sync(sandbox, config))
        assert checker.check("more data after the corruption") == []
        for rel in files.values():
            assert os.path.getsize(os.path.join(sandbox.logs, "n1", rel)) == good_end[rel]
        # Fixed: two files rewritten from scratch (a new run: quarantine), two repaired in
        # place at the same size (an extension of what was published: appended).
        time.sleep(1.1)  # rsync's quick check compares mtimes in whole seconds
        for kind, rel in files.items():
            if kind.endswith("fixed_in_place"):
                fixed = scalar_bytes(range(10), header=True) + scalar_bytes(range(10, 30)) + \
                    scalar_bytes(range(30, 40))
                assert len(fixed) == len(source.current(rel))
            else:
                fixed = scalar_bytes(range(25), header=True, wall_time0=1.8e9)
            source.rewrite(rel, fixed)
        converge(case, sandbox, config, "after the sources were fixed")
        status = {r["run"]: r for r in load_status(sandbox)["runs"]}
        assert all(status["n1/" + rel.split("/")[0]]["state"] != "error"
                   for rel in files.values()), status
        assert checker.quarantined == 2, "the rewritten files' old versions are kept"
        case.assert_clean()


# --- 6. concurrent requests -------------------------------------------------------------

@pytest.mark.timeout(150)
def test_concurrent_requests_and_processes(tmp_path):
    """20 HTTP sync requests to a real TensorBoard plus two `tb-rsync sync` processes on the
    same staging: never two rsyncs into one source's staging at once, all end well."""
    rng = random.Random(6)
    sandbox = Sandbox(tmp_path)
    sources = {name: SourceFiles(os.path.join(sandbox.src, name), sandbox.work + "-" + name)
               for name in ("n1", "n2")}
    sandbox.allowed |= {"work-n1", "work-n2"}
    trainers = {n: Trainer(s, random.Random(rng.random())) for n, s in sources.items()}
    config = os.path.join(sandbox.conf, "sources.toml")
    with open(config, "w") as f:
        for name in sources:
            f.write(f'[[source]]\nname = "{name}"\nsource = "{sandbox.src}/{name}/"\n'
                    "bwlimit = 8192\n")
    checkers = {n: LogdirChecker(sandbox, s, n, others={"n1", "n2"} - {n})
                for n, s in sources.items()}
    staging_dir = os.path.join(sandbox.staging, "staging")
    tb = TensorBoardProcess(sandbox.logs, ["--load_fast=false", "--reload_interval", "0",
                                           "--rsync_config", config,
                                           "--rsync_staging", sandbox.staging],
                            os.path.join(str(tmp_path), "tensorboard.log"), env=sandbox.env())
    sandbox.allowed.add("tensorboard.log")
    most, samples, stop = {}, [0], threading.Event()

    def watch():
        while not stop.is_set():
            for folder, owners in rsync_owners(staging_dir).items():
                most[folder] = max(most.get(folder, 0), len(owners))
            samples[0] += 1
            time.sleep(0.003)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with Case("6_concurrent_requests", checkers["n1"]) as case:
            tb.wait_ready(90)
            watcher.start()
            answers, results = [], []
            for round_ in range(3):
                for trainer in trainers.values():
                    trainer.grow()
                procs = [start_sync(sandbox, config) for _ in range(2)]

                def post(i):
                    body = {} if i % 2 else {"source": "n1"}
                    answers.append(tb.post_json("/data/plugin/rsync/sync", body))

                threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                case.faults += 22
                results += [(lambda o: (p.returncode,) + o)(p.communicate(timeout=90))
                            for p in procs]
                wait_until(lambda: all(s["state"] in ("idle", "error") for s in
                                       tb.get_json("/data/plugin/rsync/status")["sources"]),
                           60, message="the plugin's syncs to end")
                for name, checker in checkers.items():
                    assert checker.check(f"round {round_}") == [], name
            stop.set()
            watcher.join(5)
            assert len(answers) == 60 and all(code == 202 for code, _ in answers), answers
            assert sum(len(b["started"]) for _, b in answers) >= 3  # the rest joined
            for rc, out, err in results:
                assert_ok(rc, out, err)
            status = tb.get_json("/data/plugin/rsync/status")
            assert all(s["state"] == "idle" and not s["error"] for s in status["sources"])
            assert most and max(most.values()) == 1, most
            assert samples[0] > 50
            for name, checker in checkers.items():
                assert_ok(*run_sync(sandbox, config))
                assert checker.check("final") == [] and checker.converged() == [], name
            case.extra.update(
                most_concurrent_rsync_owners_per_source=max(most.values()),
                process_table_samples=samples[0],
                n2=checkers["n2"].figures())
            for checker in checkers.values():
                fig = checker.figures()
                assert fig["logdirs_invalid"] == 0 and fig["bytes_lost"] == 0, fig
    finally:
        stop.set()
        tb.stop()


# --- 7. rewrites during syncs -----------------------------------------------------------

@pytest.mark.timeout(120)
def test_source_rewrites_files_while_syncing(tmp_path):
    """A writer truncates and rewrites an event file and replaces a checkpoint in a loop."""
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    config = write_config(sandbox, bwlimit=16384)
    checker = LogdirChecker(sandbox, source, "n1")
    rel, grow_rel = "events.out.tfevents.1700000000.node.7.0", "growing/" + SMALL[0]
    stop, counts, errors = threading.Event(), {"rewrites": 0, "appends": 0}, []

    def records(wrng, run, start, count):
        # Records of random sizes, 1-20 KB (summaries of varying length). A rewrite whose
        # records have the same sizes as the old ones is the open case of FAULTS.md (see the
        # xfail test below): rsync --append can extend a stale prefix with valid records.
        head = [frame(file_version_event(1.7e9 + run * 1e5).SerializeToString())] \
            if start == 0 else []
        return b"".join(head + [frame(make_event(
            s, wall_time=1.7e9 + run * 1e5 + s, tag="t" * wrng.randrange(1_000, 20_000))
            .SerializeToString()) for s in range(start, start + count)])

    def writer():
        wrng, run, step = random.Random(70), 0, 0
        source.rewrite(rel, records(wrng, run, 0, 20))
        step = 20
        try:
            while not stop.is_set():
                if wrng.random() < 0.25:
                    run, step = run + 1, wrng.randrange(5, 40)
                    source.rewrite(rel, records(wrng, run, 0, step), pieces=wrng.randrange(1, 4))
                    counts["rewrites"] += 1
                else:
                    count = wrng.randrange(1, 30)
                    source.append(rel, records(wrng, run, step, count),
                                  pieces=wrng.randrange(1, 4))
                    step += count
                    counts["appends"] += 1
                source.append(grow_rel, scalar_bytes([counts["appends"]],
                                                     header=counts["appends"] == 0))
                source.replace(CKPT, os.urandom(wrng.randrange(10_000, 300_000)))
                time.sleep(wrng.uniform(0, 0.05))
        except Exception as e:  # surfaces in the main thread
            errors.append(e)

    thread = threading.Thread(target=writer, daemon=True)
    with Case("7_rewrite_while_syncing", checker) as case:
        thread.start()
        deadline = time.monotonic() + 20
        syncs = 0
        while time.monotonic() < deadline and syncs < 30:
            proc = start_sync(sandbox, config)
            while proc.poll() is None:  # checked while publishing too
                assert checker.check(f"during sync {syncs}", allow_partial=True,
                                     allow_temps=True) == []
                time.sleep(0.01)
            out, err = proc.communicate(timeout=60)
            assert_ok(proc.returncode, out, err)
            assert checker.check(f"after sync {syncs}") == []
            syncs += 1
        stop.set()
        thread.join(10)
        assert not errors, errors
        case.faults = counts["rewrites"] + counts["appends"]
        case.extra.update(syncs=syncs, **counts)
        converge(case, sandbox, config, "after the writer stopped")
        assert counts["rewrites"] >= 10 and checker.quarantined >= 1
        case.assert_clean()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("over", ["local", "ssh"])
@pytest.mark.parametrize("after", ["growth", "an idle sync"])
def test_rewrite_with_same_record_sizes_grown_before_the_next_sync(tmp_path, request, over,
                                                                    after):
    """Closed by the first-record check (FAULTS.md #8): the probe reads the source's first
    record (in-process for a folder, through the node's python3 over ssh). After growth the
    sync appends beside its listing; after an idle sync it lists first, then appends: the
    check's session opens at a different point of the sync."""
    sandbox = Sandbox(tmp_path)
    source = SourceFiles(sandbox.src, sandbox.work)
    config = write_config(sandbox)
    if over == "ssh":
        server = request.getfixturevalue("sshd_server")
        config = write_config(sandbox, source_dir=f"127.0.0.1:{sandbox.src}",
                              ssh=server.ssh_command)
    checker = LogdirChecker(sandbox, source, "n1")
    rel = "events.out.tfevents.1700000000.node.8.0"
    source.append(rel, scalar_bytes(range(10), header=True, wall_time0=1e9))
    assert_ok(*run_sync(sandbox, config))
    if after == "an idle sync":
        assert_ok(*run_sync(sandbox, config))
    # A restarted run reuses the name: new wall times, the same record sizes, and more.
    source.rewrite(rel, scalar_bytes(range(20), header=True, wall_time0=2e9))
    assert_ok(*run_sync(sandbox, config))
    assert checker.check("after the rewrite") == []
    with open(os.path.join(sandbox.logs, "n1", rel), "rb") as f:
        assert f.read() == scalar_bytes(range(20), header=True, wall_time0=2e9)
    kept = [name for _, _, names in os.walk(os.path.join(sandbox.staging, "quarantine"))
            for name in names]
    assert len(kept) == 1, kept  # the first run's file, moved out of the logdir
