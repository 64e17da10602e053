"""The publisher on real folders: append, create, replace, rewrite, refusals."""

import json
import os
import subprocess
import shutil
import stat

import pytest

from tb_rsync_plugin.errors import PublishError
from tb_rsync_plugin.publishing.publish import publish
from tests.events import (
    append_scalars, event_file_name, loaded_events, record_ends, scalar_bytes,
)

EVENTS = event_file_name()


class Tree:
    """staging/, logdir/, quarantine/ and a manifest for source 'train' under tmp_path."""

    def __init__(self, root):
        self.root = root
        self.staging = root / "staging" / "train"
        self.logdir = root / "logdir"
        self.quarantine = root / "quarantine" / "train"
        self.manifest = root / "manifest" / "train.json"
        self.staging.mkdir(parents=True)
        self.logdir.mkdir()

    def publish(self, check=True, **kwargs):
        report = publish(str(self.staging), str(self.logdir), "train", str(self.quarantine),
                         str(self.manifest), **kwargs)
        if check:
            self.check_logdir()
        return report

    def staged(self, rel):
        return self.staging / rel

    def published(self, rel):
        return self.logdir / "train" / rel

    def check_logdir(self):
        """No temp file survives a publish; every event file loads like its staged source."""
        for folder, _, names in os.walk(self.logdir):
            for name in names:
                assert not name.startswith(".tb-rsync-"), name
                path = os.path.join(folder, name)
                if "tfevents" in name:
                    rel = os.path.relpath(path, self.logdir / "train")
                    data = open(path, "rb").read()
                    assert len(data) in record_ends(data) or not data, path
                    staged = self.staged(rel)
                    if staged.is_file() and not staged.is_symlink():
                        source = loaded_events(str(staged))
                        assert loaded_events(path) == source[:len(loaded_events(path))]


def action(report, rel):
    (found,) = [a for a in report.actions if a.path == rel]
    return found


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


