"""Sources and settings, from `NAME=SOURCE` pairs, a TOML file, and flags.

Everything here is validated once, up front, so later stages can trust their input: a
`SyncConfig` that exists is usable. Errors are `ConfigError` sentences that say what to fix.
"""

import dataclasses
import hashlib
import math
import os
import re
import shlex
import shutil
import sys
from typing import Optional, Tuple

from tb_rsync_plugin.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

DEFAULT_TIMEOUT_S = 600.0
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f]+$")
# How a message names the staging option: both commands print the same sentences.
STAGING_FLAGS = "(--rsync_staging in TensorBoard, --staging for tb-rsync)"
_SOURCE_KEYS = {"name", "source", "ssh", "bwlimit", "include", "exclude", "interval", "timeout"}


@dataclasses.dataclass(frozen=True)
class Source:
    """One rsync source, published under `logdir/<name>/`.

    Attributes:
      name: folder under the logdir; also the key HTTP requests use.
      source: any rsync source: `/dir/`, `host:dir/`, `user@host:/dir/`, `rsync://host/mod/dir/`.
      ssh: the user's ssh command (`ssh -p 2222 -J login`); tb-rsync only adds options to it.
      bwlimit_kib: rsync `--bwlimit` in KiB/s.
      include, exclude: rsync patterns; excludes always win, includes mean "only these files"
        (semantics in rsync.py's module docstring).
      interval_s: automatic sync period for this source; None uses the global interval.
      timeout_s: wall-clock limit for one rsync run (rsync's own I/O timeout is derived).
    """

    name: str
    source: str
    ssh: Optional[str] = None
    bwlimit_kib: Optional[int] = None
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    interval_s: Optional[float] = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_remote_shell(self):
        """True for `host:path` sources, which rsync reaches through ssh."""
        return not self.is_daemon and not self.is_local

    @property
    def is_daemon(self):
        return self.source.startswith("rsync://") or "::" in self.source

    @property
    def is_local(self):
        if self.is_daemon:
            return False
        head = self.source.split("/", 1)[0]
        return ":" not in head

    @property
    def source_dir(self):
        """The source with exactly one trailing slash: rsync copies its contents."""
        return self.source.rstrip("/") + "/"


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """The whole configuration of one logdir: where things go and what feeds it."""

    logdir: str
    staging_root: str
    sources: Tuple[Source, ...]
    interval_s: float = 0.0

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
    def state_path(self):
        """The freshness state shared by the plugin and `tb-rsync status`."""
        return os.path.join(self.staging_root, "state.json")

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

    def manifest_path(self, name):
        """Per published event file: record-aligned length and newest event (a hint)."""
        return os.path.join(self.staging_root, "manifest", name + ".json")

    @property
    def temp_dir(self):
        """rsync's --temp-dir, so half-written files never sit in the staging tree."""
        return os.path.join(self.staging_root, "tmp")

    def interval_for(self, source):
        return source.interval_s if source.interval_s is not None else self.interval_s


def is_event_file(path):
    """TensorBoard's rule: an event file is any file whose basename contains 'tfevents'."""
    return "tfevents" in path.replace("\\", "/").rsplit("/", 1)[-1]


def default_staging_root(logdir):
    """A per-logdir folder under the user cache directory (XDG), outside the logdir."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    real = os.path.realpath(logdir)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(real) or "root")
    return os.path.join(cache, "tb-rsync", f"{label}-{digest}")


def parse_source_pair(pair):
    """`NAME=SOURCE` from a flag into a `Source`."""
    name, sep, source = pair.partition("=")
    if not sep or not name.strip() or not source.strip():
        raise ConfigError(
            f"Source '{pair}' is not NAME=SOURCE; write it like "
            "'train=user@host:/logs/train/'."
        )
    return _make_source({"name": name.strip(), "source": source.strip()}, f"source '{pair}'")


def load_config_file(path):
    """`[[source]]` tables from a TOML file into `Source`s."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist; check the path.") from None
    except OSError as e:
        raise ConfigError(f"Config file '{path}' cannot be read ({e.strerror}); check that it "
                          "is a file this user may read.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not valid TOML: {e}.") from None
    unknown = set(data) - {"source"}
    if unknown:
        raise ConfigError(
            f"Config file '{path}' has unknown top-level key(s) {sorted(unknown)}; "
            "only [[source]] tables are allowed."
        )
    tables = data.get("source", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"Config file '{path}': write each source as a [[source]] table.")
    return [_make_source(t, f"config file '{path}', source #{i + 1}")
            for i, t in enumerate(tables)]


