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


class CloudError(ValueError):
    """The cloud's layout or data is malformed (missing fields, wrong sizes, truncated data)."""


def _as_bytes_view(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def layout_dtype(fields: Sequence[Field], point_step: int, is_bigendian: bool,
                 only: Sequence[str] | None = None) -> np.dtype:
    """A structured dtype of itemsize point_step with the given fields (or just those named in only)."""
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for name, offset, datatype, count in fields:
        if only is not None and name not in only:
            continue
        if datatype not in DATATYPE_TO_DTYPE:
            raise CloudError(f"field '{name}' has unknown PointField datatype {datatype}")
        if name in names:
            raise CloudError(f"field '{name}' appears twice")
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
    if width < 0 or height < 0:
        raise CloudError(f"negative cloud size width={width} height={height}")
    if point_step <= 0 and width * height > 0:
        raise CloudError(f"point_step must be positive, got {point_step}")
    if height > 1 and row_step < width * point_step:
        raise CloudError(f"row_step {row_step} is below width*point_step = {width * point_step}")
    rows = max(height, 1)
    needed = (rows - 1) * max(row_step, width * point_step) + width * point_step if width * height else 0
    if num_bytes < needed:
        raise CloudError(
            f"data has {num_bytes} bytes, the layout needs {needed} "
            f"(width {width} x height {height} x point_step {point_step}, row_step {row_step})")


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
    _check_sizes(raw.size, point_step, row_step, width, height)
    dtype = layout_dtype(fields, point_step, is_bigendian)
    return _strided(raw, dtype, point_step, row_step, width, height)


def xyz_from_layout(data: bytes | bytearray | memoryview | np.ndarray, fields: Sequence[Field], point_step: int,
                    row_step: int, width: int, height: int, is_bigendian: bool) -> tuple[np.ndarray, int]:
    """The finite points as (M, 3) float32 (native byte order) and the number of non-finite ones dropped.

    Needs float32 fields x, y, z; any other fields and padding are ignored. Raises CloudError on a
    malformed layout. Copies once (gathering xyz and dropping NaN/inf rows); byte-swaps only for
    big-endian clouds.
    """
    by_name = {f[0]: f for f in fields}
    missing = [n for n in ("x", "y", "z") if n not in by_name]
    if missing:
        raise CloudError(f"cloud has no field(s) {', '.join(missing)}; fields are {sorted(by_name)}")
    for name in ("x", "y", "z"):
        _, _, datatype, count = by_name[name]
        if datatype != FLOAT32 or max(int(count), 1) != 1:
            raise CloudError(f"field '{name}' must be a single float32 (datatype 7), got datatype {datatype} "
                             f"count {count}")
    raw = _as_bytes_view(data)
    _check_sizes(raw.size, point_step, row_step, width, height)
    if width * height == 0:
        return np.zeros((0, 3), dtype=np.float32), 0
    order = ">" if is_bigendian else "<"
    ox, oy, oz = (int(by_name[n][1]) for n in ("x", "y", "z"))
    if oy == ox + 4 and oz == ox + 8 and ox + 12 <= point_step:
        # x, y, z adjacent: one strided (rows, width, 3) float view, no per-field gathering.
        vec = np.dtype((np.dtype(order + "f4"), (3,)))
        dtype = np.dtype({"names": ["xyz"], "formats": [vec], "offsets": [ox], "itemsize": point_step})
        view = _strided(raw, dtype, point_step, row_step, width, height)["xyz"].reshape(-1, 3)
        xyz = np.ascontiguousarray(view, dtype=np.float32)
    else:
        view = _strided(raw, layout_dtype(fields, point_step, is_bigendian, only=("x", "y", "z")), point_step,
                        row_step, width, height).reshape(-1)
        xyz = np.empty((view.shape[0], 3), dtype=np.float32)
        xyz[:, 0], xyz[:, 1], xyz[:, 2] = view["x"], view["y"], view["z"]
    if np.isfinite(xyz.reshape(-1)).all():  # the common case, checked in one flat pass
        return xyz, 0
    finite = np.isfinite(xyz[:, 0]) & np.isfinite(xyz[:, 1]) & np.isfinite(xyz[:, 2])
    dropped = int(finite.size - np.count_nonzero(finite))
    return xyz[finite], dropped

