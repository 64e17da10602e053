"""The change probe's walker: "did anything change under these folders?" without a process
per check.

One program in two places. tb-rsync imports it to walk local folders in-process, and sends
its source text over one ssh session per host, where the node's own `python3` runs it (see
probes.py): nothing is installed on the node. So it uses the standard library only, runs on
Python 3.6+, and imports nothing from tb_rsync_plugin.

On a node it talks JSON lines over the session (stdin from tb-rsync, stdout back):

  in:  {"watch": {ID: [ROOT, [EXCLUDE...]]}, "interval": S}   replace the watched set
       {"first": [REQ, ROOT, [PATH...]]}                       digests of first records
       {"ping": N}
  out: {"ready": VERSION}  {"changed": ID}  {"missing": [ID, SENTENCE]}
       {"first": REQ, "digests": {PATH: HEX}}  {"pong": N}

It walks every watched tree each interval and prints a line only for a tree whose
signature (names, types, and the sizes, mtimes and inodes of files) changed since its last walk, the first
walk included (tb-rsync cannot know what changed before the probe started). It writes
nothing on the node, never runs a shell, takes paths as data, runs at low priority, and
exits when stdin closes (the connection went away), so nothing is left running.
"""

import fnmatch
import json
import os
import select
import stat
import struct
import sys
import time

VERSION = 1
FIRST_RECORD_MAX = 1 << 20  # a first record is a few dozen bytes (file_version); cap reads


def first_record_digest(path):
    """A digest of an event file's first TFRecord (a writer's `file_version` event, with the
    wall time it started), or of what there is of it. Two files whose digests differ are
    not versions of one growing file: a restarted run reused the name."""
    import hashlib  # here and in tree_signature: a `tb-rsync sync` needs neither (start-up)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            return hashlib.sha1(head).hexdigest()
        length = struct.unpack("<Q", head[:8])[0]
        rest = f.read(min(length + 4, FIRST_RECORD_MAX))
    return hashlib.sha1(head + rest).hexdigest()


def first_record_digests(root, paths):
    """{path: digest} for the event files `paths` under `root`; missing files are left out."""
    digests = {}
    for rel in paths:
        full = os.path.join(root, rel)
        try:
            if stat.S_ISREG(os.lstat(full).st_mode):
                digests[rel] = first_record_digest(full)
        except OSError:
            continue
    return digests


def excluded(name, excludes):
    """Basename patterns (rsync's patterns without a slash) that skip a file or folder.

    Other patterns are ignored: a probe that reports a change too often only costs a sync
    that finds nothing; one that misses a change would be late.
    """
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in excludes)


def tree_signature(root, excludes=()):
    """A digest of every entry under `root` (not following symlinks).

    Raises:
      OSError: `root` cannot be read (missing, not a folder, no permission).
    """
    import hashlib
    digest = hashlib.sha1()
    excludes = [p for p in excludes if "/" not in p]
    pending = [""]
    top = os.lstat(root)
    if not stat.S_ISDIR(top.st_mode):
        raise NotADirectoryError(20, "not a folder", root)
    while pending:
        rel = pending.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel) if rel else root),
                             key=lambda e: e.name)
        except OSError as e:  # a folder removed mid-walk, or unreadable: part of the state
            digest.update(("!%s\0%s\n" % (rel, e.errno)).encode("utf-8", "surrogateescape"))
            continue
        for entry in entries:
            if excludes and excluded(entry.name, excludes):
                continue
            path = rel + "/" + entry.name if rel else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between the listing and the stat
            if stat.S_ISDIR(info.st_mode):
                # A folder's own size and mtime only change with its entries, which are
                # walked: left out, so an excluded file appearing changes nothing.
                digest.update(("%s\0%o\n" % (path, info.st_mode)).encode(
                    "utf-8", "surrogateescape"))
                pending.append(path)
                continue
            digest.update(("%s\0%o\0%d\0%d\0%d\n" % (
                path, info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
            ).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class _Agent:
    """The node side: the watched trees, their last signatures, and the session's lines."""

    def __init__(self):
        self.trees = {}  # id -> (root, excludes)
        self.signatures = {}  # id -> last signature, or an error sentence
        self.interval_s = 1.0

    def handle(self, message):
        if "watch" in message:
            self.trees = {key: (value[0], list(value[1])) for key, value in
                          message["watch"].items()}
            self.interval_s = max(0.1, float(message.get("interval", self.interval_s)))
            self.signatures = {k: v for k, v in self.signatures.items() if k in self.trees}
            return True  # walk now: new trees
        if "first" in message:
            request, root, paths = message["first"]
            _send({"first": request, "digests": first_record_digests(root, paths)})
        elif "ping" in message:
            _send({"pong": message["ping"]})
        return False

    def walk(self):
        for key, (root, excludes) in list(self.trees.items()):
            try:
                signature = tree_signature(root, excludes)
                missing = None
            except OSError as e:
                signature = missing = "%s (%s)" % (root, e.strerror or e)
            if self.signatures.get(key) != signature:
                self.signatures[key] = signature
                _send({"missing": [key, missing]} if missing else {"changed": key})


def _send(message):
    data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
    while data:
        data = data[os.write(1, data):]


def main():
    """Serve one session until stdin closes."""
    try:
        os.nice(10)
    except OSError:
        pass
    agent, buffer, next_walk = _Agent(), b"", float("inf")
    _send({"ready": VERSION})
    while True:
        timeout = max(0.0, next_walk - time.monotonic())
        ready, _, _ = select.select([0], [], [], None if timeout == float("inf") else timeout)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return  # the connection closed: tb-rsync stopped or died
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() and agent.handle(json.loads(line.decode("utf-8"))):
                    next_walk = time.monotonic()
        if time.monotonic() >= next_walk:
            agent.walk()
            next_walk = time.monotonic() + agent.interval_s


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    sys.exit(0)
