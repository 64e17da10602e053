"""Shared pieces of the benchmarks: work folders, event data, timing, tables, the report file.

Every benchmark measures its competitors side by side in one process run, interleaved
(the order rotates each repetition), and reports medians and ratios. The machine is shared,
so absolute times move from run to run; the ratios are what the goals are about.
"""

import contextlib
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REPORT = os.path.join(ROOT, "docs", "BENCHMARKS.md")
PYTHON_BIN = os.path.dirname(sys.executable)
MiB = 1024 * 1024


def tool(name):
    """A console script next to this Python (pyenv shims add ~0.1 s of bash per call)."""
    path = os.path.join(PYTHON_BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


def tensorboard_argv():
    """Starts TensorBoard with this Python, so it loads the plugin installed here.

    A `tensorboard` found on PATH may belong to another interpreter (a pyenv shim) whose
    plugin is another checkout's.
    """
    script = os.path.join(PYTHON_BIN, "tensorboard")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "tensorboard.main"]


def supported_flags(help_argv, wanted):
    """The (flag, value) pairs of `wanted` whose flag the program's --help mentions.

    Lets a benchmark pass options a newer version adds and still run against an older one.
    """
    text = subprocess.run([*help_argv, "--help"], capture_output=True, text=True).stdout
    return [(flag, value) for flag, value in wanted
            if value is not None and re.search(rf"{re.escape(flag)}(?![\w-])", text)]


