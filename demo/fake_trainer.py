"""A pretend training job: grows one real TensorBoard event file, a record at a time.

No TensorFlow: events are TensorBoard's own protos, framed by its own `RecordWriter`, so
the bytes are exactly what a real job writes. Each record is written with one `write()` and
flushed at once, so the file only ever grows by whole records (a reader may still catch one
half-flushed; that is the realistic case the plugin handles).

    python demo/fake_trainer.py RUN_DIR [--lr 0.1] [--seed 0] [--period 0.7] [--steps N]

Writes scalars (loss, accuracy, learning_rate) every record, and a histogram of fake weights
and a small PNG heatmap every fifth record. Stops cleanly on SIGTERM or SIGINT.
"""

import argparse
import math
import os
import random
import signal
import socket
import struct
import sys
import time
import zlib

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

STEPS_PER_RECORD = 10  # a real job logs every N optimizer steps
IMAGE_SIZE = 48


def main(argv=None):
    parser = argparse.ArgumentParser(description="Grow a TensorBoard event file like a live job.")
    parser.add_argument("run_dir", help="folder of this run (created if missing)")
    parser.add_argument("--lr", type=float, default=0.1,
                        help="peak learning rate (shapes the curves)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--period", type=float, default=0.7, help="seconds between records")
    parser.add_argument("--steps", type=int, default=0, help="stop after N records (0: never)")
    args = parser.parse_args(argv)

    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))

    os.makedirs(args.run_dir, exist_ok=True)
    # The usual name: events.out.tfevents.<time>.<host>.<pid>.<n>. A fresh name per start, so a
    # restarted demo never appends step 0 after step 500 in the same file.
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
    curves = Curves(args.lr, random.Random(args.seed))
    with open(os.path.join(args.run_dir, name), "ab") as f:
        writer = RecordWriter(f)
        write(writer, f, event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        record = 0
        while not stop and (args.steps <= 0 or record < args.steps):
            write(writer, f, curves.event(record))
            record += 1
            deadline = time.monotonic() + args.period
            while not stop and time.monotonic() < deadline:  # wake up promptly on a signal
                time.sleep(0.05)
    return 0


def write(writer, f, event):
    writer.write(event.SerializeToString())
    f.flush()


class Curves:
    """Plausible training curves: cosine learning rate, decaying noisy loss, rising accuracy.

    A larger learning rate learns faster but plateaus noisier, so runs look different.
    """

    def __init__(self, lr, rng):
        self.lr, self.rng = lr, rng
        self.tau = 8.0 / math.sqrt(lr)  # records until the loss has mostly dropped
        self.floor = 0.15 + 0.5 * lr

    def event(self, record):
        step = record * STEPS_PER_RECORD
        lr = self.lr * 0.5 * (1 + math.cos(math.pi * (record % 400) / 400))
        noise = self.rng.gauss(0, 0.04 + 0.2 * self.lr)
        loss = max(0.01, 2.3 * math.exp(-record / self.tau) + self.floor + noise)
        accuracy = min(0.99, max(0.0, 1 - loss / 2.5 + self.rng.gauss(0, 0.01)))
        values = [
            summary_pb2.Summary.Value(tag="loss", simple_value=loss),
            summary_pb2.Summary.Value(tag="accuracy", simple_value=accuracy),
            summary_pb2.Summary.Value(tag="learning_rate", simple_value=lr),
        ]
        if record % 5 == 0:
            spread = 0.05 + 0.5 * math.exp(-record / (3 * self.tau))
            weights = [self.rng.gauss(0, spread) for _ in range(500)]
            values.append(summary_pb2.Summary.Value(tag="weights/dense", histo=histogram(weights)))
            values.append(summary_pb2.Summary.Value(tag="activations", image=heatmap(record)))
        return event_pb2.Event(wall_time=time.time(), step=step,
                               summary=summary_pb2.Summary(value=values))


def histogram(values, buckets=30):
    """A HistogramProto: `bucket_limit[i]` is the right edge of `bucket[i]` (counts)."""
    low, high = min(values), max(values)
    width = (high - low) / buckets or 1.0
    counts = [0.0] * buckets
    for v in values:
        counts[min(int((v - low) / width), buckets - 1)] += 1
    return summary_pb2.HistogramProto(
        min=low, max=high, num=len(values), sum=sum(values),
        sum_squares=sum(v * v for v in values),
        bucket_limit=[low + width * (i + 1) for i in range(buckets)], bucket=counts)


def heatmap(record, size=IMAGE_SIZE):
    """A moving blob over a gradient, as a PNG-encoded Summary.Image."""
    cx = size / 2 + size / 3 * math.cos(record / 6)
    cy = size / 2 + size / 3 * math.sin(record / 6)
    rows = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            heat = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (size / 6) ** 2))
            row += bytes((int(255 * heat), int(96 * y / size), int(255 * (1 - heat) * x / size)))
        rows.append(bytes(row))
    return summary_pb2.Summary.Image(height=size, width=size, colorspace=3,
                                     encoded_image_string=png_rgb(size, size, rows))


def png_rgb(width, height, rows):
    """Encode 8-bit RGB rows as PNG: signature, IHDR, one zlib IDAT, IEND."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 (none) on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    sys.exit(main())
