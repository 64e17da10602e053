"""rsync into the staging tree: which rsync processes a sync needs (rsync_run.py runs them,
process.py starts them, ssh.py gives their --rsh, rsync_errors.py words their failures).

Event files and everything else need opposite handling. A first sync (nothing staged
yet) is one rsync of the filtered tree. Otherwise a sync of an idle source is one walk of the
source, and more processes only when that walk found something to move:

1. A listing: ``rsync --dry-run`` over the filtered tree itemizes every file whose size or
   mtime differs from its staged copy. When nothing changed this is the whole sync (one
   login, one walk, nothing written). For a source that changed at its last sync
   (``expect_growth``: a job is writing), the ``--append`` pass of event files (the user's
   filters narrowed to basenames containing ``tfevents``, ``--prune-empty-dirs``) runs
   beside the listing, so grown event files cost one round of wall time, not two; an event
   file that pass itemized is done, whatever the listing says (the source may have grown
   since, or the listing may have looked at the staged copy mid-append).
2. Then, side by side, each with ``--files-from`` (no second walk):
   - event files (basename contains ``tfevents``) that are new or longer at the source:
     ``rsync --append``, which moves just the new bytes (a 1 GB file grown by 1 MB: 0.02 s
     instead of 3.7 s). A file that grew again since the listing is appended up to its
     current length; the publisher only publishes whole records.
   - event files shorter at the source than staged (rewritten), or not a regular file in
     staging: fetched whole with ``--whole-file --ignore-times`` (``TransferResult.restaged``).
   - every other changed file (and symlink): rsync's default algorithm, written in
     ``--temp-dir`` and renamed into place (never ``--inplace``).
   Event files of the same size with another mtime are reported as
   ``TransferResult.same_size``, not fetched: the caller decides. A file rewritten to a longer
   length is appended onto the old prefix; the publisher notices when the new bytes do not
   start with a valid record and calls `restage_files` (a rewrite with the very same record
   sizes goes unnoticed: see docs/ARCHITECTURE.md).
All processes share one deadline and one cancel flag; a failure stops all of them and raises
one `TransferError`. A process that a daemon's ``max connections`` refused is started again
alone once the others are done. Measured (loopback, 2 busy cores): see docs/BENCHMARKS.md B1
and B3. Nothing is ever deleted from staging (files deleted at the source stay); the
publisher is told what changed, so nobody walks the tree.

Filter semantics (``Source.include`` / ``Source.exclude``), applied by the listing (the
transfers use its explicit file lists):
  1. ``exclude`` patterns come first and always win: a matching file or folder is skipped.
  2. Every other folder is descended into.
  3. With ``include`` patterns, only files matching one of them are synced ("only these");
     without, every file is. To select a folder's contents write ``folder/***``. An exclude of
     ``*`` next to includes (the classic rsync idiom) is implied and therefore dropped.
Patterns are rsync patterns: without a ``/`` they match a basename at any depth.
"""

import dataclasses
import os
import stat

from tb_rsync_plugin.config import is_event_file
from tb_rsync_plugin.transports.rsync_run import RsyncRun
from tb_rsync_plugin.transports.transfer import TransferResult


