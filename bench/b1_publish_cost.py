"""B1: the cost of a sync follows the new bytes, not the file size.

An event file of 10 MB, 100 MB and 1 GB (real records: a ~1 MiB block of ~1 KiB scalar and
histogram events, repeated) grows by 1 MiB; then each competitor brings its own destination,
primed with the previous version, up to date:

- `tb-rsync sync` (the CLI, a subprocess: Python start-up included),
- `SyncService.run_cycle` (the same engine in this process: no start-up),
- `rsync -a` (default: rewrites the whole file into a temp and renames it),
- `rsync -a --inplace`, `rsync -a --append`.

Each repetition grows the source by 1 MiB again and runs every competitor once, order
rotated. `--ssh` repeats it over a real sshd on 127.0.0.1 (tests/fixtures_servers.py), up
to 100 MiB unless `--ssh-sizes` says otherwise; `--ssh-only --sizes 10,1024` measures only
over ssh (its own section in the report), with the fleet goal of 1.5x `--append`.
"""

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the project root on sys.path)

from tb_rsync_plugin import config as config_lib  # noqa: E402
from tb_rsync_plugin.publishing import publish as publish_lib  # noqa: E402
from tb_rsync_plugin.tensorboard import reload as reload_lib  # noqa: E402
from tb_rsync_plugin.engine import service as service_lib  # noqa: E402
from tb_rsync_plugin.engine import state as state_lib  # noqa: E402

EVENTS = "run/events.out.tfevents.1700000000.node1.1234.0"
PUBLISH = "of which publish"
COMPETITORS = ("tb-rsync sync (CLI)", "run_cycle (engine)", "rsync -a", "rsync -a --inplace",
               "rsync -a --append")


class Setup:
    """One source folder and, per competitor, a destination primed with its content."""

    def __init__(self, root, size_bytes, block, ssh=None):
        self.root, self.block, self.ssh = root, block, ssh
        self.src = os.path.join(root, "src")
        common.write_event_file(os.path.join(self.src, EVENTS), size_bytes, block)
        self.remote = f"127.0.0.1:{self.src}/" if ssh else f"{self.src}/"
        config_file = os.path.join(root, "sources.toml")
        with open(config_file, "w") as f:
            f.write(f'[[source]]\nname = "n1"\nsource = "{self.remote}"\n')
            if ssh:
                f.write(f"ssh = '{ssh}'\n")
        self.cli_args = [common.tool("tb-rsync"), "sync", "--logdir", self._dir("cli-logs"),
                         "--staging", self._dir("cli-staging"), "--config", config_file]
        config = config_lib.build_config(self._dir("engine-logs"), (), config_file,
                                         self._dir("engine-staging"))
        self.service = service_lib.SyncService(
            config, state_lib.SyncState(config.sources, config.interval_for),
            reload_lib.NoReloader())
        self.runners = {
            COMPETITORS[0]: lambda: common.run(self.cli_args),
            COMPETITORS[1]: lambda: self.service.run_cycle("n1"),
            COMPETITORS[2]: lambda: self._rsync([], "rsync-default"),
            COMPETITORS[3]: lambda: self._rsync(["--inplace"], "rsync-inplace"),
            COMPETITORS[4]: lambda: self._rsync(["--append"], "rsync-append"),
        }
        for runner in self.runners.values():  # prime: every destination holds the source
            runner()

    def _dir(self, name):
        path = os.path.join(self.root, name)
        os.makedirs(path, exist_ok=True)
        return path

    def _rsync(self, options, dest):
        args = ["rsync", "-a", *options]
        if self.ssh:
            args += ["-e", self.ssh]
        common.run(args + ["--", self.remote, self._dir(dest) + "/"])

    def grow(self):
        with open(os.path.join(self.src, EVENTS), "ab") as f:
            f.write(self.block)
            f.flush()
            os.fsync(f.fileno())

    def check(self):
        """Every destination ends equal to the source (the engine's logdir included)."""
        want = os.path.getsize(os.path.join(self.src, EVENTS))
        for dest in ("cli-logs/n1", "engine-logs/n1", "rsync-default", "rsync-inplace",
                     "rsync-append"):
            got = os.path.getsize(os.path.join(self.root, dest, EVENTS))
            assert got == want, (dest, got, want)

    def close(self):
        self.service.stop()


class PublishTimer:
    """Times the engine's publish step inside run_cycle (wraps the module function)."""

    def __init__(self):
        self.last = 0.0
        self._publish = publish_lib.publish
        publish_lib.publish = self

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._publish(*args, **kwargs)
        finally:
            self.last += time.perf_counter() - started


def measure(sizes_mib, reps, ssh=None):
    block = common.record_block()
    publish_timer = PublishTimer()
    results = {}  # size -> competitor -> [seconds]
    startup = []
    for size_mib in sizes_mib:
        with common.work_dir(f"b1-{size_mib}") as root:
            print(f"  {size_mib} MiB: building and priming ...", flush=True)
            setup = Setup(root, size_mib * common.MiB, block, ssh)
            try:
                times = {c: [] for c in COMPETITORS + (PUBLISH,)}
                for rep in range(reps):
                    setup.grow()
                    for name in common.rotate(list(COMPETITORS), rep):
                        publish_timer.last = 0.0
                        times[name].append(common.timed(setup.runners[name]))
                        if name == COMPETITORS[1]:
                            times[PUBLISH].append(publish_timer.last)
                    startup.append(common.timed(common.run, [common.tool("tb-rsync"),
                                                             "--version"]))
                setup.check()
            finally:
                setup.close()
            results[size_mib] = times
            print("   " + ", ".join(f"{n}: {common.fmt_s(common.median(t))}"
                                   for n, t in times.items()), flush=True)
    return results, common.median(startup)


