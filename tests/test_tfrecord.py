"""The record scanner against bytes from TensorBoard's own RecordWriter."""

import io
import os

import pytest

from tb_rsync_plugin.errors import CorruptRecordError
from tb_rsync_plugin.publishing import tfrecord
from tb_rsync_plugin.publishing.tfrecord import (
    ScanResult, event_wall_time_and_step, record_bytes, scan_records,
)
from tests.events import (
    big_event_bytes, event_bytes, file_version_event, make_event, record_ends, scalar_bytes,
)

WALL0 = 1_700_000_000.0


def flip(data, offset):
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def test_whole_file_counts_every_record_and_the_newest_event():
    data = scalar_bytes(range(10), header=True)
    result = scan_records(io.BytesIO(data), 0)
    assert result == ScanResult(0, len(data), 11, WALL0 + 9, 9, False)


def test_path_and_file_object_give_the_same_answer(tmp_path):
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(scalar_bytes(range(4), header=True))
    with open(path, "rb") as f:
        assert scan_records(str(path), 0) == scan_records(f, 0) == scan_records(path, 0)


@pytest.mark.parametrize("chunk_bytes", [64, 100, 4 * 1024 * 1024])
def test_every_cut_of_the_last_record_waits(chunk_bytes):
    data = scalar_bytes(range(5), header=True)
    last_start = record_ends(data)[-2]
    for cut in range(last_start, len(data) + 1):
        result = scan_records(io.BytesIO(data[:cut]), 0, chunk_bytes=chunk_bytes)
        complete = cut == len(data)
        assert result.end_offset == (cut if complete else last_start), cut
        assert result.records == (6 if complete else 5)
        assert result.truncated == (last_start < cut < len(data))
        assert result.newest_step == (4 if complete else 3)


def test_end_offset_stops_the_scan_even_if_the_file_is_longer():
    data = scalar_bytes(range(5), header=True)
    ends = record_ends(data)
    result = scan_records(io.BytesIO(data), 0, ends[2] + 5)
    assert (result.end_offset, result.records, result.truncated) == (ends[2], 3, True)
    assert scan_records(io.BytesIO(data), ends[1], ends[1]) == \
        ScanResult(ends[1], ends[1], 0, None, None, False)


def test_start_offsets_mid_file_scan_only_the_rest():
    data = scalar_bytes(range(8), header=True)
    ends = record_ends(data)
    for i, start in enumerate(ends[:-1]):
        result = scan_records(io.BytesIO(data), start)
        # Record i+1 holds step i (record 0 is the file_version header).
        assert result == ScanResult(start, len(data), len(ends) - 1 - i, WALL0 + 7, 7, False)
    assert scan_records(io.BytesIO(data), len(data)) == \
        ScanResult(len(data), len(data), 0, None, None, False)


def test_newest_is_the_maximum_not_the_last():
    data = event_bytes([make_event(9, wall_time=WALL0 + 50), make_event(3, wall_time=WALL0 + 99)])
    result = scan_records(io.BytesIO(data), 0)
    assert (result.newest_wall_time, result.newest_step) == (WALL0 + 99, 9)


@pytest.mark.parametrize("where", ["length", "length_crc"])
def test_a_flipped_length_or_length_crc_is_corrupt(where):
    data = scalar_bytes(range(5), header=True)
    ends = record_ends(data)
    start = ends[2]
    offset = start + (0 if where == "length" else 9)
    with pytest.raises(CorruptRecordError) as info:
        scan_records(io.BytesIO(flip(data, offset)), 0)
    error = info.value
    assert (error.offset, error.reason) == (start, "bad length checksum")
    assert error.scan.end_offset == start and error.scan.records == 3
    assert error.scan.newest_step == 1
    assert f"byte {start}" in str(error)


@pytest.mark.parametrize("where", ["data", "data_crc"])
def test_a_flipped_data_byte_or_data_crc_is_corrupt(where):
    data = scalar_bytes(range(5), header=True)
    ends = record_ends(data)
    offset = ends[3] + 12 if where == "data" else ends[4] - 1
    with pytest.raises(CorruptRecordError) as info:
        scan_records(io.BytesIO(flip(data, offset)), ends[1])
    assert (info.value.offset, info.value.reason) == (ends[3], "bad data checksum")
    assert info.value.scan == ScanResult(ends[1], ends[3], 2, WALL0 + 2, 2, False)


def test_corrupt_length_crc_is_reported_before_the_data_arrives():
    # TensorBoard's fast loader gives up on a file with a bad length CRC; so must we,
    # rather than waiting forever for a record that a bad length says is 2**60 bytes long.
    data = flip(scalar_bytes(range(2)), 3)[:12]
    with pytest.raises(CorruptRecordError):
        scan_records(io.BytesIO(data), 0)


def test_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert scan_records(path, 0) == ScanResult(0, 0, 0, None, None, False)


def test_garbage_is_corrupt_and_a_short_prefix_of_anything_waits():
    garbage = os.urandom(1000)
    with pytest.raises(CorruptRecordError) as info:
        scan_records(io.BytesIO(garbage), 0)
    assert info.value.offset == 0
    assert scan_records(io.BytesIO(b"\x00" * 11), 0).truncated
    with pytest.raises(CorruptRecordError):
        scan_records(io.BytesIO(b"\x00" * 12), 0)  # zeros (a hole) are never a record


