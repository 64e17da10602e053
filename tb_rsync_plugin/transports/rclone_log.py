"""rclone's stderr: its HTTP requests counted, nothing secret kept, failures worded.

rclone's stats do not count requests. ``--dump headers`` logs each one ("HTTP REQUEST (req
0x...)", then its request line and headers, the Authorization header shown as XXXX), at
debug level, and at debug level rclone also logs every config value it reads from the
environment, secret keys included (``Setting secret_access_key="..."``). So a counted
command gets `COUNTING_FLAGS` (``-vv`` given by us: left to ``--dump``, rclone first prints
a warning that is not JSON), each log message is one JSON line, and `StderrReader` counts
the requests, drops every debug message (and the plain-text debug lines rclone prints
before its JSON logger starts), and turns the others back into rclone's text form
("2026/12/07 12:18:43 NOTICE: 1 MiB / 2 MiB, 50%, ..."), which the stats regex and the
diagnoses below read. Nothing at debug level reaches an error's details or a log.

A user's own logging settings win: with ``-q``, ``--log-level``, ``--log-file``,
``--syslog``, ``--log-systemd`` or a ``--dump`` in `rclone_flags`, or the matching RCLONE_*
variables set, nothing is added (beside ``-vv``, ``-q`` and ``--log-level`` make rclone
refuse to start, and ``--log-file`` would get the debug lines, secrets included), stderr is
kept as rclone prints it, and the requests are not counted (`None`, shown as unknown).
"""

import json
import os
import re

from tb_rsync_plugin.config import STAGING_FLAGS

COUNTING_FLAGS = ("-vv", "--dump=headers", "--use-json-log")
_USER_LOGGING_FLAGS = frozenset({"--quiet", "--log-level", "--log-file", "--syslog",
                                 "--log-systemd", "--dump", "--dump-headers", "--dump-bodies"})
_USER_LOGGING_ENV = ("RCLONE_QUIET", "RCLONE_LOG_LEVEL", "RCLONE_LOG_FILE", "RCLONE_SYSLOG",
                     "RCLONE_LOG_SYSTEMD")
# rclone's text form pads the level to 6 characters; logrus names NOTICE "warning".
_TEXT_LEVELS = {"warning": "NOTICE", "fatal": "CRITICAL", "panic": "EMERGENCY"}
# What rclone prints at debug level before its JSON logger starts (flags and config values
# read from the environment), whatever the date and time format.
_PLAIN_DEBUG_RE = re.compile(r"^[\d/:. ]*DEBUG : ")
# rclone's JSON log lines start with the level (Go sorts the keys); others are parsed.
_DEBUG_START = '{"level":"debug",'
_REQUEST_MSG = '"msg":"HTTP REQUEST'
_JSON_TIME_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d:\d\d:\d\d)")


def can_count(flags, environ=None):
    """True unless the user's `flags` (or environment) set rclone's logging themselves."""
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in _USER_LOGGING_FLAGS or (not name.startswith("--") and "q" in name[1:]):
            return False
    environ = os.environ if environ is None else environ
    return not any(environ.get(key) for key in _USER_LOGGING_ENV)


class StderrReader:
    """One rclone command's stderr, a line at a time; `requests` is None when not counting."""

    def __init__(self, counting):
        self.requests = 0 if counting else None

    def lines(self, line):
        """The lines to keep of one line of stderr (none for a debug message)."""
        if self.requests is None:
            return [line]
        if not line.startswith("{"):
            return [] if _PLAIN_DEBUG_RE.match(line) else [line]
        if line.startswith(_DEBUG_START):
            # Most lines at -vv; dropped unparsed (a quote inside a JSON value is escaped,
            # so only the message itself can hold this text).
            self.requests += _REQUEST_MSG in line
            return []
        try:
            entry = json.loads(line)
            level, msg = entry["level"], entry["msg"]
            if not isinstance(level, str) or not isinstance(msg, str):
                raise TypeError(level)
        except (ValueError, KeyError, TypeError, RecursionError):
            # Only rclone's log starts a line with '{'; a line cut short (rclone killed
            # while writing it) may be part of a debug message: never kept.
            return []
        if level == "debug":
            if msg.startswith("HTTP REQUEST"):
                self.requests += 1
            return []
        time = _JSON_TIME_RE.match(str(entry.get("time", "")))
        prefix = "{}/{}/{} {} ".format(*time.groups()) if time else ""
        about = entry.get("object")
        head, *rest = msg.rstrip("\n").split("\n")
        level = _TEXT_LEVELS.get(level, level.upper())
        return [f"{prefix}{level:<6}: " + (f"{about}: " if about else "") + head, *rest]


def explain(text, code, remote):
    """rclone's stderr `text` and exit `code` as the part of a sentence after "failed: "."""
    what = next((fix.format(remote=remote) for pattern, fix in _DIAGNOSES
                 if re.search(pattern, text)), None)
    if what is not None:
        return what
    return f"rclone was killed by signal {-code}" if code < 0 else \
        f"rclone failed with exit code {code}"


# (stderr regex, what happened; what to do). The first match decides.
_DIAGNOSES = [
    (r"didn't find section in config file",
     "rclone has no remote named '{remote}'; list them with 'rclone listremotes' (or set "
     "'rclone_config' to the file that defines it)"),
    (r"NoSuchBucket|bucket does not exist|The specified bucket does not exist",
     "there is no such bucket; check the bucket name"),
    (r"InvalidAccessKeyId|SignatureDoesNotMatch|InvalidClientTokenId|ExpiredToken|"
     r"AccessDenied|Forbidden|status code: 40[13]|invalid_grant|AuthenticationFailed|"
     r"Unauthorized",
     "the storage refused rclone's credentials; check the keys in rclone's config or "
     "environment ('rclone lsd {remote}:' must work)"),
    (r"directory not found",
     "there is no such bucket or folder at the source; check the bucket name and path "
     "('rclone lsd {remote}:' lists the buckets)"),
    (r"LoadCustomCABundleError",
     "rclone could not use the CA bundle that AWS_CA_BUNDLE names; unset AWS_CA_BUNDLE for "
     "tb-rsync, or give rclone its own with '--ca-cert=FILE' in 'rclone_flags'"),
    (r"Failed to load filters",
     "rclone rejected an 'include' or 'exclude' pattern; check them"),
    (r"unknown flag|unknown shorthand flag|invalid argument .* for",
     "rclone rejected a flag; check 'rclone_flags' (and 'rclone help flags')"),
    (r"connection refused|no such host|i/o timeout|network is unreachable|"
     r"dial tcp|TLS handshake timeout",
     "the storage endpoint is unreachable; check the endpoint in rclone's config and the "
     "network"),
    (r"No space left on device|disk quota exceeded",
     f"the disk holding the staging folder is full; free space or choose another staging "
     f"folder {STAGING_FLAGS}"),
]
