"""B3: many runs. 1,000 runs of 3 files each (an event file and two small others);
`--runs 10000` for a fleet-sized logdir (its own section in the report).

- Nothing changed: `run_cycle` (engine) and `tb-rsync sync` (CLI) vs a bare `rsync -a` no-op
  on the same tree, each into its own primed destination.
- One run changed (its event file grew, one small file rewritten): the engine on the
  1,000-run tree vs a tree of a tenth of the runs, with the publish step's work counted:
  files it looked at (its actions) and files it opened (audit events `open`, `os.scandir`).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from tb_rsync_plugin import config as config_lib  # noqa: E402
from tb_rsync_plugin.publishing import publish as publish_lib  # noqa: E402
from tb_rsync_plugin.tensorboard import reload as reload_lib  # noqa: E402
from tb_rsync_plugin.engine import service as service_lib  # noqa: E402
from tb_rsync_plugin.engine import state as state_lib  # noqa: E402
from tests.events import scalar_bytes  # noqa: E402

EVENTS = "events.out.tfevents.1700000000.node1.1234.0"


def build_tree(src, runs):
    events = scalar_bytes(range(50), header=True)
    for i in range(runs):
        folder = os.path.join(src, f"run{i:05d}")
        os.makedirs(folder)
        with open(os.path.join(folder, EVENTS), "wb") as f:
            f.write(events)
        with open(os.path.join(folder, "hparams.json"), "w") as f:
            f.write('{"lr": %g, "batch": 64, "seed": %d}\n' % (0.001 * (i + 1), i))
        with open(os.path.join(folder, "notes.txt"), "w") as f:
            f.write(f"run {i}\n")


def make_service(logdir, staging, src):
    config = config_lib.build_config(logdir, [f"n1={src}/"], None, staging)
    return service_lib.SyncService(
        config, state_lib.SyncState(config.sources, config.interval_for), reload_lib.NoReloader())


class PublishCounter:
    """Counts what the publish step looks at and opens (wraps the module function)."""

    def __init__(self):
        self.active = False
        self.opened = self.actions = 0
        self._publish = publish_lib.publish
        publish_lib.publish = self
        sys.addaudithook(self._hook)

    def _hook(self, event, _args):
        if self.active and event in ("open", "os.scandir"):
            self.opened += 1

    def __call__(self, *args, **kwargs):
        self.active = True
        try:
            report = self._publish(*args, **kwargs)
        finally:
            self.active = False
        self.actions += len(report.actions)
        return report

    def reset(self):
        self.opened = self.actions = 0


class Tree:
    def __init__(self, root, runs):
        self.root, self.runs = root, runs
        self.src = os.path.join(root, "src")
        build_tree(self.src, runs)
        d = lambda name: os.path.join(root, name)
        os.makedirs(d("engine-logs"))
        os.makedirs(d("cli-logs"))
        self.service = make_service(d("engine-logs"), d("engine-staging"), self.src)
        self.cli = [common.tool("tb-rsync"), "sync", "--logdir", d("cli-logs"),
                    "--staging", d("cli-staging"), "--source", f"n1={self.src}/"]
        self.rsync = ["rsync", "-a", "--", self.src + "/", d("rsync-dest") + "/"]
        self.runners = {
            "run_cycle (engine)": lambda: self.service.run_cycle("n1"),
            "tb-rsync sync (CLI)": lambda: common.run(self.cli),
            "rsync -a": lambda: common.run(self.rsync),
        }
        for runner in self.runners.values():
            runner()

    def change_one(self, rep):
        folder = os.path.join(self.src, f"run{self.runs // 2:05d}")
        with open(os.path.join(folder, EVENTS), "ab") as f:
            f.write(scalar_bytes(range(50 + rep * 5, 55 + rep * 5)))
        with open(os.path.join(folder, "notes.txt"), "a") as f:
            f.write(f"changed {rep}\n")

    def close(self):
        self.service.stop()


def measure(runs, reps):
    counter = PublishCounter()
    with common.work_dir("b3") as root:
        print(f"  building {runs} and {runs // 10} runs and priming ...", flush=True)
        big = Tree(os.path.join(root, "big"), runs)
        small = Tree(os.path.join(root, "small"), runs // 10)
        try:
            noop = {name: [] for name in big.runners}
            for rep in range(reps):
                for name in common.rotate(list(big.runners), rep):
                    noop[name].append(common.timed(big.runners[name]))
            counter.reset()
            big.service.run_cycle("n1")
            noop_work = (counter.actions, counter.opened)
            names = (f"engine, {runs} runs", f"engine, {runs // 10} runs",
                     f"rsync -a, {runs} runs")
            changed = {name: [] for name in names}
            work = {}
            for rep in range(reps):
                big.change_one(rep)
                small.change_one(rep)
                order = common.rotate(list(changed), rep)
                for name in order:
                    tree = small if name == names[1] else big
                    counter.reset()
                    if name.startswith("engine"):
                        changed[name].append(common.timed(tree.service.run_cycle, "n1"))
                        work[name] = (counter.actions, counter.opened)
                    else:
                        changed[name].append(common.timed(tree.runners["rsync -a"]))
        finally:
            big.close()
            small.close()
    return noop, noop_work, changed, work


def report(runs, reps, noop, noop_work, changed, work):
    med = {n: common.median(t) for n, t in noop.items()}
    base = med["rsync -a"]
    rows = [[n, common.fmt_s(m), f"{m / base:.2f}x"] for n, m in med.items()]
    lines = [f"### Nothing changed ({runs} runs x 3 files, {reps} repetitions, medians)", "",
             common.table(["sync", "time", "vs `rsync -a` no-op"], rows), "",
             f"Publish step of a no-op engine sync: {noop_work[0]} files looked at, "
             f"{noop_work[1]} opened.", "",
             "### One run changed (event file +5 records, one small file rewritten)", "",
             common.table(["sync", "time", "publish: files looked at", "publish: files opened"],
                          [[n, common.fmt_s(common.median(t)),
                            *(work[n] if n in work else ("-", "-"))]
                           for n, t in changed.items()]), ""]
    n_big, n_small = f"engine, {runs} runs", f"engine, {runs // 10} runs"
    big, small = common.median(changed[n_big]), common.median(changed[n_small])
    goals = [
        ["engine no-op <= 1.3x `rsync -a` no-op", f"{med['run_cycle (engine)'] / base:.2f}x",
         "met" if med["run_cycle (engine)"] / base <= 1.3 else "missed"],
        ["CLI no-op <= 1.3x `rsync -a` no-op (includes Python start-up)",
         f"{med['tb-rsync sync (CLI)'] / base:.2f}x",
         "met" if med["tb-rsync sync (CLI)"] / base <= 1.3 else "missed"],
        [f"publish work independent of the {runs - 1} untouched runs",
         f"{work[n_big]} vs {work[n_small]} (looked at, opened)",
         "met" if work[n_big] == work[n_small] else "missed"],
        [f"one-run-changed sync, {runs} runs / {runs // 10} runs (no goal; rsync's walk grows)",
         f"{big / small:.2f}x", ""],
    ]
    lines += [common.table(["goal", "measured", ""], goals)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 runs, 3 repetitions")
    parser.add_argument("--runs", type=int, help="runs in the big tree (default 1000)")
    parser.add_argument("--reps", type=int)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    runs = args.runs or (300 if args.quick else 1000)
    reps = args.reps or (3 if args.quick else 7)
    print("B3", flush=True)
    result = measure(runs, reps)
    body = report(runs, reps, *result)
    common.report_section(args, "B3" if runs == 1000 else f"B3-{runs}", f"B3: {runs:,} runs",
                          body)


if __name__ == "__main__":
    main()