@pytest.mark.parametrize("chunk_bytes", [4096, 64 * 1024, 4 * 1024 * 1024])
def test_records_bigger_than_a_chunk_are_streamed(chunk_bytes):
    data = scalar_bytes(range(2), header=True) + big_event_bytes(5, 300_000) + \
        scalar_bytes([6])
    ends = record_ends(data)
    assert scan_records(io.BytesIO(data), 0, chunk_bytes=chunk_bytes) == \
        ScanResult(0, len(data), 5, WALL0 + 6, 6, False)
    for cut in (ends[2] + 5, ends[2] + 12, ends[2] + 20_000, ends[3] - 4, ends[3] - 1):
        result = scan_records(io.BytesIO(data[:cut]), 0, chunk_bytes=chunk_bytes)
        assert (result.end_offset, result.truncated) == (ends[2], True), cut
    result = scan_records(io.BytesIO(data[:ends[3]]), ends[2], chunk_bytes=chunk_bytes)
    assert (result.records, result.newest_step, result.newest_wall_time) == (1, 5, WALL0 + 5)
    for offset in (ends[2] + 100_000, ends[3] - 2):
        with pytest.raises(CorruptRecordError) as info:
            scan_records(io.BytesIO(flip(data, offset)), 0, chunk_bytes=chunk_bytes)
        assert (info.value.offset, info.value.reason) == (ends[2], "bad data checksum")


def test_unparsable_payloads_count_without_a_time():
    data = record_bytes(b"\xff\xff\xff") + record_bytes(b"") + record_bytes(b"\x0a\x05ab")
    result = scan_records(io.BytesIO(data), 0)
    # b"" is a valid empty Event, but without a summary it is nothing TensorBoard plots.
    assert (result.records, result.newest_wall_time, result.newest_step) == (3, None, None)


def test_only_summary_events_count_as_newest():
    """A trailing file_version or session-log event must not look newer than the plots."""
    data = scalar_bytes([1, 2], header=True) + event_bytes([file_version_event(wall_time=2e9)])
    result = scan_records(io.BytesIO(data), 0)
    assert result.records == 4
    assert (result.newest_wall_time, result.newest_step) == (1_700_000_002.0, 2)


def test_event_field_parser():
    assert event_wall_time_and_step(make_event(-5, wall_time=12.5).SerializeToString()) == \
        (12.5, -5)
    # No summary: nothing TensorBoard plots, so it never counts as the newest event.
    assert event_wall_time_and_step(file_version_event(7.0).SerializeToString()) == (None, None)
    big = 2**40
    assert event_wall_time_and_step(make_event(big, wall_time=1.0).SerializeToString()) == \
        (1.0, big)
    # Fields in an unusual order (summary first) still parse.
    event = make_event(3, wall_time=2.0)
    reordered = event.summary.SerializeToString()
    payload = bytes([0x2A, len(reordered)]) + reordered + bytes([0x10, 3]) + \
        b"\x09" + event.SerializeToString()[1:9]
    assert event_wall_time_and_step(payload) == (2.0, 3)
    assert event_wall_time_and_step(b"\x09\x00") == (None, None)
    # A non-finite time is no time: it would be invalid JSON in the status (Infinity).
    for bad in (float("inf"), float("-inf"), float("nan")):
        assert event_wall_time_and_step(make_event(4, wall_time=bad).SerializeToString()) == \
            (None, 4)


def test_the_fast_path_for_summary_events_answers_as_the_general_walk():
    """Summary events as writers emit them take a direct read; every cut and every flipped
    byte of them (bad steps, summary lengths past the end, other tags) answers as the
    tag-by-tag walk does, complete or not."""
    events = [make_event(step, wall_time=wall).SerializeToString()
              for step, wall in ((0, 1.0), (3, 2.5), (300, 1.7e9), (2**40, 1.0), (-5, 12.5),
                                 (7, float("nan")), (8, float("inf")))]
    events.append(file_version_event(7.0).SerializeToString())
    checked = 0
    for event in events:
        variants = [event[:cut] for cut in range(len(event) + 1)]
        variants += [flip(event, i) for i in range(len(event))]
        variants += [event[:10] + bytes([0xFF] * 11) + event[10:]]  # a step varint too long
        for data in variants:
            for complete in (True, False):
                fast = event_wall_time_and_step(data, complete)
                walked = tfrecord._walk_event_fields(data, complete)
                assert repr(fast) == repr(walked), (data, complete)  # repr: nan == nan
                checked += 1
    assert checked > 800


def test_matches_tensorboards_own_reader(tmp_path):
    from tests.events import loaded_events
    path = tmp_path / "events.out.tfevents.1"
    data = scalar_bytes(range(20), header=True) + big_event_bytes(20, 5000)
    path.write_bytes(data[:-7])
    assert scan_records(path, 0).records == len(loaded_events(str(path))) == 21


class CountingReader(io.FileIO):
    """A real file that counts the bytes read through it."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_cost_follows_the_scanned_bytes_not_the_file_size(tmp_path):
    path = tmp_path / "events.out.tfevents.big"
    head = scalar_bytes(range(1000), header=True)
    tail = scalar_bytes(range(1000, 1010))
    with open(path, "wb") as f:
        f.write(head)
        f.write(tail)
    with CountingReader(str(path), "rb") as f:
        result = scan_records(f, len(head), chunk_bytes=4096)
    assert result.records == 10
    assert f.bytes_read == len(tail)
