"""Sources and settings, from `NAME=SOURCE` pairs, a TOML file, and flags.

Everything here is validated once, up front, so later stages can trust their input: a
`SyncConfig` that exists is usable. Errors are `ConfigError` sentences that say what to fix.
This module holds the values (`Source`, `SyncConfig`, `DiskLimits`), the checks they share
and `build_config`, which puts them together; what the user writes (a TOML file's tables,
`NAME=SOURCE` pairs, the disk-limit flags) is read and checked in config_file.py.
"""

import dataclasses
import fnmatch
import os
import re
import shutil
from typing import Optional, Tuple

from tb_rsync_plugin import discover_rules
from tb_rsync_plugin.errors import ConfigError

DEFAULT_TIMEOUT_S = 600.0
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f]+$")
# How a message names the staging option: both commands print the same sentences.
STAGING_FLAGS = "(--rsync_staging in TensorBoard, --staging for tb-rsync)"
WATCH_FLAGS = "(--rsync_watch in TensorBoard, --watch-source for tb-rsync watch)"
RSH_HOST = "{host}"  # where an `rsh` command wants rsync's HOST word (remote_shell.py)
RCLONE_PREFIX = "rclone:"
DEFAULT_MAX_PARALLEL = 8
# Each cycle runs up to three rsyncs at once: 3 x 3 stays under sshd's MaxStartups and
# MaxSessions (10 each), with or without connection sharing.
DEFAULT_MAX_PER_HOST = 3
# A source name is a folder under the logdir and the stem of tb-rsync's own files, the
# longest being locks/NAME.unpublished (state/NAME.jsonl.lock is one byte shorter): both
# must fit in a file name's 255 bytes (NAME_MAX on Linux, macOS and Windows filesystems).
_LONGEST_OWN_SUFFIX = ".unpublished"
MAX_NAME_BYTES = 255 - len(_LONGEST_OWN_SUFFIX)


@dataclasses.dataclass(frozen=True)
class Source:
    """One rsync source, published under `logdir/<name>/`.

    Attributes:
      name: folder under the logdir; also the key HTTP requests use.
      source: any rsync source: `/dir/`, `host:dir/`, `user@host:/dir/`, `rsync://host/mod/dir/`;
        or `rclone:REMOTE:PATH` for object storage through rclone (`rclone:s3:bucket/runs/`).
      ssh: the user's ssh command (`ssh -p 2222 -J login`); tb-rsync only adds options to it.
      rsh: a remote shell that is not ssh (`kubectl exec -i {host} --`, `docker exec -i`),
        for `HOST:DIR` sources whose HOST is a pod or container; used as given.
      bwlimit_kib: rsync `--bwlimit` in KiB/s.
      include, exclude: rsync patterns; excludes always win, includes mean "only these files"
        (semantics in rsync.py's module docstring).
      interval_s: automatic sync period for this source; None uses the global interval.
      timeout_s: wall-clock limit for one rsync run (rsync's own I/O timeout is derived).
      max_per_host: at most this many syncs at once against this source's host; None uses
        the global limit.
      watch: a local folder (an inbox nodes push into) synced as soon as it changes.
      ssh_sharing: share one ssh login with the other sources of the same host (ssh.py);
        False gives this source logins of its own.
      rclone_config: an rclone config file for rclone sources (rclone's own default if None);
        credentials stay there or in rclone's environment variables, never in ours.
      rclone_flags: extra rclone flags, each one word (`--s3-chunk-size=64M`).
      compress: rsync's `-z` (zstd when both ends have it) for slow links (HOST:DIR and
        daemon sources); docs/BENCHMARKS.md B12 says when it pays.
    """

    name: str
    source: str
    ssh: Optional[str] = None
    bwlimit_kib: Optional[int] = None
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    interval_s: Optional[float] = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_per_host: Optional[int] = None
    rsh: Optional[str] = None
    watch: bool = False
    ssh_sharing: bool = True
    rclone_config: Optional[str] = None
    rclone_flags: Tuple[str, ...] = ()
    compress: bool = False

    @property
    def host(self):
        """The machine this source is read from, for per-host limits; None for local folders.

        `user@gpu1:dir`, `gpu1:dir`, `rsync://gpu1:873/mod/` and `gpu1::mod` all give 'gpu1':
        sshd's connection limits are per server, whatever the user.
        """
        if self.is_local:
            return None
        if self.is_rclone:  # a remote's endpoint: its name stands for it
            return RCLONE_PREFIX + self.rclone_remote.partition(":")[0]
        text = self.source[len("rsync://"):] if self.source.startswith("rsync://") \
            else self.source
        match = re.match(r"(?:[^@/:\[]+@)?(\[[^\]]*\]|[^:/]+)", text)
        host = match.group(1) if match else text
        return host.strip("[]")

    @property
    def is_rclone(self):
        """True for `rclone:REMOTE:PATH` sources: the explicit prefix keeps `s3:bucket/`
        from reading as an ssh `host:dir`."""
        return self.source.startswith(RCLONE_PREFIX)

    @property
    def rclone_remote(self):
        """rclone's own name for the source (`s3:bucket/runs/`), for rclone sources."""
        return self.source[len(RCLONE_PREFIX):]

    @property
    def is_remote_shell(self):
        """True for `host:path` sources, which rsync reaches through ssh (or `rsh`)."""
        return not self.is_rclone and not self.is_daemon and not self.is_local

    @property
    def is_daemon(self):
        return not self.is_rclone and (self.source.startswith("rsync://") or "::" in self.source)

    @property
    def is_local(self):
        if self.is_daemon or self.is_rclone:
            return False
        head = self.source.split("/", 1)[0]
        return ":" not in head

    @property
    def source_dir(self):
        """The source with exactly one trailing slash: rsync copies its contents."""
        return self.source.rstrip("/") + "/"


