"""Run every benchmark in turn; each rewrites its section of docs/BENCHMARKS.md.

`python bench/run_all.py [--quick] [--ssh] [--fleet-only] [--baseline] [--no-report]`:
`--quick` passes smaller sizes to each (B2 also runs in the browser); `--ssh` adds B1 over a real sshd on 127.0.0.1 at the
B1 sizes. The fleet benchmarks (B6, B7, B10 and B11 for the change probes, B3 at 10,000
runs, B4 under load, B1 over ssh at 1 GiB) always run; `--fleet-only` runs just them.
`--baseline` and `--no-report` are passed on (see any benchmark's --help). The full run
takes about 25-35 minutes (the fleet part about 20 on a loaded 2-core machine).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b1_publish_cost  # noqa: E402
import b2_browser  # noqa: E402
import b2_time_to_visible  # noqa: E402
import b3_scale  # noqa: E402
import b4_status_latency  # noqa: E402
import b5_staging_overhead  # noqa: E402
import b6_fleet  # noqa: E402
import b7_idle_cost  # noqa: E402
import b8_rclone  # noqa: E402
import b14_rclone_requests  # noqa: E402
import b10_probes_idle  # noqa: E402
import b11_thousand_sources  # noqa: E402
import b13_probe_walk  # noqa: E402
import b12_compress  # noqa: E402

# (module, its arguments, its arguments with --quick); --quick itself is passed as well.
FLEET = (
    (b6_fleet, [], []),
    (b7_idle_cost, [], []),
    (b10_probes_idle, [], []),
    (b11_thousand_sources, [], []),
    (b13_probe_walk, [], []),
    (b3_scale, ["--runs", "10000"], ["--runs", "3000"]),
    (b4_status_latency, ["--load"], ["--load"]),
    (b1_publish_cost, ["--ssh-only", "--sizes", "10,1024"], ["--ssh-only", "--sizes", "1,10"]),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ssh", action="store_true", help="B1 also over ssh")
    parser.add_argument("--fleet-only", action="store_true", help="only B6, B7, B10, B11, B13 "
                        "and the fleet sizes of B3, B4 and B1")
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    passed = (["--quick"] if args.quick else []) + (["--baseline"] if args.baseline else []) \
        + (["--no-report"] if args.no_report else [])
    plan = [] if args.fleet_only else [
        (b1_publish_cost, ["--ssh"] if args.ssh else []), (b2_time_to_visible, []),
        (b2_browser, []),
        (b3_scale, []), (b4_status_latency, []), (b5_staging_overhead, []), (b8_rclone, []),
        (b14_rclone_requests, []),
        (b12_compress, [])]
    plan += [(module, quick if args.quick else full) for module, full, quick in FLEET]
    started = time.monotonic()
    # Each benchmark names its own command in the report, as if run on its own.
    for module, extra in plan:
        sys.argv = [module.__file__, *passed, *extra]
        module.main(sys.argv[1:])
    print(f"all benchmarks done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