def report(results, startup_s, transport, ssh=False):
    sizes = sorted(results)
    med = {s: {n: common.median(t) for n, t in results[s].items()} for s in sizes}
    rows = []
    for s in sizes:
        m = med[s]
        append = m["rsync -a --append"]
        rows.append([_size(s)] + [common.fmt_s(m[n]) for n in COMPETITORS[:2]]
                    + [common.fmt_s(m[PUBLISH])] + [common.fmt_s(m[n]) for n in COMPETITORS[2:]]
                    + [f"{m[COMPETITORS[1]] / append:.1f}x", f"{m[COMPETITORS[0]] / append:.1f}x",
                       f"{m['rsync -a'] / m[COMPETITORS[1]]:.0f}x",
                       f"{m['rsync -a'] / m[COMPETITORS[0]]:.1f}x"])
    header = ["file (grows 1 MiB)", *COMPETITORS[:2], "engine: publish step",
              *COMPETITORS[2:], "engine / --append", "CLI / --append",
              "rsync -a / engine", "rsync -a / CLI"]
    lines = [f"### {transport}", "", common.table(header, rows), ""]
    lo, hi = sizes[0], sizes[-1]
    goals = []
    for who in COMPETITORS[:2]:
        worst = max(med[s][who] / med[s]["rsync -a --append"] for s in sizes)
        goals.append([f"{who}: within 2x of `--append` at every size", f"worst {worst:.1f}x",
                      "met" if worst <= 2 else "missed"])
        if ssh:  # the fleet goal (issue 10): one shared ssh login for both rsync passes
            goals.append([f"{who}: within 1.5x of `--append` over the same ssh at {_size(hi)}",
                          f"{med[hi][who] / med[hi]['rsync -a --append']:.2f}x",
                          "met" if med[hi][who] <= 1.5 * med[hi]["rsync -a --append"]
                          else "missed"])
        growth = med[hi][who] / med[lo][who]
        goals.append([f"{who}: time {_size(hi)} / {_size(lo)} at most 1.5",
                      f"{growth:.2f}", "met" if growth <= 1.5 else "missed"])
        speedup = med[hi]["rsync -a"] / med[hi][who]
        goals.append([f"{who}: >= 20x faster than `rsync -a` at {_size(hi)}", f"{speedup:.1f}x",
                      "met" if speedup >= 20 else "missed"])
    growth = med[hi][PUBLISH] / med[lo][PUBLISH]
    goals.append([f"engine's publish step: time {_size(hi)} / {_size(lo)} (no goal)",
                  f"{growth:.2f}", ""])
    lines += [common.table(["goal", "measured", ""], goals), "",
              f"CLI start-up alone (`tb-rsync --version`, same run): {common.fmt_s(startup_s)}."]
    return "\n".join(lines)


def _size(mib):
    return f"{mib // 1024} GiB" if mib >= 1024 else f"{mib} MiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1, 10 and 100 MiB, 3 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per size (default 5)")
    parser.add_argument("--sizes", help="file sizes in MiB, comma-separated (10,100,1024)")
    parser.add_argument("--ssh", action="store_true",
                        help="also over a real sshd on 127.0.0.1 (sizes up to 100 MiB)")
    parser.add_argument("--ssh-sizes", help="sizes over ssh in MiB (default: --sizes up to 100)")
    parser.add_argument("--ssh-only", action="store_true", help="only over ssh, all --sizes")
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    sizes = _mib_list(args.sizes) or ([1, 10, 100] if args.quick else [10, 100, 1024])
    ssh_sizes = _mib_list(args.ssh_sizes) or (sizes if args.ssh_only
                                               else [s for s in sizes if s <= 100])
    reps = args.reps or (3 if args.quick else 5)
    sections = []
    if not args.ssh_only:
        print("B1 local", flush=True)
        local, startup = measure(sizes, reps)
        sections.append(report(local, startup, f"Local source, {reps} repetitions, medians"))
    if args.ssh or args.ssh_only:
        with common.work_dir("b1-sshd") as folder:
            from tests import fixtures_servers
            proc, server = fixtures_servers.start_sshd(pathlib.Path(folder) / "sshd")
            try:
                print("B1 over ssh", flush=True)
                remote, startup = measure(ssh_sizes, reps, ssh=server.ssh_command)
            finally:
                fixtures_servers.stop(proc)
        sections.append(report(remote, startup,
                               f"Over ssh to sshd on 127.0.0.1, {reps} repetitions, medians",
                               ssh=True))
    body = "\n\n".join(sections) + NOTES
    if args.ssh_only:
        common.report_section(args, "B1-ssh", "B1 over ssh: sync cost follows the new bytes",
                              body)
    else:
        common.report_section(args, "B1", "B1: sync cost follows the new bytes", body)


def _mib_list(text):
    return [int(word) for word in text.split(",")] if text else None


NOTES = """

The engine's time is one rsync listing (`--dry-run`, the only walk of the source), then
`--append` of the grown event file by file list (over ssh both ride one shared login), the
CRC scan of the new MiB, one `O_APPEND` write with fsync, the manifest and the state journal. The CLI adds Python start-up and imports (the line above). `rsync -a` rewrites
the whole destination file each time, so its cost follows the file size.
"""

if __name__ == "__main__":
    main()