@contextlib.contextmanager
def work_dir(name):
    """A fresh folder under /tmp, removed afterwards (also on Ctrl-C)."""
    path = tempfile.mkdtemp(prefix=f"tb-rsync-bench-{name}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- event data ------------------------------------------------------------------------

def record_block(first_step=0, records=1024, wall_time0=1_700_000_000.0):
    """About 1 MiB of valid TFRecords: alternating ~1 KiB scalar and histogram events."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tests.events import event_bytes
    events = []
    for i in range(records):
        step = first_step + i
        if i % 2:
            histo = summary_pb2.HistogramProto(
                min=0.0, max=1.0, num=100, sum=50.0, sum_squares=30.0,
                bucket_limit=[j / 60 for j in range(60)], bucket=[float(j % 7) for j in range(60)])
            value = summary_pb2.Summary.Value(tag="weights", histo=histo)
        else:
            value = summary_pb2.Summary.Value(tag="loss/" + "x" * 900, simple_value=float(step))
        events.append(event_pb2.Event(wall_time=wall_time0 + step, step=step,
                                      summary=summary_pb2.Summary(value=[value])))
    return event_bytes(events)


def header_bytes(wall_time0=1_700_000_000.0):
    from tests.events import event_bytes, file_version_event
    return event_bytes([file_version_event(wall_time0)])


def write_event_file(path, size_bytes, block=None):
    """An event file of about `size_bytes`: a header, then a block of records repeated."""
    block = block or record_block()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(header_bytes())
        for _ in range(max(1, round(size_bytes / len(block)))):
            f.write(block)
    return os.path.getsize(path)


# --- measuring -------------------------------------------------------------------------

def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def run(args, **kwargs):
    """Run a command; raise with its stderr if it fails."""
    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, **kwargs)
    if result.returncode not in (0, 24):
        raise RuntimeError(f"{' '.join(map(str, args))} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result


CLOCK_TICKS_S = os.sysconf("SC_CLK_TCK")


def become_subreaper():
    """Orphans of our descendants (a daemonized ssh ControlMaster) are re-parented to this
    process instead of init, so `descendants_cpu_s` keeps counting them."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans():
    """Collect exited orphans handed to us as subreaper (no Popen waits for them).

    Call it only while no Popen of ours may have ended unobserved (it would take its status).
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def descendants_cpu_s(split_pid=None):
    """CPU seconds (user + system) used so far by every descendant of this process.

    Live and zombie descendants count their own time plus what their exited children left
    in their cutime/cstime; children this process reaped count through its own cutime/cstime
    (this process's own time is not counted). Differences of two calls give the CPU used in
    between, exited processes included. Exited orphans are collected first: a zombie's
    /proc entry undercounts. With `split_pid`: (cpu outside, cpu of that process's subtree).
    """
    if split_pid is None:
        return sum(subtrees_cpu_s(()).values())
    by = subtrees_cpu_s((split_pid,))
    return by[None], by[split_pid]


def subtrees_cpu_s(pids):
    """{pid: CPU seconds of that descendant's subtree, None: of every other descendant}.

    Counted as `descendants_cpu_s` counts; a process under two of `pids` counts under the
    nearest.
    """
    reap_orphans()
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2:].split()
        # After the name: state, ppid, ... utime(11) stime(12) cutime(13) cstime(14).
        stats[int(entry)] = (int(fields[1]), [int(fields[i]) for i in (11, 12, 13, 14)])
    me = os.getpid()
    ticks_by = dict.fromkeys([None, *pids], 0)
    for pid, (_, ticks) in stats.items():
        chain, cursor = [], pid
        while cursor in stats and cursor != me and cursor not in chain:
            chain.append(cursor)
            cursor = stats[cursor][0]
        if cursor != me or not chain:
            continue  # not ours, or this process
        ticks_by[next((p for p in chain if p in ticks_by), None)] += sum(ticks)
    ticks_by[None] += sum(stats[me][1][2:]) if me in stats else 0
    return {key: ticks / CLOCK_TICKS_S for key, ticks in ticks_by.items()}


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))]


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def disk_bytes(path):
    """Real block usage of everything under `path` (each inode once), like `du -s --bytes`."""
    seen, total = set(), 0
    for folder, _, names in os.walk(path):
        for name in [""] + names:
            st = os.lstat(os.path.join(folder, name) if name else folder)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def inodes_under(path):
    found = set()
    for folder, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            found.add((st.st_dev, st.st_ino))
    return found


# --- reporting -------------------------------------------------------------------------

def fmt_s(seconds):
    if seconds != seconds:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def table(header, rows):
    """A Markdown table (also readable as plain text)."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "| " + " | ".join("-" * w for w in widths) + " |"]
                     + [line(r) for r in rows])


def environment():
    def version(args, pattern=r"(\S+)"):
        try:
            out = subprocess.run(args, capture_output=True, text=True).stdout
        except OSError:
            return "?"
        match = re.search(pattern, out)
        return match.group(1) if match else "?"

    import tensorboard
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "rsync": version(["rsync", "--version"], r"version\s+(\S+)"),
        "python": platform.python_version(),
        "tensorboard": tensorboard.__version__,
        "kernel": platform.release(),
        "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def write_section(key, title, command, body):
    """Replace (or add) the section between `<!-- KEY -->` markers in docs/BENCHMARKS.md."""
    env = environment()
    text = (f"<!-- {key} start -->\n## {title}\n\n"
            f"`{command}` — {env['date']}, nproc {env['nproc']}, rsync {env['rsync']}, "
            f"Python {env['python']}, TensorBoard {env['tensorboard']}, Linux {env['kernel']}, "
            f"load average {env['load']} (1, 5, 15 min, at the end, this benchmark's own "
            "processes included; other jobs share the machine), warm page cache (dropping it "
            "is not possible here).\n\n"
            f"{body.strip()}\n<!-- {key} end -->")
    try:
        with open(REPORT, encoding="utf-8") as f:
            doc = f.read()
    except FileNotFoundError:
        doc = HEADER
    pattern = re.compile(rf"<!-- {key} start -->.*?<!-- {key} end -->", re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    with open(REPORT, "w", encoding="utf-8") as f:
        f.write(doc if doc.endswith("\n") else doc + "\n")


BASELINE = "before the fleet engine"


def add_report_options(parser):
    parser.add_argument("--baseline", action="store_true",
                        help=f"label the figures '{BASELINE}' and keep them in a section of "
                             "their own, which later runs without this flag leave alone")
    parser.add_argument("--no-report", action="store_true",
                        help="print the tables only; leave docs/BENCHMARKS.md alone")


def report_section(args, key, title, body):
    """Print `body` and write it to docs/BENCHMARKS.md as asked by add_report_options."""
    print(body)
    if args.no_report:
        return
    if args.baseline:
        key, title = f"{key}-before", f"{title} ({BASELINE})"
    write_section(key, title, command_line(), body)


def command_line():
    args = " ".join(sys.argv[1:])
    return f"python bench/{os.path.basename(sys.argv[0])}" + (f" {args}" if args else "")


HEADER = """# Benchmarks

Measured by the scripts in `bench/` (`python bench/run_all.py`, or one script at a time;
`--quick` uses smaller sizes). Each section is rewritten by its script with the exact command
and the machine it ran on. Competitors run side by side in one process run, interleaved
(order rotated each repetition), on loopback only; times are medians. The machine is shared
by other jobs, so compare ratios within a section rather than absolute times across sections.
"""
