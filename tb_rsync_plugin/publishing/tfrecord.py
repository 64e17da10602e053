"""Complete-record scanning of TFRecord event files; pure, never writes.

A TFRecord is `length (uint64 LE) | masked crc32c(length) | data | masked crc32c(data)`.
The publisher asks one question of a byte range: how far do complete, valid records go, and
what is the newest event among them? Two answers must never be confused:

- the bytes after the last complete record are an incomplete record (a writer or rsync is
  still mid-way): `truncated=True`, wait for more bytes, like TensorBoard does;
- a record's length or data checksum is wrong: `CorruptRecordError`, which never heals by
  waiting (TensorBoard's fast loader drops a file for good on a bad length checksum).

Only the scanned range is read, in bounded chunks, so appending 1 MB to a 1 GB file costs the
same as appending it to an empty one.
"""

import dataclasses
import functools
import math
import os
import struct
from typing import Optional

from tb_rsync_plugin.errors import CorruptRecordError

CHUNK_BYTES = 4 * 1024 * 1024
HEADER_BYTES = 12  # uint64 length + masked crc of the length
FOOTER_BYTES = 4  # masked crc of the data
# Enough of an Event's head to find wall_time and step in a record too big for one chunk.
_EVENT_HEAD_BYTES = 4096

_LENGTH = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_MASK_DELTA = 0xA282EAD8


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What a scan of `[start_offset, end_offset)` found.

    Attributes:
      start_offset: where the scan began (a record boundary the caller vouches for).
      end_offset: end of the last complete, valid record; `start_offset` if there was none.
      records: complete records between the two offsets.
      newest_wall_time: largest event wall time among them; None if none could be read.
      newest_step: largest event step among them; None if no record was parsed.
      truncated: bytes after `end_offset` form an incomplete record: wait for more.
    """

    start_offset: int
    end_offset: int
    records: int
    newest_wall_time: Optional[float]
    newest_step: Optional[int]
    truncated: bool


def masked_crc32c(data):
    """TFRecord's masked CRC32C: rotated and offset so CRCs of CRCs stay well-spread."""
    return _mask(_crc32c().value(data))


def _crc32c():
    """google_crc32c, imported on first use: a sync that publishes nothing checks no record,
    and its import is ~1.5 ms of `tb-rsync sync`'s start-up."""
    import google_crc32c
    return google_crc32c


@functools.lru_cache(maxsize=4096)
def _length_crc(length):
    """The masked CRC of a record's length field: records of a file repeat a few lengths."""
    return masked_crc32c(struct.pack("<Q", length))


def _mask(crc):
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def record_bytes(data):
    """One TFRecord framing `data` (for tests and tools; the scanner only reads)."""
    length = struct.pack("<Q", len(data))
    return length + _U32.pack(masked_crc32c(length)) + data + _U32.pack(masked_crc32c(data))


def scan_records(f_or_path, start_offset=0, end_offset=None, chunk_bytes=CHUNK_BYTES):
    """Scan complete records from `start_offset` up to `end_offset` (or end of file).

    Args:
      f_or_path: a path, or a binary file object that supports seek() and read().
      start_offset: a record boundary (0, or an `end_offset` of an earlier scan).
      end_offset: stop here even if the file is longer, e.g. the size seen by an earlier
        stat, so a file growing during the scan gives a consistent answer.
      chunk_bytes: read size; memory stays bounded by it plus one record's head.

    Raises:
      CorruptRecordError: a record at `error.offset` has a bad length or data checksum.
        `error.scan` is the ScanResult of the valid records before it, so the caller can
        still publish those.
    """
    if isinstance(f_or_path, (str, bytes, os.PathLike)):
        with open(f_or_path, "rb") as f:
            return _Scanner(f, os.fsdecode(f_or_path), start_offset, end_offset,
                            chunk_bytes).scan()
    path = getattr(f_or_path, "name", None)
    return _Scanner(f_or_path, str(path) if path is not None else "<stream>", start_offset,
                    end_offset, chunk_bytes).scan()


