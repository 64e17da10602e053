"""What the user writes, checked once and turned into config.py's values: a TOML file's
`[[source]]` and `[[discover]]` tables, `NAME=SOURCE` pairs, the tables a discovery rule
made, and the disk-limit flags.

Every refusal is a `ConfigError` sentence naming where the value came from ("config file
'x.toml', source #2") and what to fix. `config.build_config` reads through this module.
"""

import math
import os
import shlex
import sys

from tb_rsync_plugin import discover_rules
from tb_rsync_plugin.config import (DEFAULT_TIMEOUT_S, MAX_NAME_BYTES, RSH_HOST, DiskLimits,
                                    Source, SyncConfig, check_compress, check_unique,
                                    check_watch, is_source_name, kind_of, refuse_overlap)
from tb_rsync_plugin.errors import ConfigError

_SOURCE_KEYS = {"name", "source", "ssh", "rsh", "bwlimit", "include", "exclude", "interval",
                "timeout", "watch", "max_per_host", "ssh_sharing", "rclone_config",
                "rclone_flags", "compress"}
# How the two commands name each limit, for sentences: (TensorBoard flag, tb-rsync flag).
DISK_FLAGS = {"quarantine_days": ("--rsync_quarantine_days", "--quarantine-days"),
              "quarantine_max_gib": ("--rsync_quarantine_max_gib", "--quarantine-max-gib")}


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
    return read_config_file(path)[0]


def read_config_file(path):
    """A TOML file's `[[source]]` tables and `[[discover]]` rules -> (sources, rules)."""
    # Imported here: only a config file needs a TOML parser (the CLI's start-up).
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
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
    unknown = set(data) - {"source", "discover"}
    if unknown:
        raise ConfigError(
            f"Config file '{path}' has unknown top-level key(s) {sorted(unknown)}; "
            "only [[source]] and [[discover]] tables are allowed."
        )
    tables = data.get("source", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"Config file '{path}': write each source as a [[source]] table.")
    sources = [_make_source(t, f"config file '{path}', source #{i + 1}")
               for i, t in enumerate(tables)]
    rules = discover_rules.parse_rules(data.get("discover", []), f"config file '{path}'",
                                       _SOURCE_KEYS, _make_source)
    return sources, rules


def file_config(config_file):
    """A config file's sources and rules alone, without a logdir (`tb-rsync sources`)."""
    sources, rules = read_config_file(os.path.expanduser(config_file))
    check_unique(sources)
    return SyncConfig(logdir="", staging_root="", sources=tuple(sources), discover=rules)


