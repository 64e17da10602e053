"""Run every benchmark (B1-B5, and B2 in the browser) in turn; each rewrites its section of docs/BENCHMARKS.md.

`python bench/run_all.py [--quick] [--ssh]`: `--quick` passes smaller sizes to each;
`--ssh` adds B1 over a real sshd on 127.0.0.1. The full run takes about 12-17 minutes
(B2 in the browser waits 40 s per sample for a peer that never refreshes).
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ssh", action="store_true", help="B1 also over ssh")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    started = time.monotonic()
    # Each benchmark names its own command in the report, as if run on its own.
    for module, extra in ((b1_publish_cost, ["--ssh"] if args.ssh else []),
                          (b2_time_to_visible, []), (b2_browser, []), (b3_scale, []),
                          (b4_status_latency, []), (b5_staging_overhead, [])):
        sys.argv = [module.__file__, *quick, *extra]
        module.main(sys.argv[1:])
    print(f"all benchmarks done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
