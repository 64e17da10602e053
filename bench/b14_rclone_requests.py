"""B14: what counting rclone's HTTP requests costs a listing of 10,000 objects.

tb-rsync counts an rclone source's requests from rclone's own log (`-vv --dump=headers
--use-json-log`, transports/rclone_log.py): every request adds a few debug lines to
rclone's stderr, which tb-rsync reads and drops. The objects live in moto's S3 server on
127.0.0.1 (tests/fixtures_s3.py). Two competitors, through tb-rsync's own listing code
(`lsjson -R` with its filters and `--hash`), side by side, order rotated:

- counted: what tb-rsync runs now;
- not counted: the same with `RCLONE_LOG_LEVEL=NOTICE` in the environment (rclone's
  default level), which makes tb-rsync leave rclone's logging alone: the same `rclone
  lsjson` without the three flags, as before the count existed.

A second, smaller table lists with `rclone_flags = ["--use-server-modtime=false"]`, which
makes rclone ask for each object's modification time (one HEAD per object): the count shows
it, and the stderr it reads grows with it.
"""

import argparse
import concurrent.futures
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the project root on sys.path)

from tb_rsync_plugin.config import Source  # noqa: E402
from tb_rsync_plugin.transports import rclone as rclone_lib  # noqa: E402
from tests.fixtures_s3 import REMOTE, S3Server, start_moto  # noqa: E402
from tests.fixtures_servers import stop  # noqa: E402

COMPETITORS = ("counted", "not counted")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 objects, 3 repetitions")
    parser.add_argument("--objects", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    objects = args.objects or (2000 if args.quick else 10000)
    reps = args.reps or (3 if args.quick else 9)
    heads = max(objects // 10, 100)
    rclone = common.tool("rclone")
    with common.work_dir("b14") as root:
        proc, log, endpoint = start_moto(root)
        try:
            server = S3Server(endpoint)
            os.environ.update(server.env())
            os.environ.pop("AWS_CA_BUNDLE", None)
            main_rows = measure(root, server, rclone, objects, reps, ())
            head_rows = measure(root, server, rclone, heads, min(reps, 5),
                                ("--use-server-modtime=false",))
        finally:
            stop(proc)
            log.close()
    header = ["competitor", "time (min-max)", "time / not counted", "rclone CPU", "tb-rsync CPU",
              "requests counted", "stderr rclone wrote", "lines kept"]
    body = (f"### A listing of {objects:,} objects, {reps} repetitions, medians\n\n"
            + common.table(header, main_rows)
            + f"\n\n### `--use-server-modtime=false` in rclone_flags: {heads:,} objects, "
            f"{min(reps, 5)} repetitions, medians\n\n" + common.table(header, head_rows)
            + "\n\n\"rclone CPU\" is the rclone process's user + system time, \"tb-rsync "
            "CPU\" this process's (reading stdout and stderr, parsing the listing and the "
            "log lines). \"stderr rclone wrote\" is measured once more, by running the same "
            "command alone and reading its stderr; \"lines kept\" is what tb-rsync keeps of "
            "it for an error's details (no debug line). S3 lists 1,000 keys per request. "
            "moto, a single Python process on the same 2 busy cores, answers every request.")
    common.report_section(args, "B14", "B14: counting rclone's requests (a listing of "
                          f"{objects:,} objects)", body)


def measure(root, server, rclone, objects, reps, flags):
    bucket = server.new_bucket()
    client = server.client()

    def put(i):
        client.put_object(Bucket=bucket, Key=f"runs/r{i // 100:03d}/events.out.tfevents.{i}",
                          Body=b"x" * 100)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(objects)))
    source = Source("cloud", f"rclone:{REMOTE}:{bucket}/", rclone_flags=flags)
    staging, tmp = os.path.join(root, "staging"), os.path.join(root, "tmp")
    samples = {name: [] for name in COMPETITORS}
    last = {}
    for rep in range(reps):
        for name in common.rotate(list(COMPETITORS), rep):
            if name == "counted":
                os.environ.pop("RCLONE_LOG_LEVEL", None)
            else:
                os.environ["RCLONE_LOG_LEVEL"] = "NOTICE"
            try:
                samples[name].append(listing(rclone, source, staging, tmp, objects))
            finally:
                os.environ.pop("RCLONE_LOG_LEVEL", None)
            last[name] = samples[name][-1][3]
    rows = []
    base = common.median([s[0] for s in samples["not counted"]])
    for name in COMPETITORS:
        job = last[name]
        wall = common.median([s[0] for s in samples[name]])
        stderr_bytes, stderr_lines = stderr_volume(job.args, name)
        times = [s[0] for s in samples[name]]
        rows.append([name, f"{common.fmt_s(wall)} ({common.fmt_s(min(times))}-"
                           f"{common.fmt_s(max(times))})", f"{wall / base:.2f}x",
                     common.fmt_s(common.median([s[1] for s in samples[name]])),
                     common.fmt_s(common.median([s[2] for s in samples[name]])),
                     "-" if job.log.requests is None else f"{job.log.requests:,}",
                     f"{stderr_bytes / 1024:,.0f} KiB, {stderr_lines:,} lines",
                     len(job.stderr)])
    return rows


def listing(rclone, source, staging, tmp, objects):
    """(wall s, rclone's CPU s, our CPU s, the lsjson `_Job`) of one tb-rsync listing."""
    run = rclone_lib._Run(rclone, source, staging, tmp, None, None)
    run.lists_hashes()  # asked once per process and remote: not part of a listing
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, ours = time.perf_counter(), time.process_time()
    listed = run.list()
    wall, ours = time.perf_counter() - started, time.process_time() - ours
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert len(listed) == objects, (len(listed), objects)
    rclone_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return wall, rclone_cpu, ours, run.jobs[-1]


def stderr_volume(args, name):
    env = dict(os.environ, **({"RCLONE_LOG_LEVEL": "NOTICE"} if name == "not counted" else {}))
    err = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env, check=True).stderr
    return len(err), err.count(b"\n")


if __name__ == "__main__":
    main()