def run_rsync(rsync_path, source, staging_dir, temp_dir, on_progress=None, cancel=None,
              before_write=None, rsh=None, expect_growth=False):
    """Bring `staging_dir` up to date with `source` (never deleting anything).

    Args:
      rsync_path: the local rsync binary.
      source: a `config.Source`.
      staging_dir: rsync's destination; created if missing.
      temp_dir: rsync's --temp-dir, outside the staging tree on the same filesystem.
      on_progress: called with `Progress` from rsync's reader threads (never concurrently).
      cancel: a `threading.Event`; when set, rsync is stopped and TransferError raised.
      before_write: called once, with whether event files staged earlier may be appended to,
        before the first process that writes into staging starts (never when nothing
        changed and not `expect_growth`), so the caller can mark staging as unpublished.
      expect_growth: the source changed at its last sync (a job is writing): run the
        `--append` pass of event files beside the listing, one round instead of two.
      rsh: the `--rsh` value for a `host:dir` source (`ssh.SshConnections.rsh_for`, which
        shares one login); default: `ssh.ssh_command(source.ssh)`.

    Raises:
      TransferError: one sentence naming the source; `details` holds the command and stderr.
    """
    first_sync = _empty(staging_dir)
    run = RsyncRun(rsync_path, source, staging_dir, temp_dir, on_progress, cancel, rsh)
    if first_sync:
        # Nothing staged to compare with: no listing, one rsync copies the filtered tree (one
        # process, and over ssh one session, instead of up to three: BENCHMARKS.md B6). New
        # event files need no --append; every file lands through --temp-dir.
        if before_write is not None:
            before_write(False)
        whole = run.start("files", ["--prune-empty-dirs"] + run.filters())
        return run.result(run.settle([whole]), restaged_phase="restage")
    if expect_growth:
        # An active source: its event files most likely grew, so the append pass runs beside
        # the listing (two walks, one round of wall time).
        if before_write is not None:
            before_write(True)
        listing = run.start("list", ["--dry-run"] + run.filters(), progress=False)
        events = run.start("events", ["--append", "--prune-empty-dirs"] +
                           run.filters(events=True))
        listing, events = run.settle([listing, events])
        appended, first = {path for _, _, _, path in events.items}, [listing, events]
    else:
        # An idle source: one walk. A sync that finds nothing ends here, having written
        # nothing.
        (listing,) = run.settle([run.start("list", ["--dry-run"] + run.filters(),
                                           progress=False)])
        appended, first = set(), [listing]
    append, whole, others, same_size, grows = [], [], [], [], False
    for kind, length, _, path in listing.items:
        if kind[1:2] == "d":
            continue  # folders come with the files inside them
        event = is_event_file(path)
        if event and path in appended:
            # The append pass brought it up to date (or made the symlink). Never judged by
            # the listing's length: the source may have grown since, or the listing may have
            # looked at the staged copy half-way through the append.
            continue
        if not (kind.startswith(">f") and event):
            if kind.startswith(">f") or kind[1:2] == "L":
                others.append(path)
            continue
        # Not touched by an append pass this sync: its staged copy is as the previous sync
        # left it, so the listed length is a fair comparison.
        try:
            staged = os.lstat(os.path.join(staging_dir, path))
        except FileNotFoundError:
            append.append(path)  # new: --append writes it from byte 0
            continue
        if not stat.S_ISREG(staged.st_mode) or staged.st_size > length:
            whole.append(path)  # shrank at the source, or not a file here: fetch whole
        elif staged.st_size < length:
            append.append(path)  # grew: only the new bytes move
            grows = True
        else:
            # Same size, other mtime: --append would skip it. Reported, not fetched: a
            # corrupt record fixed in place at the source changes no size, and without this
            # the fix was never fetched (tests/test_faults.py, corrupt records case).
            same_size.append(path)
    jobs = []
    if (append or whole or others) and before_write is not None and not expect_growth:
        before_write(grows)
    # --append with an explicit list: no second walk; a file that grew again since the
    # listing is appended up to its current length (the publisher keeps whole records).
    if append:
        jobs.append(run.start("events", ["--append"], files=append))
    if whole:
        jobs.append(run.start("restage", ["--whole-file", "--ignore-times"], files=whole))
    if others:
        jobs.append(run.start("files", [], files=others))
    jobs = run.settle(jobs)
    return dataclasses.replace(run.result(first + jobs, restaged_phase="restage"),
                               same_size=tuple(sorted(same_size)))

def _empty(folder):
    """True when `folder` is missing or holds nothing: a source's first sync."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True
    except OSError:
        return False  # the transfer says what is wrong with it


def restage_files(rsync_path, source, staging_dir, temp_dir, paths, on_progress=None,
                  cancel=None, rsh=None):
    """Fetch `paths` (relative to the source) whole, replacing their staged copies.

    For event files the publisher found not to extend what it published: no append, no
    quick check (`--ignore-times`), so even a same-size rewrite is fetched.
    """
    run = RsyncRun(rsync_path, source, staging_dir, temp_dir, on_progress, cancel, rsh)
    paths = list(paths)
    if not paths:
        return TransferResult()
    job = run.start("restage", ["--whole-file", "--ignore-times"], files=paths)
    run.wait([job])
    return run.result([job], restaged_phase="restage")
