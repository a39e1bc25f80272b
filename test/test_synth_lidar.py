"""LiDAR simulation: presets, ranges, beams, windows, occlusion, hit bookkeeping."""

import numpy as np
import pytest

from kp3d_ros.synth.lidar import PRESETS, LidarPreset, box_mesh, cast, front_faces, surface_points


@pytest.mark.parametrize("name, beams, lo, hi", [("waymo_top", 64, -17.6, 2.4), ("hdl64e", 64, -24.9, 2.0),
                                                 ("vlp32c", 32, -25.0, 15.0), ("vlp16", 16, -15.0, 15.0),
                                                 ("os1_64", 64, -22.5, 22.5), ("os1_128", 128, -22.5, 22.5)])
def test_preset_elevations(name, beams, lo, hi):
    preset = PRESETS[name]
    assert preset.num_beams == beams
    assert preset.elevations_deg.min() == pytest.approx(lo, abs=1e-6)
    assert preset.elevations_deg.max() == pytest.approx(hi, abs=1e-6)
    assert np.all(np.diff(preset.elevations_deg) > 0)


def test_vlp16_spacing_and_custom_validation():
    np.testing.assert_allclose(np.diff(PRESETS["vlp16"].elevations_deg), 2.0)
    with pytest.raises(ValueError):
        LidarPreset.custom([], 0.2)
    with pytest.raises(ValueError):
        LidarPreset.custom([0.0], 0.0)


def test_box_at_known_range_gives_range_and_beam_count():
    preset = LidarPreset.custom(np.arange(-10.0, 10.1, 1.0), 0.5)  # 21 beams, 1 degree apart
    wall = box_mesh((10.5, 0.0, 0.0), (1.0, 4.0, 3.0))  # front face at x = 10, z in [-1.5, 1.5]
    hits = cast([wall], preset, 0.0, np.random.default_rng(0), noise=False)
    np.testing.assert_allclose(hits.points[:, 0], 10.0, atol=1e-4)
    expected_beams = np.sum(np.abs(np.tan(np.deg2rad(preset.elevations_deg))) * 10.0 < 1.5)
    assert len(np.unique(hits.beam)) == expected_beams == 17
    azimuths = np.arctan2(hits.points[:, 1], hits.points[:, 0])
    assert np.all(np.abs(azimuths) <= np.arctan2(2.0, 10.0) + 1e-6)
    noisy = cast([wall], preset.with_noise(range_noise_std=0.05, dropout=0.5), 0.0, np.random.default_rng(0))
    assert 0.3 * len(hits) < len(noisy) < 0.7 * len(hits)
    assert 0.03 < np.std(noisy.points[:, 0]) < 0.08


def test_azimuth_window_sensor_height_and_occluder():
    preset = PRESETS["vlp16"]
    rng = np.random.default_rng(1)
    far = box_mesh((10.5, 0.0, 1.0), (1.0, 2.0, 2.0))
    hits = cast([far], preset, 1.0, rng, azimuth_window=(-0.3, 0.3), noise=False)
    assert len(hits) > 0 and np.all(hits.mesh_id == 0)
    np.testing.assert_allclose(hits.points[:, 0], 10.0, atol=1e-4)
    assert hits.points[:, 2].min() >= -1.0 - 1e-4  # box bottom at world z = 0, sensor 1 m up
    outside = cast([far], preset, 1.0, rng, azimuth_window=(1.0, 2.0))
    assert len(outside) == 0
    near = box_mesh((5.0, 0.0, 1.0), (0.2, 0.5, 4.0))
    both = cast([far, near], preset, 1.0, rng, azimuth_window=(-0.3, 0.3), noise=False)
    hidden = (both.mesh_id == 0) & (np.abs(both.points[:, 1] / both.points[:, 0]) < 0.2 / 5.0)
    assert not hidden.any() and (both.mesh_id == 1).any()


def test_barycentric_lookup_reproduces_points():
    vertices, faces = box_mesh((8.0, 1.0, 0.5), (1.0, 1.0, 1.0), yaw=0.4)
    hits = cast([(vertices, faces)], PRESETS["os1_64"], 0.0, np.random.default_rng(2), noise=False)
    np.testing.assert_allclose(surface_points(vertices, faces, hits.triangle_id, hits.barycentric), hits.points,
                               atol=1e-4)
    visible = front_faces(vertices, faces, np.zeros(3))
    culled = cast([(vertices, faces[visible])], PRESETS["os1_64"], 0.0, np.random.default_rng(2), noise=False)
    np.testing.assert_allclose(culled.points, hits.points, atol=1e-5)
