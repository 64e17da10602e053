"""The publisher's manifest (`manifest/<name>.json`): per event file its record-aligned
length, size, inode, newest event and the staged copy's stamp.

A hint, never the truth (the published files are): it keeps a publish's cost proportional
to the new bytes. Anything unreadable or malformed is an empty hint, so the next publish
scans the published files once.
"""

import json

from tb_rsync_plugin.publishing import atomic

MANIFEST_VERSION = 1
_ENTRY_KEYS = ("aligned_len", "size", "inode", "newest_wall_time", "newest_step",
               "corrupt_at", "corrupt_staged_size", "staged")


def load(path):
    """Entries of a readable, well-formed manifest; anything else is an empty hint."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        files = data["files"] if data.get("version") == MANIFEST_VERSION else {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
    entries = {}
    for rel, entry in (files.items() if isinstance(files, dict) else ()):
        if isinstance(entry, dict) and all(
                type(entry.get(k)) is int and entry[k] >= 0
                for k in ("aligned_len", "size", "inode")) and \
                isinstance(entry.get("newest_wall_time"), (int, float, type(None))) and \
                isinstance(entry.get("newest_step"), (int, type(None))):
            entries[rel] = {k: entry[k] for k in _ENTRY_KEYS if k in entry}
            staged = entries[rel].get("staged")
            if not (isinstance(staged, list) and len(staged) == 3
                    and all(type(v) is int for v in staged)):
                entries[rel].pop("staged", None)
    return entries


def save(path, entries):
    """Write the manifest atomically, so a crash leaves the old one or the new one."""
    data = json.dumps({"version": MANIFEST_VERSION, "files": entries}, sort_keys=True)
    atomic.write_bytes(path, data.encode("utf-8"))