# --- Disk limits (engine/prune.py applies them) -------------------------------------------
DEFAULT_QUARANTINE_DAYS = 30.0
DEFAULT_QUARANTINE_MAX_GIB = 10.0


@dataclasses.dataclass(frozen=True)
class DiskLimits:
    """How long and how much quarantine is kept (rules in prune.py's docstring)."""

    quarantine_days: float = DEFAULT_QUARANTINE_DAYS
    quarantine_max_gib: float = DEFAULT_QUARANTINE_MAX_GIB


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """The whole configuration of one logdir: where things go and what feeds it."""

    logdir: str
    staging_root: str
    sources: Tuple[Source, ...]
    interval_s: float = 0.0
    max_parallel: int = DEFAULT_MAX_PARALLEL
    max_per_host: int = DEFAULT_MAX_PER_HOST
    ssh_sharing: bool = True  # False: no source shares ssh logins (ssh.SshConnections)
    # [[discover]] rules; `sources` holds what they found (engine/discovery.py) after the
    # static ones.
    discover: Tuple[discover_rules.DiscoverRule, ...] = ()
    disk: DiskLimits = DiskLimits()

    def source(self, name):
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def staging_dir(self, name):
        """rsync's destination for one source; never inside the logdir."""
        return os.path.join(self.staging_root, "staging", name)

    def quarantine_dir(self, name):
        """Where replaced event files go (nothing is ever deleted)."""
        return os.path.join(self.staging_root, "quarantine", name)

    @property
    def state_dir(self):
        """Freshness journals, one per source, shared by the plugin and `tb-rsync status`."""
        return os.path.join(self.staging_root, "state")

    @property
    def rewrites_path(self):
        """The rewrite journal every process sharing this staging root appends to."""
        return os.path.join(self.staging_root, "rewrites.jsonl")

    @property
    def holding_dir(self):
        """Where the fast-loader reload briefly parks a rewritten run's event files."""
        return os.path.join(self.staging_root, "holding")

    def lock_path(self, name):
        return os.path.join(self.staging_root, "locks", name + ".lock")

    def unpublished_path(self, name):
        """A source's dirty marker: exists from before rsync writes until publishing ends."""
        return os.path.join(self.staging_root, "locks", name + ".unpublished")

    def manifest_path(self, name):
        """Per published event file: record-aligned length and newest event (a hint)."""
        return os.path.join(self.staging_root, "manifest", name + ".json")

    @property
    def temp_dir(self):
        """rsync's --temp-dir, so half-written files never sit in the staging tree."""
        return os.path.join(self.staging_root, "tmp")

    def interval_for(self, source):
        return source.interval_s if source.interval_s is not None else self.interval_s

    def host_limit_for(self, source):
        """Syncs at once against `source`'s host: the smallest limit any of its sources set."""
        limits = [s.max_per_host for s in self.sources
                  if s.host == source.host and s.max_per_host is not None]
        return min(limits + [self.max_per_host])


