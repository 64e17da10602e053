"""Sources found by `[[discover]]` rules (discover_rules.py), kept current.

`Discovery` asks each rule every `every` seconds: `squeue` for Slurm rules (with `scontrol
show hostnames` to expand `gpu[01-04]`), the rule's own command otherwise; never through a
shell, each answer bounded by the rule's `command_timeout`. The answers become sources,
validated like `[[source]]` tables, and the combined list (static sources first) goes to
`apply`, the way an edit of the config file does (`SyncService.reconfigure`): the scheduler,
the probes and the tab follow. A rule that fails, hangs or prints garbage keeps its last
answer and shows the error. A source whose host left the answer (the job ended) gets one
last sync, on request and with no timer, and then leaves the configuration; its published
files stay.

The rules' status (when each last ran, its error, what it found) is in the status JSON's
`discover` list and in `state/discover.json` for `tb-rsync status`.
"""

import dataclasses
import json
import logging
import os
import subprocess
import threading
import time
from typing import Optional

from tb_rsync_plugin import config_file as config_file_lib
from tb_rsync_plugin import discover_rules
from tb_rsync_plugin.errors import ConfigError, SyncError
from tb_rsync_plugin.publishing import atomic
from tb_rsync_plugin.transports import process

logger = logging.getLogger(__name__)

# squeue's fields, the job name last: it is the one that may hold the separator.
SLURM_FORMAT = "%i|%u|%N|%j"
LEAVING_CHECK_S = 0.5  # how often a leaving source's last sync is looked for
RULES_FILE = "discover.json"  # in the state folder


class RuleFailed(SyncError):
    """A rule's command failed, hung or printed something that is not an answer."""


def ask(rule, cancel=None):
    """One answer of `rule`: a list of placeholder dicts, one per host found.

    Raises:
      RuleFailed: with a sentence (and the command's details).
    """
    deadline = time.monotonic() + rule.command_timeout_s
    if rule.hosts_command is not None:
        out = _run(rule, rule.hosts_command, deadline, cancel)
        return [{"host": host} for host in _hosts(rule, out, "hosts_command")]
    args = ["squeue", *rule.slurm, "--noheader", "--states=RUNNING", "--format=" + SLURM_FORMAT]
    answer = []
    expanded = {}
    for line in _run(rule, args, deadline, cancel).splitlines():
        if not line.strip():
            continue
        fields = line.split("|", 3)
        if len(fields) != 4:
            raise RuleFailed(f"Discovery rule {rule.label}: squeue printed {line[:80]!r}, "
                             "not a job; remove any --format or -o from 'slurm'.")
        job, user, nodes, jobname = (f.strip() for f in fields)
        if nodes not in expanded:  # `gpu[01-04]` -> its hosts; a plain name needs no call
            plain = "[" not in nodes and "," not in nodes
            expanded[nodes] = _hosts(rule, nodes if plain else _run(
                rule, ["scontrol", "show", "hostnames", nodes], deadline, cancel), "squeue")
        answer.extend({"host": host, "job": job, "jobname": jobname, "user": user}
                      for host in expanded[nodes])
    return answer


def _hosts(rule, text, what):
    try:
        return discover_rules.parse_hosts(text, f"The {what} of discovery rule {rule.label}")
    except ValueError as e:
        raise RuleFailed(str(e)) from None


