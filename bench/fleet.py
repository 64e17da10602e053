"""A fleet of sources for B4, B6 and B7: local folders, and folders behind one loopback sshd.

The sshd is the tests' own (tests/fixtures_servers.py) with sshd's default settings, so
MaxStartups is 10:30:100 as on a real login node. Every source holds `runs` runs of B3's
tree (an event file written with TensorBoard's RecordWriter and two small files). The ssh
sources are spread evenly through the config (every fifth of 80 + 20), as in a mixed fleet.

Options the fleet engine adds (`--max-parallel` and `--max-per-host` for `tb-rsync`,
`--rsync_max_parallel` and `--rsync_max_per_host` for TensorBoard) are passed only when the
benchmark is given them and the program's --help lists them, so the same command measures
the code before and after.
"""

import os
import re
import subprocess
import time

import common
import b3_scale

from tests import fixtures_servers
from tests.fixtures_tensorboard import TensorBoardProcess

PLAIN_PARALLEL = 8  # the `xargs -P` of the plain rsync loop

# One source per call, so xargs runs them in parallel; a failure prints its name.
PLAIN_SCRIPT = """\
name=$1
case $name in
  ssh*) set -- -e "$FLEET_SSH" "127.0.0.1:$FLEET_SRC/$name/" ;;
  *) set -- "$FLEET_SRC/$name/" ;;
esac
rsync -a "$@" "$FLEET_DEST/$name/" 2>/dev/null || { echo "failed: $name" >&2; exit 1; }
"""


def add_fleet_options(parser, local, remote, runs):
    parser.add_argument("--local", type=int, help=f"local sources (default {local})")
    parser.add_argument("--remote", type=int, help=f"sources over ssh (default {remote})")
    parser.add_argument("--runs-per-source", type=int, help=f"runs per source (default {runs})")
    parser.add_argument("--max-parallel", type=int,
                        help="global sync limit, passed when the program has the option")
    parser.add_argument("--max-per-host", type=int,
                        help="per-host sync limit, passed when the program has the option")


