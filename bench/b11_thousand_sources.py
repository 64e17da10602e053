"""B11: 1,000 local sources (one run each) in a real TensorBoard at `--rsync_interval 5`,
default (fast) loader.

- Idle: once every source has ended its first sync, a plain TensorBoard (no sources) is
  started on the same logdir, and the CPU of both is read over the same window (see
  fleet.idle_window); the plugin's cost is the difference.
- Write to published: one scalar point at a time is appended to a random source's event
  file (at random phases of the walks), and the event file in the logdir is polled every
  50 ms until it holds the new bytes. The time runs from the end of the write.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fleet as fleet_lib  # noqa: E402

from tests.events import append_scalars  # noqa: E402

PUBLISHED_TIMEOUT_S = 60.0


def published_latencies(fleet, logdir, points, rng):
    """[seconds or None] for `points` writes to random sources."""
    results = []
    for i in range(points):
        name, step = rng.choice(fleet.names), 1000 + i
        time.sleep(rng.uniform(0.5, 5.0))  # a random phase of the walks
        source, published = fleet.event_file(name), fleet.event_file(name, root=logdir)
        append_scalars(source, [step])
        size = os.path.getsize(source)
        seconds = fleet_lib.time_to(lambda: _size(published) >= size, PUBLISHED_TIMEOUT_S,
                                    poll_s=0.05)
        results.append(seconds)
        print(f"  {name} step {step}: "
              f"{common.fmt_s(seconds) if seconds is not None else 'not published'}",
              flush=True)
    return results


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def measure(sources, interval_s, window_s, points, limit_flags, seed):
    common.become_subreaper()
    rng = random.Random(seed)
    results = {}
    with common.work_dir("b11") as root:
        print(f"  building {sources} local sources of one run ...", flush=True)
        with fleet_lib.Fleet(root, sources, 0, 1) as fleet:
            logdir, staging = fleet.folder("logs"), fleet.folder("staging")
            tb = fleet.tensorboard(logdir, staging, interval_s, "tb-fleet.log", limit_flags)
            try:
                results["settle_s"], first = fleet.wait_settled(tb, timeout_s=900)
                print(f"  first sync of every source ended after {results['settle_s']:.0f} s",
                      flush=True)
                plain = fleet.plain_tensorboard(logdir, "tb-plain.log")
                try:
                    time.sleep(15)  # the plain one's first load of every run
                    results["idle"] = fleet_lib.idle_window(fleet, window_s, tb, plain)
                finally:
                    plain.stop()
                print("  points, write to published ...", flush=True)
                results["published"] = published_latencies(fleet, logdir, points, rng)
                results["errors"] = fleet_lib.error_kinds(
                    tb.get_json("/data/plugin/rsync/status", timeout_s=60))
            finally:
                tb.stop()
            results["failed_first"] = sum(s["state"] == "error" for s in first["sources"])
    common.reap_orphans()
    return results


def report(results, sources, interval_s, limit_flags, seed):
    idle = results["idle"]
    over_plain = idle["tb"] - idle["plain"]
    times = [s for s in results["published"] if s is not None]
    missing = len(results["published"]) - len(times)
    flags = " ".join(limit_flags) or "none"
    lines = [
        f"{sources} local sources, one run x 3 files each; TensorBoard with `--rsync_interval "
        f"{interval_s:g}` and the default loader (limits: {flags}); every source ended its "
        f"first sync {results['settle_s']:.0f} s after start ({results['failed_first']} in "
        f"error). Idle window {idle['window_s']:.0f} s, side by side with a plain TensorBoard "
        "on the same logdir; the fleet's status read every 2.5 s (part of the plugin's CPU). "
        f"{idle['syncs']} syncs ended in the window ({idle['syncs'] / idle['window_s']:.1f} "
        "per second; "
        f"{fleet_lib.between_syncs(idle, sources)}). Probe modes: "
        f"{fleet_lib.modes_text(idle['modes'])}. CPU is a share of one core (the machine "
        f"has {os.cpu_count()}).", "",
        common.table(["process tree", "CPU"], [
            ["TensorBoard + plugin + children (data server, rsync)", f"{idle['tb']:.1%}"],
            ["plain TensorBoard, same logdir (+ data server)", f"{idle['plain']:.1%}"],
            ["the plugin (difference)", f"{over_plain:.1%}"]]), "",
        f"Write to published ({len(results['published'])} points, seed {seed}; the logdir's "
        f"copy polled every 50 ms): median {common.fmt_s(common.median(times))}, worst "
        f"{common.fmt_s(max(times, default=float('nan')))}, {missing} not published in "
        f"{PUBLISHED_TIMEOUT_S:.0f} s; all (s): {', '.join(f'{t:.2f}' for t in times)}.", "",
        common.table(["goal", "measured", ""], [
            ["idle: the plugin over a plain TensorBoard <= 10% of one core",
             f"{over_plain:.1%}", "met" if over_plain <= 0.10 else "missed"],
            ["write to published, median <= 7 s", common.fmt_s(common.median(times)),
             "met" if not missing and common.median(times) <= 7.0 else "missed"]])]
    lines += fleet_lib.errors_text(results["errors"])
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 sources, a 20 s window, 4 points")
    parser.add_argument("--sources", type=int, help="local sources (default 1000)")
    parser.add_argument("--interval", type=float, default=5.0, help="--rsync_interval (5)")
    parser.add_argument("--window", type=float, help="seconds of measuring (default 60)")
    parser.add_argument("--points", type=int, help="points written one at a time (12)")
    parser.add_argument("--seed", type=int, default=11, help="random seed (11)")
    parser.add_argument("--max-parallel", type=int,
                        help="global sync limit, passed when TensorBoard has the option")
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    args.max_per_host = None
    sources = args.sources or (200 if args.quick else 1000)
    window_s = args.window or (20.0 if args.quick else 60.0)
    points = args.points or (4 if args.quick else 12)
    limit_flags = fleet_lib.tensorboard_limit_flags(args)
    print("B11", flush=True)
    results = measure(sources, args.interval, window_s, points, limit_flags, args.seed)
    body = report(results, sources, args.interval, limit_flags, args.seed)
    common.report_section(args, "B11", "B11: 1,000 local sources at `--rsync_interval 5`",
                          body)


if __name__ == "__main__":
    main()
