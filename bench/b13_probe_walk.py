"""B13: one check of a big source through the change probe, against rsync's listing.

A source of 10,000 runs (B3's tree: an event file and two small files each). One probe check
is `probe_agent.tree_signature` (what the local walker runs in-process, and what the node's
probe session runs there); one listing check is the `rsync --dry-run` a listing-based sync
starts, into a staging copy that is up to date (nothing to move). Both timed side by side,
order rotated, medians; also the CPU the probe's walk takes (it runs in this process).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import b3_scale  # noqa: E402

from tb_rsync_plugin.transports import probe_agent  # noqa: E402


def measure(runs, reps):
    with common.work_dir("b13") as work:
        return _measure(work, runs, reps)


def _measure(work, runs, reps):
    src, staging = os.path.join(work, "src"), os.path.join(work, "staging")
    b3_scale.build_tree(src, runs)
    rsync = common.tool("rsync")
    common.run([rsync, "-a", src + "/", staging + "/"])

    def probe():
        cpu = time.process_time()
        probe_agent.tree_signature(src)
        return time.process_time() - cpu

    def listing():
        common.run([rsync, "-a", "--dry-run", "--itemize-changes", "--modify-window=-1",
                    src + "/", staging + "/"])

    times = {"probe walk (in-process)": [], "rsync --dry-run listing": []}
    probe_cpu = []
    steps = [("probe walk (in-process)", probe), ("rsync --dry-run listing", listing)]
    for rep in range(reps):
        for name, fn in common.rotate(steps, rep):
            started = time.perf_counter()
            cpu = fn()
            times[name].append(time.perf_counter() - started)
            if cpu is not None:
                probe_cpu.append(cpu)
    return times, probe_cpu


def report(runs, reps, times, probe_cpu):
    walk = common.median(times["probe walk (in-process)"])
    listing = common.median(times["rsync --dry-run listing"])
    rows = [[name, common.fmt_s(common.median(t))] for name, t in times.items()]
    return "\n".join([
        f"{runs:,} runs ({3 * runs:,} files), {reps} repetitions, medians.", "",
        common.table(["one check", "wall time"], rows), "",
        f"Probe walk CPU (this process): {common.fmt_s(common.median(probe_cpu))}.", "",
        common.table(["goal", "measured", ""], [[
            "probe walk within about the cost of `rsync --dry-run`",
            f"{walk / listing:.2f}x", "met" if walk / listing <= 1.2 else "missed"]]),
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1,000 runs, 3 repetitions")
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.reps = 1000, 3
    print("B13", flush=True)
    times, probe_cpu = measure(args.runs, args.reps)
    common.report_section(args, "B13", f"B13: one probe check of {args.runs:,} runs",
                          report(args.runs, args.reps, times, probe_cpu))


if __name__ == "__main__":
    main()
