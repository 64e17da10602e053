"""Show tb-rsync live: simulated remote training jobs, a real TensorBoard with the Sync tab.

    python demo/run_demo.py [--compare] [--workdir DIR] [--port 6006] [--duration SECONDS]

Lays out a work folder:

    remote/node1/resnet lr=0.1/    remote/node1/resnet lr=0.01/    remote/node2/vit-small/
        the "remote machines": fake_trainer.py processes grow real event files there
    logs/          the logdir; the plugin rsyncs remote/* into staging/ and publishes here
    staging/       the plugin's rsync target (outside the logdir, as it must be)
    logs-plain/    with --compare: a plain `rsync -a` loop copies remote/* here
    process-logs/  output of every process the demo started

and serves `logs/` with `tensorboard ... --rsync_source node1=remote/node1/ ...`. With
--compare, a second TensorBoard serves `logs-plain/`: plain rsync replaces each event file by
a rename, and TensorBoard's default fast loader keeps reading the replaced file, so that one
goes stale while the plugin's keeps growing.

Everything the demo starts runs in its own process group and is stopped (group and any
descendants) on Ctrl-C, SIGTERM, or when --duration ends.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_TRAINER = os.path.join(HERE, "fake_trainer.py")
HOST = "127.0.0.1"
SYNC_INTERVAL_S = 3
# Both TensorBoards reload every 2 s instead of the default 5 s, so the demo looks live;
# the comparison stays fair because plain rsync gets the same reload schedule.
RELOAD_INTERVAL_S = 2
# (node, run, peak learning rate, seconds between records): a run name with a space on
# purpose, since real run names have them.
RUNS = (
    ("node1", "resnet lr=0.1", 0.1, 0.6),
    ("node1", "resnet lr=0.01", 0.01, 0.8),
    ("node2", "vit-small", 0.03, 0.7),
)
NODES = sorted({node for node, *_ in RUNS})
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class DemoError(Exception):
    """A known failure; str() is one sentence saying what to do."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived while starting up."""


def main(argv=None):
    args = parse_args(argv)
    stop = StopRequest()
    demo = None
    try:
        check_requirements()
        if stop.event.is_set():  # importing the plugin takes a moment
            return stop.exit_code()
        become_subreaper()
        demo = Demo(args, stop)
        return demo.run()
    except Stopped:
        return stop.exit_code()
    except DemoError as e:
        print(f"run_demo: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        if demo is not None:
            demo.stop()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Simulated remote training jobs and a real TensorBoard with the Sync tab.",
        epilog="Exit status: 0 when --duration ends or on SIGTERM, 130 after Ctrl-C (SIGINT), "
               "1 if something is missing or a process the demo started fails. "
               "Every process it started is stopped before it exits.")
    parser.add_argument("--workdir", metavar="DIR",
                        help="work folder (must be new or empty; kept afterwards). "
                             "Default: a temporary folder, deleted on exit.")
    parser.add_argument("--port", type=int, default=6006,
                        help="first port to try for TensorBoard (default 6006; the next free "
                             "one is used)")
    parser.add_argument("--compare", action="store_true",
                        help="also serve logs-plain/, fed by plain `rsync -a`, on the next "
                             "free port, to see it go stale")
    parser.add_argument("--duration", type=float, default=0, metavar="SECONDS",
                        help="stop after SECONDS (default: run until Ctrl-C)")
    parser.add_argument("--load-fast", choices=("auto", "true", "false"),
                        help="pass --load_fast to both TensorBoards (default: TensorBoard's)")
    return parser.parse_args(argv)


def check_requirements():
    """Fail early with a sentence rather than a traceback from a child process."""
    if shutil.which("rsync") is None:
        raise DemoError("rsync is not installed; run scripts/install-system-deps.sh.")
    if importlib.util.find_spec("tensorboard") is None:
        raise DemoError(f"TensorBoard is not installed for {sys.executable}; "
                        "run `pip install -e .` in the project folder.")
    entry = [ep for ep in importlib.metadata.entry_points(group="tensorboard_plugins")
             if ep.name == "rsync"]
    if not entry:
        raise DemoError(f"The tb-rsync plugin is not installed for {sys.executable}; "
                        "run `pip install -e .` in the project folder.")
    try:
        entry[0].load()
    except Exception as e:  # any import failure means TensorBoard would start without it
        raise DemoError(f"The tb-rsync plugin is installed but does not import "
                        f"({type(e).__name__}: {e}).") from None


class StopRequest:
    """Ctrl-C, SIGTERM and SIGHUP only set a flag: the main thread then stops everything in
    order. Installed first thing, so a signal during start-up is never lost or a traceback."""

    def __init__(self):
        self.event = threading.Event()
        self.signum = None
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.signum = signum
        self.event.set()

    def exit_code(self):
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_OK


