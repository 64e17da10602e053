"""B4: `GET /data/plugin/rsync/status` latency with 1,000 runs, against a real TensorBoard.

TensorBoard (default fast loader, default `--reload_interval 5`, so its data server keeps
re-reading the logdir meanwhile) runs with the plugin and one source of 1,000 runs x 3 files
(the tree of B3). After one sync has published everything, 200 sequential requests are timed
from this process over loopback (connect, request, whole JSON body read).
"""

import argparse
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import b3_scale  # noqa: E402

from tests.fixtures_tensorboard import TensorBoardProcess  # noqa: E402


def measure(runs, requests):
    with common.work_dir("b4") as root:
        src, logdir = os.path.join(root, "src"), os.path.join(root, "logs")
        os.makedirs(logdir)
        b3_scale.build_tree(src, runs)
        tb = TensorBoardProcess(logdir, ["--rsync_source", f"n1={src}/", "--rsync_interval",
                                         "0", "--rsync_staging", os.path.join(root, "staging")],
                                os.path.join(root, "tensorboard.log"),
                                executable=[common.tool("tensorboard")])
        try:
            tb.wait_ready(120)
            status, _ = tb.post_json("/data/plugin/rsync/sync", {})
            assert status == 202, status
            deadline = time.monotonic() + 300
            while True:
                snap = tb.get_json("/data/plugin/rsync/status")
                source = snap["sources"][0]
                if source["state"] == "idle" and source["last_ok_unix_s"] and \
                        len(snap["runs"]) == runs:
                    break
                if source["state"] == "error" or time.monotonic() > deadline:
                    raise RuntimeError(f"sync did not finish: {json.dumps(source)[:2000]}")
                time.sleep(0.5)
            url = tb.url + "/data/plugin/rsync/status"
            latencies, size = [], 0
            for _ in range(requests):
                started = time.perf_counter()
                with urllib.request.urlopen(url, timeout=30) as r:
                    size = len(r.read())
                latencies.append(time.perf_counter() - started)
        finally:
            tb.stop()
    return latencies, size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 runs, 100 requests")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--requests", type=int)
    args = parser.parse_args(argv)
    runs = args.runs or (300 if args.quick else 1000)
    requests = args.requests or (100 if args.quick else 200)
    print("B4", flush=True)
    latencies, size = measure(runs, requests)
    p95 = common.percentile(latencies, 95)
    body = common.table(
        ["runs", "requests", "body", "p50", "p90", "p95", "p99", "max", "goal p95 < 50 ms"],
        [[runs, requests, f"{size / 1024:.0f} KiB", *(common.fmt_s(common.percentile(latencies, q))
                                                      for q in (50, 90, 95, 99)),
          common.fmt_s(max(latencies)), "met" if p95 < 0.050 else "missed"]])
    print(body)
    common.write_section("B4", "B4: `GET status` latency", common.command_line(), body)


if __name__ == "__main__":
    main()
