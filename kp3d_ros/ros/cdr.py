"""Reading serialized (plain CDR) messages straight from their bytes: a header stamp, or a whole PointCloud2
without rclpy's deserialization, which copies the point bytes into a Python array with the GIL held
(about 5 ms for a 2.4 MB cloud on this project's CPU). rclpy's raw take still copies the bytes it receives."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from std_msgs.msg import Header

_ENCAPSULATION = {b"\x00\x00": ">", b"\x00\x01": "<"}  # plain CDR (XCDR1), big / little endian: what rmw_fastrtps sends
_XCDR2 = {bytes([0, k]) for k in range(6, 12)}  # XCDR2 ids: a DHEADER before sequences of structs, not read here
ENCAPSULATION_BYTES = 4  # alignment counts from the end of the encapsulation header


def _byte_order(data: bytes | memoryview) -> str:
    kind = bytes(data[:2])
    if kind in _XCDR2:
        raise ValueError("XCDR2 encapsulation is not supported (plain CDR only, as rmw_fastrtps sends)")
    order = _ENCAPSULATION.get(kind)
    if order is None:
        raise ValueError(f"not plain CDR: encapsulation {kind.hex()}")
    return order


def header_stamp_ns(data: bytes) -> int:
    """header.stamp (ns) of a message whose first field is a std_msgs/Header (PointCloud2, Image, ...).

    The stamp's sec (int32) and nanosec (uint32) follow the 4-byte encapsulation header. ValueError for
    bytes too short or of an unknown encapsulation.
    """
    if len(data) < 12:
        raise ValueError("not a CDR message with a std_msgs/Header first")
    sec, nanosec = struct.unpack_from(_byte_order(data) + "iI", data, ENCAPSULATION_BYTES)
    return sec * 1_000_000_000 + nanosec


class _CdrReader:
    """Sequential reads of CDR primitives, aligned to their size; ValueError past the end."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.view = memoryview(data).cast("B")
        self.order = _byte_order(self.view)
        self.pos = ENCAPSULATION_BYTES

    def _take(self, size: int, align: int) -> int:
        self.pos += -(self.pos - ENCAPSULATION_BYTES) % align
        start, self.pos = self.pos, self.pos + size
        if self.pos > len(self.view):
            raise ValueError(f"CDR message ends at byte {len(self.view)}, a field needs {self.pos}")
        return start

    def uint32(self) -> int:
        return struct.unpack_from(self.order + "I", self.view, self._take(4, 4))[0]

    def int32(self) -> int:
        return struct.unpack_from(self.order + "i", self.view, self._take(4, 4))[0]

    def uint8(self) -> int:
        return self.view[self._take(1, 1)]

    def string(self) -> str:
        size = self.uint32()  # with the terminating NUL
        start = self._take(size, 1)
        return bytes(self.view[start:start + max(size - 1, 0)]).decode("utf-8", errors="replace")

    def octets(self) -> memoryview:
        size = self.uint32()
        start = self._take(size, 1)
        return self.view[start:start + size]


class CloudField(NamedTuple):
    """A sensor_msgs/PointField's values (read like one: .name, .offset, .datatype, .count)."""

    name: str
    offset: int
    datatype: int
    count: int


@dataclass
class RawCloud:
    """A PointCloud2 read from its CDR bytes; ``data`` is a read-only view into them (no copy): arrays made from
    it are read-only too, so anything that changes points must copy them first."""

    header: Header
    height: int
    width: int
    fields: list[CloudField]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: memoryview
    is_dense: bool


def read_pointcloud2(data: bytes | memoryview) -> RawCloud:
    """The PointCloud2 in these CDR bytes (sensor_msgs/msg/PointCloud2's field order); ValueError if they are
    not one (wrong encapsulation, cut short)."""
    reader = _CdrReader(data)
    header = Header(frame_id="")
    header.stamp.sec = reader.int32()
    header.stamp.nanosec = reader.uint32()
    header.frame_id = reader.string()
    height, width = reader.uint32(), reader.uint32()
    count = reader.uint32()
    if count > len(reader.view) // 13:  # a PointField takes at least 13 bytes (name of one char, offset, type, count)
        raise ValueError(f"{count} point fields cannot fit in {len(reader.view)} bytes")
    fields = []
    for _ in range(count):
        name = reader.string()
        offset = reader.uint32()
        datatype = reader.uint8()
        fields.append(CloudField(name, offset, datatype, reader.uint32()))
    is_bigendian = bool(reader.uint8())
    point_step, row_step = reader.uint32(), reader.uint32()
    points = reader.octets()
    is_dense = bool(reader.uint8())
    return RawCloud(header, height, width, fields, is_bigendian, point_step, row_step, points, is_dense)


class CdrWriter:
    """Plain little-endian CDR (XCDR1, as rmw_fastrtps sends) built field by field: primitives aligned to their
    size from the end of the encapsulation header, strings with their NUL, sequences with a uint32 count."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x00\x01\x00\x00")

    def _align(self, size: int) -> None:
        self.out += bytes(-(len(self.out) - ENCAPSULATION_BYTES) % size)

    def uint32(self, value: int) -> None:
        self._align(4)
        self.out += struct.pack("<I", value)

    def int32(self, value: int) -> None:
        self._align(4)
        self.out += struct.pack("<i", value)

    def boolean(self, value: bool) -> None:
        self.out.append(1 if value else 0)

    def string(self, value: str) -> None:
        data = value.encode("utf-8")
        self.uint32(len(data) + 1)
        self.out += data + b"\x00"

    def float64s(self, values: bytes) -> None:
        """Packed little-endian float64 values (already in the message's field order)."""
        self._align(8)
        self.out += values

    def float32s(self, values: bytes) -> None:
        self._align(4)
        self.out += values

    def header(self, sec: int, nanosec: int, frame_id: str) -> None:
        self.int32(sec)
        self.uint32(nanosec)
        self.string(frame_id)

    def bytes(self) -> bytes:
        return bytes(self.out)