class Demo:
    """Starts the processes, watches them, and stops all of them exactly once."""

    def __init__(self, args, stop):
        self.args = args
        self.stop_request = stop
        self.stopping = stop.event
        self.children = []  # (label, Popen, log path)
        self.threads = []
        self.temporary = not args.workdir
        self.workdir = os.path.abspath(args.workdir) if args.workdir else \
            tempfile.mkdtemp(prefix="tb-rsync-demo-")
        if args.workdir:
            os.makedirs(self.workdir, exist_ok=True)
            if os.listdir(self.workdir):
                raise DemoError(f"--workdir {self.workdir} is not empty; "
                                "give a new folder or delete it.")

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def run(self):
        os.makedirs(self.path("process-logs"))
        os.makedirs(self.path("logs"))  # the plugin publishes into an existing logdir only
        for node in NODES:
            os.makedirs(self.path("remote", node))
        for i, (node, run, lr, period) in enumerate(RUNS):
            self.spawn(f"trainer-{i}", [
                sys.executable, FAKE_TRAINER, self.path("remote", node, run),
                "--lr", str(lr), "--seed", str(i), "--period", str(period)])

        sources = [f"--rsync_source={node}={self.path('remote', node)}/" for node in NODES]
        self.explain_setup()
        main_url = self.serve("tensorboard", "logs", self.args.port, [
            *sources, f"--rsync_interval={SYNC_INTERVAL_S}",
            f"--rsync_staging={self.path('staging')}"])
        if "rsync" not in get_json(main_url + "/data/plugins_listing"):
            raise DemoError(f"TensorBoard started without the Sync tab; see "
                            f"{self.path('process-logs', 'tensorboard.log')}.")
        plain_url = None
        if self.args.compare:
            os.makedirs(self.path("logs-plain"))
            self.start_thread(self.plain_rsync_loop)
            plain_url = self.serve("tensorboard-plain", "logs-plain",
                                   int(main_url.rsplit(":", 1)[1]) + 1, [])

        self.explain_urls(main_url, plain_url)
        return self.watch()

    def spawn(self, label, argv):
        """Start a child in its own process group (so Ctrl-C reaches only us, and we can
        stop its whole group); its output goes to process-logs/LABEL.log."""
        log_path = self.path("process-logs", label + ".log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=self.workdir)
        self.children.append((label, proc, log_path))
        return proc, log_path

    def serve(self, label, logdir, first_port, flags):
        """Start TensorBoard on the first free port from `first_port`; returns its URL.

        Another program can take the port between our check and TensorBoard's bind (two
        demos started at once do), so a failed bind moves on to the next port.
        """
        # `python -m tensorboard.main` with our own interpreter: the one we just checked has
        # the plugin, whichever `tensorboard` happens to be first on PATH.
        load_fast = [f"--load_fast={self.args.load_fast}"] if self.args.load_fast else []
        port = first_port
        for _attempt in range(5):
            port = first_free_port(port)
            url = f"http://{HOST}:{port}"
            child = self.spawn(label, [
                sys.executable, "-m", "tensorboard.main", "--logdir", self.path(logdir),
                "--host", HOST, f"--port={port}", f"--reload_interval={RELOAD_INTERVAL_S}",
                *load_fast, *flags])
            if self.wait_ready(label, *child, url, self.path(logdir)):
                return url
            self.children.pop()  # it exited: the port was taken after all
            port += 1
        raise DemoError(f"TensorBoard could not bind a port from {first_port} on; pass --port.")

    def wait_ready(self, label, proc, log_path, url, logdir, timeout_s=90):
        """Poll until our TensorBoard answers (not another one on that port: it must name
        our logdir). False if it exited because the port was taken."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stopping.is_set():
                raise Stopped()
            if proc.poll() is not None:
                with open(log_path, "rb") as f:
                    if b"could not bind" in f.read():
                        return False
                raise DemoError(f"{label} exited with code {proc.returncode} while starting: "
                                f"{last_line(log_path)} (full log: {log_path})")
            try:
                if get_json(url + "/data/environment", 2).get("data_location") == logdir:
                    return True
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"{label} did not answer at {url} within {timeout_s} s; "
                                f"see {log_path}.")
            time.sleep(0.3)

    def start_thread(self, target):
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)

    def plain_rsync_loop(self):
        """What users do without the plugin: `rsync -a` every few seconds into the logdir.

        rsync writes `.NAME.XXXXXX` and renames it over NAME, so every copy is a new inode.
        """
        warned = False
        while not self.stopping.is_set():
            for node in NODES:
                argv = ["rsync", "-a", self.path("remote", node) + "/",
                        self.path("logs-plain", node) + "/"]
                try:
                    # Its own session: a terminal's Ctrl-C must not kill it mid-copy.
                    result = subprocess.run(argv, capture_output=True, timeout=60,
                                            start_new_session=True)
                    stderr = result.stderr.decode(errors="replace").strip() or "(none)"
                    failed = result.returncode and f"exit {result.returncode}: {stderr}"
                except subprocess.TimeoutExpired:
                    failed = "timed out after 60 s"
                if failed and not warned and not self.stopping.is_set():
                    print(f"run_demo: plain rsync failed ({failed})", file=sys.stderr, flush=True)
                    warned = True
            self.stopping.wait(SYNC_INTERVAL_S)

    def explain_setup(self):
        where = f"{self.workdir} (deleted on exit)" if self.temporary else self.workdir
        print(f"tb-rsync demo in {where}")
        print(f"  {len(RUNS)} simulated training runs on {', '.join(NODES)} (remote/): "
              "a new point every ~0.7 s")
        print(f"  the plugin looks for changes every {SYNC_INTERVAL_S} s, rsyncs what changed "
              "into logs/ and appends new records in place")
        print("Starting TensorBoard (takes a few seconds)...", flush=True)

    def explain_urls(self, main_url, plain_url):
        print(f"Sync TensorBoard:  {main_url}/#rsync  keeps growing: open the Sync tab once, "
              "then Scalars or Time Series; the charts reload after each sync (the tab's "
              "\"Refresh TensorBoard after each sync\")")
        if plain_url:
            note = ("plain rsync replaces event files; the fast loader keeps reading the old "
                    "ones, so it goes stale" if self.plain_goes_stale() else
                    "the legacy loader without TensorFlow reopens files, so it may keep up")
            print(f"Plain TensorBoard: {plain_url}/  (logs-plain/ via `rsync -a`: {note})")
        if self.args.duration:
            print(f"Stops after {self.args.duration:g} s (--duration); Ctrl-C stops sooner.",
                  flush=True)
        else:
            print("Press Ctrl-C to stop.", flush=True)

    def plain_goes_stale(self):
        """Whether TensorBoard picks the fast (Rust) loader, which never reopens a file."""
        if self.args.load_fast == "false":
            return importlib.util.find_spec("tensorflow") is not None
        return importlib.util.find_spec("tensorboard_data_server") is not None

    def watch(self):
        """Wait for the end (duration, signal) or for a child to fail."""
        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        while not self.stopping.wait(0.5):
            for label, proc, log_path in self.children:
                if proc.poll() is not None:
                    raise DemoError(f"{label} exited with code {proc.returncode}: "
                                    f"{last_line(log_path)} (full log: {log_path})")
            if deadline and time.monotonic() > deadline:
                print(f"--duration {self.args.duration:g} s is over; stopping.", flush=True)
                return EXIT_OK
        return self.stop_request.exit_code()

    def stop(self):
        """Stop every child: TERM its process group, KILL the group if it lingers, then stop
        any orphan that left its group (the plugin runs rsync in a session of its own)."""
        self.stopping.set()
        for _label, proc, _log in reversed(self.children):  # TensorBoards first, then trainers
            signal_group(proc.pid, signal.SIGTERM)
        for _label, proc, _log in reversed(self.children):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for thread in self.threads:
            thread.join(70)  # a plain rsync in flight finishes within its own timeout
        self.children.clear()
        stop_orphans()
        if self.temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)


def get_json(url, timeout_s=5):
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def first_free_port(start):
    """The first port from `start` that TensorBoard can bind.

    Probed with SO_REUSEADDR, as TensorBoard's server (http.server) binds: a port held only
    by connections in TIME_WAIT (a demo that just stopped) is free for it.
    """
    for port in range(start, start + 100):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
                return port
            except OSError:
                continue
    raise DemoError(f"No free port in {start}-{start + 99} on {HOST}; pass --port.")


def become_subreaper():
    """Linux: orphans of our children (say an rsync whose TensorBoard has exited) are
    re-parented to us rather than to init, so `stop_orphans` can still find them."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def descendants(pid):
    """Live PIDs below `pid`, from /proc (empty where there is no /proc)."""
    parents = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # The command name may hold spaces and parens: split after the last ')'.
                    state, parent = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue
            if state != "Z":
                parents[int(entry)] = int(parent)
    found, frontier = [], {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def stop_orphans(grace_s=5):
    """TERM, then KILL, whatever still runs below us; reap it."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        pids = descendants(os.getpid())
        for pid in pids:
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while pids and descendants(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.1)
    while True:  # reap the zombies we inherited as subreaper
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


def signal_group(pid, signum):
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def last_line(log_path):
    try:
        with open(log_path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"
    except OSError:
        return "(no output)"


if __name__ == "__main__":
    sys.exit(main())
