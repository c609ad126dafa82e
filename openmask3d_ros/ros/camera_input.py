"""Camera messages taken as their serialized bytes, on a subscriber node and thread of their own.

At 30 Hz only every ``frame_step``-th synchronised frame can become a keyframe, so the node pays
for the others as little as it can:

- the colour, depth and camera_info subscriptions take messages serialized (``raw=True``);
  ``SerializedMessage`` reads what matching and counting need straight from the CDR bytes (the
  header's stamp and frame_id, and an Image's encoding), and only a keyframe candidate is
  deserialised (``materialize``, on the recorder's worker thread) and then decoded;
- those subscriptions, and the pose ones (/tf or a pose topic, 30 Hz too), live on a small node
  of their own (``InputNode``: no parameter services, no global ROS arguments; named
  ``<node>_inputs`` in the node's namespace), spun by a single-threaded executor on its own
  thread. rclpy's executors rebuild their wait set in Python from every entity of their nodes
  each time they wake, and the multi-threaded one wakes several times per message (when it
  hands a message to a worker, when the worker has taken it, when its callback ends, and,
  measured here, hundreds of times a second with nothing ready). The lifecycle node has ~50
  entities (parameter and lifecycle services, publishers' and subscriptions' event handlers),
  so on its executor the wake-ups of a 30 Hz stream cost far more than the messages
  (benchmarks/RESULTS.md, "Recording a 30 Hz stream").

CDR layout (XCDR1, and plain XCDR2 for these final types, whose fields up to the data array are
at most 4 bytes wide): a 4-byte encapsulation header (0x00 0x00 big-endian, 0x00 0x01
little-endian; 0x00 0x06 / 0x00 0x07 the XCDR2 equivalents), then std_msgs/Header, the first
field of Image, CompressedImage and CameraInfo: ``int32 sec, uint32 nanosec, string frame_id``
(uint32 length including the terminating NUL, then the characters); an Image goes on with
``uint32 height, uint32 width, string encoding``, each 4-aligned relative to the end of the
encapsulation header. Any other encapsulation (parameter lists, delimited XCDR2) is deserialised
in full, so nothing depends on the layout being one of these.
"""
from __future__ import annotations

import struct
import threading

from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message

# encapsulation identifier (big-endian uint16 at bytes 0-1) -> struct byte order
_BYTE_ORDER = {0x0000: ">", 0x0001: "<", 0x0006: ">", 0x0007: "<"}
_ORIGIN = 4                 # CDR alignment is relative to the end of the encapsulation header
_STAMP = {o: struct.Struct(o + "iII") for o in "<>"}     # sec, nanosec, len(frame_id) + 1
_UINT32 = {o: struct.Struct(o + "I") for o in "<>"}
_MAX_STRING = 1 << 16       # longer frame_id/encoding strings are corrupt lengths


class Header:
    """The ``header`` of a serialized message: ``stamp`` (builtin_interfaces/Time, as message
    filters expect it) and ``frame_id``."""

    __slots__ = ("stamp", "frame_id")

    def __init__(self, stamp: Time, frame_id: str):
        self.stamp, self.frame_id = stamp, frame_id


class SerializedMessage:
    """A message as its CDR bytes (``data``) and type (``msg_type``), with the fields read
    without deserialising it: ``header`` and, for a sensor_msgs/Image, ``encoding``.

    Raises ValueError when the bytes are not in a layout read here (see the module docstring);
    ``wrap`` then deserialises the message instead."""

    __slots__ = ("data", "msg_type", "header", "encoding")

    def __init__(self, data: bytes, msg_type: type):
        self.data, self.msg_type = data, msg_type
        order, sec, nanosec, frame_id, end = read_header(data)
        self.header = Header(Time(sec=sec, nanosec=nanosec), frame_id)
        self.encoding = (_read_image_encoding(data, order, end)
                         if msg_type.__name__ == "Image" else None)

    def deserialize(self):
        """The full message (deserialised now; the caller keeps it if needed again)."""
        return deserialize_message(self.data, self.msg_type)

    def __repr__(self) -> str:
        return (f"SerializedMessage({self.msg_type.__name__}, {len(self.data)} bytes, stamp "
                f"{self.header.stamp.sec}.{self.header.stamp.nanosec:09d})")


