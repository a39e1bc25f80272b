"""PointCloud2 field layouts to numpy, without ROS: validation, zero-copy structured views, xyz.

A layout is what a sensor_msgs/PointCloud2 carries besides its bytes: fields as
(name, offset, datatype, count) tuples, point_step, row_step, width, height and is_bigendian.
Both the rclpy message converter (kp3d_ros.ros.pointcloud2) and the bag reader (kp3d_ros.core.bagio)
go through this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kp3d_ros.layouts import DATATYPE_TO_DTYPE, FLOAT32

Field = tuple[str, int, int, int]  # name, offset, PointField datatype, count


# Every reason a cloud is refused for (the node counts each as malformed_<reason>; README "Bad input").
MALFORMED_REASONS = ("missing_fields", "wrong_field_type", "duplicate_field", "bad_row_step", "truncated_data",
                     "excess_data", "byte_order_mismatch", "bad_layout", "bad_serialization")
# A LiDAR point's largest coordinate lies in this range (m); byte-swapped floats almost never do.
PLAUSIBLE_M = (1e-3, 1e5)
BYTE_ORDER_SAMPLE = 256  # points looked at for the byte-order check


class CloudError(ValueError):
    """The cloud's layout or data is malformed; ``reason`` is one of MALFORMED_REASONS."""

    def __init__(self, message: str, reason: str = "bad_layout") -> None:
        super().__init__(message)
        self.reason = reason


