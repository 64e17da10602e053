"""B2: time from a record flushed at the source to its point served by TensorBoard.

Four TensorBoards run side by side, each with its own source folder and logdir:

- plugin, fast loader: `--rsync_source ... --rsync_interval 1 --reload_interval 1`
- plugin, `--load_fast=false` (the plugin reloads the run right after publishing)
- plain `rsync -a` every 1 s into the logdir, TensorBoard `--reload_interval 1`
- `rsync -a --inplace` every 1 s, TensorBoard `--reload_interval 1`

Each sample appends one scalar record (write + fsync) to all four sources at the same instant,
then polls `/data/plugin/scalars/scalars` of each until that step is served (or a timeout:
"stale"). Samples start at random phases of the 1 s loops.
"""

import argparse
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from tests.events import append_scalars  # noqa: E402
from tests.fixtures_tensorboard import TensorBoardProcess  # noqa: E402

RUN_DIR = "run"
EVENTS = f"{RUN_DIR}/events.out.tfevents.1700000000.node1.1234.0"
POLL_S = 0.05


class Setup:
    def __init__(self, root, key, title, flags, run, loop_options=None):
        self.key, self.title, self.run = key, title, run
        self.src = os.path.join(root, key, "src")
        self.logdir = os.path.join(root, key, "logs")
        os.makedirs(os.path.join(self.src, RUN_DIR))
        os.makedirs(self.logdir)
        append_scalars(os.path.join(self.src, EVENTS), range(5), wall_time0=time.time())
        self.flags = [f.format(src=self.src, staging=os.path.join(root, key, "staging"))
                      for f in flags]
        self.loop_options = loop_options
        self.tb = None
        self.latencies, self.stale = [], 0
        self._stop = threading.Event()
        self._root = root

    def start(self):
        if self.loop_options is not None:
            threading.Thread(target=self._rsync_loop, daemon=True).start()
        self.tb = TensorBoardProcess(self.logdir, self.flags,
                                     os.path.join(self._root, f"{self.key}.log"),
                                     executable=common.tensorboard_argv())

    def _rsync_loop(self):
        while not self._stop.is_set():
            subprocess.run(["rsync", "-a", *self.loop_options, self.src + "/",
                            self.logdir + "/"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._stop.wait(1.0)

    def steps(self):
        return {point[1] for point in self.tb.scalars(self.run)}

    def wait_for(self, step, flushed_at, timeout_s, results):
        deadline = flushed_at + timeout_s
        while time.monotonic() < deadline:
            if step in self.steps():
                results[self.key] = time.monotonic() - flushed_at
                return
            time.sleep(POLL_S)
        results[self.key] = None

    def stop(self):
        self._stop.set()
        if self.tb:
            self.tb.stop()


def setups(root):
    plugin = ["--rsync_source", "n1={src}/", "--rsync_staging", "{staging}",
              "--rsync_interval", "1", "--reload_interval", "1"]
    return [
        Setup(root, "plugin-fast", "tb-rsync plugin, fast loader", plugin, f"n1/{RUN_DIR}"),
        Setup(root, "plugin-legacy", "tb-rsync plugin, --load_fast=false",
              plugin + ["--load_fast=false"], f"n1/{RUN_DIR}"),
        Setup(root, "rsync-a", "`rsync -a` every 1 s, fast loader", ["--reload_interval", "1"],
              RUN_DIR, loop_options=[]),
        Setup(root, "rsync-inplace", "`rsync -a --inplace` every 1 s, fast loader",
              ["--reload_interval", "1"], RUN_DIR, loop_options=["--inplace"]),
    ]


def measure(samples, timeout_s):
    with common.work_dir("b2") as root:
        all_setups = setups(root)
        try:
            for s in all_setups:
                s.start()
            for s in all_setups:
                s.tb.wait_ready(120)
            deadline = time.monotonic() + 60
            while not all(set(range(5)) <= s.steps() for s in all_setups):
                if time.monotonic() > deadline:
                    raise RuntimeError("initial points never showed: " + ", ".join(
                        f"{s.key}: {sorted(s.steps())}" for s in all_setups))
                time.sleep(0.2)
            for i in range(samples):
                time.sleep(random.uniform(0.3, 1.3))
                step = 5 + i
                for s in all_setups:
                    append_scalars(os.path.join(s.src, EVENTS), [step], wall_time0=time.time())
                flushed_at = time.monotonic()  # append_scalars closes the file: flushed
                results = {}
                threads = [threading.Thread(target=s.wait_for,
                                            args=(step, flushed_at, timeout_s, results))
                           for s in all_setups]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for s in all_setups:
                    if results[s.key] is None:
                        s.stale += 1
                    else:
                        s.latencies.append(results[s.key])
                print(f"  sample {i + 1}/{samples}: " + ", ".join(
                    f"{s.key} {'stale' if results[s.key] is None else f'{results[s.key]:.2f} s'}"
                    for s in all_setups), flush=True)
            final = {s.key: len(s.steps()) for s in all_setups}
        finally:
            for s in all_setups:
                s.stop()
    return all_setups, final


def report(all_setups, final, samples, timeout_s):
    rows = []
    for s in all_setups:
        seen = len(s.latencies)
        rows.append([s.title, f"{seen} of {samples}",
                     common.fmt_s(common.median(s.latencies)) if seen else "stale",
                     common.fmt_s(common.percentile(s.latencies, 90)) if seen else "stale",
                     f"{final[s.key]} of {5 + samples}"])
    return (common.table(["setup", "samples visible", "median", "p90",
                          "points served at the end"], rows)
            + f"\n\nA sample not served within {timeout_s:g} s counts as stale. Polling every "
            f"{POLL_S * 1000:.0f} ms; four TensorBoards share the 2 cores.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 samples instead of 10")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--timeout", type=float, default=8.0,
                        help="seconds after which a sample counts as stale")
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    samples = args.samples or (4 if args.quick else 10)
    print("B2", flush=True)
    all_setups, final = measure(samples, args.timeout)
    body = report(all_setups, final, samples, args.timeout)
    common.report_section(args, "B2", "B2: time to visible", body)


if __name__ == "__main__":
    main()
