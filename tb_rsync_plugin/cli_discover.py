"""`tb-rsync sources`, and `[[discover]]` rules in `tb-rsync sync` and `watch`.

`sync` asks every rule once before syncing; `watch` keeps asking (engine/discovery.py) and
prints the sources that come and go. A rule that fails is an `error:` line with its
details; `sync` and `sources` then exit 1 after doing what they could.
"""

import dataclasses
import sys

from tb_rsync_plugin import config as config_lib
from tb_rsync_plugin import config_file as config_file_lib

# engine/discovery.py is imported by the functions that run rules: `tb-rsync --version` and
# the parser need none of it (the CLI's start-up).

STATIC = "static"  # what `tb-rsync sources` prints for a source the config names itself


def add_parser(commands):
    sources = commands.add_parser(
        "sources", help="print the sources as they are now, configured and discovered, one "
                        "line each (NAME, SOURCE, the rule that found it), then exit")
    sources.add_argument("--config", required=True, metavar="FILE",
                         help="TOML file with [[source]] tables and [[discover]] rules")
    sources.add_argument("--logdir", help="also check the sources against this logdir, as "
                                          "sync does")
    sources.add_argument("--staging", help="staging folder (default: under ~/.cache/tb-rsync)")


def cmd_sources(args):
    from tb_rsync_plugin.engine import discovery
    if args.logdir:
        config = config_lib.build_config(args.logdir, (), args.config, args.staging)
    else:
        config = config_file_lib.file_config(args.config)
    config, statuses = discovery.discover_once(config)
    found_by = _found_by(statuses)
    for source in config.sources:
        print(f"{source.name}\t{source.source}\t{found_by.get(source.name, STATIC)}",
              flush=True)
    return 1 if report_failures(statuses) else 0


def discover_now(config):
    """Ask every rule once (`tb-rsync sync`) -> (config with what they found, statuses)."""
    if not config.discover:
        return config, []
    from tb_rsync_plugin.engine import discovery
    config, statuses = discovery.discover_once(config)
    report_failures(statuses)
    return config, statuses


def record(service, statuses):
    """What `discover_now` found, for the state journal and `tb-rsync status`."""
    if statuses:
        from tb_rsync_plugin.engine import discovery
        rules = [dataclasses.asdict(s) for s in statuses]
        service.state.set_discovery(rules, _found_by(statuses), set())
        discovery.save_rules(service.config.state_dir, rules)


def report_failures(statuses):
    """An `error:` line (and the details) per rule that failed; True if any did."""
    failed = [s for s in statuses if s.error]
    for status in failed:
        print(f"error: {status.error['message']}", file=sys.stderr)
        for line in (status.error.get("details") or "").rstrip().splitlines():
            print(f"  {line}", file=sys.stderr)
    return bool(failed)


def start_watching(service):
    """Keep asking the rules while `tb-rsync watch` runs; prints the sources that come and
    go. Returns the `Discovery` (stop it after the service)."""
    from tb_rsync_plugin.engine import discovery
    def apply(config):
        before = {s.name for s in service.config.sources}
        after = {s.name: s for s in config.sources}
        for name in sorted(set(after) - before):
            print(f"tb-rsync: discovered {name} ({after[name].source})", flush=True)
        for name in sorted(before - set(after)):
            print(f"tb-rsync: {name} stopped after its last sync (its host left the "
                  "discovery answer; its published files stay)", flush=True)
        service.reconfigure(config)

    found = discovery.Discovery(service.config, service, apply)
    found.start()
    return found


def _found_by(statuses):
    return {name: status.rule for status in statuses for name in status.sources}
