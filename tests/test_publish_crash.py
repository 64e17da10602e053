"""SIGKILL a publisher at random instants while the sources grow; nothing may break.

A child process publishes in a loop while this test appends to the staged files in pieces cut
at random byte offsets (as rsync --append does). After every kill, each published event file
must be a byte prefix of its source, and either end on a record boundary or hold part of the
next record: an append killed mid-write leaves that, and TensorBoard treats a partial last
record as "not yet written" (it keeps its offset and retries), so readers never see it. The
next publish checks it against the staged bytes and completes it. At the end a publish
converges to the sources exactly.
"""

import os
import random
import signal
import subprocess
import sys
import time

from tb_rsync_plugin.publishing.publish import publish
from tests.events import (
    big_event_bytes, event_bytes, file_version_event, loaded_events, make_event, record_ends,
)
from tests.invariants import event_file_problem

FILES = ("events.out.tfevents.1.a.1.0", "nœud 2/events.out.tfevents.2.b.2.0",
         "sub/deeper/events.out.tfevents.3.c.3.0")
KILLS = 60
CHILD = """
import sys
from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin.publishing.publish import publish
# Small writes: one append takes many write() calls, so kills land between them (a single
# write() to a regular file is not cut short by SIGKILL; a power loss could still cut it).
atomic.COPY_BYTES = 512
staging, logdir, quarantine, manifest = sys.argv[1:5]
print("ready", flush=True)
while True:
    report = publish(staging, logdir, "train", quarantine, manifest)
    if report.needs_restage:
        raise SystemExit("needs_restage: %r" % (report.needs_restage,))
"""


def source_bytes(rng, seed, blobs):
    """A source file's whole future: scalars with a big record now and then."""
    chunks = [event_bytes([file_version_event(seed * 1000.0)])]
    for step in range(1000):
        if rng.random() < 0.05:
            chunks.append(rng.choice(blobs))
        else:
            chunks.append(event_bytes([make_event(step, wall_time=seed * 1000.0 + step,
                                                  tag="loss" * rng.randrange(1, 4))]))
    return b"".join(chunks)


def test_sigkilled_publisher_never_breaks_the_invariants(tmp_path):
    rng = random.Random(20240601)
    staging, logdir = tmp_path / "staging", tmp_path / "logdir"
    quarantine, manifest = tmp_path / "quarantine", tmp_path / "manifest.json"
    logdir.mkdir()
    # Big records are built once: TensorBoard's RecordWriter CRCs in pure Python.
    blobs = [big_event_bytes(10_000 + i, size)
             for i, size in enumerate((20_000, 60_000, 150_000))]
    sources = {rel: source_bytes(rng, i + 1, blobs) for i, rel in enumerate(FILES)}
    for rel in FILES:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(b"")
    staged_len = dict.fromkeys(FILES, 0)
    inodes = {}
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    args = [sys.executable, "-c", CHILD, str(staging), str(logdir), str(quarantine),
            str(manifest)]

    def grow_staged():
        for rel in FILES:
            if rng.random() < 0.7:
                total = len(sources[rel])
                new_len = min(total, staged_len[rel] + rng.randrange(1, 400_000))
                with open(staging / rel, "ab") as f:
                    f.write(sources[rel][staged_len[rel]:new_len])
                staged_len[rel] = new_len

    partial_seen = 0
    for kill in range(KILLS):
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline() == b"ready\n", child.stderr.read()
            for _ in range(rng.randrange(1, 4)):
                grow_staged()
                # The child picks the growth up at once; kill it somewhere in that work.
                time.sleep(rng.uniform(0, 0.01))
            assert child.poll() is None, child.stderr.read().decode()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()
        partial_seen += check_invariants(logdir, sources, inodes)

    for rel in FILES:
        with open(staging / rel, "ab") as f:
            f.write(sources[rel][staged_len[rel]:])
    report = publish(str(staging), str(logdir), "train", str(quarantine), str(manifest))
    assert report.errors == () and report.needs_restage == ()
    for rel in FILES:
        published = logdir / "train" / rel
        assert published.read_bytes() == sources[rel]
        assert published.stat().st_ino == inodes.get(rel, published.stat().st_ino)
        assert len(loaded_events(str(published))) == len(record_ends(sources[rel]))
    assert not quarantine.exists()  # sources only grew: nothing was ever rewritten
    print(f"{KILLS} kills, {partial_seen} left a partial record")


def check_invariants(logdir, sources, inodes):
    """Returns how many files held a partial trailing record (a kill mid-append)."""
    partial = 0
    for folder, _, names in os.walk(logdir):
        for name in names:
            # A killed publisher may leave its temp file; never one TensorBoard would read.
            assert "tfevents" not in name or not name.startswith("."), name
    for rel, source in sources.items():
        path = logdir / "train" / rel
        if not path.exists():
            continue
        data = path.read_bytes()
        problem = event_file_problem(data, [source], allow_partial=True)
        assert problem is None, f"{rel} {problem}"
        ends = record_ends(source)
        if len(data) not in ends:
            partial += 1
            aligned = max(e for e in [0] + ends if e <= len(data))
            complete = loaded_events(str(path))
            assert len(complete) == len(record_ends(source[:aligned]))
        inode = path.stat().st_ino
        assert inodes.setdefault(rel, inode) == inode, f"{rel} was replaced, not appended to"
    return partial
