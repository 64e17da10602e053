"""Event files for tests, written with TensorBoard's own RecordWriter (no TensorFlow).

`event_bytes()` returns the exact bytes a writer appends for some scalar steps, so tests can
cut them at any offset. `append_scalars()` grows a file the way a training job does.
"""

import io
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


def make_event(step, value=None, wall_time=None, tag="loss"):
    """A scalar event in the legacy `simple_value` form every loader understands."""
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(step if value is None else value))]
    )
    return event_pb2.Event(
        wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary
    )


def file_version_event(wall_time=None):
    return event_pb2.Event(
        wall_time=time.time() if wall_time is None else wall_time, file_version="brain.Event:2"
    )


def event_bytes(events):
    """Serialize events as TFRecords with TensorBoard's RecordWriter."""
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for event in events:
        writer.write(event.SerializeToString())
    return buffer.getvalue()


def scalar_bytes(steps, tag="loss", wall_time0=1_700_000_000.0, header=False):
    """Records for `steps` (wall time = wall_time0 + step), optionally led by a file_version."""
    events = [file_version_event(wall_time0)] if header else []
    events += [make_event(s, wall_time=wall_time0 + s, tag=tag) for s in steps]
    return event_bytes(events)


def append_scalars(path, steps, tag="loss", wall_time0=1_700_000_000.0):
    """Append scalar records to an event file (creating it with a header), like a trainer."""
    import os
    header = not os.path.exists(path) or os.path.getsize(path) == 0
    data = scalar_bytes(steps, tag=tag, wall_time0=wall_time0, header=header)
    with open(path, "ab") as f:
        f.write(data)
    return data


def event_file_name(host="node1", stamp=1700000000, pid=1234):
    return f"events.out.tfevents.{stamp}.{host}.{pid}.0"


def loaded_events(path):
    """Every event TensorBoard's own EventFileLoader reads from `path`, serialized.

    Uses the loader TensorBoard falls back to without TensorFlow; it stops at a truncated
    record exactly like a live TensorBoard waiting for the rest of it.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    return [event.SerializeToString() for event in EventFileLoader(path).Load()]


def record_ends(data):
    """Offsets where TFRecords end in `data` (framing only, no CRC check): the aligned cuts."""
    import struct
    ends, offset = [], 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        end = offset + 12 + length + 4
        if end > len(data):
            break
        ends.append(end)
        offset = end
    return ends


def big_event_bytes(step, size, wall_time0=1_700_000_000.0):
    """One record of about `size` bytes (a text-like tensor), for chunk-straddling tests."""
    from tensorboard.compat.proto import tensor_pb2
    value = summary_pb2.Summary.Value(
        tag="blob", tensor=tensor_pb2.TensorProto(dtype=7, string_val=[b"x" * size]))
    return event_bytes([event_pb2.Event(wall_time=wall_time0 + step, step=step,
                                        summary=summary_pb2.Summary(value=[value]))])


def text_bytes(steps, tag="notes", wall_time0=1_700_000_000.0, plugin_name="text"):
    """Records of text summaries (the text plugin's tensor form), for runs without scalars;
    with another `plugin_name`, string tensors of that plugin (a custom dashboard's data)."""
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    events = [file_version_event(wall_time0)]
    for step in steps:
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                        string_val=[f"step {step}".encode()])
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name),
            data_class=summary_pb2.DATA_CLASS_TENSOR)
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
        events.append(event_pb2.Event(wall_time=wall_time0 + step, step=step,
                                      summary=summary_pb2.Summary(value=[value])))
    return event_bytes(events)
