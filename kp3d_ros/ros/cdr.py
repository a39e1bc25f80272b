"""Reading a header stamp straight from serialized (CDR) message bytes, without deserializing."""

from __future__ import annotations

import struct

_ENCAPSULATION = {b"\x00\x00": ">", b"\x00\x01": "<", b"\x00\x02": ">", b"\x00\x03": "<"}  # CDR / PL_CDR, BE / LE


def header_stamp_ns(data: bytes) -> int:
    """header.stamp (ns) of a message whose first field is a std_msgs/Header (PointCloud2, Image, ...).

    The stamp's sec (int32) and nanosec (uint32) follow the 4-byte encapsulation header. ValueError for
    bytes too short or of an unknown encapsulation.
    """
    order = _ENCAPSULATION.get(bytes(data[:2]))
    if order is None or len(data) < 12:
        raise ValueError("not a CDR message with a std_msgs/Header first")
    sec, nanosec = struct.unpack_from(order + "iI", data, 4)
    return sec * 1_000_000_000 + nanosec
