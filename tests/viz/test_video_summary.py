"""Overlay videos, per-frame maps, the summary picture and the static/dynamic labels on a synthetic run
with exact answers (see conftest.py)."""

import json

import av
import numpy as np
from viz_scene import FOCAL, GREEN, H, RED, T, W, synthetic_scene
from PIL import Image

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import write_scene
from st4r_cli.viz.data import load_view_data
from st4r_cli.viz.summary import write_summary
from st4r_cli.viz.video import _upscale, draw_tracks


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.codec_context.name


def test_export_video_and_maps_write_every_frame(synthetic_run):
    code = cli_run(["export", str(synthetic_run), "--video", "--maps", "-q"])
    assert code == 0
    out = synthetic_run / "export"
    assert not (out / "ply").exists() and not (out / "scene.glb").exists()  # only what was asked
    tracks, codec = _decode(out / "tracks2d.mp4")
    depth, _ = _decode(out / "depth.mp4")
    assert codec == "h264" and len(tracks) == T and len(depth) == T
    scale = _upscale((H, W))
    assert tracks[0].shape[:2] == (H * scale, W * scale)
    assert depth[0].shape[1] >= 3 * W  # frame | depth | confidence
    # 16-bit depth: exact z of every pixel in its own camera
    info = json.loads((out / "maps" / "depth16.json").read_text())
    scene = synthetic_scene()
    for t in (0, T - 1):
        value = np.asarray(Image.open(out / "maps" / "depth16" / f"frame_{t:05d}.png")).astype(np.float64)
        z = scene["pointmaps"][t][..., 2]
        assert np.allclose(value / info["scale"], z, atol=1.0 / info["scale"])
        assert (out / "maps" / "depth" / f"frame_{t:05d}.png").is_file()
        assert (out / "maps" / "conf" / f"frame_{t:05d}.png").is_file()
    assert len(list((out / "maps" / "depth16").iterdir())) == T


def test_tracks_are_drawn_filled_when_visible_and_hollow_when_occluded():
    frame = np.zeros((20, 20, 3), np.uint8)
    tracks = np.array([[[5.0, 5.0]], [[14.0, 14.0]]])
    visible = np.array([[True], [False]])
    colors = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
    image = draw_tracks(frame, tracks, visible, colors, 0, scale=4)
    filled = image[5 * 4 + 1, 5 * 4 + 1]
    hollow_centre = image[14 * 4 + 1, 14 * 4 + 1]
    assert filled[0] > 200 and filled[1] < 50
    assert hollow_centre.max() < 50  # the ring's centre is empty
    ring = image[14 * 4 - 6:14 * 4 + 8, 14 * 4 - 6:14 * 4 + 8, 1]
    assert ring.max() > 200


def test_tracks_video_shows_each_track_at_its_position(synthetic_run):
    view = load_view_data(synthetic_run)
    cli_run(["export", str(synthetic_run), "--video", "-q"])
    frames, _ = _decode(synthetic_run / "export" / "tracks2d.mp4")
    scale = _upscale((H, W))
    t = T - 1
    xy = view.scene["tracks2d"][:, t]
    seen = view.scene["visible"][:, t]
    hits = 0
    for n in np.flatnonzero(seen):
        px = np.round((xy[n] + 0.5) * scale - 0.5).astype(int)
        got = frames[t][px[1], px[0]].astype(int)
        hits += np.abs(got - view.track_colors[n].astype(int)).max() < 60
    assert hits >= 0.9 * seen.sum()


def test_summary_picture(synthetic_run):
    from st4r_cli.formats.scene import read_scene
    from st4r_cli.runs import Run, RunConfig

    run_dir = synthetic_run.parent / "complete_run"
    with Run.create(run_dir, RunConfig()) as run:   # a run publishing the synthetic scene
        run.publish("scene.npz", read_scene(synthetic_run / "scene.npz"))
        run.mark_complete()
        path = write_summary(run)
    assert path == run_dir / "summary.png"
    status = json.loads((run_dir / "run.json").read_text())
    assert "summary.png" in status["outputs"] and status["output_sha256"]["summary.png"]
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top, bottom = image[:360], image[360:]
    assert top.shape[1] == 2 * round(W * 360 / H)
    # the frames are there (green floor in the bottom of both frames, red patch)
    assert (np.abs(top[300:340] - GREEN).sum(-1) < 60).mean() > 0.3
    assert (np.abs(top - RED).sum(-1) < 60).sum() > 100
    # top view: the floor (green) lies ahead of the cameras (up in the picture); the first camera is
    # blue, the last red, and the camera slides to the right
    green_rows = np.nonzero((np.abs(bottom - GREEN).sum(-1) < 60))[0]
    first = np.argwhere((np.abs(bottom - (0, 60, 255)).sum(-1) < 40))
    last = np.argwhere((np.abs(bottom - (255, 60, 0)).sum(-1) < 40))
    assert len(green_rows) > 200 and len(first) and len(last)
    assert np.median(green_rows) < first[:, 0].min() - 20
    assert last[:, 1].mean() > first[:, 1].mean() + 20


def test_dynamic_labels_from_track_motion_and_from_the_scene(tmp_path):
    scene = synthetic_scene()
    write_scene(tmp_path / "scene.npz", scene)
    view = load_view_data(tmp_path)
    assert view.mask_source == "motion"
    assert np.array_equal(view.track_dynamic, scene["gt_dynamic"])
    gt = scene["gt_dynamic_mask"]
    overlap = (view.dynamic_mask & gt).sum() / gt.sum()
    assert overlap > 0.8 and view.dynamic_mask[~gt].mean() < 0.05
    scene["dynamic_mask"] = gt
    write_scene(tmp_path / "scene.npz", scene)
    view = load_view_data(tmp_path)
    assert view.mask_source == "scene" and np.array_equal(view.dynamic_mask, gt)
    assert np.allclose(view.depth[0][..., :], scene["pointmaps"][0][..., 2], atol=1e-5)
    assert FOCAL > 0


def test_picked_tracks_are_spread_evenly():
    from st4r_cli.viz.data import pick_tracks

    gy, gx = np.mgrid[0:144:4.5, 0:256:8]  # a 32 x 32 grid with unequal steps (a tracker's grid)
    grid = np.stack([gx.ravel(), gy.ravel()], -1)
    idx = pick_tracks(grid, 256)
    assert len(idx) == 256
    assert len(np.unique(grid[idx, 0])) == 16 and len(np.unique(grid[idx, 1])) == 16  # every 2nd column/row
    scattered = np.random.default_rng(0).uniform([0, 0], [256, 144], (2000, 2))
    idx = pick_tracks(scattered, 100)
    assert 50 <= len(idx) <= 100
    counts, _, _ = np.histogram2d(scattered[idx, 0], scattered[idx, 1], bins=(4, 2))
    assert counts.min() >= 4  # every part of the image keeps tracks
    assert np.array_equal(pick_tracks(grid[:10], 256), np.arange(10))