class _Scanner:
    """One pass over a byte range; `base + pos` is always the next record's file offset."""

    def __init__(self, f, path, start, end, chunk_bytes):
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad scan range [{start}, {end})")
        self.f, self.path, self.start, self.chunk_bytes = f, path, start, max(chunk_bytes, 64)
        self.left = None if end is None else end - start  # bytes not yet read
        self.buf, self.base, self.pos = b"", start, 0
        self.records, self.wall, self.step = 0, None, None
        f.seek(start)

    def scan(self):
        truncated = False
        crc32c = _crc32c().value
        while True:
            avail = len(self.buf) - self.pos
            if avail < HEADER_BYTES and self._refill():
                continue
            if avail < HEADER_BYTES:
                truncated = avail > 0
                break
            length, length_crc = _LENGTH.unpack_from(self.buf, self.pos)
            if _length_crc(length) != length_crc:
                raise self._corrupt("bad length checksum")
            total = HEADER_BYTES + length + FOOTER_BYTES
            if avail < total:
                if total > self.chunk_bytes:
                    # Too big to buffer: stream it. False means the file ends inside it.
                    if not self._stream_record(length):
                        truncated = True
                        break
                    continue
                if self._refill():
                    continue
                truncated = True
                break
            data_start = self.pos + HEADER_BYTES
            data = self.buf[data_start:data_start + length]
            (data_crc,) = _U32.unpack_from(self.buf, data_start + length)
            if _mask(crc32c(data)) != data_crc:
                raise self._corrupt("bad data checksum")
            self._count(data)
            self.pos += total
        return self._result(truncated)

    def _refill(self):
        """Read one more chunk after the unconsumed bytes; False at the end of the range."""
        want = self.chunk_bytes if self.left is None else min(self.chunk_bytes, self.left)
        more = self.f.read(want) if want > 0 else b""
        if not more:
            return False
        if self.left is not None:
            self.left -= len(more)
        self.base += self.pos
        self.buf, self.pos = self.buf[self.pos:] + more, 0
        return True

    def _stream_record(self, length):
        """CRC a record bigger than a chunk piece by piece; False if it is incomplete."""
        data_start = self.pos + HEADER_BYTES
        head = self.buf[data_start:data_start + _EVENT_HEAD_BYTES]
        crc32c = _crc32c()
        crc = crc32c.value(self.buf[data_start:data_start + length])
        have = len(self.buf) - data_start  # data bytes seen so far (< length + footer)
        tail = b""  # bytes after the data: the footer and whatever follows
        while have < length + FOOTER_BYTES:
            want = self.chunk_bytes if self.left is None else min(self.chunk_bytes, self.left)
            piece = self.f.read(want) if want > 0 else b""
            if not piece:
                # Keep the record's offset; the caller reports a truncated tail.
                return False
            if self.left is not None:
                self.left -= len(piece)
            data_part = max(0, min(len(piece), length - have))
            crc = crc32c.extend(crc, piece[:data_part])
            if len(head) < _EVENT_HEAD_BYTES:
                head += piece[:data_part][:_EVENT_HEAD_BYTES - len(head)]
            tail += piece[data_part:]
            have += len(piece)
        # The footer may straddle the buffered part and the streamed pieces.
        seen_in_buf = len(self.buf) - data_start
        before = self.buf[data_start + length:] if seen_in_buf > length else b""
        footer = (before + tail)[:FOOTER_BYTES]
        if _mask(crc) != _U32.unpack(footer)[0]:
            raise self._corrupt("bad data checksum")
        self._count(head, complete=False)
        record_end = self.base + data_start + length + FOOTER_BYTES
        self.buf, self.pos = (before + tail)[FOOTER_BYTES:], 0
        self.base = record_end
        return True

    def _count(self, data, complete=True):
        self.records += 1
        wall, step = event_wall_time_and_step(data, complete)
        if wall is not None and (self.wall is None or wall > self.wall):
            self.wall = wall
        if step is not None and (self.step is None or step > self.step):
            self.step = step

    def _result(self, truncated):
        return ScanResult(self.start, self.base + self.pos, self.records, self.wall,
                          self.step, truncated)

    def _corrupt(self, reason):
        error = CorruptRecordError(self.path, self.base + self.pos, reason)
        error.scan = self._result(False)
        return error


def event_wall_time_and_step(data, complete=True):
    """`(wall_time, step)` of a serialized Event that carries a summary, else `(None, None)`.

    Only events with a `summary` (field 5) count: they are what TensorBoard plots, so the
    newest of them is what "TensorBoard has loaded the newest event" can be compared with
    (a trailing file_version or session_log event would never show up in a plot). A full
    `Event` parse decodes image and histogram summaries we never look at; this reads the
    protobuf wire format tag by tag, skipping field bodies, until fields 1, 2 and 5 are
    seen (writers emit them in that order). A summary event without `step` has step 0
    (proto3 default); one without `wall_time` (or a NaN one) has wall time None.
    Unparsable bytes give `(None, None)`: the record still counts. With `complete=False`,
    `data` is only the head of a huge record: what was found is kept.
    """
    # What every writer emits for a summary event: wall_time (tag 0x09), step (0x10), then
    # the summary (0x2a). Read directly, that is half the cost of a scan of small records
    # (scalars); anything else takes the general walk below, with the same answers.
    n = len(data)
    if n > 12 and data[0] == 0x09 and data[9] == 0x10:
        step, i = _varint_or_none(data, 10)
        if step is not None and i < n and data[i] == 0x2A:
            size, body = _varint_or_none(data, i + 1)
            if size is not None and (body + size <= n or not complete):
                wall = _F64.unpack_from(data, 1)[0]
                return (wall if math.isfinite(wall) else None,
                        step - (1 << 64) if step >= 1 << 63 else step)
    return _walk_event_fields(data, complete)


def _walk_event_fields(data, complete):
    """`event_wall_time_and_step` for any field order: the wire format tag by tag."""
    wall = step = None
    has_summary = False
    i, n = 0, len(data)
    try:
        while i < n and not (has_summary and wall is not None and step is not None):
            tag, i = _varint(data, i)
            field, wire = tag >> 3, tag & 7
            has_summary = has_summary or (field == 5 and wire == 2)  # its body is skipped
            if wire == 0:
                value, i = _varint(data, i)
                if field == 2:
                    step = value - (1 << 64) if value >= 1 << 63 else value
            elif wire == 1:
                if field == 1:
                    wall = _F64.unpack_from(data, i)[0]
                i += 8
            elif wire == 2:
                size, i = _varint(data, i)
                i += size
            elif wire == 5:
                i += 4
            else:
                raise ValueError("not a protobuf wire type")
        if i > n:
            raise ValueError("field runs past the end")
    except (IndexError, ValueError, struct.error):
        if complete:
            return None, None
    if not has_summary:
        return None, None
    if wall is not None and not math.isfinite(wall):
        wall = None  # NaN or inf would become invalid JSON in the status and the manifest
    return wall, 0 if step is None else step


def _varint(data, i):
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint_or_none(data, i):
    """`_varint`, or (None, i) where the bytes end or the varint is too long."""
    try:
        return _varint(data, i)
    except (IndexError, ValueError):
        return None, i