def test_create_then_append_in_place(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    report = tree.publish()
    assert action(report, EVENTS).action == "create"
    published = tree.published(EVENTS)
    inode = published.stat().st_ino
    assert published.read_bytes() == staged.read_bytes()
    run = report.runs["train"]
    assert (run.newest_step, run.newest_wall_time, run.files) == (4, 1_700_000_004.0, (EVENTS,))

    append_scalars(staged, range(5, 9))
    report = tree.publish()
    assert action(report, EVENTS).action == "append"
    assert action(report, EVENTS).bytes == len(scalar_bytes(range(5, 9)))
    assert published.stat().st_ino == inode
    assert published.read_bytes() == staged.read_bytes()
    assert loaded_events(str(published)) == loaded_events(str(staged))
    assert report.runs["train"].newest_step == 8

    report = tree.publish()
    assert action(report, EVENTS).action == "unchanged"
    assert report.runs["train"].newest_step == 8  # from the manifest
    assert report.runs["train"].files == ()


def test_incomplete_tail_waits_and_a_file_without_records_is_not_published(tree):
    staged = tree.staged(EVENTS)
    data = scalar_bytes(range(3), header=True)
    staged.write_bytes(data[:20])
    assert action(tree.publish(), EVENTS).action == "wait"
    assert not tree.published(EVENTS).exists()
    ends = record_ends(data)
    staged.write_bytes(data[:ends[2] + 7])
    assert action(tree.publish(), EVENTS).action == "create"
    assert tree.published(EVENTS).read_bytes() == data[:ends[2]]
    assert action(tree.publish(), EVENTS).action == "wait"
    staged.write_bytes(data)
    assert action(tree.publish(), EVENTS).action == "append"
    assert tree.published(EVENTS).read_bytes() == data


def test_runs_are_logdir_relative_folders_with_unicode_and_spaces(tree):
    rel = "sub dir/ünï cødé/" + EVENTS
    tree.staged(rel).parent.mkdir(parents=True)
    append_scalars(tree.staged(rel), range(3))
    append_scalars(tree.staged(EVENTS), range(7))
    report = tree.publish()
    assert set(report.runs) == {"train", "train/sub dir/ünï cødé"}
    assert report.runs["train/sub dir/ünï cødé"].newest_step == 2
    assert tree.published(rel).read_bytes() == tree.staged(rel).read_bytes()


def test_other_files_are_replaced_atomically_keeping_mode_and_mtime(tree):
    config = tree.staged("plugins/projector/projector config.pbtxt")
    config.parent.mkdir(parents=True)
    config.write_text("embeddings {}")
    os.chmod(config, 0o640)
    os.utime(config, ns=(1, 1_600_000_000_000_000_000))
    rel = "plugins/projector/projector config.pbtxt"
    assert action(tree.publish(), rel).action == "replace"
    published = tree.published(rel)
    assert published.read_text() == "embeddings {}"
    assert stat.S_IMODE(published.stat().st_mode) == 0o640
    assert published.stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert action(tree.publish(), rel).action == "unchanged"
    # rsync writes a new version elsewhere and renames it into staging: a new inode.
    new = tree.root / "new"
    new.write_text("embeddings { tensor_name: 'x' }")
    os.replace(new, config)
    assert action(tree.publish(), rel).action == "replace"
    assert published.read_text() == "embeddings { tensor_name: 'x' }"
    assert tree.publish().runs == {}


def test_source_rewrite_goes_to_quarantine_and_keeps_the_old_bytes(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    published = tree.published(EVENTS)
    old_bytes, old_inode = published.read_bytes(), published.stat().st_ino
    # A new training run reuses the name; rsync fetches it whole (a new inode in staging).
    new = tree.root / "new"
    new.write_bytes(scalar_bytes(range(20), tag="acc", wall_time0=1_800_000_000.0, header=True))
    os.replace(new, staged)
    report = tree.publish(restaged=[EVENTS])
    assert action(report, EVENTS).action == "rewrite"
    assert report.runs["train"].rewritten
    assert report.runs["train"].newest_wall_time == 1_800_000_019.0
    assert published.read_bytes() == staged.read_bytes()
    assert published.stat().st_ino != old_inode
    kept = list(tree.quarantine.glob("*/" + EVENTS))
    assert len(kept) == 1 and kept[0].read_bytes() == old_bytes
    assert kept[0].stat().st_ino == old_inode


def test_staged_shorter_than_published_is_a_rewrite(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(10))
    tree.publish()
    old_bytes = tree.published(EVENTS).read_bytes()
    staged.write_bytes(scalar_bytes(range(2), tag="x", header=True))
    report = tree.publish()
    assert action(report, EVENTS).action == "rewrite"
    assert tree.published(EVENTS).read_bytes() == staged.read_bytes()
    assert [p.read_bytes() for p in tree.quarantine.glob("*/*")] == [old_bytes]


def test_appended_onto_an_old_prefix_needs_a_whole_fetch(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    old = staged.read_bytes()
    # The source was rewritten and grew; rsync --append only added its bytes past len(old).
    rewritten = scalar_bytes(range(30), tag="other", wall_time0=1_800_000_000.5, header=True)
    with open(staged, "ab") as f:
        f.write(rewritten[len(old):])
    report = tree.publish(check=False)
    assert report.needs_restage == (EVENTS,)
    assert action(report, EVENTS).action == "wait"
    assert tree.published(EVENTS).read_bytes() == old
    staged.write_bytes(rewritten)  # the service re-fetches it whole
    report = tree.publish(restaged=[EVENTS])
    assert action(report, EVENTS).action == "rewrite"
    assert tree.published(EVENTS).read_bytes() == rewritten


def test_same_framing_different_content_is_not_appended(tree):
    # Same tag, same sizes: record boundaries line up, only the tail check can tell.
    staged = tree.staged(EVENTS)
    staged.write_bytes(scalar_bytes(range(5), header=True))
    tree.publish()
    other = scalar_bytes(range(10), wall_time0=1_700_000_100.0, header=True)
    staged.write_bytes(other)
    assert tree.publish(check=False).needs_restage == (EVENTS,)
    assert action(tree.publish(restaged=[EVENTS]), EVENTS).action == "rewrite"


def test_restaged_but_unchanged_prefix_just_appends(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    inode = tree.published(EVENTS).stat().st_ino
    append_scalars(staged, range(5, 7))
    report = tree.publish(restaged=[EVENTS])
    assert action(report, EVENTS).action == "append"
    assert tree.published(EVENTS).stat().st_ino == inode


def test_corrupt_record_after_good_ones_publishes_the_good_ones(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(3))
    tree.publish()
    good, bad = scalar_bytes(range(3, 5)), bytearray(scalar_bytes([5]))
    bad[-1] ^= 0xFF
    with open(staged, "ab") as f:
        f.write(good + bytes(bad) + scalar_bytes([6]))
    report = tree.publish()
    assert action(report, EVENTS).action == "append"
    assert action(report, EVENTS).bytes == len(good)
    assert "corrupt record" in dict(report.errors)[EVENTS]
    size = tree.published(EVENTS).stat().st_size
    report = tree.publish()  # known corrupt, unchanged: no whole fetch every sync
    assert action(report, EVENTS).action == "error"
    assert report.needs_restage == ()
    assert tree.published(EVENTS).stat().st_size == size
    append_scalars(staged, [7])  # it grew: maybe fixed at the source, so fetch it whole
    assert tree.publish().needs_restage == (EVENTS,)
    report = tree.publish(restaged=[EVENTS])
    assert action(report, EVENTS).action == "error"
    assert tree.published(EVENTS).stat().st_size == size


def test_corruption_at_the_source_of_a_restaged_file_is_an_error(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(3))
    tree.publish()
    before = tree.published(EVENTS).read_bytes()
    with open(staged, "ab") as f:
        f.write(b"\x00" * 40)  # a hole, as after a crash on the training node
    report = tree.publish(restaged=[EVENTS])
    assert action(report, EVENTS).action == "error"
    assert "corrupt record at byte %d" % len(before) in dict(report.errors)[EVENTS]
    assert report.needs_restage == ()
    assert tree.published(EVENTS).read_bytes() == before


def test_corrupt_new_file_publishes_only_its_good_records(tree):
    data = bytearray(scalar_bytes(range(4), header=True))
    ends = record_ends(bytes(data))
    data[ends[2] + 1] ^= 1
    tree.staged(EVENTS).write_bytes(bytes(data))
    report = tree.publish()
    assert action(report, EVENTS).action == "create"
    assert tree.published(EVENTS).read_bytes() == bytes(data[:ends[2]])
    assert EVENTS in dict(report.errors)


def test_files_deleted_at_the_source_stay_published(tree):
    append_scalars(tree.staged(EVENTS), range(3))
    tree.staged("notes.txt").write_text("hi")
    tree.publish()
    os.unlink(tree.staged(EVENTS))
    os.unlink(tree.staged("notes.txt"))
    report = tree.publish(changed=[EVENTS, "notes.txt"])
    assert {a.action for a in report.actions} == {"skip"}
    assert tree.published(EVENTS).exists() and tree.published("notes.txt").exists()
    tree.publish()
    assert tree.published(EVENTS).exists() and tree.published("notes.txt").exists()


def test_symlinks_in_staging_are_never_followed(tree, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("root")
    append_scalars(secret / EVENTS, range(3))
    os.symlink(secret / "passwd", tree.staged("passwd"))
    os.symlink(secret, tree.staged("linked dir"))
    report = tree.publish()
    assert {a.path: a.action for a in report.actions} == {"passwd": "skip", "linked dir": "skip"}
    assert all("never published or followed" in a.detail for a in report.actions)
    assert report.errors == ()  # a skipped link is not a failed run
    report = tree.publish(changed=["passwd", "linked dir/" + EVENTS, "../secret/passwd"])
    assert {a.action for a in report.actions} == {"skip"}
    assert [path for path, _ in report.errors] == ["../secret/passwd"]
    assert not os.path.lexists(tree.logdir / "train" / "passwd")
    assert not os.path.lexists(tree.logdir / "train" / "linked dir")


def test_a_symlinked_folder_in_the_logdir_leading_out_is_refused(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree.logdir / "train").mkdir()
    os.symlink(outside, tree.logdir / "train" / "run1")
    tree.staged("run1").mkdir()
    append_scalars(tree.staged("run1/" + EVENTS), range(3))
    tree.staged("run1/notes.txt").write_text("x")
    report = tree.publish()
    assert {a.action for a in report.actions} == {"skip"}
    assert all("leading out" in message for _, message in report.errors)
    assert os.listdir(outside) == []
    # A symlink that stays inside the source's folder is fine.
    (tree.logdir / "train" / "real").mkdir()
    os.symlink("real", tree.logdir / "train" / "alias")
    tree.staged("alias").mkdir()
    append_scalars(tree.staged("alias/" + EVENTS), range(3))
    assert action(tree.publish(changed=["alias/" + EVENTS]), "alias/" + EVENTS).action == \
        "create"
    assert (tree.logdir / "train" / "real" / EVENTS).exists()


def test_a_symlink_file_in_the_logdir_is_not_written_through(tree, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"")
    (tree.logdir / "train").mkdir()
    os.symlink(target, tree.published(EVENTS))
    append_scalars(tree.staged(EVENTS), range(3))
    report = tree.publish()
    assert action(report, EVENTS).action == "skip"
    assert target.read_bytes() == b""


def test_the_source_folder_itself_must_not_lead_out(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, tree.logdir / "train")
    append_scalars(tree.staged(EVENTS), range(3))
    with pytest.raises(PublishError, match="symlink leading out of the logdir"):
        tree.publish()
    assert os.listdir(outside) == []


def test_our_temp_names_in_staging_are_never_published(tree):
    tree.staged(".tb-rsync-abc.tmp").write_text("x")
    report = tree.publish()
    assert action(report, ".tb-rsync-abc.tmp").action == "skip"
    assert not (tree.logdir / "train" / ".tb-rsync-abc.tmp").exists()


def test_stale_temps_from_a_killed_publisher_are_removed(tree):
    (tree.logdir / "train").mkdir()
    (tree.logdir / "train" / ".tb-rsync-0123.tmp").write_bytes(b"half")
    append_scalars(tree.staged(EVENTS), range(3))
    tree.publish()  # check_logdir asserts no temp survives


@pytest.mark.parametrize("damage", ["lost", "garbage", "wrong types", "stale inode"])
def test_manifest_is_only_a_hint(tree, damage):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    append_scalars(staged, range(5, 8))
    if damage == "lost":
        tree.manifest.unlink()
    elif damage == "garbage":
        tree.manifest.write_text("{not json")
    elif damage == "wrong types":
        tree.manifest.write_text(json.dumps(
            {"version": 1, "files": {EVENTS: {"aligned_len": "x", "size": -1}}}))
    else:
        data = json.loads(tree.manifest.read_text())
        data["files"][EVENTS]["inode"] += 1
        data["files"][EVENTS]["aligned_len"] = 3
        tree.manifest.write_text(json.dumps(data))
    report = tree.publish()
    assert action(report, EVENTS).action == "append"
    assert tree.published(EVENTS).read_bytes() == staged.read_bytes()
    assert report.runs["train"].newest_step == 7


def test_crash_after_append_before_manifest_write(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    old_manifest = tree.manifest.read_bytes()
    append_scalars(staged, range(5, 8))
    tree.publish()
    tree.manifest.write_bytes(old_manifest)  # as if the publisher died before writing it
    report = tree.publish()
    assert action(report, EVENTS).action == "unchanged"
    assert tree.published(EVENTS).read_bytes() == staged.read_bytes()
    assert report.runs["train"].newest_step == 7


def test_crash_mid_append_leaves_a_partial_record_that_is_completed(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    inode = tree.published(EVENTS).stat().st_ino
    more = append_scalars(staged, range(5, 8))
    with open(tree.published(EVENTS), "ab") as f:
        f.write(more[:50])  # one record and a bit: where a killed append may stop
    assert len(loaded_events(str(tree.published(EVENTS)))) == 7  # TB: "not yet written"
    report = tree.publish()
    assert action(report, EVENTS).action == "append"
    assert action(report, EVENTS).bytes == len(more) - 50
    assert tree.published(EVENTS).read_bytes() == staged.read_bytes()
    assert tree.published(EVENTS).stat().st_ino == inode


def test_a_partial_record_that_does_not_match_the_source_is_not_continued(tree):
    staged = tree.staged(EVENTS)
    append_scalars(staged, range(5))
    tree.publish()
    append_scalars(staged, range(5, 8))
    with open(tree.published(EVENTS), "ab") as f:
        f.write(b"\x00" * 30)  # a hole after power loss
    report = tree.publish(check=False)
    assert report.needs_restage == (EVENTS,)
    report = tree.publish(restaged=[EVENTS])
    assert action(report, EVENTS).action == "rewrite"
    assert tree.published(EVENTS).read_bytes() == staged.read_bytes()


def test_changed_limits_the_work_to_the_listed_files(tree):
    append_scalars(tree.staged(EVENTS), range(3))
    tree.staged("a.txt").write_text("a")
    report = tree.publish(changed=["a.txt", "./sub/.."])
    assert [a.path for a in report.actions] == ["a.txt"]
    assert not tree.published(EVENTS).exists()


def test_a_file_where_the_logdir_has_a_folder_is_an_error(tree):
    (tree.logdir / "train" / "notes.txt").mkdir(parents=True)
    tree.staged("notes.txt").write_text("x")
    report = tree.publish()
    assert action(report, "notes.txt").action == "error"
    assert "is a folder in the logdir" in dict(report.errors)["notes.txt"]


def snapshot(folder):
    return sorted((p, os.lstat(os.path.join(p, n)).st_size)
                  for p, ds, ns in os.walk(folder) for n in ns + ds)


def test_missing_logdir(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    missing = tmp_path / "nope"
    with pytest.raises(PublishError) as info:
        publish(str(staging), str(missing), "train", str(tmp_path / "q"), str(tmp_path / "m"))
    assert str(info.value) == f"Logdir '{missing}' does not exist; create it or fix --logdir."
    assert not missing.exists()


@pytest.mark.parametrize("inside", ["staging", "quarantine"])
def test_staging_or_quarantine_inside_the_logdir_is_refused(tree, inside):
    nested = tree.logdir / "cache" / "train"
    nested.mkdir(parents=True)
    append_scalars(nested / EVENTS, range(3))
    before = snapshot(tree.logdir)
    staging, quarantine = (nested, tree.quarantine) if inside == "staging" \
        else (tree.staging, nested)
    with pytest.raises(PublishError) as info:
        publish(str(staging), str(tree.logdir), "train", str(quarantine), str(tree.manifest))
    assert f"'{nested}' is inside the logdir '{tree.logdir}'" in str(info.value)
    assert "outside the logdir" in str(info.value)
    assert snapshot(tree.logdir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_logdir(tree):
    append_scalars(tree.staged(EVENTS), range(3))
    os.chmod(tree.logdir, 0o555)
    try:
        with pytest.raises(PublishError) as info:
            tree.publish()
    finally:
        os.chmod(tree.logdir, 0o755)
    assert str(info.value) == (f"Logdir '{tree.logdir}' is not writable by this user; fix "
                               "its permissions or choose another --logdir.")
    assert os.listdir(tree.logdir) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None,
                    reason="needs root and chattr (the non-root case is the test above)")
def test_immutable_logdir_as_root(tree):
    """Root passes every permission check; an immutable folder still refuses writes."""
    append_scalars(tree.staged(EVENTS), range(3))
    if subprocess.run(["chattr", "+i", str(tree.logdir)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        with pytest.raises(PublishError) as info:
            tree.publish(check=False)
    finally:
        subprocess.run(["chattr", "-i", str(tree.logdir)], check=True)
    assert str(info.value) == (f"Logdir '{tree.logdir}' is not writable by this user; fix "
                               "its permissions or choose another --logdir.")
    assert os.listdir(tree.logdir) == []


def test_read_only_logdir_says_read_only(tree):
    """A real read-only mount (a tmpfs remounted ro; needs root)."""
    append_scalars(tree.staged(EVENTS), range(3))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              str(tree.logdir)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(tree.logdir)], check=True)
        with pytest.raises(PublishError) as info:
            tree.publish(check=False)
    finally:
        subprocess.run(["umount", str(tree.logdir)], check=True)
    assert str(info.value) == (f"'{tree.logdir}' is on a read-only filesystem; remount it "
                               "read-write or choose another logdir.")


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_bad_source_names(tree, name):
    with pytest.raises(PublishError, match="not a plain folder name"):
        publish(str(tree.staging), str(tree.logdir), name, str(tree.quarantine),
                str(tree.manifest))
    assert os.listdir(tree.logdir) == []


def test_missing_staging(tree, tmp_path):
    with pytest.raises(PublishError, match="sync the source before publishing"):
        publish(str(tmp_path / "none"), str(tree.logdir), "train", str(tree.quarantine),
                str(tree.manifest))
    assert os.listdir(tree.logdir) == []


def test_same_size_replacement_in_staging_is_noticed(tree):
    staged = tree.staged(EVENTS)
    staged.write_bytes(scalar_bytes(range(5), header=True))
    tree.publish()
    assert action(tree.publish(), EVENTS).action == "unchanged"  # the no-read fast path
    new = tree.root / "new"
    new.write_bytes(scalar_bytes(range(5), wall_time0=1_700_000_100.0, header=True))
    os.replace(new, staged)  # same size, new inode: as rsync renames a new version in
    assert tree.publish(check=False).needs_restage == (EVENTS,)
    assert action(tree.publish(restaged=[EVENTS]), EVENTS).action == "rewrite"
    assert tree.published(EVENTS).read_bytes() == staged.read_bytes()


@pytest.mark.parametrize("name", [".events.out.tfevents.1.node.1.0.Xy12ab",
                                  ".syncthing.events.out.tfevents.1.node.tmp",
                                  "events.out.tfevents.1.node.1.0.partial",
                                  "ckpt/.model.ckpt.Xy12ab", "ckpt/model.ckpt.partial",
                                  "ckpt/.syncthing.model.ckpt.tmp", "ckpt/.partial"])
def test_copies_in_progress_at_the_source_are_not_published(tree, name):
    """Other tools' temporaries, of event files and of any other file, whichever way the
    publisher is told about them (a walk, or a list of changed paths)."""
    tree.staged(name).parent.mkdir(parents=True, exist_ok=True)
    tree.staged(name).write_bytes(scalar_bytes(range(3), header=True))
    for changed in (None, [name]):
        report = tree.publish(changed=changed)
        assert [(a.path, a.action) for a in report.actions] == [(name, "skip")]
        assert "copy in progress" in report.actions[0].detail
        assert not os.path.lexists(tree.published(name))


def test_a_hidden_event_file_is_not_published(tree):
    name = ".events.out.tfevents.1.node.1.0.copy"
    tree.staged(name).write_bytes(scalar_bytes(range(3), header=True))
    report = tree.publish()
    assert [(a.path, a.action) for a in report.actions] == [(name, "skip")]
    assert "hidden event file" in report.actions[0].detail
