"""What an rclone listing says about an object, and what staging recorded of it.

rclone's names are not file names: ``lsjson`` shows control characters as Unicode control
pictures (``␉`` for a tab), which rclone commands take back and its local backend writes as
the raw characters. `ListedObject` keeps both (`remote` for rclone, `rel` for staging).
Hashes come from the listing where the remote keeps them (S3's ETag as md5); the ones an
object was fetched with are kept on its staged file, so a replacement that keeps the size
and the listed (whole-second) mtime is still seen.
"""

import calendar
import dataclasses
import json
import os
import re
import time
from typing import Dict

_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


@dataclasses.dataclass(frozen=True)
class ListedObject:
    """One listed object. `remote` is rclone's name for it (control characters shown as
    symbols, `␉` for a tab), which rclone commands take; `rel` is the file name it gets in
    staging (the raw characters), which everything local uses. `hashes`: what the listing
    gave ({} when the remote hashes slowly or has none for it)."""

    remote: str
    rel: str
    size: int
    mtime_ns: int
    hashes: Dict[str, str]


def parse_listing(data):
    """`rclone lsjson` output (bytes) as `ListedObject`s. Raises ValueError, KeyError,
    TypeError or AttributeError when it is not what rclone prints."""
    return [ListedObject(e["Path"], local_name(e["Path"]), int(e["Size"]),
                         parse_mod_time(e["ModTime"]),
                         {k: v for k, v in (e.get("Hashes") or {}).items()
                          if isinstance(v, str) and v})
            for e in json.loads(data or b"[]")]


def parse_mod_time(text):
    """rclone's RFC 3339 time (nanoseconds, any offset) as integer ns since the epoch."""
    match = _TIME_RE.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    seconds = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    if match.group(3) != "Z":
        sign = 1 if match.group(3)[0] == "+" else -1
        hours, minutes = match.group(3)[1:].split(":")
        seconds -= sign * (int(hours) * 3600 + int(minutes) * 60)
    return seconds * 1_000_000_000 + int((match.group(2) or "0").ljust(9, "0"))


def is_safe(rel):
    """An object key can hold '..' or '//'; such a name would point outside staging. A
    newline would split the list of files to retry (service.py)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\n" not in rel \
        and all(p not in ("", ".", "..") for p in parts)


def replaced(path, obj):
    """True when the listing's hashes show other content than what `path` was fetched
    from. Size and mtime miss a same-size replacement within the listed second (S3 lists
    whole seconds); a hash does not. Unknown (no hash listed or recorded): False."""
    recorded = recorded_hashes(path)
    return any(recorded.get(kind) not in (None, value) for kind, value in obj.hashes.items())


# The listed hashes of the object a staged file was fetched from, kept on the file itself
# (an extended attribute follows renames and appends, and goes with the inode it describes).
# Where the staging filesystem has none, nothing is recorded and size and mtime decide.
_HASHES_XATTR = "user.tb-rsync.listed-hashes"


def recorded_hashes(path):
    try:
        return json.loads(os.getxattr(path, _HASHES_XATTR))
    except (OSError, ValueError):
        return {}


def record_hashes(path, hashes):
    try:
        if hashes:
            os.setxattr(path, _HASHES_XATTR, json.dumps(hashes, sort_keys=True).encode())
        else:
            os.removexattr(path, _HASHES_XATTR)
    except OSError:
        pass  # no xattrs here (or none to remove): a later sync may fetch it again


# rclone shows control characters (0x01-0x1f) and DEL in names as Unicode control pictures
# (`␉` for a tab), a picture that is part of the name quoted with `‛`; its local backend
# writes the raw characters (lib/encoder: Standard shown, Base on disk).
_QUOTE = "\u201b"
_PICTURES = {chr(0x2400 + c): chr(c) for c in range(1, 0x20)}
_PICTURES["\u2421"] = "\x7f"


def local_name(listed):
    """The name rclone's local backend writes for `listed` (a name as rclone lists it)."""
    out, quoted = [], False
    for char in listed:
        if quoted:
            quoted = False
            if char not in _PICTURES:
                out.append(_QUOTE)  # `‛‛`, `‛␀`, `‛／`: quoted on disk as well
            out.append(char)
        elif char == _QUOTE:
            quoted = True
        else:
            out.append(_PICTURES.get(char, char))
    if quoted:
        out.append(_QUOTE)
    return "".join(out)