def read_header(data: bytes) -> tuple[str, int, int, str, int]:
    """(byte order, sec, nanosec, frame_id, offset after frame_id) of a serialized message
    whose first field is a std_msgs/Header; ValueError when the layout is not one read here."""
    if len(data) < _ORIGIN + 12:
        raise ValueError(f"{len(data)} bytes are too few for a CDR message with a header")
    kind = (data[0] << 8) | data[1]
    order = _BYTE_ORDER.get(kind)
    if order is None:
        raise ValueError(f"CDR encapsulation 0x{kind:04x} is not read here")
    sec, nanosec, n = _STAMP[order].unpack_from(data, _ORIGIN)
    start = _ORIGIN + 12
    frame_id = _read_chars(data, start, n, "frame_id")
    return order, sec, nanosec, frame_id, start + n


def header_stamp_ns(data: bytes) -> int:
    """The header stamp of a serialized message (nanoseconds); ValueError as ``read_header``."""
    _, sec, nanosec, _, _ = read_header(data)
    return sec * 1_000_000_000 + nanosec


def _read_chars(data: bytes, start: int, n: int, what: str) -> str:
    if n == 0:          # an empty string is usually sent as length 1 (the NUL), but 0 is valid
        return ""
    end = start + n
    if n > _MAX_STRING or end > len(data) or data[end - 1] != 0:
        raise ValueError(f"{what}: string of {n} bytes at offset {start} does not fit the "
                         f"message ({len(data)} bytes)")
    return bytes(data[start:end - 1]).decode("utf-8", "replace")


def _align4(offset: int) -> int:
    return _ORIGIN + ((offset - _ORIGIN + 3) & ~3)


def _read_image_encoding(data: bytes, order: str, offset: int) -> str:
    """sensor_msgs/Image's encoding: after the header, uint32 height and width."""
    at = _align4(offset) + 8
    if at + 4 > len(data):
        raise ValueError(f"Image of {len(data)} bytes ends before its encoding")
    (n,) = _UINT32[order].unpack_from(data, at)
    return _read_chars(data, at + 4, n, "encoding")


def wrap(data: bytes, msg_type: type):
    """A SerializedMessage of ``data``, or the deserialised message when its layout is not one
    read here (the same fields either way: ``header``, and ``encoding`` for an Image)."""
    try:
        return SerializedMessage(data, msg_type)
    except ValueError:
        return deserialize_message(data, msg_type)


def materialize(msg):
    """The message itself: deserialised when it is a SerializedMessage."""
    return msg.deserialize() if isinstance(msg, SerializedMessage) else msg


def message_type(msg) -> type:
    """The message class of a message or SerializedMessage."""
    return msg.msg_type if isinstance(msg, SerializedMessage) else type(msg)


class InputNode:
    """A plain node beside ``node`` for the camera and pose subscriptions, spun on its own thread.

    Same context and namespace as ``node``. Global ROS arguments do not reach it (a
    ``__node:=`` remapping would give it ``node``'s name, ``use_sim_time`` a /clock subscription
    it has no use for), so topics must be given resolved by ``node`` (``node.resolve_topic_name``:
    its remappings apply), except ``remap_like_node`` names (/tf, /tf_static), which tf listeners
    use as they are: they get a local remapping to what ``node`` resolves them to.
    ``start()`` starts the thread, ``stop()`` ends it (the callback under way finishes first),
    ``destroy()`` also destroys the node."""

    def __init__(self, node, suffix: str = "_inputs",
                 remap_like_node: tuple[str, ...] = ("/tf", "/tf_static")):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self._log = node.get_logger()
        rules = [arg for name in remap_like_node
                 for arg in ("-r", f"{name}:={node.resolve_topic_name(name)}")]
        self.node = rclpy.create_node(node.get_name() + suffix, namespace=node.get_namespace(),
                                      context=node.context, use_global_arguments=False,
                                      cli_args=["--ros-args", *rules] if rules else None,
                                      start_parameter_services=False)
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="openmask3d-inputs", daemon=True)

    def start(self) -> None:
        """Start taking messages (once the subscriptions exist)."""
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException, ShutdownException
        while not self._stop.is_set() and self.node.context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.5)
            except (ExternalShutdownException, ShutdownException):
                return
            except Exception as exc:   # a callback failed: say so and keep taking messages
                if self._stop.is_set():
                    return
                self._log.error(f"input callback failed: {exc!r}", throttle_duration_sec=5.0)

    def stop(self) -> None:
        """Stop spinning: no callback of this node runs after it returns."""
        if not self._stop.is_set():
            self._stop.set()
            self._executor.shutdown(timeout_sec=5.0)
            if self._thread.is_alive():
                self._thread.join(5.0)

    def destroy(self) -> None:
        """``stop()`` and destroy the node (and so its subscriptions)."""
        self.stop()
        self.node.destroy_node()