def _run(rule, args, deadline, cancel):
    """`args`' stdout; no shell, in its own process group, killed as a whole at `deadline`."""
    what = f"'{args[0]}' of discovery rule {rule.label}"
    try:
        proc = process.start(list(args))
    except OSError as e:
        raise RuleFailed(f"The command {what} cannot be started ({e.strerror}); check that "
                         "it is installed and on PATH.") from None
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=max(0.01, min(
                    0.5, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                stopping = cancel is not None and cancel.is_set()
                if stopping or time.monotonic() >= deadline:
                    process.kill_group(proc)
                    proc.communicate()
                    raise RuleFailed(
                        f"Discovery rule {rule.label} was cancelled." if stopping else
                        f"The command {what} did not answer within {rule.command_timeout_s:g} "
                        "s; the rule keeps its last answer (raise 'command_timeout' if it is "
                        "just slow).", process.details(args, "killed", [])) from None
    finally:
        process.kill_group(proc)  # a no-op once it exited; a bug above must not leak it
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").splitlines()
        raise RuleFailed(f"The command {what} failed (exit code {proc.returncode}); the rule "
                         "keeps its last answer.", process.details(args, proc.returncode, lines))
    return out.decode("utf-8", "replace")


@dataclasses.dataclass
class RuleStatus:
    """What the tab and `tb-rsync status` show of one rule (docs/API.md, `discover`)."""

    rule: str
    every_s: float
    last_run_unix_s: Optional[float] = None
    last_ok_unix_s: Optional[float] = None
    error: Optional[dict] = None  # {"message", "details", "unix_s"} while the last run failed
    sources: list = dataclasses.field(default_factory=list)


def sources_of(config, rule, answer, others=()):
    """The `Source`s `rule` makes of `answer`, validated (`ConfigError`) against the
    static sources and `others` (what the other rules found)."""
    checked = dataclasses.replace(config, sources=tuple(config.sources) + tuple(others))
    return config_file_lib.discovered_sources(checked, [rule.table(v) for v in answer],
                                              rule.label)


def discover_once(config, cancel=None, clock=time.time):
    """Ask every rule once -> (config with the sources found, [RuleStatus]); for `tb-rsync
    sync` and `tb-rsync sources`. A failing rule contributes nothing and says why."""
    found, statuses = [], []
    for rule in config.discover:
        status = RuleStatus(rule.label, rule.every_s, last_run_unix_s=clock())
        try:
            sources = sources_of(config, rule, ask(rule, cancel), found)
        except SyncError as e:
            status.error = _error(e, clock())
        else:
            status.last_ok_unix_s = status.last_run_unix_s
            status.sources = [s.name for s in sources]
            found.extend(sources)
        statuses.append(status)
    return dataclasses.replace(config, sources=tuple(config.sources) + tuple(found)), statuses


def _error(e, unix_s):
    return {"message": str(e), "details": getattr(e, "details", ""), "unix_s": unix_s}


class Discovery:
    """Keeps a service's sources in step with its configuration's rules.

    Args:
      config: the configuration with static sources and `discover` rules.
      service: the `SyncService` (asked for last syncs, told the rules' status).
      apply: called with each new combined configuration (plugin: its config edit path;
        CLI: `service.reconfigure`), from this object's thread.
      clock: Unix seconds, for the status.
    """

    def __init__(self, config, service, apply, clock=time.time):
        self._base = config
        self._service = service
        self._apply = apply
        self._clock = clock
        self._lock = threading.Lock()  # the base, answers and leaving sources
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._found = {}  # rule -> its last good answer, as Sources
        self._status = {}  # rule -> RuleStatus
        self._due = {}  # rule -> monotonic time of its next run
        self._current = {}  # name -> rule label, of what the rules found last
        self._leaving = {}  # name -> (Source on request only, rule label): last sync pending
        self._applied = tuple(config.sources)
        self._force = False
        self._saved = []  # the rules' status as last saved for `tb-rsync status`
        self._thread = None

    def start(self):
        if self._base.discover or self._thread is not None:
            self._start_thread()

    def _start_thread(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tb-rsync-discover",
                                            daemon=True)
            self._thread.start()

    def stop(self):
        """Ends the thread (a running command is cancelled by the service's stop)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def set_base(self, config):
        """A new configuration (an edit of the config file): new or changed rules run now;
        a removed rule's sources leave as if their hosts had."""
        with self._lock:
            self._base = config
            self._force = True  # applied even when the sources are the same (an interval)
            # A rule that only moved (its number) or got another `every` or timeout keeps
            # its answer: its sources must not leave and come back.
            kept = {_same_question(r): r for r in self._found}
            for rule in config.discover:
                old = kept.get(_same_question(rule))
                if old is not None and old != rule and rule not in self._found:
                    self._found[rule] = self._found.pop(old)
                    self._due[rule] = self._due.pop(old, 0.0)
                    status = self._status.pop(old, None)
                    if status is not None:
                        self._status[rule] = dataclasses.replace(
                            status, rule=rule.label, every_s=rule.every_s)
            for rule in list(self._found):
                if rule not in config.discover:
                    del self._found[rule]
                    self._status.pop(rule, None)
                    self._due.pop(rule, None)
        if config.discover:
            self._start_thread()
        self._settle()
        self._wake.set()

    def _loop(self):
        while not (self._stop.is_set() or self._service.stopped.is_set()):
            try:
                self._run_due()
                self._settle()
            except Exception:  # a bug: keep the last sources rather than stop discovering
                logger.exception("tb-rsync: discovery hit an unexpected error")
            with self._lock:
                waits = [due - time.monotonic() for due in self._due.values()]
                if self._leaving:
                    waits.append(LEAVING_CHECK_S)
            self._wake.wait(max(0.05, min(waits + [60.0])))
            self._wake.clear()

    def _run_due(self):
        with self._lock:
            rules = [r for r in self._base.discover
                     if self._due.get(r, 0.0) <= time.monotonic()]
        for rule in rules:  # one after another, each bounded by its command_timeout
            if self._stop.is_set() or self._service.stopped.is_set():
                return
            self._run_rule(rule)

    def _run_rule(self, rule):
        started = self._clock()
        try:
            answer = ask(rule, self._service.stopped)
            error = None
        except SyncError as e:
            answer, error = None, e
        with self._lock:
            if rule not in self._base.discover:
                return  # removed by an edit while it ran
            self._due[rule] = time.monotonic() + rule.every_s
            status = self._status.setdefault(rule, RuleStatus(rule.label, rule.every_s))
            status.last_run_unix_s = started
            if answer is not None:
                others = [s for r, found in self._found.items() if r != rule for s in found]
                try:
                    self._found[rule] = sources_of(self._base, rule, answer, others)
                except ConfigError as e:
                    error = e
            if error is None:
                status.last_ok_unix_s, status.error = started, None
            else:
                if status.error is None or status.error["message"] != str(error):
                    logger.warning("tb-rsync: %s", error)
                status.error = _error(error, started)
            status.sources = [s.name for s in self._found.get(rule, ())]

    def _settle(self):
        """Apply what the rules found; start last syncs of sources whose host left."""
        with self._lock:
            static = {s.name for s in self._base.sources}
            current = {}
            for rule in self._base.discover:
                for source in self._found.get(rule, ()):
                    # A static source added by an edit since this answer wins; the rule's
                    # next answer is refused with the sentence saying why.
                    if source.name not in static:
                        current[source.name] = (source, rule.label)
            left = [name for name in self._current
                    if name not in current and name not in self._leaving]
            for name in left:
                source = self._by_name(name)
                if source is not None:
                    self._leaving[name] = (dataclasses.replace(source, interval_s=0.0),
                                           self._current[name])
            for name in list(self._leaving):
                if name in current or (name not in left and self._service.wait(
                        [name], timeout_s=0)):
                    del self._leaving[name]  # came back, or its last sync has ended
            self._current = {name: label for name, (_, label) in current.items()}
            sources = tuple(self._base.sources) + tuple(s for s, _ in current.values()) + \
                tuple(s for s, _ in self._leaving.values() if s.name not in static)
            changed = sources != self._applied or self._force
            self._applied, self._force = sources, False
            config = dataclasses.replace(self._base, sources=sources)
            found_by = dict(self._current, **{n: label for n, (_, label)
                                               in self._leaving.items()})
            statuses = [dataclasses.asdict(self._status[r]) for r in self._base.discover
                        if r in self._status]
            if changed:
                self._apply(config)
            self._service.state.set_discovery(statuses, found_by, set(self._leaving))
            if left:
                logger.warning("tb-rsync: %s left the discovery answer: a last sync, then "
                               "it stops (its published files stay).", ", ".join(sorted(left)))
                # Under the lock: a settle on another thread must not see the source idle
                # (and drop it) before its last sync is queued.
                try:
                    self._service.request([n for n in left if n in self._leaving])
                except KeyError:
                    pass  # not configured after all (a bad apply): nothing to sync
            if statuses != self._saved:
                self._saved = statuses
                save_rules(self._base.state_dir, statuses)

    def _by_name(self, name):
        for source in self._applied:
            if source.name == name:
                return source
        return None


def _same_question(rule):
    """What makes two rules give the same sources (not their number, pace or timeout)."""
    return dataclasses.replace(rule, label="", every_s=0.0, command_timeout_s=0.0)


def save_rules(state_dir, statuses):
    """The rules' status for `tb-rsync status` (replaced whole: a reader sees one or the
    other)."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        atomic.write_bytes(os.path.join(state_dir, RULES_FILE),
                           json.dumps(statuses).encode("utf-8"))
    except OSError as e:
        logger.warning("tb-rsync: cannot save the discovery status in %s: %s", state_dir, e)


def load_rules(state_dir):
    """What `save_rules` saved, or [] (none saved, or unreadable)."""
    try:
        with open(os.path.join(state_dir, RULES_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    return [r for r in data if isinstance(r, dict) and isinstance(r.get("rule"), str)]