def is_source_name(name):
    """A plain folder name: no '/', no leading dot, no control characters."""
    return bool(_NAME_RE.match(name)) and not name.startswith(".")


def is_event_file(path):
    """TensorBoard's rule: an event file is any file whose basename contains 'tfevents'."""
    return "tfevents" in path.replace("\\", "/").rsplit("/", 1)[-1]


# Names other copy tools give a file while they write it, renamed to the final name once
# complete: rsync's `.NAME.XXXXXX` (a dot, the name, six mkstemp letters), rclone's
# `NAME.partial` (its local and sftp backends), Syncthing's `.syncthing.NAME.tmp`. Globs
# that mean the same to rsync (--exclude), rclone (--filter) and fnmatch, so one list
# decides for the listing (never fetched), the publisher (never published, for every
# source kind) and a watched inbox (no sync asked for). Half-written and orphaned by a
# killed push, such a file is never a source's file.
FOREIGN_TEMP_PATTERNS = (".?*." + "[A-Za-z0-9]" * 6, "*.partial", ".syncthing.*.tmp")


def is_foreign_temp(path):
    """True if `path`'s basename is another copy tool's unfinished file."""
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in FOREIGN_TEMP_PATTERNS)


def default_staging_root(logdir):
    """A per-logdir folder under the user cache directory (XDG), outside the logdir."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    import hashlib  # only without --staging: a sync with it starts ~2 ms sooner
    real = os.path.realpath(logdir)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(real) or "root")
    return os.path.join(cache, "tb-rsync", f"{label}-{digest}")


def kind_of(source):
    """What a source is, for sentences that refuse an option it cannot use."""
    return ("an rsync daemon" if source.is_daemon else "an rclone remote" if source.is_rclone
            else "a local folder" if source.is_local else "a HOST:DIR source")


def check_watch(source, what):
    if not source.is_local:
        kind = kind_of(source)
        raise ConfigError(f"{what} only applies to local folders (an inbox that nodes push "
                          f"into), and source '{source.name}' ('{source.source}') is {kind}; "
                          "sync it on an interval instead.")


def check_compress(source, what):
    """Compression only pays over a network: rsync would compress a local copy between its
    own two processes, and rclone has no such option."""
    if source.is_local or source.is_rclone:
        raise ConfigError(f"{what} only applies to HOST:DIR and rsync daemon sources, and "
                          f"'{source.source}' is {kind_of(source)}; remove it.")


def parse_interval(text, what="--rsync_interval", zero_ok=True):
    """Seconds from a flag value; 0 means 'only when asked' (refused unless `zero_ok`)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, not '{text}'.") from None
    if not zero_ok and not value > 0:
        raise ConfigError(f"{what} must be more than 0 seconds.")
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError(f"{what} must be 0 (only on request) or a positive number of seconds.")
    return value


def parse_limit(text, what):
    """A positive whole number from a flag value (a limit on parallel syncs)."""
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number of syncs, not '{text}'.") from None
    if value < 1:
        raise ConfigError(f"{what} must be at least 1, not {value}.")
    return value


