"""B6: a fleet. 100 sources (80 local, 20 over one loopback sshd with its default settings),
3 runs each: `tb-rsync sync` vs a plain `rsync -a` per source through `xargs -P 8`.

Each repetition gives both competitors fresh destinations, then times a first sync
(everything new) and a no-change sync, order rotated. Counted per sync: sources that failed,
ssh logins (sshd's "Accepted publickey") and connections sshd dropped (past MaxStartups).
Logins per hour under a TensorBoard at `--rsync_interval 5` are measured by B7.
"""

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fleet as fleet_lib  # noqa: E402

CLI, PLAIN = "tb-rsync sync", f"rsync -a, xargs -P {fleet_lib.PLAIN_PARALLEL}"
PHASES = ("first sync", "no change")


def measure(local, remote, runs, reps, limit_flags):
    # (phase, competitor) -> [(seconds, failed, logins, dropped by sshd)]
    results = {(p, c): [] for p in PHASES for c in (CLI, PLAIN)}
    errors = collections.Counter()
    with common.work_dir("b6") as root:
        print(f"  building {local} local + {remote} ssh sources of {runs} runs ...", flush=True)
        with fleet_lib.Fleet(root, local, remote, runs) as fleet:
            for rep in range(reps):
                logdir = fleet.folder(f"{rep}/cli-logs")
                staging = fleet.folder(f"{rep}/cli-staging")
                plain = fleet.folder(f"{rep}/plain")
                runners = {CLI: lambda: fleet.cli_sync(logdir, staging, limit_flags),
                           PLAIN: lambda: fleet.plain_sync(plain)}
                for phase in PHASES:
                    for name in common.rotate(list(runners), rep):
                        logins, refused = fleet.logins(), fleet.refusals()
                        seconds, failed = runners[name]()
                        results[phase, name].append((seconds, len(failed),
                                                     fleet.logins() - logins,
                                                     fleet.refusals() - refused))
                        if name == CLI:
                            errors.update(fleet_lib.error_kind(line.split(": ", 1)[-1])
                                          for line in fleet.last_cli_errors)
                        print(f"   rep {rep + 1} {phase}, {name}: {common.fmt_s(seconds)}, "
                              f"{len(failed)} failed", flush=True)
            remote_count = fleet.remote_count
    return results, errors, remote_count


def report(results, errors, sources, remote, runs, reps, limit_flags):
    rows, goals = [], []
    for phase in PHASES:
        base = common.median([r[0] for r in results[phase, PLAIN]])
        for name in (CLI, PLAIN):
            got = results[phase, name]
            seconds = common.median([r[0] for r in got])
            rows.append([phase, name, common.fmt_s(seconds), f"{seconds / base:.2f}x",
                         ", ".join(str(r[1]) for r in got),
                         ", ".join(str(r[2]) for r in got),
                         f"{common.median([r[2] for r in got]) / max(remote, 1):.1f}",
                         ", ".join(str(r[3]) for r in got)])
        ratio = common.median([r[0] for r in results[phase, CLI]]) / base
        goals.append([f"{phase}: `tb-rsync sync` <= 1.3x the plain loop", f"{ratio:.2f}x",
                      "met" if ratio <= 1.3 else "missed"])
    worst = max(r[1] for phase in PHASES for r in results[phase, CLI])
    goals.insert(0, ["`tb-rsync sync`: no source fails", f"worst sync: {worst} failed",
                     "met" if worst == 0 else "missed"])
    flags = " ".join(limit_flags) or "none (the version measured has no such options)"
    lines = [f"{sources} sources ({sources - remote} local, {remote} over ssh to one sshd on "
             f"127.0.0.1, default MaxStartups), {runs} runs x 3 files each, {reps} "
             f"repetitions (per-repetition values in order). Limits passed to tb-rsync: "
             f"{flags}.", "",
             common.table(["sync", "competitor", "median", "vs plain", "failed sources",
                           "ssh logins", "logins per ssh source", "dropped by sshd"], rows),
             "", common.table(["goal", "measured", ""], goals), "",
             "A source that failed in the first sync is not a no-change one in the second: "
             "it fetches everything then (or fails again)."]
    if errors:
        lines += ["", "Errors `tb-rsync sync` printed for failed sources (count, message):", ""]
        lines += [f"- {count} x `{text}`" for text, count in errors.most_common(3)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="16 local + 4 ssh sources, 2 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions (default 3)")
    fleet_lib.add_fleet_options(parser, 80, 20, 3)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    local, remote, runs = fleet_lib.sizes(args, *((16, 4, 3) if args.quick else (80, 20, 3)))
    reps = args.reps or (2 if args.quick else 3)
    limit_flags = fleet_lib.cli_limit_flags(args)
    print("B6", flush=True)
    results, errors, remote = measure(local, remote, runs, reps, limit_flags)
    body = report(results, errors, local + remote, remote, runs, reps, limit_flags)
    common.report_section(args, "B6", "B6: a fleet of 100 sources", body)


if __name__ == "__main__":
    main()
