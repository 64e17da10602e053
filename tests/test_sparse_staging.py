"""Staged event files give back the disk blocks of their published prefix.

After a publish the staged copy's prefix is a hole (same size, same mtime), so staging costs
about the unpublished tail. These tests drive the real engine (real rsync, local source) and
check that every path that reads staged bytes still works: appending, rewrite detection with
a whole fetch, a published file deleted from the logdir, a lost manifest.
"""

import os

import pytest

from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin.tensorboard import reload as reload_lib
from tb_rsync_plugin.transports import rsync as rsync_lib
from tb_rsync_plugin.engine import service as service_lib
from tb_rsync_plugin.engine import state as state_lib
from tb_rsync_plugin.publishing import file_publisher
from tb_rsync_plugin.publishing.publish import publish
from tests.events import big_event_bytes, event_bytes, file_version_event, loaded_events

EVENTS = "run/events.out.tfevents.1700000000.node1.1234.0"
RECORD_BYTES = 16 * 1024


def records(first, count, tag=b""):
    """`count` records of about 16 KiB, steps from `first` (a file_version leads step 0)."""
    head = event_bytes([file_version_event(1_700_000_000.0)]) if first == 0 else b""
    return head + b"".join(big_event_bytes(s, RECORD_BYTES - 100 - len(tag))
                           for s in range(first, first + count))


