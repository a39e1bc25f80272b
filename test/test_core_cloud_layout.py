"""PointCloud2 layout parsing: odd layouts, byte orders, organized clouds, malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from kp3d_ros.core.cloud_layout import MALFORMED_REASONS, CloudError, structured_view, xyz_from_layout
from kp3d_ros.layouts import FLOAT32, FLOAT64, UINT16, XYZI, fields_of


def _cloud(dtype: np.dtype, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    arr = np.zeros(n, dtype=dtype)
    for i, name in enumerate("xyz"):
        arr[name] = xyz[:, i]
    return arr, xyz


def _layout(arr: np.ndarray, dtype: np.dtype, fields, height: int = 1, bigendian: bool = False) -> dict:
    width = arr.size // height
    return dict(data=arr.tobytes(), fields=fields, point_step=dtype.itemsize, row_step=width * dtype.itemsize,
                width=width, height=height, is_bigendian=bigendian)


def test_xyzi_packed_roundtrip_and_zero_copy_view():
    arr, xyz = _cloud(XYZI, 50)
    arr["intensity"] = np.arange(50)
    layout = _layout(arr, XYZI, fields_of(XYZI))
    out, dropped = xyz_from_layout(**layout)
    assert dropped == 0 and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, xyz)
    data = bytearray(layout.pop("data"))
    view = structured_view(data, **layout)
    np.testing.assert_array_equal(view["intensity"], np.arange(50, dtype=np.float32))
    view_base = np.frombuffer(data, np.uint8)
    assert np.shares_memory(view, view_base)


def test_padding_extra_fields_uint16_intensity_and_float64():
    # x, y, z not adjacent, a uint16 intensity, a float64 timestamp, trailing padding: 40-byte points.
    dtype = np.dtype({"names": ["t", "x", "intensity", "y", "z"],
                      "formats": ["<f8", "<f4", "<u2", "<f4", "<f4"],
                      "offsets": [0, 8, 12, 16, 24], "itemsize": 40})
    arr, xyz = _cloud(dtype, 30)
    arr["t"] = np.linspace(0, 1, 30)
    arr["intensity"] = 65535
    fields = [("t", 0, FLOAT64, 1), ("x", 8, FLOAT32, 1), ("intensity", 12, UINT16, 1), ("y", 16, FLOAT32, 1),
              ("z", 24, FLOAT32, 1)]
    layout = _layout(arr, dtype, fields)
    out, dropped = xyz_from_layout(**layout)
    assert dropped == 0
    np.testing.assert_array_equal(out, xyz)
    view = structured_view(**layout)
    assert view["intensity"].dtype == np.uint16 and (view["intensity"] == 65535).all()
    np.testing.assert_allclose(view["t"], np.linspace(0, 1, 30))


def test_big_endian_cloud():
    dtype = np.dtype([("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("intensity", ">f4")])
    arr, xyz = _cloud(dtype, 20)
    layout = _layout(arr, dtype, fields_of(XYZI), bigendian=True)
    out, _ = xyz_from_layout(**layout)
    assert out.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(out, xyz)


def test_organized_with_nans_and_row_padding():
    arr, xyz = _cloud(XYZI, 4 * 8)
    arr["x"][[3, 17]] = np.nan
    arr["z"][5] = np.inf
    grid = arr.reshape(4, 8)
    # Each row padded by 16 bytes.
    rows = b"".join(row.tobytes() + b"\0" * 16 for row in grid)
    layout = dict(data=rows, fields=fields_of(XYZI), point_step=16, row_step=8 * 16 + 16, width=8, height=4,
                  is_bigendian=False)
    out, dropped = xyz_from_layout(**layout)
    keep = np.ones(32, bool)
    keep[[3, 5, 17]] = False
    assert dropped == 3
    np.testing.assert_array_equal(out, xyz[keep])
    assert structured_view(**layout).shape == (4, 8)


def test_malformed_layouts_raise_cloud_error():
    arr, _ = _cloud(XYZI, 10)
    good = _layout(arr, XYZI, fields_of(XYZI))
    with pytest.raises(CloudError, match="bytes"):
        xyz_from_layout(**{**good, "data": good["data"][:-5]})
    with pytest.raises(CloudError, match="no field"):
        xyz_from_layout(**{**good, "fields": [f for f in good["fields"] if f[0] != "z"]})
    with pytest.raises(CloudError, match="float32"):
        xyz_from_layout(**{**good, "fields": [("x", 0, FLOAT64, 1), *good["fields"][1:]]})
    with pytest.raises(CloudError, match="point_step"):
        xyz_from_layout(**{**good, "point_step": 8, "row_step": 80})
    with pytest.raises(CloudError, match="row_step"):
        xyz_from_layout(**{**good, "width": 5, "height": 2, "row_step": 40})


def test_empty_cloud():
    out, dropped = xyz_from_layout(b"", fields_of(XYZI), 16, 0, 0, 1, False)
    assert out.shape == (0, 3) and dropped == 0


def _reason(layout: dict) -> str:
    with pytest.raises(CloudError) as caught:
        xyz_from_layout(**layout)
    assert caught.value.reason in MALFORMED_REASONS
    return caught.value.reason


def _scan(n: int = 400, seed: int = 5) -> np.ndarray:
    """LiDAR-like points: ranges 1-40 m, a ground plane, as float32 (n, 3)."""
    rng = np.random.default_rng(seed)
    rng_xy = rng.uniform(1, 40, n) * np.exp(1j * rng.uniform(-np.pi, np.pi, n))
    return np.stack([rng_xy.real, rng_xy.imag, rng.uniform(-2, 1, n)], 1).astype(np.float32)


def test_each_malformed_kind_has_its_reason():
    arr, _ = _cloud(XYZI, 10)
    good = _layout(arr, XYZI, fields_of(XYZI))
    assert _reason({**good, "fields": [f for f in good["fields"] if f[0] != "z"]}) == "missing_fields"
    assert _reason({**good, "fields": [("x", 0, FLOAT64, 1), *good["fields"][1:]]}) == "wrong_field_type"
    assert _reason({**good, "point_step": 8, "row_step": 80}) == "bad_layout"  # z does not fit
    # a second x at the same offset: ambiguous, refused (also by structured_view)
    twice = {**good, "fields": [*good["fields"], ("x", 0, FLOAT32, 1)]}
    assert _reason(twice) == "duplicate_field"
    with pytest.raises(CloudError, match="twice"):
        structured_view(**twice)
    # one-row clouds: row_step is checked like any other row
    assert _reason({**good, "row_step": 16}) == "bad_row_step"
    assert _reason({**good, "row_step": 0}) == "bad_row_step"
    assert _reason({**good, "width": 5, "height": 2, "row_step": 40}) == "bad_row_step"
    # data must be exactly row_step x height bytes
    assert _reason({**good, "data": good["data"][:-5]}) == "truncated_data"
    assert _reason({**good, "data": good["data"] + bytes(16)}) == "excess_data"
    assert _reason({**good, "data": good["data"] + bytes(1)}) == "excess_data"
    assert _reason({**good, "width": 0, "row_step": 0}) == "excess_data"  # 0 points, 160 bytes
    assert _reason({**good, "row_step": 176}) == "truncated_data"  # padding declared but missing


def test_one_row_with_padding_is_accepted():
    arr, xyz = _cloud(XYZI, 10)
    layout = {**_layout(arr, XYZI, fields_of(XYZI)), "row_step": 176}
    layout["data"] += bytes(16)
    out, _ = xyz_from_layout(**layout)
    np.testing.assert_array_equal(out, xyz)


def test_byte_order_flag_contradicted_by_the_data_is_refused():
    xyz = _scan()
    for data_order, flag in (("<", True), (">", False)):
        arr = np.zeros(len(xyz), dtype=[("x", data_order + "f4"), ("y", data_order + "f4"), ("z", data_order + "f4")])
        arr["x"], arr["y"], arr["z"] = xyz.T
        layout = dict(data=arr.tobytes(), fields=[(n, 4 * i, FLOAT32, 1) for i, n in enumerate("xyz")],
                      point_step=12, row_step=12 * len(xyz), width=len(xyz), height=1, is_bigendian=flag)
        assert _reason(layout) == "byte_order_mismatch"
        out, _ = xyz_from_layout(**{**layout, "is_bigendian": not flag})  # the right flag: read as sent
        np.testing.assert_array_equal(out, xyz)


def test_byte_order_check_ignores_missing_returns_and_odd_but_consistent_data():
    xyz = _scan()
    xyz[: int(0.8 * len(xyz))] = 0.0  # an organised cloud that marks most returns missing with zeros
    for bigendian in (False, True):
        arr = np.zeros(len(xyz), dtype=[(n, (">" if bigendian else "<") + "f4") for n in "xyz"])
        arr["x"], arr["y"], arr["z"] = xyz.T
        layout = dict(data=arr.tobytes(), fields=[(n, 4 * i, FLOAT32, 1) for i, n in enumerate("xyz")],
                      point_step=12, row_step=12 * len(xyz), width=len(xyz), height=1, is_bigendian=bigendian)
        out, _ = xyz_from_layout(**layout)
        np.testing.assert_array_equal(out, xyz)
    # all zeros, or values implausible in both byte orders: nothing contradicts the flag
    zeros = np.zeros(40, XYZI)
    xyz_from_layout(**_layout(zeros, XYZI, fields_of(XYZI), bigendian=True))
    noise = np.random.default_rng(0).integers(0, 2**32, size=(64, 4), dtype=np.uint32).view(np.float32)
    noise = noise[np.isfinite(noise).all(1)][:, :3]
    arr = np.zeros(len(noise), XYZI)
    arr["x"], arr["y"], arr["z"] = noise.T
    out, _ = xyz_from_layout(**_layout(arr, XYZI, fields_of(XYZI)))
    assert out.shape == noise.shape
