"""Multi-view depth from known cameras on synthetic clips with exact depth and motion masks."""

import numpy as np
import pytest

from st4r_cli.depth.multiview import MultiviewOptions, multiview_depth, neighbour_frames
from st4r_cli.metrics.depth import depth_metrics
from st4r_cli.synthetic import render_clip

OPTS = MultiviewOptions(offsets=(-8, -4, -2, 2, 4, 8), spare_offsets=(6, 10))


@pytest.fixture(scope="module")
def clips():
    return {preset: render_clip(preset, seed=0, num_frames=16, size_hw=(96, 128))
            for preset in ("static-scene", "easy", "occlusion")}


def test_every_frame_gets_as_many_pairs_near_the_ends():
    opts = MultiviewOptions()
    assert neighbour_frames(0, 40, opts) == [4, 8, 16, 6, 12, 24]
    assert neighbour_frames(20, 40, opts) == [4, 12, 16, 24, 28, 36]
    assert sorted(neighbour_frames(0, 5, opts)) == [4]


def test_static_scene_depth_is_metric_with_exact_cameras(clips):
    clip = clips["static-scene"]
    out = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS)
    assert out["depth"].shape == clip.depth.shape and out["depth"].dtype == np.float32
    assert out["valid"].mean() > 0.5
    assert not out["low_parallax"].any()
    scores = depth_metrics(out["depth"], clip.depth, out["valid"] & clip.valid, alignment="none")
    assert scores["abs_rel"] < 0.15 and scores["delta_1.25"] > 0.85
    assert out["dynamic"].mean() < 0.02                  # nothing moves in this scene
    assert np.all(out["depth"][~out["valid"]] == 0)


def test_moving_objects_are_masked_dynamic_and_get_no_depth(clips):
    clip = clips["easy"]
    out = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS)
    truth = clip.dynamic_mask
    flagged = out["dynamic"]
    assert (flagged & truth).sum() / flagged.sum() > 0.8           # precision
    assert (flagged & truth).sum() / truth.sum() > 0.4             # recall
    assert (out["valid"] & truth).sum() / out["valid"].sum() < 0.05
    static_scores = depth_metrics(out["depth"], clip.depth, out["valid"] & clip.valid & ~truth,
                                  alignment="none")
    assert static_scores["abs_rel"] < 0.12


def test_pure_rotation_is_reported_as_low_parallax(clips):
    clip = clips["occlusion"]                             # a panning camera: rotation only
    out = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS)
    assert out["low_parallax"].all()
    assert out["valid"].mean() < 0.01


def test_a_frame_whose_baselines_the_scene_depth_dwarfs_gets_no_depth(clips):
    """Given the scene's median depth, frame i gets depth of its own only when the baseline to one of its
    neighbours subtends min_parallax_deg there. At the static-scene clip's own median depth every frame
    has such a neighbour and the depth is the same as without the test; told the scene is 100x farther
    (a camera that barely moves for it), no frame has one and every frame is reported as low parallax."""
    clip = clips["static-scene"]
    scene_depth = float(np.median(clip.depth[clip.valid]))
    plain = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS)
    near = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS, scene_depth=scene_depth)
    assert np.array_equal(near["valid"], plain["valid"]) and np.array_equal(near["depth"], plain["depth"])
    far = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS, scene_depth=100 * scene_depth)
    assert far["low_parallax"].all() and not far["valid"].any()


def test_propagation_gives_a_frame_without_its_own_depth_its_neighbours_surfaces(clips):
    """Frame 8 loses its own depth (as a frame without parallax would): the static points of frames 0-16,
    rendered into it, give it back the true depth where several frames agree."""
    from dataclasses import replace

    from st4r_cli.depth.multiview import _propagate

    clip = clips["static-scene"]
    out = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, replace(OPTS, propagate_reach=0))
    assert not out["propagated"].any()
    own = out["valid"][8].mean()
    own_abs_rel = depth_metrics(out["depth"][8:9], clip.depth[8:9], out["valid"][8:9] & clip.valid[8:9],
                                alignment="none")["abs_rel"]
    for key in ("depth", "conf"):
        out[key][8] = 0
    out["valid"][8] = False
    _propagate(out, np.asarray(clip.intrinsics, np.float64), np.asarray(clip.cam_c2w, np.float64), OPTS)
    lent = out["propagated"][8]
    assert lent.mean() > 0.8 * own and (out["valid"][8] == lent).all()
    scores = depth_metrics(out["depth"][8:9], clip.depth[8:9], lent[None] & clip.valid[8:9], alignment="none")
    assert scores["abs_rel"] < 0.1 and scores["abs_rel"] <= 1.1 * own_abs_rel   # as right as its own was
    # the default run: the pixels a frame could not triangulate itself are mostly at occlusion edges, where
    # a neighbour's foreground can spill over (mean relative error 0.19 there, median 0.10)
    full = multiview_depth(clip.frames, clip.intrinsics, clip.cam_c2w, OPTS)
    lent = full["propagated"] & clip.valid
    assert lent.mean() > 0.05 and full["valid"][full["propagated"]].all() and not full["dynamic"][full["propagated"]].any()
    assert np.median(np.abs(full["depth"][lent] / clip.depth[lent] - 1.0)) < 0.12


def test_crowded_dropped_tracks_are_moving_scattered_slips_are_not():
    """The tracker's 8 px grid on a 192x256 frame: inside a disc every track was dropped (a moving object),
    elsewhere 1 in 5 (tracker slips, as on a static 7-Scenes clip)."""
    from st4r_cli.depth.multiview import track_motion_mask

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[4:192:8, 4:256:8]
    grid = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)
    in_disc = np.linalg.norm(grid - [120, 80], axis=1) <= 36
    slip = ~in_disc & (rng.random(len(grid)) < 0.2)
    dropped = in_disc | slip
    rows = lambda sel: np.concatenate([np.zeros((sel.sum(), 1), np.float32), grid[sel]], 1)  # noqa: E731
    mask = track_motion_mask(rows(dropped), rows(~dropped), 2, (192, 256))
    pix_y, pix_x = np.mgrid[0:192, 0:256]
    disc = np.hypot(pix_x - 120, pix_y - 80) <= 28
    far = np.hypot(pix_x - 120, pix_y - 80) > 60
    assert mask[0][disc].mean() > 0.9 and mask[0][far].mean() < 0.01
    assert not mask[1].any()                                # nothing dropped in frame 1
