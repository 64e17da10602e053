"""Lines read back from the journals in the staging root, checked before anything uses them.

The state journals (`state/<name>.jsonl`) and the rewrite journal (`rewrites.jsonl`) are
shared by every process on a staging root, and anything may have written a line there: an
older tb-rsync, a crash, a disk error, a hand edit. A line is used only when it is a JSON
object whose every field has the type its readers expect, and whose paths stay inside the
tree they name; any other line is skipped, with one warning per file (not one per read: the
same file is read again every few seconds).
"""

import json
import logging
import math
import posixpath
import threading

from tb_rsync_plugin import config

logger = logging.getLogger(__name__)

_BAD_PARTS = frozenset(("", ".", ".."))
_warned = set()
_warned_lock = threading.Lock()


def text(value):
    return isinstance(value, str)


def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def flag(value):
    return isinstance(value, bool)


# The checks below run for every field of every line read back (10,000 runs: 10,000 lines
# at a process's start), so they are plain loops: generator expressions in `all()` cost
# about twice as much here.
def optional(check):
    def optional_check(value):
        return value is None or check(value)
    return optional_check


def list_of(check):
    def list_check(value):
        if not isinstance(value, list):
            return False
        for item in value:
            if not check(item):
                return False
        return True
    return list_check


def object_of(fields):
    """A dict whose listed keys, where present, pass their checks (absent ones read as None)."""
    checks = tuple(fields.items())

    def object_check(value):
        if not isinstance(value, dict):
            return False
        for key, check in checks:
            if key in value and not check(value[key]):
                return False
        return True
    return object_check


def text_map(value):
    if not isinstance(value, dict):
        return False
    for key, item in value.items():
        if not (isinstance(key, str) and isinstance(item, str)):
            return False
    return True


def is_source_name(value):
    return text(value) and config.is_source_name(value)


def is_run_of(source, run):
    """True if `run` is a plain logdir-relative folder of source `source` (no '..', '.',
    empty or absolute parts): only such a run may name a path."""
    if not (text(run) and text(source)) or "\\" in run or "\0" in run:
        return False
    parts = run.split("/")
    return parts[0] == source and _BAD_PARTS.isdisjoint(parts)


def is_file_of(run, file):
    """True if `file` is an event file name directly inside run folder `run`."""
    return text(file) and posixpath.dirname(file) == run and \
        is_run_of(run.split("/")[0], file) and config.is_event_file(file)


def parse(line, path, fields, required=(), check=None):
    """One line as a dict of `fields` (absent optional ones are None), or None if unusable.

    Args:
      line: the bytes of one line, without its newline.
      path: the file it came from (for the warning).
      fields: {key: check(value) -> bool}.
      required: keys that must be present.
      check: a last check of the whole dict (paths inside their tree), or None.
    """
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict) and all(key in value for key in required) and \
            object_of(fields)(value):
        value = {key: value.get(key) for key in fields}
        if check is None or check(value):
            return value
    skipped(path)
    return None


def skipped(path):
    """Log once per file that a damaged line in it is skipped."""
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    logger.warning("tb-rsync: skipping damaged line(s) in '%s' (not what tb-rsync writes); "
                   "the rest of the file is used.", path)
