"""B5: disk used by the staging tree in steady state, as a share of the published logdir.

Two engines (`SyncService.run_cycle`) sync the same sources side by side, one with the staged
event files' published prefix released (`atomic.release_prefix`, the default) and one with
it switched off (what staging cost before). Usage is real block usage (`st_blocks`), each
inode counted once; "extra" counts only staged inodes that are not hard-linked into the
logdir, i.e. what staging costs on top of the logdir.

Trees: (1) event-file dominated: 20 runs, each a 5 MiB event file (grown by 1 MiB per cycle,
3 cycles), a 256 KiB checkpoint rewritten every cycle and a small JSON; (2) B3's 1,000 small
runs (3 KiB event files: below the 64 KiB kept tail, so nothing is released there).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import b3_scale  # noqa: E402

from tb_rsync_plugin.publishing import atomic  # noqa: E402

EVENTS = "events.out.tfevents.1700000000.node1.1234.0"


class Releases:
    """Switches `atomic.release_prefix` on or off for the engine about to run."""

    def __init__(self):
        self.enabled = True
        self._release = atomic.release_prefix
        atomic.release_prefix = self

    def __call__(self, *args, **kwargs):
        return self._release(*args, **kwargs) if self.enabled else False


def build_big(src, runs, event_mib, block):
    for i in range(runs):
        folder = os.path.join(src, f"run{i:02d}")
        common.write_event_file(os.path.join(folder, EVENTS), event_mib * common.MiB, block)
        with open(os.path.join(folder, "hparams.json"), "w") as f:
            f.write('{"lr": %g}\n' % (0.001 * (i + 1)))
        rewrite_checkpoint(folder)


def rewrite_checkpoint(folder):
    path = os.path.join(folder, "model.ckpt")
    with open(path + ".new", "wb") as f:
        f.write(os.urandom(256 * 1024))
    os.replace(path + ".new", path)


def grow_big(src, block):
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name, EVENTS), "ab") as f:
            f.write(block)
        rewrite_checkpoint(os.path.join(src, name))


def usage(root):
    logdir, staging = os.path.join(root, "logs"), os.path.join(root, "staging")
    published = common.inodes_under(logdir)
    extra = linked = 0
    for folder, _, names in os.walk(staging):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) in published:
                linked += 1
            else:
                extra += st.st_blocks * 512
    return common.disk_bytes(logdir), common.disk_bytes(staging), extra, linked


def measure(tree, scale, quick):
    releases = Releases()
    block = common.record_block()
    results = {}
    with common.work_dir("b5") as root:
        src = os.path.join(root, "src")
        if tree == "big":
            build_big(src, 5 if quick else 20, 2 if quick else 5, block)
        else:
            b3_scale.build_tree(src, scale)
        engines = {}
        for mode in ("before (no release)", "after (prefix released)"):
            folder = os.path.join(root, mode.split()[0])
            os.makedirs(os.path.join(folder, "logs"))
            engines[mode] = (folder, b3_scale.make_service(
                os.path.join(folder, "logs"), os.path.join(folder, "staging"), src))
        try:
            cycles = 3 if tree == "big" else 1
            for cycle in range(cycles + 1):
                if cycle and tree == "big":
                    grow_big(src, block)
                for mode, (_, service) in common.rotate(list(engines.items()), cycle):
                    releases.enabled = mode.startswith("after")
                    service.run_cycle("n1")
            for mode, (folder, _) in engines.items():
                results[mode] = usage(folder)
        finally:
            for _, service in engines.values():
                service.stop()
    return results


def rows_for(title, results):
    rows = []
    for mode, (logdir, staging, extra, linked) in results.items():
        rows.append([title, mode, f"{logdir / common.MiB:.1f} MiB", f"{staging / common.MiB:.2f} MiB",
                     f"{extra / common.MiB:.2f} MiB", f"{100 * extra / logdir:.1f}%", linked])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs of 2 MiB; 300 small runs")
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    print("B5", flush=True)
    small_runs = 300 if args.quick else 1000
    big = measure("big", 0, args.quick)
    small = measure("small", small_runs, args.quick)
    after = big["after (prefix released)"]
    overhead = after[2] / after[0]
    body = "\n".join([
        common.table(["logdir", "staging", "du logdir", "du staging (own count)",
                      "extra (not linked into logdir)", "extra / logdir",
                      "staged files hard-linked"],
                     rows_for("event-file dominated" + (" (quick)" if args.quick else ""), big)
                     + rows_for(f"{small_runs} small runs", small)),
        "",
        common.table(["goal", "measured", ""],
                     [["staging overhead < 10% for event-file dominated logdirs",
                       f"{100 * overhead:.1f}%", "met" if overhead < 0.10 else "missed"]]),
        "",
        "Non-event files are hard links (publish's `replace_file` links when staging and "
        "logdir share a filesystem), so they cost nothing extra. Each staged event file keeps "
        "its last 64 KiB before the published length (rounded down to 4 KiB blocks) plus any "
        "unpublished tail; small event files therefore keep all their blocks.",
    ])
    common.report_section(args, "B5", "B5: staging disk overhead", body)


if __name__ == "__main__":
    main()