def _as_bytes_view(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _check_unique(fields: Sequence[Field]) -> None:
    seen: set[str] = set()
    for name, offset, _, _ in fields:
        if name in seen:
            raise CloudError(f"field '{name}' appears twice (again at offset {offset})", "duplicate_field")
        seen.add(name)


def layout_dtype(fields: Sequence[Field], point_step: int, is_bigendian: bool,
                 only: Sequence[str] | None = None) -> np.dtype:
    """A structured dtype of itemsize point_step with the given fields (or just those named in only)."""
    _check_unique(fields)
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for name, offset, datatype, count in fields:
        if only is not None and name not in only:
            continue
        if datatype not in DATATYPE_TO_DTYPE:
            raise CloudError(f"field '{name}' has unknown PointField datatype {datatype}")
        base = DATATYPE_TO_DTYPE[datatype].newbyteorder(order)
        count = max(int(count), 1)
        if offset < 0 or offset + base.itemsize * count > point_step:
            raise CloudError(
                f"field '{name}' (offset {offset}, {base.itemsize * count} bytes) does not fit in "
                f"point_step {point_step}")
        names.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(int(offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(point_step)})


def _check_sizes(num_bytes: int, point_step: int, row_step: int, width: int, height: int) -> None:
    """The sizes agree: row_step >= width * point_step, and data is exactly row_step * height bytes."""
    if width < 0 or height < 0:
        raise CloudError(f"negative cloud size width={width} height={height}")
    if width * height == 0:
        if num_bytes:
            raise CloudError(f"a cloud of 0 points (width {width} x height {height}) carries {num_bytes} bytes",
                             "excess_data")
        return
    if point_step <= 0:
        raise CloudError(f"point_step must be positive, got {point_step}")
    if row_step < width * point_step:
        raise CloudError(f"row_step {row_step} is below width*point_step = {width * point_step}", "bad_row_step")
    needed = height * row_step
    if num_bytes != needed:
        raise CloudError(
            f"data has {num_bytes} bytes, the layout needs {needed} (height {height} x row_step {row_step}; "
            f"width {width} x point_step {point_step})", "truncated_data" if num_bytes < needed else "excess_data")


def _strided(buffer: np.ndarray, dtype: np.dtype, point_step: int, row_step: int, width: int,
             height: int) -> np.ndarray:
    """A view of (width*height,) points, or (height, width) when rows carry padding."""
    if height <= 1 or row_step == width * point_step:
        count = width * max(height, 1) if height else 0
        return np.ndarray((count,), dtype=dtype, buffer=buffer, strides=(point_step,))
    return np.ndarray((height, width), dtype=dtype, buffer=buffer, strides=(row_step, point_step))


def structured_view(data: bytes | bytearray | memoryview | np.ndarray, fields: Sequence[Field], point_step: int,
                    row_step: int, width: int, height: int, is_bigendian: bool) -> np.ndarray:
    """A zero-copy structured view of the cloud's points with every field.

    Flat (width*height,) when rows are packed (row_step == width*point_step, or one row); a strided
    (height, width) view when rows end in padding. Fields keep the message's byte order.
    """
    raw = _as_bytes_view(data)
    dtype = layout_dtype(fields, point_step, is_bigendian)
    _check_sizes(raw.size, point_step, row_step, width, height)
    return _strided(raw, dtype, point_step, row_step, width, height)


def xyz_from_layout(data: bytes | bytearray | memoryview | np.ndarray, fields: Sequence[Field], point_step: int,
                    row_step: int, width: int, height: int, is_bigendian: bool) -> tuple[np.ndarray, int]:
    """The finite points as (M, 3) float32 (native byte order) and the number of non-finite ones dropped.

    Needs float32 fields x, y, z; any other fields and padding are ignored. Raises CloudError (with its
    reason) on a malformed layout or size, or when the data contradicts is_bigendian. Copies once
    (gathering xyz and dropping NaN/inf rows); byte-swaps only for big-endian clouds.
    """
    _check_unique(fields)
    by_name = {f[0]: f for f in fields}
    missing = [n for n in ("x", "y", "z") if n not in by_name]
    if missing:
        raise CloudError(f"cloud has no field(s) {', '.join(missing)}; fields are {sorted(by_name)}",
                         "missing_fields")
    for name in ("x", "y", "z"):
        _, _, datatype, count = by_name[name]
        if datatype != FLOAT32 or max(int(count), 1) != 1:
            raise CloudError(f"field '{name}' must be a single float32 (datatype 7), got datatype {datatype} "
                             f"count {count}", "wrong_field_type")
    raw = _as_bytes_view(data)
    if width <= 0 or height <= 0:  # no points (or a negative size): nothing to decode, no data allowed
        _check_sizes(raw.size, point_step, row_step, width, height)
        return np.zeros((0, 3), dtype=np.float32), 0
    xyz_dtype = layout_dtype(fields, point_step, is_bigendian, only=("x", "y", "z"))  # the fields fit
    _check_sizes(raw.size, point_step, row_step, width, height)
    order = ">" if is_bigendian else "<"
    ox, oy, oz = (int(by_name[n][1]) for n in ("x", "y", "z"))
    if oy == ox + 4 and oz == ox + 8:
        # x, y, z adjacent: one strided (rows, width, 3) float view, no per-field gathering.
        vec = np.dtype((np.dtype(order + "f4"), (3,)))
        dtype = np.dtype({"names": ["xyz"], "formats": [vec], "offsets": [ox], "itemsize": point_step})
        view = _strided(raw, dtype, point_step, row_step, width, height)["xyz"].reshape(-1, 3)
        xyz = np.ascontiguousarray(view, dtype=np.float32)
    else:
        view = _strided(raw, xyz_dtype, point_step, row_step, width, height).reshape(-1)
        xyz = np.empty((view.shape[0], 3), dtype=np.float32)
        xyz[:, 0], xyz[:, 1], xyz[:, 2] = view["x"], view["y"], view["z"]
    dropped = 0
    if not np.isfinite(xyz.reshape(-1)).all():  # the common case is all finite, checked in one flat pass
        finite = np.isfinite(xyz[:, 0]) & np.isfinite(xyz[:, 1]) & np.isfinite(xyz[:, 2])
        dropped = int(finite.size - np.count_nonzero(finite))
        xyz = np.compress(finite, xyz, axis=0)  # boolean row indexing is a few times slower
    _check_byte_order(xyz, is_bigendian)
    return xyz, dropped


def _plausible_share(xyz: np.ndarray) -> tuple[float, int]:
    """The share of non-zero points whose largest |coordinate| lies in PLAUSIBLE_M, and how many were non-zero."""
    with np.errstate(invalid="ignore", over="ignore"):
        largest = np.abs(xyz).max(axis=1)
    nonzero = largest[largest > 0]  # drivers mark missing returns as (0, 0, 0): those say nothing
    if nonzero.size == 0:
        return 1.0, 0
    inside = (nonzero >= PLAUSIBLE_M[0]) & (nonzero <= PLAUSIBLE_M[1])
    return float(np.count_nonzero(inside)) / nonzero.size, int(nonzero.size)


def _check_byte_order(xyz: np.ndarray, is_bigendian: bool) -> None:
    """CloudError byte_order_mismatch when the flag contradicts the data.

    On up to BYTE_ORDER_SAMPLE evenly spaced points: fewer than half have plausible coordinates as
    declared, and at least 90 % do with the bytes read in the other order.
    """
    if xyz.shape[0] == 0:
        return
    sample = xyz[np.linspace(0, xyz.shape[0] - 1, min(xyz.shape[0], BYTE_ORDER_SAMPLE)).astype(np.int64)]
    declared, count = _plausible_share(sample)
    if declared >= 0.5 or count < 8:
        return
    swapped, _ = _plausible_share(sample.byteswap())
    if swapped >= 0.9:
        actual, flag = ("little", "big") if is_bigendian else ("big", "little")
        raise CloudError(f"is_bigendian says {flag}-endian, but the coordinates read as {actual}-endian floats "
                         f"({100 * swapped:.0f} % of sampled points plausible, {100 * declared:.0f} % as declared)",
                         "byte_order_mismatch")
