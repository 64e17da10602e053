"""Publishing a staging tree into `logdir/<name>/` without ever confusing TensorBoard.

`publish` refuses unusable folders before touching anything, lists the staged paths to look
at (those the transport changed, or a walk of the whole tree), hands each to
`file_publisher.Publisher` (the rules for event files and the others are there) and saves
the manifest (manifest.py), also when it stops part-way. `report.PublishReport` says
what happened.

Assumptions: one publisher per source at a time (the service holds `locks/<name>.lock`);
staged event files only change by rsync appending to them or replacing them whole.
"""

import errno
import os
import posixpath

from tb_rsync_plugin import config
from tb_rsync_plugin.errors import PublishError
from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin.publishing import manifest as manifest_lib
from tb_rsync_plugin.publishing.file_publisher import Publisher
from tb_rsync_plugin.publishing.report import IN_SYMLINKED_FOLDER, SOURCE_SYMLINK

def publish(staging_dir, logdir, name, quarantine_dir, manifest_path, changed=None,
            restaged=()):
    """Publish `staging_dir/<rel>` as `logdir/<name>/<rel>`; see the module docstring.

    Args:
      changed: staged paths (POSIX, relative to `staging_dir`) to look at; None walks all.
      restaged: event files fetched whole, so a prefix mismatch means "rewritten at the
        source" rather than "needs a whole fetch".

    Raises:
      PublishError: the logdir itself is unusable (missing, not writable, disk full); files
        already published stay consistent.
    """
    dest_root = _check_folders(staging_dir, logdir, name, quarantine_dir)
    paths = _walk(staging_dir) if changed is None else _listed(staging_dir, changed)
    # Nothing to look at (a no-op sync): skip reading a manifest of every event file.
    publisher = Publisher(staging_dir, dest_root, name, quarantine_dir,
                           manifest_lib.load(manifest_path) if paths else {}, frozenset(restaged),
                           walked=changed is None)
    try:
        for rel, problem in sorted(paths):
            publisher.publish_one(rel, problem)
    except BaseException:
        publisher.save_manifest(manifest_path, quiet=True)
        raise
    publisher.save_manifest(manifest_path)
    return publisher.report()


def _check_folders(staging_dir, logdir, name, quarantine_dir):
    """Refuse bad input before touching anything; returns `logdir/<name>`."""
    if not os.path.isdir(logdir):
        raise PublishError(f"Logdir '{logdir}' does not exist; create it or fix --logdir.")
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise PublishError(
            f"Source name '{name}' is not a plain folder name; use one without '/' or '..'."
        )
    real_logdir = os.path.realpath(logdir)
    for what, path in (("Staging folder", staging_dir), ("Quarantine folder", quarantine_dir)):
        if config.is_within(os.path.realpath(path), real_logdir):
            raise PublishError(
                f"{what} '{path}' is inside the logdir '{logdir}'; TensorBoard would load its "
                f"files as runs. Choose a staging folder outside the logdir "
                f"{config.STAGING_FLAGS}."
            )
    if not os.path.isdir(staging_dir):
        raise PublishError(
            f"Staging folder '{staging_dir}' does not exist; sync the source before publishing."
        )
    dest_root = os.path.join(logdir, name)
    if os.path.islink(dest_root) and not config.is_within(os.path.realpath(dest_root), real_logdir):
        raise PublishError(
            f"'{dest_root}' is a symlink leading out of the logdir; replace it with a folder "
            "so tb-rsync never writes outside the logdir."
        )
    if os.path.lexists(dest_root) and not os.path.isdir(dest_root):
        raise PublishError(
            f"'{dest_root}' is a file, not a folder; move it away so source '{name}' can be "
            "published there."
        )
    writable = dest_root if os.path.isdir(dest_root) else logdir
    if not os.access(writable, os.W_OK | os.X_OK):
        if os.statvfs(writable).f_flag & os.ST_RDONLY:
            # access(2) failed with EROFS, which os.access does not tell: the read-only
            # sentence, worded where every errno's is.
            with atomic.publish_errors(writable):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), writable)
        raise PublishError(
            f"Logdir '{writable}' is not writable by this user; fix its permissions or "
            "choose another --logdir."
        )
    return dest_root


def _walk(staging_dir):
    """Every file under `staging_dir` as `(rel, problem)`; symlinks are listed, not followed."""
    found, folders = [], [""]
    while folders:
        reldir = folders.pop()
        with os.scandir(os.path.join(staging_dir, reldir) if reldir else staging_dir) as it:
            for entry in it:
                rel = f"{reldir}/{entry.name}" if reldir else entry.name
                if entry.is_symlink():
                    found.append((rel, SOURCE_SYMLINK))
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(rel)
                else:
                    found.append((rel, None))
    return found


def _listed(staging_dir, changed):
    """The given paths as `(rel, problem)`, refusing ones that leave the staging tree."""
    found = set()
    for path in changed:
        rel = posixpath.normpath(str(path).replace(os.sep, "/"))
        if rel.startswith("/") or rel == ".." or rel.startswith("../"):
            found.add((str(path), "is outside the staging folder; it is not published"))
            continue
        if rel == ".":
            continue
        folder = staging_dir
        problem = None
        for part in rel.split("/")[:-1]:
            folder = os.path.join(folder, part)
            if os.path.islink(folder):
                problem = IN_SYMLINKED_FOLDER
                break
        found.add((rel, problem))
    return found
