"""`[[discover]]` tables: rules that turn a scheduler's answer into sources.

A rule names where hosts come from (`slurm = "squeue args"` or `hosts_command = "..."`), how
often to ask (`every`), and `name` / `source` templates with placeholders; every other key is
a `[[source]]` key applied to each source found. Parsed once, up front, like the rest of the
configuration; engine/discovery.py runs the rules.
"""

import dataclasses
import math
import re
import shlex
import string
from typing import Optional, Tuple

from tb_rsync_plugin.errors import ConfigError

DEFAULT_EVERY_S = 30.0
DEFAULT_COMMAND_TIMEOUT_S = 30.0
SLURM_PLACEHOLDERS = ("host", "job", "jobname", "user")
HOSTS_PLACEHOLDERS = ("host",)
_RULE_KEYS = {"slurm", "hosts_command", "every", "command_timeout"}
# A host goes into an rsync source (`HOST:DIR`) and ssh's command line: a plain name, never
# an option (`-oProxyCommand=...`), a user (`@`) or a path.
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class DiscoverRule:
    """One `[[discover]]` table.

    Attributes:
      label: how the tab, the status and `tb-rsync sources` name the rule ("#1 slurm: --me").
      slurm: squeue's arguments as words, or None.
      hosts_command: a command (as words) printing one host per line, or None.
      name, source: templates; `{host}` and, for Slurm, `{job}`, `{jobname}`, `{user}`.
      every_s: how often the rule is asked again.
      command_timeout_s: how long one answer may take before it counts as failed.
      source_keys: the other `[[source]]` keys, as (key, TOML value) pairs.
    """

    label: str
    name: str
    source: str
    slurm: Optional[Tuple[str, ...]] = None
    hosts_command: Optional[Tuple[str, ...]] = None
    every_s: float = DEFAULT_EVERY_S
    command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    source_keys: Tuple[Tuple[str, object], ...] = ()

    def table(self, values):
        """The `[[source]]` table for one answer line (`values`: placeholder -> text)."""
        table = {key: _thaw(value) for key, value in self.source_keys}
        table["name"] = self.name.format_map(values)
        table["source"] = self.source.format_map(values)
        return table


def parse_rules(tables, where, source_keys, check_table):
    """`[[discover]]` tables into `DiscoverRule`s.

    Args:
      tables: the TOML's `discover` value.
      where: the config file, for sentences.
      source_keys: the keys a `[[source]]` table allows.
      check_table: validates one `[[source]]` table (config's own), raising `ConfigError`:
        each rule is tried with a sample host up front, so a typo fails at start.
    """
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: write each discovery rule as a [[discover]] table.")
    return tuple(_parse_rule(t, f"{where}, discover #{i + 1}", i + 1, source_keys, check_table)
                 for i, t in enumerate(tables))


def _parse_rule(table, where, number, source_keys, check_table):
    allowed = _RULE_KEYS | set(source_keys)
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"In {where}: unknown key(s) {sorted(unknown)}; a [[discover]] table "
                          f"takes {sorted(_RULE_KEYS | {'name', 'source'})} and any "
                          "[[source]] key.")
    kinds = [key for key in ("slurm", "hosts_command") if key in table]
    if len(kinds) != 1:
        raise ConfigError(f"In {where}: give exactly one of 'slurm' (squeue arguments, like "
                          "\"--me --name train\") and 'hosts_command' (a command printing one "
                          "host per line).")
    kind = kinds[0]
    words = _words(table[kind], kind, where, empty_ok=kind == "slurm")
    if kind == "hosts_command" and not words:
        raise ConfigError(f"In {where}: 'hosts_command' is empty; write a command such as "
                          "\"kubectl get pods -l app=trainer -o name\".")
    placeholders = SLURM_PLACEHOLDERS if kind == "slurm" else HOSTS_PLACEHOLDERS
    for key in ("name", "source"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise ConfigError(f"In {where}: '{key}' must be a non-empty template such as "
                              f"\"{'{host}' if key == 'name' else '{host}:/scratch/tb/'}\".")
        _check_template(table[key].strip(), key, placeholders, where)
    if "{host}" not in table["name"]:
        # Files from two nodes must never share a run folder (their steps would interleave).
        raise ConfigError(f"In {where}: 'name' must contain {{host}}, so each host found gets "
                          "a folder of its own, for example \"{job}-{host}\".")
    every = _seconds(table, "every", DEFAULT_EVERY_S, where)
    timeout = _seconds(table, "command_timeout", DEFAULT_COMMAND_TIMEOUT_S, where)
    rule = DiscoverRule(
        label=f"#{number} {kind}: {table[kind].strip()}" if words else f"#{number} {kind}",
        name=table["name"].strip(), source=table["source"].strip(),
        slurm=words if kind == "slurm" else None,
        hosts_command=words if kind == "hosts_command" else None,
        every_s=every, command_timeout_s=timeout,
        source_keys=tuple(sorted((k, _freeze(v)) for k, v in table.items()
                                 if k in source_keys and k not in ("name", "source"))))
    check_table(rule.table({key: "node1" for key in placeholders}), where)
    return rule


def parse_hosts(text, what):
    """Hosts from a command's output, one per line; blank lines are skipped.

    kubectl's `-o name` prints `pod/NAME`: the `KIND/` prefix is dropped (`kubectl exec`
    takes the bare name).

    Raises:
      ValueError: a sentence naming a line that is not a host name: a garbled answer (an
        error message on stdout) never becomes sources.
    """
    hosts = []
    for line in text.splitlines():
        host = line.strip()
        if not host:
            continue
        if host.count("/") == 1:
            host = host.split("/", 1)[1]
        if not _HOST_RE.match(host):
            raise ValueError(f"{what} printed {line.strip()[:80]!r}, which is not a host name "
                             "(letters, digits, '.', '_' and '-'); fix the command so it "
                             "prints one host per line.")
        if host not in hosts:
            hosts.append(host)
    return hosts


def _words(value, key, where, empty_ok):
    if not isinstance(value, str):
        raise ConfigError(f"In {where}: '{key}' must be a string.")
    try:
        words = tuple(shlex.split(value))
    except ValueError as e:
        raise ConfigError(f"In {where}: '{key}' cannot be parsed ({e}); balance its "
                          "quotes.") from None
    if not words and not empty_ok:
        raise ConfigError(f"In {where}: '{key}' is empty.")
    return words


def _check_template(template, key, placeholders, where):
    allowed = ", ".join("{" + p + "}" for p in placeholders)
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"In {where}: '{key}' is not a valid template ({e}); write "
                          f"placeholders as {allowed}, and a literal brace as '{{{{'.") from None
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        # Only bare names: "{host.__class__}" or "{host!r}" would reach into Python objects.
        if field not in placeholders or spec or conversion:
            raise ConfigError(f"In {where}: '{key}' uses '{{{field}}}'; the placeholders "
                              f"here are {allowed}.")


def _seconds(table, key, default, where):
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"In {where}: '{key}' must be a number of seconds above 0, "
                          f"not {value!r}.")
    return float(value)


def _freeze(value):
    """TOML lists become tuples: a rule is frozen (compared when the config file changes)."""
    return tuple(value) if isinstance(value, list) else value


def _thaw(value):
    return list(value) if isinstance(value, tuple) else value