def supports_holes(folder):
    probe = os.path.join(folder, "probe")
    with open(probe, "wb") as f:
        f.write(b"x" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
    try:
        return atomic.release_prefix(probe, 1 << 20) and atomic.has_leading_hole(probe)
    finally:
        os.unlink(probe)


class Engine:
    """remote/ -> staging -> logdir/n1 through the same SyncService the CLI uses."""

    def __init__(self, root):
        self.remote, self.logdir, self.root = root / "remote", root / "logs", root / "staging"
        (self.remote / "run").mkdir(parents=True)
        self.logdir.mkdir()
        self.root.mkdir()
        if not supports_holes(str(self.root)):
            pytest.skip("this filesystem cannot punch holes")

    def config(self, root=None):
        return config_lib.build_config(str(self.logdir), [f"n1={self.remote}/"], None,
                                       str(root or self.root))

    def sync(self, root=None):
        config = self.config(root)
        service = service_lib.SyncService(
            config, state_lib.SyncState(config.sources, config.interval_for),
            reload_lib.NoReloader())
        try:
            service.run_cycle("n1")
        finally:
            service.stop()
        return service.state.snapshot()["sources"][0]["last_result"]

    @property
    def source(self):
        return self.remote / EVENTS

    @property
    def staged(self):
        return self.root / "staging" / "n1" / EVENTS

    @property
    def published(self):
        return self.logdir / "n1" / EVENTS

    def grow(self, data):
        with open(self.source, "ab") as f:
            f.write(data)

    def check_converged(self):
        assert self.published.read_bytes() == self.source.read_bytes()
        assert loaded_events(str(self.published)) == loaded_events(str(self.source))


@pytest.fixture
def engine(tmp_path):
    return Engine(tmp_path)


def test_staged_blocks_drop_after_publish_and_appends_keep_working(engine):
    engine.grow(records(0, 64))  # ~1 MiB
    engine.sync()
    engine.check_converged()
    st = os.stat(engine.staged)
    assert st.st_size == os.path.getsize(engine.source)
    assert st.st_mtime_ns == os.stat(engine.source).st_mtime_ns, "rsync's quick check uses it"
    assert atomic.has_leading_hole(str(engine.staged))
    # Only the kept tail (64 KiB plus block rounding and the metadata) still uses blocks.
    assert st.st_blocks * 512 <= 160 * 1024 < st.st_size // 4
    inode = os.stat(engine.published).st_ino

    assert engine.sync()["bytes_received"] == 0  # nothing changed: nothing fetched

    for first in (64, 96):
        engine.grow(records(first, 32))
        result = engine.sync()
        assert result["bytes_received"] < 40 * RECORD_BYTES  # appended, not fetched whole
        engine.check_converged()
        assert os.stat(engine.published).st_ino == inode, "event files grow in place"
        assert os.stat(engine.staged).st_blocks * 512 <= 160 * 1024


def test_rewritten_source_is_detected_and_fetched_whole(engine):
    engine.grow(records(0, 64))
    engine.sync()
    old = engine.published.read_bytes()
    # A new training run reusing the name, longer than before: rsync --append puts its tail
    # onto the staged (released) prefix; the tail check sees it does not continue.
    engine.source.write_bytes(records(0, 80, tag=b"new run"))
    engine.sync()
    engine.check_converged()
    kept = list((engine.root / "quarantine" / "n1").rglob("events.out.tfevents.*"))
    assert [p.read_bytes() for p in kept] == [old]
    assert os.stat(engine.staged).st_blocks * 512 <= 160 * 1024

    # Shrunk, with other record sizes (a copy that is only behind, an exact prefix, is not a
    # rewrite: see the test below): fetched whole.
    engine.source.write_bytes(records(0, 40, tag=b"short"))
    engine.sync()
    engine.check_converged()


def test_an_older_copy_from_another_staging_root_never_sends_the_file_back(engine, tmp_path):
    """A `watch` (staging A) and a `sync` (staging B) publish one source into one logdir. A
    copy B fetched before A published more is behind, not rewritten: nothing is published
    from it, nothing goes to quarantine, and the published file never goes back in time."""
    other = tmp_path / "staging-b"
    published_versions = []

    def check_published_only_grew():
        data = engine.published.read_bytes()
        if published_versions:
            inode, before = published_versions[-1]
            assert os.stat(engine.published).st_ino == inode, "never replaced"
            assert data.startswith(before), "never shorter, never other bytes"
        published_versions.append((os.stat(engine.published).st_ino, data))

    def publish_only(root):
        config = engine.config(root)
        return publish(config.staging_dir("n1"), str(engine.logdir), "n1",
                       config.quarantine_dir("n1"), config.manifest_path("n1"))

    engine.grow(records(0, 64))
    engine.sync()
    check_published_only_grew()
    engine.grow(records(64, 32))
    b_config = engine.config(other)  # B's rsync runs now; B publishes later
    rsync_lib.run_rsync(config_lib.find_rsync(), b_config.source("n1"),
                        b_config.staging_dir("n1"), b_config.temp_dir)
    engine.grow(records(96, 32))
    engine.sync()  # A publishes all 128 records meanwhile
    check_published_only_grew()

    report = publish_only(other)  # B's copy holds 96
    check_published_only_grew()
    assert [(a.action, a.detail) for a in report.actions] == [("wait", file_publisher._BEHIND)]
    engine.check_converged()

    engine.grow(records(128, 32))
    engine.sync(other)  # B's copy catches up and publishes the rest
    check_published_only_grew()
    engine.check_converged()
    # A's copy is behind now, with its published prefix released as a hole.
    assert atomic.has_leading_hole(str(engine.staged))
    report = publish_only(engine.root)
    assert [a.action for a in report.actions] == ["wait"] and not report.needs_restage
    check_published_only_grew()
    engine.sync()
    check_published_only_grew()
    engine.check_converged()
    assert not list(tmp_path.rglob("quarantine/**/events.out.tfevents.*"))


def test_published_file_deleted_or_manifest_lost_refetches_the_prefix(engine):
    engine.grow(records(0, 64))
    engine.sync()
    assert atomic.has_leading_hole(str(engine.staged))
    os.unlink(engine.published)
    engine.grow(records(64, 8))
    engine.sync()
    engine.check_converged()

    os.unlink(engine.published)
    for manifest in (engine.root / "manifest").iterdir():
        manifest.unlink()  # the next publish walks the whole staging tree
    engine.sync()  # nothing changed at the source; the staged prefix is gone
    engine.check_converged()


def test_publisher_alone_keeps_the_tail_it_rereads(tmp_path):
    staging, logdir = tmp_path / "staging", tmp_path / "logdir"
    staged = staging / "events.out.tfevents.1.a.1.0"
    staging.mkdir()
    logdir.mkdir()
    if not supports_holes(str(staging)):
        pytest.skip("this filesystem cannot punch holes")
    data = records(0, 40)
    staged.write_bytes(data[:500_000])
    args = (str(staging), str(logdir), "train", str(tmp_path / "q"), str(tmp_path / "m.json"))
    publish(*args)
    published = logdir / "train" / staged.name
    aligned = published.stat().st_size
    kept_from = (aligned - 64 * 1024) // 4096 * 4096
    staged_now = staged.read_bytes()
    assert staged_now[:kept_from] == bytes(kept_from)
    assert staged_now[kept_from:] == data[kept_from:500_000]
    with open(staged, "ab") as f:  # what rsync --append does
        f.write(data[500_000:])
    report = publish(*args)
    assert [a.action for a in report.actions] == ["append"]
    assert published.read_bytes() == data
    assert loaded_events(str(published)) == loaded_events_of(data, tmp_path)


def loaded_events_of(data, tmp_path):
    path = tmp_path / "reference.tfevents"
    path.write_bytes(data)
    return loaded_events(str(path))


def test_release_prefix_refuses_a_changed_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * (1 << 20))
    st = os.stat(path)
    assert not atomic.release_prefix(str(path), 1 << 19, [st.st_ino, st.st_size + 1,
                                                          st.st_mtime_ns])
    assert path.read_bytes() == b"x" * (1 << 20)
    assert not atomic.has_leading_hole(str(path))
