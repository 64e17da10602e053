"""What a transfer reports (`Progress`, `TransferResult`), and what rsync and rclone share.

Both transports (rsync.py, rclone.py) fill a source's staging folder and report in these
types; the service reads only these, never which transport ran.
"""

import dataclasses
import os
from typing import Optional, Tuple

from tb_rsync_plugin.errors import TransferError

# After "N file(s) vanished " in rsync's and rclone's warning.
VANISHED_TAIL = ("at the source (deleted, or replaced by a rename) while being copied; the "
                 "next sync picks up what is left.")


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report. `bytes_done` sums every rsync process of this sync; `percent` and
    `rate_bytes_s` are those of the process in `phase` ("events", "files" or "restage").
    The service adds two phases of its own: "connecting" (before rsync reports) and
    "reloading" (a fast-loader reload cycle)."""

    bytes_done: int
    percent: int
    rate_bytes_s: float
    phase: str


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """What one sync wrote into the staging tree.

    Attributes:
      changed: regular files rsync wrote (POSIX paths relative to the staging dir), sorted.
      restaged: the subset of `changed` fetched whole because the staged copy was not a
        prefix of the source any more (the source shrank, or `restage_files` was asked).
      bytes_received: bytes rsync reports moving for those files (protocol included).
      files_transferred: len(changed).
      warnings: sentences about problems that did not stop the sync (vanished files ...).
      duration_s: wall time of the whole sync.
      same_size: event files whose source changed (other mtime) but kept its size; this
        transfer did not fetch them (see `run_rsync`), the caller decides.
      grown: event files `--append` extended from an earlier staged copy (not new ones):
        the caller checks that their first records still match the source's (a restarted
        run reusing the name with the same record sizes would otherwise be spliced on).
      api_requests: HTTP requests made to the storage (rclone, rclone_log.py); None when
        not counted: rsync has none, or the user's rclone flags set its logging.
    """

    changed: Tuple[str, ...] = ()
    restaged: Tuple[str, ...] = ()
    bytes_received: int = 0
    files_transferred: int = 0
    warnings: Tuple[str, ...] = ()
    duration_s: float = 0.0
    same_size: Tuple[str, ...] = ()
    grown: Tuple[str, ...] = ()
    api_requests: Optional[int] = None


def add_requests(first, second):
    """Two counts of requests summed; None (not counted) if either is."""
    return None if first is None or second is None else first + second


def make_folders(source, staging_dir, temp_dir):
    """Create a transfer's staging and temporary folders, or say why they cannot be."""
    for folder, what in ((staging_dir, "staging"), (temp_dir, "temporary")):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise TransferError(
                f"Sync of '{source.name}' cannot create the {what} folder '{folder}' "
                f"({e.strerror}); check its permissions and free space.") from None
