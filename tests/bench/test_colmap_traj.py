"""benchmarks/_colmap.py: COLMAP's cam_from_world -> st4r cam_c2w, and a real pycolmap run on a synthetic
static scene whose trajectory is known exactly."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from st4r_cli.errors import St4rError
from st4r_cli.metrics.camera import camera_metrics


def test_cam_c2w_by_hand(colmap):
    # x_cam = Rz(90) x_world + (1, 0, 0): the camera centre c solves Rz(90) c = -(1, 0, 0) -> c = (0, 1, 0),
    # and the camera's axes in the world are the columns of Rz(90)^T.
    rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cam_c2w = colmap.cam_c2w_from_cam_from_world(rz90, np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(cam_c2w[:3, 3], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(cam_c2w[:3, :3], [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(cam_c2w[3], [0.0, 0.0, 0.0, 1.0])


def test_cam_c2w_projects_like_colmap(colmap):
    pycolmap = pytest.importorskip("pycolmap")
    rng = np.random.default_rng(0)
    rotation = pycolmap.Rotation3d(rng.normal(size=3))                     # axis-angle
    cam_from_world = pycolmap.Rigid3d(rotation, rng.normal(size=3))
    camera = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[585.0, 580.0, 320.0, 240.0])
    cam_c2w = colmap.cam_c2w_from_cam_from_world(cam_from_world.rotation.matrix(), cam_from_world.translation)
    np.testing.assert_allclose(cam_c2w[:3, 3], cam_from_world.inverse().translation, atol=1e-12)
    points_cam = rng.uniform([-1, -1, 2], [1, 1, 5], size=(20, 3))
    points_world = (cam_c2w[:3, :3] @ points_cam.T).T + cam_c2w[:3, 3]     # st4r: world = c2w cam
    for point_world, point_cam in zip(points_world, points_cam):
        colmap_cam = cam_from_world * point_world
        np.testing.assert_allclose(colmap_cam, point_cam, atol=1e-9)
        expected_xy = [585.0 * point_cam[0] / point_cam[2] + 320.0, 580.0 * point_cam[1] / point_cam[2] + 240.0]
        np.testing.assert_allclose(camera.img_from_cam(colmap_cam), expected_xy, atol=1e-9)


def test_missing_pycolmap_is_one_line_error(colmap, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycolmap", None)
    with pytest.raises(St4rError, match=r"pycolmap is not installed: pip install"):
        colmap.run_colmap(np.zeros((2, 8, 8, 3), np.uint8))


def test_run_colmap_recovers_synthetic_trajectory(colmap, tmp_path):
    pytest.importorskip("pycolmap")
    from st4r_cli.synthetic import render_clip

    clip = render_clip("static-scene", seed=0, num_frames=8, size_hw=(192, 256), antialias=1)
    result = colmap.run_colmap(clip.frames, clip.intrinsics, workdir=tmp_path / "colmap", seed=0)
    assert result.registered.all() and result.cam_c2w.shape == (8, 4, 4)
    assert result.camera_model == "PINHOLE"
    np.testing.assert_allclose(result.intrinsics, clip.intrinsics, atol=1e-9)   # known K stays fixed
    assert result.camera_params[2:] == [clip.intrinsics[0, 2] + 0.5, clip.intrinsics[1, 2] + 0.5]  # COLMAP pixels
    travel = np.linalg.norm(clip.cam_c2w[-1, :3, 3] - clip.cam_c2w[0, :3, 3])
    metrics = camera_metrics(result.cam_c2w, clip.cam_c2w)
    assert metrics["ate"] < 0.01 * travel                                   # measured ~0.1% of the travel
    assert metrics["rpe_rot"] < 0.3                                          # degrees; measured ~0.04
    # the relative rotations themselves (alignment-free) match: a transposed R would fail here
    rel_pred = np.linalg.inv(result.cam_c2w[0]) @ result.cam_c2w[-1]
    rel_gt = np.linalg.inv(clip.cam_c2w[0]) @ clip.cam_c2w[-1]
    assert np.degrees(np.arccos(np.clip((np.trace(rel_pred[:3, :3].T @ rel_gt[:3, :3]) - 1) / 2, -1, 1))) < 0.3
    # scratch files stayed in the work dir we gave, as hard links/PNGs named in clip order
    assert sorted(p.name for p in (tmp_path / "colmap" / "images").iterdir())[:2] == ["00000.png", "00001.png"]
