"""B12: pushing event files over a slow link, with and without compression (rsync -z).

Two runs' event files of about the same size, written with TensorBoard's own record writer:
one of scalars only (four tags a step), one of images (128x128 RGB PNGs of a smooth scene
with sensor-like noise, as a model's samples are: already compressed by PNG). Each is pushed
whole into an empty folder over ssh to a real sshd on 127.0.0.1, the way `tb-rsync push`
does (`push.push_tree` over one shared login), at a limited rate (rsync's --bwlimit on the
sending side) and unlimited, with `compress` off and on, side by side, order rotated.
Reported: wall time, bytes on the wire (rsync's own count, after compression) and the CPU
the sending side used (rsync and ssh; the receiving rsync runs under sshd).
"""

import argparse
import os
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the project root on sys.path)

from tb_rsync_plugin.config import Source  # noqa: E402
from tb_rsync_plugin.push import push_tree  # noqa: E402
from tb_rsync_plugin.transports.ssh import SshConnections  # noqa: E402
from tests.fixtures_servers import start_sshd, stop  # noqa: E402

EVENTS = "events.out.tfevents.1700000000.node1.1234.0"
KINDS = ("scalars", "images")
RATES_KIB = (1024, 10240, None)  # ~8 Mbit/s, ~80 Mbit/s, loopback


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MiB files, 2 repetitions")
    parser.add_argument("--reps", type=int, default=None)
    common.add_report_options(parser)
    args = parser.parse_args(argv)
    size = (1 if args.quick else 4) * common.MiB
    reps = args.reps or (2 if args.quick else 3)
    common.become_subreaper()
    with common.work_dir("b12") as root:
        proc, server = start_sshd(os.path.join(root, "sshd"))
        try:
            figures = measure(root, server, size, reps)
        finally:
            stop(proc)
    rows = []
    for kind in KINDS:
        for rate in RATES_KIB:
            off, on = figures[(kind, rate, False)], figures[(kind, rate, True)]
            t_off, t_on = common.median(off["s"]), common.median(on["s"])
            rows.append([kind, "unlimited" if rate is None else f"{rate} KiB/s",
                         common.fmt_s(t_off), common.fmt_s(t_on), f"{t_on / t_off:.2f}x",
                         f"{common.median(off['wire']) / common.MiB:.2f} MiB",
                         f"{common.median(on['wire']) / common.MiB:.2f} MiB",
                         f"{common.median(off['cpu']):.2f} s / {common.median(on['cpu']):.2f} s"])
    body = (f"### {size // common.MiB} MiB event file pushed whole over ssh, {reps} "
            "repetitions, medians\n\n"
            + common.table(["event file", "rate (--bwlimit)", "plain", "compress", "time ratio",
                            "wire plain", "wire compress", "sender CPU plain / compress"],
                           rows)
            + "\n\n`compress = true` (push: `--compress`) is rsync's `-z`; both ends here are "
            "rsync 3.2 or later, which negotiate zstd (level 3). The time ratio is compressed "
            "over plain: below 1 it pays.")
    common.report_section(args, "B12", "B12: compression on slow links (scalars vs images)",
                          body)


def measure(root, server, size, reps):
    node = os.path.join(root, "node")
    for kind in KINDS:
        path = os.path.join(node, kind, EVENTS)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(common.header_bytes())
            step = 0
            while f.tell() < size:  # every record its own: a repeated block compresses away
                f.write(scalar_block(step) if kind == "scalars" else image_block())
                step += 500
    temp = os.path.join(root, "lists")
    os.makedirs(temp)
    os.makedirs(os.path.join(root, "hub"))  # the inbox; each push makes its own folder
    cases = [(kind, rate, compress) for kind in KINDS for rate in RATES_KIB
             for compress in (False, True)]
    figures = {case: {"s": [], "wire": [], "cpu": []} for case in cases}
    connections = SshConnections(control_dir=os.path.join("/tmp", f"tbb12-{os.getpid()}"))
    try:
        for rep in range(reps):
            for case in common.rotate(cases, rep):
                kind, rate, compress = case
                target = Source("bench", f"{server.host}:{root}/hub/{rep}-{kind}-{rate}-"
                                f"{int(compress)}/", ssh=server.ssh_command,
                                bwlimit_kib=rate, compress=compress)
                connections.prepare(target)  # the login is not what is measured
                cpu = common.descendants_cpu_s()
                result = {}
                seconds = common.timed(lambda: result.setdefault("r", connections.run(
                    target, lambda rsh: push_tree("rsync", target, os.path.join(node, kind),
                                                  temp, rsh))))
                figures[case]["s"].append(seconds)
                figures[case]["cpu"].append(common.descendants_cpu_s() - cpu)
                figures[case]["wire"].append(result["r"].bytes_received)
    finally:
        connections.close()
    return figures


def scalar_block(first_step, steps=500, wall_time0=1_700_000_000.0):
    """Scalar events as a training loop logs them: a few tags a step, values that move."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tests.events import event_bytes
    events = []
    for step in range(first_step, first_step + steps):
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in (
            ("train/loss", 2.0 / (1 + step) + (step % 7) * 1e-3),
            ("train/accuracy", 1 - 1.0 / (2 + step)),
            ("train/learning_rate", 1e-3 * 0.999 ** step),
            ("train/grad_norm", 0.5 + (step * 7919 % 1000) / 1000))]
        events.append(event_pb2.Event(wall_time=wall_time0 + step * 0.37, step=step,
                                      summary=summary_pb2.Summary(value=values)))
    return event_bytes(events)


_SEED = [12345]


def image_block(images=4, side=128):
    """Image events: PNGs of a smooth gradient with pseudo-random noise of +-12."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tests.events import event_bytes
    events = []
    for i in range(images):
        rows = []
        for y in range(side):
            row = bytearray([0])  # PNG filter type 0 for each scanline
            for x in range(side):
                for c in range(3):
                    _SEED[0] = (_SEED[0] * 1103515245 + 12345) & 0x7FFFFFFF
                    noise = _SEED[0] % 25 - 12
                    row.append(max(0, min(255, (x + y * (c + 1) + 40 * c) % 256 + noise)))
            rows.append(bytes(row))
        image = summary_pb2.Summary.Image(height=side, width=side, colorspace=3,
                                          encoded_image_string=png(side, side, b"".join(rows)))
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="samples",
                                                                       image=image)])
        events.append(event_pb2.Event(wall_time=1_700_000_000.0 + i, step=i, summary=summary))
    return event_bytes(events)


def png(width, height, scanlines):
    """An RGB PNG of filtered `scanlines` (what TensorBoard's image plugin shows)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(scanlines, 6)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    main()
