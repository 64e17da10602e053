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


def optional(check):
    return lambda value: value is None or check(value)


def list_of(check):
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def object_of(fields):
    """A dict whose listed keys, where present, pass their checks (absent ones read as None)."""
    return lambda value: isinstance(value, dict) and \
        all(key not in value or check(value[key]) for key, check in fields.items())


def text_map(value):
    return isinstance(value, dict) and all(text(k) and text(v) for k, v in value.items())


def is_source_name(value):
    return text(value) and config.is_source_name(value)


def is_run_of(source, run):
    """True if `run` is a plain logdir-relative folder of source `source` (no '..', '.',
    empty or absolute parts): only such a run may name a path."""
    if not (text(run) and text(source)) or "\\" in run or "\0" in run:
        return False
    parts = run.split("/")
    return parts[0] == source and all(p not in ("", ".", "..") for p in parts)


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
