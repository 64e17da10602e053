"""What a publish reports: per file an action, per run the newest event published.

The engine reads these (the state, the rewrite journal, the service's warnings); the
publisher (file_publisher.py) builds them.
"""

import dataclasses
import posixpath
from typing import Dict, Optional, Tuple

# FileAction.action values that put bytes into the logdir.
PUBLISHED_ACTIONS = frozenset({"append", "create", "replace", "rewrite"})


@dataclasses.dataclass(frozen=True)
class FileAction:
    """What happened to one staged file; `path` is relative to the staging folder."""

    path: str
    action: str
    bytes: int = 0
    detail: str = ""
    kept_at: str = ""  # for a rewrite: where the old published file was moved


@dataclasses.dataclass(frozen=True)
class RunUpdate:
    """One run (logdir-relative folder holding event files) seen by this publish.

    `newest_*` is the newest event published in the run's files seen this time; `files` are
    the event files (relative to the staging folder) that got new bytes or were rewritten.
    """

    run: str
    newest_wall_time: Optional[float]
    newest_step: Optional[int]
    rewritten: bool = False
    files: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PublishReport:
    actions: Tuple[FileAction, ...]
    runs: Dict[str, RunUpdate]
    needs_restage: Tuple[str, ...]
    errors: Tuple[Tuple[str, str], ...]

    @property
    def bytes_published(self):
        return sum(a.bytes for a in self.actions if a.action in PUBLISHED_ACTIONS)

    @property
    def files_published(self):
        return sum(1 for a in self.actions if a.action in PUBLISHED_ACTIONS)


def run_of(name, rel):
    """The run (logdir-relative folder) that holds source `name`'s file `rel`."""
    reldir = posixpath.dirname(rel)
    return f"{name}/{reldir}" if reldir else name


# Symlinks at the source (a `latest -> ckpt-100` next to checkpoints is common) are skipped
# without marking the run as failed: nothing is wrong with the run, the link is just never
# followed. The service lists them as a source warning.
SYMLINK_NOT_FOLLOWED = "symlinks are never"  # in both details below; the service counts them
SOURCE_SYMLINK = "is a symlink at the source; symlinks are never published or followed"
IN_SYMLINKED_FOLDER = "lies in a symlinked folder at the source; symlinks are never followed"
