"""Synthetic renderer: determinism, presets, and agreement of depth, tracks, visibility and colour."""

import numpy as np
import pytest

from st4r_cli.synthetic import PRESETS, project_points, render_clip, sample_tracks, summed_motion_dynamic
from st4r_cli.synthetic.scene import build_scene

SIZE = (48, 64)


@pytest.fixture(scope="module")
def clips():
    return {preset: render_clip(preset, seed=3, num_frames=8, size_hw=SIZE) for preset in PRESETS}


def test_shapes_dtypes_and_frame0_world(clips):
    for preset, clip in clips.items():
        T, (H, W) = 8, SIZE
        assert clip.frames.shape == (T, H, W, 3) and clip.frames.dtype == np.uint8
        assert clip.depth.shape == (T, H, W) and clip.depth.dtype == np.float32
        assert clip.tracks3d_dense.shape == (T, H, W, 3) and clip.visible_dense.dtype == bool
        assert clip.object_ids.shape == (T, H, W) and clip.intrinsics.shape == (3, 3)
        np.testing.assert_allclose(clip.cam_c2w[0], np.eye(4), atol=1e-6)
        # frame 0: the tracks are the frame-0 points, visible exactly where the ray hit
        np.testing.assert_allclose(clip.tracks3d_dense[0], clip.points_world[0], atol=1e-5)
        np.testing.assert_array_equal(clip.visible_dense[0], clip.valid[0])
        assert clip.frames.std() > 20, f"{preset}: frames lack texture"


def test_deterministic_per_seed():
    a = render_clip("mixed", seed=11, num_frames=3, size_hw=(24, 32))
    b = render_clip("mixed", seed=11, num_frames=3, size_hw=(24, 32))
    c = render_clip("mixed", seed=12, num_frames=3, size_hw=(24, 32))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.tracks3d_dense, b.tracks3d_dense)
    assert not np.array_equal(a.frames, c.frames)


def test_points_are_backprojected_depth(clips):
    clip = clips["fast-motion"]
    H, W = SIZE
    ys, xs = np.mgrid[0:H, 0:W]
    K = clip.intrinsics.astype(np.float64)
    for t in (0, 4, 7):
        z = clip.depth[t].astype(np.float64)
        cam = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], axis=-1)
        world = cam @ clip.cam_c2w[t, :3, :3].T.astype(np.float64) + clip.cam_c2w[t, :3, 3]
        np.testing.assert_allclose(world, clip.points_world[t], atol=2e-4)


def test_visible_tracks_land_on_pixels_with_their_depth(clips):
    for preset in ("occlusion", "fast-motion", "mixed"):
        clip = clips[preset]
        tracks = sample_tracks(clip, 600, seed=0)
        xy, z = project_points(tracks.tracks3d, clip.cam_c2w, clip.intrinsics)
        frame = np.broadcast_to(np.arange(clip.num_frames), tracks.visible.shape)
        vis = tracks.visible
        assert vis[:, 0].all() and 0 < vis.mean() < 1
        # inverse depth is bilinear in the pixel coordinates on a plane: interpolate it from the four
        # surrounding pixel centres where they all show the track's object
        x0 = np.clip(np.floor(xy[vis]).astype(int), 0, [SIZE[1] - 2, SIZE[0] - 2])
        fx, fy = (xy[vis] - x0).T
        ti, obj = frame[vis], np.broadcast_to(tracks.object_id[:, None], vis.shape)[vis]
        corners = [(0, 0), (1, 0), (0, 1), (1, 1)]
        inv = [1.0 / clip.depth[ti, x0[:, 1] + dy, x0[:, 0] + dx] for dx, dy in corners]
        same = np.all([clip.object_ids[ti, x0[:, 1] + dy, x0[:, 0] + dx] == obj for dx, dy in corners], axis=0)
        inv_z = (inv[0] * (1 - fx) * (1 - fy) + inv[1] * fx * (1 - fy) + inv[2] * (1 - fx) * fy + inv[3] * fx * fy)
        rel = np.abs(1.0 / inv_z - z[vis]) / z[vis]
        assert same.mean() > 0.7
        assert np.median(rel[same]) < 1e-3 and (rel[same] < 0.01).mean() > 0.95, preset
        pix = np.round(xy[vis]).astype(int)
        same_object = clip.object_ids[frame[vis], pix[:, 1], pix[:, 0]] == np.broadcast_to(
            tracks.object_id[:, None], vis.shape)[vis]
        assert same_object.mean() > 0.95
        # in-bounds points that are not visible are hidden behind something closer
        H, W = SIZE
        hidden = (~vis) & (z > 0) & (xy[..., 0] >= 0) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= H - 1)
        if hidden.any():
            pix = np.round(xy[hidden]).astype(int)
            blocker = clip.depth[frame[hidden], pix[:, 1], pix[:, 0]]
            assert (blocker < z[hidden]).mean() > 0.85


def test_visible_tracks_keep_their_colour(clips):
    clip = render_clip("easy", seed=5, num_frames=6, size_hw=(96, 128))
    tracks = sample_tracks(clip, 800, seed=1)
    frame = np.broadcast_to(np.arange(clip.num_frames), tracks.visible.shape)
    # only well-inside-the-image, visible points with a non-edge pixel
    pix = np.round(tracks.tracks2d).astype(int)
    vis = tracks.visible & np.isfinite(tracks.tracks2d).all(-1)
    vis[:, 0] = False
    colour_t = clip.frames[frame[vis], pix[vis][:, 1], pix[vis][:, 0]].astype(float)
    query = np.round(tracks.query_xy).astype(int)
    colour_0 = np.broadcast_to(clip.frames[0, query[:, 1], query[:, 0]][:, None], (*vis.shape, 3))[vis].astype(float)
    same = np.median(np.abs(colour_t - colour_0))
    shuffled = np.median(np.abs(colour_t - np.random.default_rng(0).permutation(colour_0)))
    assert same < 0.4 * shuffled


def test_static_scene_and_motion_kinds(clips):
    static = clips["static-scene"]
    assert not static.dynamic_mask.any() and not static.object_dynamic.any()
    valid0 = static.valid[0]
    assert np.abs(static.tracks3d_dense[:, valid0] - static.tracks3d_dense[:1, valid0]).max() < 1e-5
    assert np.abs(np.diff(static.cam_c2w[:, :3, 3], axis=0)).max() > 1e-3  # the camera moves

    clip = clips["easy"]
    tracks = sample_tracks(clip, 2000, seed=2)
    names = clip.object_names
    checked = 0
    for kind, rigid in (("rigid", True), ("arm-child", True), ("deforming", False)):
        ids = [i for i, n in enumerate(names) if n == kind]
        if not ids:
            continue
        on = np.flatnonzero(tracks.object_id == ids[0])
        if len(on) < 2:
            continue
        pair = tracks.tracks3d[on[:2]]
        dist = np.linalg.norm(pair[0] - pair[1], axis=-1)
        spread = np.ptp(dist)
        assert (spread < 1e-4) if rigid else (spread > 1e-3), kind
        checked += 1
    assert checked >= 2
    # dynamic flag agrees with the St4RTrack summed-motion rule
    moving = summed_motion_dynamic(tracks.tracks3d)
    np.testing.assert_array_equal(moving[tracks.dynamic], True)
    assert not moving[~tracks.dynamic].any()


def test_occlusion_preset_occludes():
    scene = build_scene("occlusion", 0, 8)
    assert sum(o.name == "occluder" for o in scene.objects) >= 1
    clip = render_clip("occlusion", seed=0, num_frames=8, size_hw=SIZE)
    H, W = SIZE
    tracks = sample_tracks(clip, 1000, seed=0)
    xy, z = project_points(tracks.tracks3d, clip.cam_c2w, clip.intrinsics)
    inside = (z > 0) & (xy[..., 0] >= 0) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= H - 1)
    assert (inside & ~tracks.visible).mean() > 0.02


def test_bad_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        render_clip("nope", 0, 2, (8, 8))


def test_open_sky_has_no_geometry():
    seed = next(s for s in range(40) if build_scene("mixed", s, 2).objects[0].open_top)
    clip = render_clip("mixed", seed=seed, num_frames=3, size_hw=(48, 64))
    sky = ~clip.valid
    assert 0.02 < sky.mean() < 0.6
    assert (clip.depth[sky] == 0).all() and (clip.object_ids[sky] == -1).all()
    assert not clip.visible_dense[:, sky[0]].any()
    # the sky is in the upper part of the image (y down)
    rows = np.nonzero(sky[0])[0]
    assert rows.mean() < SIZE[0] / 2
    tracks = sample_tracks(clip, 200, seed=0)
    assert clip.valid[0][tracks.query_xy[:, 1].astype(int), tracks.query_xy[:, 0].astype(int)].all()