def _make_source(table, where):
    unknown = set(table) - _SOURCE_KEYS
    if unknown:
        import difflib  # only for this sentence
        guesses = [f"'{match[0]}' instead of '{key}'" for key in sorted(unknown)
                   for match in [difflib.get_close_matches(key, sorted(_SOURCE_KEYS), 1)]
                   if match]
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise ConfigError(
            f"In {where}: unknown key(s) {sorted(unknown)}{hint}; allowed keys are "
            f"{sorted(_SOURCE_KEYS)}."
        )
    for key in ("name", "source"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise ConfigError(f"In {where}: '{key}' must be a non-empty string.")
    name = table["name"].strip()
    if not is_source_name(name):
        raise ConfigError(
            f"In {where}: name '{name}' is not a plain folder name; use letters, digits, "
            "spaces or '-', without '/', '..' or a leading dot."
        )
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"In {where}: name is {size} bytes long in UTF-8; a source name may have at most "
            f"{MAX_NAME_BYTES} bytes (a folder name's 255, less room for tb-rsync's own "
            "files), so shorten it."
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
    rsh = _remote_shell(table, where)
    watch = table.get("watch", False)
    if not isinstance(watch, bool):
        raise ConfigError(f"In {where}: 'watch' must be true or false, not {watch!r}.")
    patterns = {}
    for key in ("include", "exclude"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise ConfigError(f"In {where}: '{key}' must be a list of rsync patterns.")
        patterns[key] = tuple(value)
    bwlimit = _number(table, "bwlimit", where, integer=True)
    max_per_host = _number(table, "max_per_host", where, integer=True)
    if max_per_host == 0:
        raise ConfigError(f"In {where}: 'max_per_host' must be at least 1.")
    interval = _number(table, "interval", where)
    timeout = _number(table, "timeout", where)
    rclone_config, rclone_flags = _rclone_options(table, where)
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"In {where}: 'timeout' must be more than 0 seconds.")
    sharing = table.get("ssh_sharing", True)
    if not isinstance(sharing, bool):
        raise ConfigError(f"In {where}: 'ssh_sharing' must be true or false (no quotes), "
                          f"not {sharing!r}.")
    source = Source(
        name=name,
        source=table["source"].strip(),
        ssh=ssh.strip() if ssh else None,
        bwlimit_kib=bwlimit,
        include=patterns["include"],
        exclude=patterns["exclude"],
        interval_s=None if interval is None else float(interval),
        timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
        max_per_host=max_per_host,
        rsh=rsh,
        watch=watch,
        ssh_sharing=sharing,
        rclone_config=rclone_config,
        rclone_flags=rclone_flags,
        compress=_compress(table, where),
    )
    if source.compress:
        check_compress(source, f"In {where}: 'compress'")
    if source.rsh:
        _check_rsh(source, where)
    if source.watch:
        check_watch(source, f"In {where}: 'watch'")
    if source.is_rclone and not source.rclone_remote.strip():
        raise ConfigError(f"In {where}: '{source.source}' names no rclone remote; write it "
                          "like 'rclone:s3:my-bucket/runs/' (see 'rclone listremotes').")
    if (rclone_config or rclone_flags) and not source.is_rclone:
        raise ConfigError(f"In {where}: 'rclone_config' and 'rclone_flags' only apply to "
                          f"rclone sources, and '{source.source}' is not one; remove them or "
                          "write the source as 'rclone:REMOTE:PATH'.")
    if source.ssh and not source.is_remote_shell:
        # Silently unused otherwise: the user would wonder why their -p or -J did nothing.
        kind = kind_of(source)
        raise ConfigError(f"In {where}: 'ssh' only applies to host:dir sources, and "
                          f"'{source.source}' is {kind}; remove 'ssh' or write the source "
                          "as HOST:DIR.")
    return source


def _remote_shell(table, where):
    rsh = table.get("rsh")
    if rsh is None:
        return None
    if not isinstance(rsh, str) or not rsh.strip():
        raise ConfigError(f"In {where}: 'rsh' must be a command such as "
                          f"\"kubectl exec -i {RSH_HOST} --\".")
    try:
        shlex.split(rsh)
    except ValueError as e:
        raise ConfigError(f"In {where}: 'rsh' cannot be parsed ({e}); balance its "
                          "quotes.") from None
    if table.get("ssh") is not None:
        raise ConfigError(f"In {where}: 'rsh' and 'ssh' cannot be used together ('rsh' "
                          "replaces ssh as the remote shell); remove one of them.")
    return rsh.strip()


def _check_rsh(source, where):
    if not source.is_remote_shell:
        kind = kind_of(source)
        raise ConfigError(f"In {where}: 'rsh' only applies to HOST:DIR sources (HOST being "
                          f"the pod or container), and '{source.source}' is {kind}; remove "
                          "'rsh' or write the source as POD:DIR.")
    if "@" in source.source.split(":", 1)[0]:
        # rsync would pass `-l USER` to the remote shell, which kubectl and docker take
        # for something else.
        raise ConfigError(f"In {where}: with 'rsh', write the source as POD:DIR without "
                          f"'USER@' ('{source.source}'); put a user into the 'rsh' command "
                          "itself (docker exec -u USER).")


def _compress(table, where):
    compress = table.get("compress", False)
    if not isinstance(compress, bool):
        raise ConfigError(f"In {where}: 'compress' must be true or false (no quotes), not "
                          f"{compress!r}.")
    return compress


def _rclone_options(table, where):
    """`rclone_config` (a file that must exist) and `rclone_flags` (a list of single words,
    handed to rclone as they are: no shell ever sees them)."""
    path = table.get("rclone_config")
    if path is not None:
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"In {where}: 'rclone_config' must be the path of an rclone "
                              "config file.")
        path = os.path.abspath(os.path.expanduser(path.strip()))
        if not os.path.isfile(path):
            raise ConfigError(f"In {where}: rclone config file '{path}' does not exist; "
                              "check 'rclone_config' (rclone config file prints rclone's own).")
    flags = table.get("rclone_flags", [])
    if not isinstance(flags, list) or not all(
            isinstance(f, str) and f.startswith("-") and f.strip() == f for f in flags):
        raise ConfigError(f"In {where}: 'rclone_flags' must be a list of rclone flags, each "
                          "with its value in the same string, like [\"--s3-chunk-size=64M\"].")
    return path, tuple(flags)


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


# --- [[discover]]: what a rule found, validated like a [[source]] table ---------------
def discovered_sources(config, tables, found_by):
    """`Source`s from the tables a rule made (`DiscoverRule.table`), checked against the
    static sources: a name used twice or a local folder overlapping the logdir is a
    `ConfigError` naming the rule, and the rule's answer is then not used."""
    where = f"discovery rule {found_by}"
    found = [_make_source(table, where) for table in tables]
    check_unique(list(config.sources) + found, found_by)
    for source in found:
        if source.is_local and config.logdir:
            refuse_overlap(source, config.logdir, config.staging_root)
    return found


# --- Disk limits (engine/prune.py applies them) -------------------------------------------
def parse_disk_limits(days, max_gib, tensorboard):
    """`DiskLimits` from flag values; `tensorboard` picks the flag names sentences use."""
    values = {}
    for key, text in (("quarantine_days", days), ("quarantine_max_gib", max_gib)):
        flag = DISK_FLAGS[key][0 if tensorboard else 1]
        unit = "days" if key == "quarantine_days" else "GiB"
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = float("nan")
        if not (0 <= value < float("inf")):
            raise ConfigError(f"{flag} must be a number of {unit} >= 0, not '{text}'.")
        values[key] = value
    return DiskLimits(**values)