def build_config(logdir, source_pairs=(), config_file=None, staging=None, interval_s=0.0,
                 watch_names=(), max_parallel=DEFAULT_MAX_PARALLEL,
                 max_per_host=DEFAULT_MAX_PER_HOST, ssh_sharing=True, disk=DiskLimits()):
    """Validate everything and return a `SyncConfig`.

    `watch_names`: sources to watch, from a flag (the TOML's `watch = true` does the same).

    Raises:
      ConfigError: with a sentence that says what to fix.
    """
    if not logdir:
        raise ConfigError("No logdir given; pass --logdir DIR.")
    if "://" in logdir:
        raise ConfigError(
            f"Logdir '{logdir}' is not a local folder; tb-rsync publishes into a local logdir."
        )
    logdir = os.path.abspath(os.path.expanduser(logdir))
    if os.path.lexists(logdir) and not os.path.isdir(logdir):
        raise ConfigError(f"Logdir '{logdir}' is a file, not a folder; pass the folder that "
                          "holds your runs as --logdir.")
    if not os.path.isdir(logdir):
        raise ConfigError(f"Logdir '{logdir}' does not exist; create it (mkdir -p '{logdir}') "
                          "or fix --logdir.")
    # config_file.py builds on this module (`Source`): imported here, so that neither
    # needs the other while it loads.
    from tb_rsync_plugin import config_file as config_file_lib
    sources = [config_file_lib.parse_source_pair(p) for p in source_pairs]
    rules = ()
    if config_file:
        more, rules = config_file_lib.read_config_file(os.path.expanduser(config_file))
        sources.extend(more)
    check_unique(sources)
    sources = _watched(sources, watch_names)
    staging_root = os.path.abspath(os.path.expanduser(staging)) if staging \
        else default_staging_root(logdir)
    if is_within(staging_root, logdir) or is_within(logdir, staging_root):
        raise ConfigError(
            f"Staging folder '{staging_root}' overlaps the logdir '{logdir}'; TensorBoard would "
            f"load half-copied files as runs. Choose a staging folder outside the logdir "
            f"{STAGING_FLAGS}."
        )
    for source in sources:
        if source.is_local:
            refuse_overlap(source, logdir, staging_root)
    return SyncConfig(logdir=logdir, staging_root=staging_root, sources=tuple(sources),
                      interval_s=float(interval_s), max_parallel=max_parallel,
                      max_per_host=max_per_host, ssh_sharing=bool(ssh_sharing),
                      discover=rules, disk=disk)


def check_unique(sources, found_by=None):
    seen = set()
    for source in sources:
        if source.name in seen:
            hint = f" Discovery rule {found_by} found it again." if found_by else ""
            raise ConfigError(f"Source name '{source.name}' "
                              f"is used twice; give each source its own name.{hint}")
        seen.add(source.name)


def _watched(sources, watch_names):
    """`sources` with `watch` set for each of `watch_names` (flag values)."""
    by_name = {source.name: source for source in sources}
    for name in watch_names:
        if name not in by_name:
            configured = ", ".join(by_name) or "none"
            raise ConfigError(f"Cannot watch '{name}': no source has that name (configured: "
                              f"{configured}); the watch flag {WATCH_FLAGS} takes a "
                              "source NAME.")
        check_watch(by_name[name], f"Watching source '{name}' {WATCH_FLAGS}")
        by_name[name] = dataclasses.replace(by_name[name], watch=True)
    return [by_name[source.name] for source in sources]


def refuse_overlap(source, logdir, staging_root):
    """A local source must be apart from the logdir and the staging root (equal, holding one
    or inside one are all refused): a source holding the logdir publishes it into itself,
    one level deeper each sync; one holding the staging root publishes tb-rsync's own state,
    manifests and locks as logs."""
    path = os.path.abspath(os.path.expanduser(source.source))
    for folder, what, fix in (
            (logdir, "the logdir", "a source folder that neither holds nor lies inside it"),
            (staging_root, "the staging folder",
             f"a staging folder apart from the source {STAGING_FLAGS}")):
        if is_within(path, folder) or is_within(folder, path):
            raise ConfigError(f"Source '{source.name}' ('{path}') overlaps {what} '{folder}'; "
                              f"tb-rsync would publish its own output. Choose {fix}.")


def is_within(path, root):
    """True if `path` is `root` or below it, after resolving symlinks in both."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def find_rclone():
    """The rclone binary's path, for rclone sources; `ConfigError` when it is missing."""
    return _find("rclone", "rclone is not installed or not on PATH, and rclone: sources need it")


def find_rsync():
    """The rsync binary's path; `ConfigError` when it is missing."""
    return _find("rsync", "rsync is not installed or not on PATH")


def _find(program, missing):
    path = shutil.which(program)
    if path is None:
        raise ConfigError(f"{missing}; install it (for example 'apt-get install {program}' or "
                          f"'brew install {program}') and try again.")
    return path