class Fleet:
    """The source trees, the sshd and a config file naming every source; a context manager."""

    def __init__(self, root, local, remote, runs):
        self.root = root
        self.src = os.path.join(root, "src")
        total = local + remote
        remote_at = {round((k + 1) * total / remote) - 1 for k in range(remote)}
        counters = {"local": 0, "ssh": 0}
        self.names = []
        for i in range(total):
            kind = "ssh" if i in remote_at else "local"
            self.names.append(f"{kind}{counters[kind]:02d}")
            counters[kind] += 1
        for name in self.names:
            b3_scale.build_tree(os.path.join(self.src, name), runs)
        self.proc, self.server = fixtures_servers.start_sshd(os.path.join(root, "sshd"))
        self.config = os.path.join(root, "sources.toml")
        with open(self.config, "w") as f:
            for name in self.names:
                f.write(f'[[source]]\nname = "{name}"\nsource = "{self.source(name)}"\n')
                if self.is_remote(name):
                    f.write(f"ssh = '{self.server.ssh_command}'\n")
        self.last_cli_errors = []  # stderr lines of the last cli_sync about failed sources
        self.script = os.path.join(root, "plain-sync.sh")
        with open(self.script, "w") as f:
            f.write(PLAIN_SCRIPT)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        fixtures_servers.stop(self.proc)

    @staticmethod
    def is_remote(name):
        return name.startswith("ssh")

    @property
    def remote_count(self):
        return sum(map(self.is_remote, self.names))

    def source(self, name):
        path = os.path.join(self.src, name)
        return f"127.0.0.1:{path}/" if self.is_remote(name) else f"{path}/"

    def folder(self, name):
        path = os.path.join(self.root, name)
        os.makedirs(path, exist_ok=True)
        return path

    # --- the sshd's view ----------------------------------------------------------------

    def logins(self):
        """Successful ssh logins so far (each rsync over ssh without sharing is one)."""
        return self.server.log().count("Accepted publickey")

    def refusals(self):
        """Connections sshd dropped because too many were unauthenticated at once."""
        return len(re.findall(r"past MaxStartups", self.server.log()))

    # --- competitors ----------------------------------------------------------------------

    def cli_sync(self, logdir, staging, limit_flags=()):
        """`tb-rsync sync` of every source -> (seconds, names that did not report success)."""
        argv = [common.tool("tb-rsync"), "sync", "--logdir", logdir, "--staging", staging,
                "--config", self.config, *limit_flags]
        started = time.perf_counter()
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        done = set(re.findall(r"^(\S+): .* received, ", result.stdout, re.M))
        failed = [n for n in self.names if n not in done]
        if result.returncode not in (0, 1) or (result.returncode == 1) != bool(failed):
            raise RuntimeError(f"tb-rsync sync exited {result.returncode} and {len(failed)} "
                               f"sources printed no 'NAME: ... received, ' line:\n"
                               f"{result.stderr[-3000:]}")
        self.last_cli_errors = [line for line in result.stderr.splitlines()
                                if line.split(":")[0] in failed]
        return seconds, failed

    def plain_sync(self, dest):
        """`rsync -a` per source through `xargs -P 8` -> (seconds, names that failed)."""
        env = dict(os.environ, FLEET_SSH=self.server.ssh_command, FLEET_SRC=self.src,
                   FLEET_DEST=dest)
        started = time.perf_counter()
        result = subprocess.run(["xargs", "-P", str(PLAIN_PARALLEL), "-n", "1", "sh",
                                 self.script], input="\n".join(self.names) + "\n",
                                capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        failed = re.findall(r"^failed: (\S+)$", result.stderr, re.M)
        if result.returncode not in (0, 123) or (result.returncode == 123) != bool(failed):
            raise RuntimeError(f"xargs exited {result.returncode}:\n{result.stderr[-3000:]}")
        return seconds, failed

    # --- TensorBoard --------------------------------------------------------------------

    def tensorboard(self, logdir, staging, interval_s, log_name, limit_flags=(), extra=()):
        """A TensorBoard syncing every source each `interval_s`, ready to answer."""
        flags = ["--rsync_config", self.config, "--rsync_interval", str(interval_s),
                 "--rsync_staging", staging, *limit_flags, *extra]
        return self._ready_tensorboard(logdir, flags, log_name)

    def plain_tensorboard(self, logdir, log_name, extra=()):
        """A TensorBoard without sources on `logdir`, ready to answer."""
        return self._ready_tensorboard(logdir, list(extra), log_name)

    def _ready_tensorboard(self, logdir, flags, log_name):
        tb = TensorBoardProcess(logdir, flags, os.path.join(self.root, log_name),
                                executable=common.tensorboard_argv())
        try:
            tb.wait_ready(120)
        except BaseException:
            tb.stop()
            raise
        return tb

    def event_file(self, name, run=0, root=None):
        """The event file of run `run` of source `name`, at the source or under `root`."""
        return os.path.join(root or self.src, name, f"run{run:05d}", b3_scale.EVENTS)

    def wait_settled(self, tb, timeout_s=600):
        """Wait until every source has ended one sync; -> (seconds, snapshot)."""
        started = time.monotonic()
        while True:
            snap = tb.get_json("/data/plugin/rsync/status", timeout_s=60)
            if all(s["last_end_unix_s"] for s in snap["sources"]):
                return time.monotonic() - started, snap
            if time.monotonic() - started > timeout_s:
                waiting = [s["name"] for s in snap["sources"] if not s["last_end_unix_s"]]
                raise RuntimeError(f"{len(waiting)} sources never ended a sync: {waiting[:10]}")
            time.sleep(1)


def idle_window(fleet, seconds, tb=None, plain=None, poll_s=2.5):
    """CPU shares over `seconds`: the plugin side, the sshd's tree, and `plain`'s tree.

    The plugin side is every other descendant of this process: TensorBoard `tb` and every
    process under it (rsync, ssh, the data server; exited ones through their parents'
    cutime/cstime) and ssh ControlMasters that daemonized (this process is their subreaper).
    With `tb`, its status is read every `poll_s` to count the syncs that ended (each source
    ends at most one per interval, so none is missed while `poll_s` is below it) and the
    sources' probe modes; serving those few requests is part of the CPU measured. `plain`
    (a TensorBoard without sources) is measured in the same window.
    """
    pids = (fleet.proc.pid,) + ((plain.proc.pid,) if plain else ())
    cpu0, logins0 = common.subtrees_cpu_s(pids), fleet.logins()
    started = time.monotonic()
    ends, modes = {}, {}  # source -> the last_end_unix_s values seen; mode -> sources
    while True:
        if tb is not None:
            sources = tb.get_json("/data/plugin/rsync/status", timeout_s=60)["sources"]
            for source in sources:
                ends.setdefault(source["name"], set()).add(source["last_end_unix_s"])
            modes = {}
            for source in sources:
                mode = source.get("probe_mode", "-")
                modes[mode] = modes.get(mode, 0) + 1
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            break
        time.sleep(min(poll_s, left))
    cpu1, logins1 = common.subtrees_cpu_s(pids), fleet.logins()
    elapsed = time.monotonic() - started
    share = lambda key: (cpu1[key] - cpu0[key]) / elapsed
    return {"tb": share(None), "sshd": share(fleet.proc.pid),
            "plain": share(plain.proc.pid) if plain else None,
            "logins": logins1 - logins0, "window_s": elapsed, "modes": modes,
            "syncs": sum(len(seen) - 1 for seen in ends.values())}


def between_syncs(window, sources):
    """How often a source synced over a window, as words."""
    if not window["syncs"]:
        return "no source synced in the window"
    return f"each source every {window['window_s'] * sources / window['syncs']:.1f} s"


def modes_text(modes):
    """`{"walk": 80, "probe": 20}` -> "walk 80, probe 20" ("-" when none were read)."""
    return ", ".join(f"{mode} {n}" for mode, n in sorted(modes.items(), key=lambda kv: -kv[1])) \
        or "-"


def time_to(predicate, timeout_s, poll_s=0.02):
    """Seconds until `predicate()` is true (polled every `poll_s`), or None at `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(poll_s)
    return time.monotonic() - started


def cli_limit_flags(args):
    return _flags([common.tool("tb-rsync"), "sync"], [("--max-parallel", args.max_parallel),
                                                      ("--max-per-host", args.max_per_host)])


def tensorboard_limit_flags(args):
    return _flags(common.tensorboard_argv(), [("--rsync_max_parallel", args.max_parallel),
                                              ("--rsync_max_per_host", args.max_per_host)])


def _flags(help_argv, wanted):
    found = common.supported_flags(help_argv, wanted)
    for flag, value in wanted:
        if value is not None and flag not in dict(found):
            print(f"  note: {flag} is not an option of this version; not passed", flush=True)
    return [word for flag, value in found for word in (flag, str(value))]


def sizes(args, local, remote, runs):
    return (args.local if args.local is not None else local,
            args.remote if args.remote is not None else remote,
            args.runs_per_source or runs)


def error_kind(message):
    """An error message without names and paths (quoted), so equal causes count together."""
    return re.sub(r"'[^']*'", "'…'", (message.splitlines() or [""])[0])[:200]


def errors_text(kinds, heading="Sources in error at the end (count, message):"):
    """Report lines for `error_kinds`' counts: the three most common, or none."""
    if not kinds:
        return []
    return ["", heading, ""] + [f"- {n} x `{text}`" for text, n in
                                sorted(kinds.items(), key=lambda kv: -kv[1])[:3]]


def error_kinds(snapshot):
    """{error_kind: count} over the sources in error."""
    kinds = {}
    for source in snapshot["sources"]:
        if source["state"] == "error" and source["error"]:
            kind = error_kind(str(source["error"].get("message", "")))
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds
