"""depth.mp4's colours and legend and the `--maps` files (float depth, validity, normals) on synthetic
scenes with exact answers (viz_scene.py): a wall and a floor, a cluster of wild near points, pixels
without a point (NaN) and a block of points behind their camera."""

import json

import numpy as np
import pytest
from PIL import Image
from viz_scene import FOCAL, H, K, T, W, synthetic_scene

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import write_scene
from st4r_cli.viz.colormaps import turbo
from st4r_cli.viz.data import load_view_data
from st4r_cli.viz.video import (INVALID_RGB, _upscale, depth_frames, depth_images, depth_ranges, export_maps,
                                legend_height, normals_from_points)

TURBO = turbo(np.linspace(0.0, 1.0, 256)).astype(int)
NEAR_FRAMES = (1, 2, 3, 4)   # frames with a near blob (like the demo's head placed at 0.2 instead of 1.5)


def _turbo_index(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) colours -> (N,) index 0..255 of the nearest TURBO colour."""
    return np.abs(rgb.astype(int)[:, None] - TURBO[None]).sum(-1).argmin(1)


def _camera_z(scene: dict, t: int) -> np.ndarray:
    """z of frame t's points in its camera, in float64 (independent of st4r's code)."""
    w2c = np.linalg.inv(scene["cam_c2w"][t].astype(np.float64))
    return scene["pointmaps"][t].astype(np.float64) @ w2c[2, :3] + w2c[2, 3]


def wild_scene() -> dict:
    """The synthetic wall + floor with ~3.5 % of all pixels very near (a blob at z = 0.1-0.3 in four
    frames: more than the 2 % tail of 2-98 % percentiles) and a 3 x 5 block behind its camera (z < 0)."""
    scene = synthetic_scene()
    points = scene["pointmaps"].astype(np.float64)
    ys, xs = np.mgrid[0:H, 0:W]
    blob = (ys - H / 3) ** 2 + (xs - W / 2) ** 2 < 7.2 ** 2
    for t in range(T):
        cam = scene["cam_c2w"][t, :3, 3].astype(np.float64)              # the cameras only translate
        if t in NEAR_FRAMES:
            z = 0.1 + 0.2 * xs[blob] / W
            rays = np.stack([(xs[blob] - K[0, 2]) / FOCAL, (ys[blob] - K[1, 2]) / FOCAL, np.ones(blob.sum())], -1)
            points[t][blob] = rays * z[:, None] + cam
        points[t, :3, :5, 2] = cam[2] - (points[t, :3, :5, 2] - cam[2])   # behind the camera
    scene["pointmaps"] = points.astype(np.float32)
    return scene


def wild_view(run_dir):
    """ViewData of the wild run with 2 x 5 more pixels without a point (NaN: a scene.npz cannot hold them,
    a ViewData can)."""
    from st4r_cli.viz.data import camera_depth

    view = load_view_data(run_dir)
    view.scene["pointmaps"] = view.scene["pointmaps"].copy()
    view.scene["pointmaps"][:, 3:5, :5] = np.nan
    view.depth = camera_depth(view.scene)
    return view


def _expected_valid(scene: dict, t: int) -> np.ndarray:
    z = _camera_z(scene, t)
    return np.isfinite(z) & (z > 0)


@pytest.fixture
def wild_run(tmp_path):
    run_dir = tmp_path / "wild"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", wild_scene())
    return run_dir


def test_depth_colours_spread_over_the_map_despite_a_few_near_pixels(wild_run):
    view = load_view_data(wild_run)
    valid = np.isfinite(view.depth) & (view.depth > 0)
    assert 0.025 < (valid & (view.depth < 0.5)).sum() / valid.sum() < 0.05   # the wild near cluster
    ranges = depth_ranges(view)
    assert ranges.far == pytest.approx(4.0, rel=1e-4)          # the wall
    assert 2.5 < ranges.near < 4.0                               # the floor, not the wild blob at 0.1-0.3
    index = np.concatenate([_turbo_index(depth_images(view, t, ranges)[0][valid[t]]) for t in range(T)])
    lo, hi = np.quantile(index, [0.05, 0.95])
    assert hi - lo >= 0.5 * 255                                  # the central 90 % covers half the map
    blob = np.concatenate([_turbo_index(depth_images(view, t, ranges)[0][valid[t] & (view.depth[t] < 0.5)])
                           for t in NEAR_FRAMES])
    assert len(blob) and blob.min() == 255                       # nearer than `near`: the nearest colour


def test_pixels_without_depth_are_exactly_grey(wild_run):
    view = wild_view(wild_run)
    ranges = depth_ranges(view)
    assert np.abs(TURBO - INVALID_RGB).sum(-1).min() > 60        # the grey is no TURBO colour
    for t in (0, 2):
        depth_rgb, _ = depth_images(view, t, ranges)
        valid = _expected_valid(view.scene, t)
        assert (~valid).sum() == 25                              # 15 behind the camera + 10 without a point
        assert (depth_rgb[~valid] == INVALID_RGB).all()
        assert (np.abs(depth_rgb[valid].astype(int) - INVALID_RGB).sum(-1) > 60).all()


def test_depth_video_frames_carry_a_legend_with_colour_bars_and_labels(wild_run):
    view = load_view_data(wild_run)
    frames = list(depth_frames(view))
    scale = max(1, _upscale((H, W)) // 2)
    panel, strip = W * scale, legend_height(W * scale)
    assert len(frames) == T and frames[0].shape == (H * scale + strip, 3 * panel, 3)
    legend = frames[0][H * scale:].astype(int)
    for left in (panel, 2 * panel):                              # under the depth and the confidence maps
        bar_row = legend[strip // 10 + strip * 3 // 20, left + panel // 10: left + panel - panel // 10]
        index = _turbo_index(bar_row)
        assert np.abs(TURBO[index] - bar_row).sum(-1).max() < 12          # TURBO colours ...
        assert index[0] < 40 and index[-1] > 215 and (np.diff(index) >= 0).all()  # ... blue to red
        text = legend[strip * 2 // 5:, left: left + panel]                # the labels under the bar
        bright = (text > 150).all(-1)
        assert bright[:, : panel // 4].sum() > 20 and bright[:, -panel // 4:].sum() > 20   # both ends
    assert (legend[:, : panel // 4] == INVALID_RGB).all(-1).sum() >= 25   # the grey "no depth" swatch
    assert (legend[:, : panel] > 200).all(-1).sum() > 40                 # and its label, the frame number


def test_maps_write_float_depth_validity_and_normals(wild_run, tmp_path):
    view = wild_view(wild_run)
    written = export_maps(view, tmp_path / "out")
    maps = tmp_path / "out" / "maps"
    assert sorted(written) == sorted(p for p in maps.rglob("*") if p.is_file())   # every file is listed
    for t in range(T):
        name = f"frame_{t:05d}"
        depth = np.load(maps / "depth_float" / f"{name}.npy", allow_pickle=False)
        z, valid = _camera_z(view.scene, t), _expected_valid(view.scene, t)
        assert depth.dtype == np.float32 and depth.shape == (H, W) and (~valid).sum() == 25
        assert np.array_equal(np.isfinite(depth), valid)
        assert np.abs(depth[valid] - z[valid]).max() < 1e-5
        mask = np.asarray(Image.open(maps / "valid" / f"{name}.png"))
        assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, valid)
        depth_rgb = np.asarray(Image.open(maps / "depth" / f"{name}.png").convert("RGB"))
        assert (depth_rgb[~valid] == INVALID_RGB).all() and np.array_equal(depth_rgb, depth_images(
            view, t, depth_ranges(view))[0])                    # the video's colours
        normal = np.asarray(Image.open(maps / "normal" / f"{name}.png"))
        assert normal.shape == (H, W, 3) and (normal[~valid] == 0).all() and (normal[valid].sum(-1) > 0).all()
    info = json.loads((maps / "maps.json").read_text())
    assert info["depth"]["far"] == pytest.approx(4.0, rel=1e-4) and info["depth"]["invalid_rgb"] == [128, 128, 128]
    bar = np.asarray(Image.open(maps / "depth_colorbar.png").convert("RGB"))
    assert bar.shape[0] >= 32 and (bar > 200).all(-1).sum() > 50          # a bar with labels


def test_export_maps_lists_every_file_in_the_manifest(wild_run):
    assert cli_run(["export", str(wild_run), "--maps", "-q"]) == 0
    out = wild_run / "export"
    manifest = json.loads((out / "st4r-export.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "maps").rglob("*") if p.is_file())
    assert manifest == on_disk and len(on_disk) == 6 * T + 4
    depth = np.load(out / "maps" / "depth_float" / "frame_00003.npy", allow_pickle=False)
    z, valid = _camera_z(wild_scene(), 3), _expected_valid(wild_scene(), 3)
    assert np.array_equal(np.isfinite(depth), valid) and np.abs(depth[valid] - z[valid]).max() < 1e-5


def _plane_scene(normal_cam: np.ndarray, c2w: np.ndarray) -> dict:
    """One frame seeing the plane n . x = -2 (camera coordinates) through K, stored in world coordinates."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(xs - K[0, 2]) / FOCAL, (ys - K[1, 2]) / FOCAL, np.ones_like(xs)], -1)
    s = -2.0 / (rays @ normal_cam)                                   # ray . n * s = -2
    points_cam = rays * s[..., None]
    points_world = points_cam @ c2w[:3, :3].T + c2w[:3, 3]
    return {"pointmaps": points_world[None].astype(np.float32), "cam_c2w": c2w[None].astype(np.float32),
            "intrinsics": K.astype(np.float32), "colors": np.full((1, H, W, 3), 100, np.uint8),
            "conf": np.ones((1, H, W), np.float32)}


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def test_normals_of_a_plane_are_its_normal_in_the_camera(tmp_path):
    normal_cam = np.array([0.35, -0.45, -1.0])
    normal_cam /= np.linalg.norm(normal_cam)                          # faces the camera (z < 0: towards it)
    c2w = np.eye(4)
    c2w[:3, :3] = _rotation(np.array([0.2, 1.0, 0.3]), 0.7)
    c2w[:3, 3] = [0.5, -0.2, 1.0]
    run_dir = tmp_path / "plane"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", _plane_scene(normal_cam, c2w))
    assert cli_run(["export", str(run_dir), "--maps", "-q"]) == 0
    encoded = np.asarray(Image.open(run_dir / "export" / "maps" / "normal" / "frame_00000.png")).astype(float)
    decoded = encoded / 255.0 * 2.0 - 1.0
    decoded /= np.linalg.norm(decoded, axis=-1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(decoded @ normal_cam, -1, 1)))
    assert angle.max() < 2.0                                         # every pixel, borders included
    wall = normals_from_points(np.dstack([*np.meshgrid(np.arange(4.0), np.arange(3.0)), np.full((3, 4), 5.0)]))
    assert np.allclose(wall, [0, 0, -1], atol=1e-6)                 # a wall facing the camera: -z (OpenCV)