def _make_source(table, where):
    unknown = set(table) - _SOURCE_KEYS
    if unknown:
        raise ConfigError(
            f"In {where}: unknown key(s) {sorted(unknown)}; allowed keys are "
            f"{sorted(_SOURCE_KEYS)}."
        )
    for key in ("name", "source"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise ConfigError(f"In {where}: '{key}' must be a non-empty string.")
    name = table["name"].strip()
    if not _NAME_RE.match(name) or name in (".", "..") or name.startswith("."):
        raise ConfigError(
            f"In {where}: name '{name}' is not a plain folder name; use letters, digits, "
            "spaces or '-', without '/', '..' or a leading dot."
        )
    ssh = table.get("ssh")
    if ssh is not None:
        if not isinstance(ssh, str) or not ssh.strip():
            raise ConfigError(f"In {where}: 'ssh' must be a command such as \"ssh -p 2222\".")
        try:
            words = shlex.split(ssh)
        except ValueError as e:
            raise ConfigError(f"In {where}: 'ssh' cannot be parsed ({e}); balance its quotes, "
                              "for example \"ssh -o 'ProxyCommand=...'\".") from None
        if not words:
            raise ConfigError(f"In {where}: 'ssh' is empty; write a command such as "
                              "\"ssh -p 2222\" or leave the key out.")
    patterns = {}
    for key in ("include", "exclude"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise ConfigError(f"In {where}: '{key}' must be a list of rsync patterns.")
        patterns[key] = tuple(value)
    bwlimit = _number(table, "bwlimit", where, integer=True)
    interval = _number(table, "interval", where)
    timeout = _number(table, "timeout", where)
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"In {where}: 'timeout' must be more than 0 seconds.")
    source = Source(
        name=name,
        source=table["source"].strip(),
        ssh=ssh.strip() if ssh else None,
        bwlimit_kib=bwlimit,
        include=patterns["include"],
        exclude=patterns["exclude"],
        interval_s=None if interval is None else float(interval),
        timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
    )
    if source.ssh and not source.is_remote_shell:
        # Silently unused otherwise: the user would wonder why their -p or -J did nothing.
        kind = "an rsync daemon" if source.is_daemon else "a local folder"
        raise ConfigError(f"In {where}: 'ssh' only applies to host:dir sources, and "
                          f"'{source.source}' is {kind}; remove 'ssh' or write the source "
                          "as HOST:DIR.")
    return source


def _number(table, key, where, integer=False):
    value = table.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 \
            or not math.isfinite(value):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"In {where}: '{key}' must be {kind} >= 0, not {value!r}.")
    return value


def parse_interval(text, what="--rsync_interval"):
    """Seconds from a flag value; 0 means 'only when asked'."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, not '{text}'.") from None
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError(f"{what} must be 0 (only on request) or a positive number of seconds.")
    return value


def build_config(logdir, source_pairs=(), config_file=None, staging=None, interval_s=0.0):
    """Validate everything and return a `SyncConfig`.

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
    if not os.path.isdir(logdir):
        raise ConfigError(f"Logdir '{logdir}' does not exist; create it (mkdir -p '{logdir}') "
                          "or fix --logdir.")
    sources = [parse_source_pair(p) for p in source_pairs]
    if config_file:
        sources.extend(load_config_file(os.path.expanduser(config_file)))
    seen = set()
    for source in sources:
        if source.name in seen:
            raise ConfigError(
                f"Source name '{source.name}' is used twice; give each source its own name."
            )
        seen.add(source.name)
    staging_root = os.path.abspath(os.path.expanduser(staging)) if staging \
        else default_staging_root(logdir)
    if is_within(staging_root, logdir) or is_within(logdir, staging_root):
        raise ConfigError(
            f"Staging folder '{staging_root}' overlaps the logdir '{logdir}'; TensorBoard would "
            f"load half-copied files as runs. Choose a staging folder outside the logdir "
            f"{STAGING_FLAGS}."
        )
    return SyncConfig(logdir=logdir, staging_root=staging_root, sources=tuple(sources),
                      interval_s=float(interval_s))


def is_within(path, root):
    """True if `path` is `root` or below it, after resolving symlinks in both."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def find_rsync():
    """The rsync binary's path.

    Raises:
      ConfigError: when rsync is not installed.
    """
    path = shutil.which("rsync")
    if path is None:
        raise ConfigError(
            "rsync is not installed or not on PATH; install it (for example "
            "'apt-get install rsync' or 'brew install rsync') and try again."
        )
    return path
