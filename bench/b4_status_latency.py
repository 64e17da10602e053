"""B4: `GET /data/plugin/rsync/status` latency with 1,000 runs, against a real TensorBoard.

TensorBoard (default fast loader, default `--reload_interval 5`, so its data server keeps
re-reading the logdir meanwhile) runs with the plugin and one source of 1,000 runs x 3 files
(the tree of B3). After one sync has published everything, 200 sequential requests are timed
from this process over loopback (connect, request, whole JSON body read).

`--load`: the same requests while B6's fleet syncs (100 sources, 20 of them over one
loopback sshd, 3 runs each: 300 runs) at `--rsync_interval 1`, once every source has ended
its first sync. Change probes sync an idle source only every 5 min, so a writer appends a
point to every source's event file each second, round-robin, meanwhile (a fleet of jobs
that all log every second). The requests come every 50 ms (10 s of syncs); each answer's
count of sources syncing or queued shows the load.
"""

import argparse
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import b3_scale  # noqa: E402
import fleet as fleet_lib  # noqa: E402

from tests.events import append_scalars  # noqa: E402
from tests.fixtures_tensorboard import TensorBoardProcess  # noqa: E402


def measure(runs, requests):
    with common.work_dir("b4") as root:
        src, logdir = os.path.join(root, "src"), os.path.join(root, "logs")
        os.makedirs(logdir)
        b3_scale.build_tree(src, runs)
        tb = TensorBoardProcess(logdir, ["--rsync_source", f"n1={src}/", "--rsync_interval",
                                         "0", "--rsync_staging", os.path.join(root, "staging")],
                                os.path.join(root, "tensorboard.log"),
                                executable=common.tensorboard_argv())
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
            latencies, size, _ = time_requests(tb, requests)
        finally:
            tb.stop()
    return latencies, size


def measure_load(local, remote, runs, interval_s, requests, limit_flags):
    with common.work_dir("b4-load") as root:
        print(f"  building {local} local + {remote} ssh sources of {runs} runs ...", flush=True)
        with fleet_lib.Fleet(root, local, remote, runs) as fleet:
            tb = fleet.tensorboard(fleet.folder("logs"), fleet.folder("staging"), interval_s,
                                   "tensorboard.log", limit_flags)
            try:
                settle_s, _ = fleet.wait_settled(tb)
                print(f"  every source ended its first sync after {settle_s:.0f} s", flush=True)
                with Writers(fleet, runs):
                    return time_requests(tb, requests, pace_s=0.05)
            finally:
                tb.stop()


class Writers:
    """A point appended to one source's event file every 1/N s, round-robin over the N
    sources (and their runs): every source gets new data about once a second."""

    def __init__(self, fleet, runs):
        self.fleet, self.runs = fleet, runs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()

    def _write(self):
        names, step = self.fleet.names, 1000
        while not self.stop.is_set():
            for name in names:
                append_scalars(self.fleet.event_file(name, step % self.runs), [step])
                if self.stop.wait(1.0 / len(names)):
                    return
            step += 1


def time_requests(tb, requests, pace_s=0.0):
    """-> (latencies, body bytes, sources syncing or queued per answer); a request every
    `pace_s` at most (under load: spread over the syncs, not within one second)."""
    url = tb.url + "/data/plugin/rsync/status"
    latencies, busy, size = [], [], 0
    for _ in range(requests):
        time.sleep(pace_s)
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        latencies.append(time.perf_counter() - started)
        size = len(body)
        busy.append(sum(s["state"] in ("syncing", "queued")
                        for s in json.loads(body)["sources"]))
    return latencies, size, busy


def latency_table(runs, requests, latencies, size, extra_header=(), extra=()):
    p95 = common.percentile(latencies, 95)
    return common.table(
        ["runs", *extra_header, "requests", "body", "p50", "p90", "p95", "p99", "max",
         "goal p95 < 50 ms"],
        [[runs, *extra, requests, f"{size / 1024:.0f} KiB",
          *(common.fmt_s(common.percentile(latencies, q)) for q in (50, 90, 95, 99)),
          common.fmt_s(max(latencies)), "met" if p95 < 0.050 else "missed"]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="300 runs, 100 requests (--load: 16 local + 4 ssh sources)")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--load", action="store_true", help="while a fleet of sources syncs")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="--rsync_interval of the fleet (--load; default 1)")
    fleet_lib.add_fleet_options(parser, 80, 20, 3)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    requests = args.requests or (100 if args.quick else 200)
    print("B4" + (" under load" if args.load else ""), flush=True)
    if not args.load:
        runs = args.runs or (300 if args.quick else 1000)
        latencies, size = measure(runs, requests)
        common.report_section(args, "B4", "B4: `GET status` latency",
                              latency_table(runs, requests, latencies, size))
        return
    local, remote, runs = fleet_lib.sizes(args, *((16, 4, 3) if args.quick else (80, 20, 3)))
    limit_flags = fleet_lib.tensorboard_limit_flags(args)
    latencies, size, busy = measure_load(local, remote, runs, args.interval, requests,
                                         limit_flags)
    flags = " ".join(limit_flags) or "none (the version measured has no such options)"
    body = (f"{local + remote} sources ({local} local, {remote} over ssh to one sshd on "
            f"127.0.0.1), {runs} runs x 3 files each, `--rsync_interval {args.interval:g}`. "
            f"Limits passed to TensorBoard: {flags}.\n\n"
            + latency_table((local + remote) * runs, requests, latencies, size,
                            ["sources syncing or queued (median, max)"],
                            [f"{common.median(busy):g}, {max(busy)}"]))
    common.report_section(args, "B4-load", "B4: `GET status` latency under load", body)


if __name__ == "__main__":
    main()
