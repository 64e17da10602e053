"""B10: change probes at `--rsync_interval 1`. B6's fleet (80 local + 20 ssh sources on one
sshd, 3 runs each) in a real TensorBoard with `--load_fast=false`.

- Idle: once every source has ended its first sync, its logdir is copied and a plain
  TensorBoard (`--load_fast=false`, no sources) started on the copy; then the CPU of both,
  and of the sshd's process tree, is read over the same window (see fleet.idle_window).
  The plugin's cost is its side minus the plain TensorBoard's.
- Write to served: one scalar point at a time is appended to the event file of a random run
  of a random source (half local, half ssh, in random order, at random phases of the 1 s
  probe walks), and TensorBoard's scalars route is polled every 20 ms until it serves that
  step. The time runs from the end of the write to that answer.
"""

import argparse
import os
import random
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fleet as fleet_lib  # noqa: E402

from tests.events import append_scalars  # noqa: E402

LEGACY = ["--load_fast=false"]
SERVED_TIMEOUT_S = 30.0


def served_latencies(fleet, tb, points, runs, rng):
    """[(kind, seconds or None)] for `points` writes, half local, half over ssh."""
    kinds = (["local", "ssh"] * ((points + 1) // 2))[:points]
    rng.shuffle(kinds)
    by_kind = {kind: [n for n in fleet.names if n.startswith(kind)] for kind in set(kinds)}
    results = []
    for i, kind in enumerate(kinds):
        name, run, step = rng.choice(by_kind[kind]), rng.randrange(runs), 1000 + i
        time.sleep(rng.uniform(0.5, 2.0))  # a random phase of the walks and safety syncs
        append_scalars(fleet.event_file(name, run), [step])
        seconds = fleet_lib.time_to(
            lambda: step in {p[1] for p in tb.scalars(f"{name}/run{run:05d}")},
            SERVED_TIMEOUT_S)
        results.append((kind, seconds))
        print(f"  {kind:5} {name}/run{run:05d} step {step}: "
              f"{common.fmt_s(seconds) if seconds is not None else 'not served'}", flush=True)
    return results


def measure(local, remote, runs, interval_s, window_s, points, limit_flags, seed):
    common.become_subreaper()
    rng = random.Random(seed)
    results = {}
    with common.work_dir("b10") as root:
        print(f"  building {local} local + {remote} ssh sources of {runs} runs ...", flush=True)
        with fleet_lib.Fleet(root, local, remote, runs) as fleet:
            logdir, staging = fleet.folder("logs"), fleet.folder("staging")
            tb = fleet.tensorboard(logdir, staging, interval_s, "tb-fleet.log", limit_flags,
                                   LEGACY)
            try:
                results["settle_s"], first = fleet.wait_settled(tb)
                print(f"  first sync of every source ended after {results['settle_s']:.0f} s",
                      flush=True)
                copy = os.path.join(root, "logs-plain")
                shutil.copytree(logdir, copy, symlinks=True)
                plain = fleet.plain_tensorboard(copy, "tb-plain.log", LEGACY)
                try:
                    time.sleep(10)  # the plain one's first load (reload every 5 s)
                    results["idle"] = fleet_lib.idle_window(fleet, window_s, tb, plain)
                finally:
                    plain.stop()
                print("  points, write to served ...", flush=True)
                results["served"] = served_latencies(fleet, tb, points, runs, rng)
                results["errors"] = fleet_lib.error_kinds(
                    tb.get_json("/data/plugin/rsync/status", timeout_s=60))
            finally:
                tb.stop()
            results["failed_first"] = sum(s["state"] == "error" for s in first["sources"])
            results["remote"] = fleet.remote_count
    common.reap_orphans()
    return results


def report(results, sources, runs, interval_s, window_s, limit_flags, seed):
    idle, remote = results["idle"], results["remote"]
    over_plain = idle["tb"] - idle["plain"]
    served = [s for _, s in results["served"]]
    arrived = [s for s in served if s is not None]
    worst = max(arrived) if len(arrived) == len(served) and arrived else float("nan")
    rows = []
    for kind in ("local", "ssh"):
        times = [s for k, s in results["served"] if k == kind and s is not None]
        missing = sum(1 for k, s in results["served"] if k == kind and s is None)
        rows.append([kind, len(times) + missing, common.fmt_s(common.median(times)),
                     common.fmt_s(max(times, default=float("nan"))), missing,
                     ", ".join(f"{t:.2f}" for t in times)])
    flags = " ".join(limit_flags) or "none"
    syncs_per_s = idle["syncs"] / idle["window_s"]
    lines = [
        f"{sources} sources ({sources - remote} local, {remote} over ssh to one sshd on "
        f"127.0.0.1), {runs} runs x 3 files each; TensorBoard with `--rsync_interval "
        f"{interval_s:g} --load_fast=false` (limits: {flags}); every source ended its first "
        f"sync {results['settle_s']:.0f} s after start ({results['failed_first']} in error). "
        f"Idle window {idle['window_s']:.0f} s, side by side with a plain TensorBoard "
        "(`--load_fast=false`) on a copy of the logdir; the fleet's status read every 2.5 s "
        f"(part of the plugin's CPU). {idle['syncs']} syncs ended in the window "
        f"({syncs_per_s:.1f} per second; "
        f"{fleet_lib.between_syncs(idle, sources)}). Probe modes: "
        f"{fleet_lib.modes_text(idle['modes'])}. CPU is a share of one core (the machine "
        f"has {os.cpu_count()}).", "",
        common.table(["process tree", "CPU"], [
            ["TensorBoard + plugin + children", f"{idle['tb']:.1%}"],
            ["plain TensorBoard, copy of the logdir", f"{idle['plain']:.1%}"],
            ["the plugin (difference)", f"{over_plain:.1%}"],
            ["sshd (logins, rsync servers, the probe agent)", f"{idle['sshd']:.1%}"]]), "",
        f"Write to served ({len(served)} points, seed {seed}; the scalars route polled every "
        "20 ms):", "",
        common.table(["source", "points", "median", "worst", "not served in "
                      f"{SERVED_TIMEOUT_S:.0f} s", "all (s)"], rows), "",
        common.table(["goal", "measured", ""], [
            ["idle: the plugin over a plain TensorBoard <= 3% of one core",
             f"{over_plain:.1%}", "met" if over_plain <= 0.03 else "missed"],
            ["idle: the sshd tree <= 3% of one core", f"{idle['sshd']:.1%}",
             "met" if idle["sshd"] <= 0.03 else "missed"],
            ["write to served, median <= 2.0 s", common.fmt_s(common.median(arrived)),
             "met" if common.median(arrived) <= 2.0 and len(arrived) == len(served)
             else "missed"],
            ["write to served, worst <= 4.0 s", common.fmt_s(worst),
             "met" if worst <= 4.0 else "missed"]])]
    lines += fleet_lib.errors_text(results["errors"])
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="16 local + 4 ssh sources, a 20 s window, 6 points")
    parser.add_argument("--interval", type=float, default=1.0, help="--rsync_interval (1)")
    parser.add_argument("--window", type=float, help="seconds of measuring (default 60)")
    parser.add_argument("--points", type=int, help="points written one at a time (16)")
    parser.add_argument("--seed", type=int, default=10, help="random seed (10)")
    fleet_lib.add_fleet_options(parser, 80, 20, 3)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    local, remote, runs = fleet_lib.sizes(args, *((16, 4, 3) if args.quick else (80, 20, 3)))
    window_s = args.window or (20.0 if args.quick else 60.0)
    points = args.points or (6 if args.quick else 16)
    limit_flags = fleet_lib.tensorboard_limit_flags(args)
    print("B10", flush=True)
    results = measure(local, remote, runs, args.interval, window_s, points, limit_flags,
                      args.seed)
    body = report(results, local + remote, runs, args.interval, window_s, limit_flags,
                  args.seed)
    common.report_section(args, "B10", "B10: change probes, an idle fleet at "
                          "`--rsync_interval 1`, and write to served", body)


if __name__ == "__main__":
    main()
