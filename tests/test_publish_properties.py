"""Random histories of sources and publishes keep DESIGN.md's invariants at every step.

A model holds each source file's versions (a rewrite at the source starts a new one). The
staged file is what rsync would leave: a byte prefix of the current version, grown in place
by appends (rsync --append) or replaced whole (a restage). After every publish:
- every published event file is a record-aligned prefix of some version of its source;
- its inode changed only when the report says it was rewritten;
- every replaced published file is in quarantine, byte for byte;
and a final publish of complete sources converges to them exactly.
"""

import os
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from tb_rsync_plugin.publishing.publish import publish
from tests.events import event_bytes, loaded_events, make_event
from tests.invariants import is_aligned_prefix, quarantined

FILES = ("events.out.tfevents.1.a.1.0", "run b/events.out.tfevents.2.b.2.0")

ops = st.lists(
    st.one_of(
        st.tuples(st.just("grow"), st.sampled_from(FILES), st.integers(0, 6),
                  st.floats(0, 1)),
        st.tuples(st.just("rewrite"), st.sampled_from(FILES), st.integers(0, 6),
                  st.floats(0, 1)),
        st.tuples(st.just("publish")),
    ),
    min_size=1, max_size=25,
)


class Source:
    """One source file's versions; `versions[-1]` is what the source holds now."""

    def __init__(self, seed):
        self.versions, self.seed, self.step = [b""], seed, 0

    def add_records(self, count):
        events = [make_event(self.step + i, value=self.seed, wall_time=self.seed * 1000.0
                             + self.step + i, tag="t" * (1 + (self.step + i) % 5))
                  for i in range(count)]
        self.step += count
        self.versions[-1] += event_bytes(events)

    def rewrite(self, count):
        self.seed += 1
        self.step = 0
        self.versions.append(b"")
        self.add_records(count)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops)
def test_random_histories_keep_the_invariants(history):
    root = tempfile.mkdtemp(prefix="tb-rsync-prop-")
    try:
        run_history(root, history)
    finally:
        shutil.rmtree(root)


def run_history(root, history):
    staging, logdir = os.path.join(root, "staging"), os.path.join(root, "logdir")
    quarantine, manifest = os.path.join(root, "quarantine"), os.path.join(root, "m.json")
    os.makedirs(os.path.join(staging, "run b"))
    os.makedirs(logdir)
    sources = {rel: Source(seed=10 * i + 1) for i, rel in enumerate(FILES)}
    pending_restage = set()
    inodes = {}

    def staged_path(rel):
        return os.path.join(staging, rel)

    def published_path(rel):
        return os.path.join(logdir, "train", rel)

    def sync_and_publish():
        """What the service does: publish, then refetch whole what needs it, publish again."""
        before = {rel: open(published_path(rel), "rb").read() for rel in FILES
                  if os.path.exists(published_path(rel))}
        report = publish(staging, logdir, "train", quarantine, manifest,
                         restaged=sorted(pending_restage))
        pending_restage.clear()
        check(report, before)
        if report.needs_restage:
            before = {rel: open(published_path(rel), "rb").read() for rel in FILES
                      if os.path.exists(published_path(rel))}
            # The staged file already holds the current version whole in this model.
            report = publish(staging, logdir, "train", quarantine, manifest,
                             restaged=report.needs_restage)
            assert report.needs_restage == ()
            check(report, before)
        return report

    def check(report, before):
        actions = {a.path: a.action for a in report.actions}
        kept = quarantined(quarantine)
        for rel in FILES:
            path = published_path(rel)
            if not os.path.exists(path):
                continue
            data = open(path, "rb").read()
            assert any(is_aligned_prefix(data, v) for v in sources[rel].versions), rel
            inode = os.stat(path).st_ino
            if actions.get(rel) == "rewrite":
                assert before[rel] in kept.get(rel, [])
            elif rel in inodes:
                assert inode == inodes[rel], (rel, actions.get(rel))
            inodes[rel] = inode
        for folder, _, names in os.walk(logdir):
            assert not [n for n in names if n.startswith(".tb-rsync-")]

    for op in history:
        if op[0] == "publish":
            sync_and_publish()
            continue
        kind, rel, count, cut = op
        source = sources[rel]
        path = staged_path(rel)
        have = os.path.getsize(path) if os.path.exists(path) else 0
        if kind == "grow":
            source.add_records(count)
            version = source.versions[-1]
            # rsync --append: the staged file grows in place to some prefix of the source.
            new_len = have + int(cut * (len(version) - have))
            with open(path, "ab") as f:
                f.write(version[have:new_len])
        else:
            source.rewrite(count)
            version = source.versions[-1]
            # A whole fetch: rsync writes elsewhere and renames (a new inode in staging).
            temp = os.path.join(root, "rsync-temp")
            with open(temp, "wb") as f:
                f.write(version[:int(cut * len(version))])
            os.replace(temp, path)
            pending_restage.add(rel)

    # Converge: the sources stop growing and rsync fetches everything.
    for rel, source in sources.items():
        with open(staged_path(rel), "ab") as f:
            f.write(source.versions[-1][os.path.getsize(staged_path(rel))
                                        if os.path.exists(staged_path(rel)) else 0:])
    sync_and_publish()
    for rel, source in sources.items():
        if source.versions[-1]:
            assert open(published_path(rel), "rb").read() == source.versions[-1]
            assert loaded_events(published_path(rel)) == loaded_events(staged_path(rel))
        else:
            # An emptied source never replaces what was published (it waits for a record).
            assert not os.path.exists(published_path(rel)) or any(
                is_aligned_prefix(open(published_path(rel), "rb").read(), v)
                for v in source.versions)

