"""Every format round-trips; readers give clear errors; the static-scene derivation is exact."""

from pathlib import Path

import numpy as np
import pytest

from st4r_cli.errors import St4rError
from st4r_cli.formats import ground_truth_kind, load_ground_truth
from st4r_cli.formats import sevenscenes, tapvid2d, tapvid3d, tum
from st4r_cli.formats.clip import read_clip, synthetic_gt, write_clip
from st4r_cli.formats.scene import read_scene, write_scene
from st4r_cli.synthetic import render_clip
from st4r_cli.synthetic.scene import axis_angle_to_matrix

DATA = Path(__file__).resolve().parents[1] / "data" / "formats"


@pytest.fixture(scope="module")
def synthetic():
    return render_clip("easy", seed=1, num_frames=4, size_hw=(24, 32))


def _poses(num, seed=0):
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (num, 1, 1))
    for i in range(num):
        poses[i, :3, :3] = axis_angle_to_matrix(rng.normal(size=3), np.array([rng.uniform(0, 3)]))[0]
        poses[i, :3, 3] = rng.normal(size=3)
    return poses


def test_clip_folder_round_trip(tmp_path, synthetic):
    gt, meta = synthetic_gt(synthetic, num_tracks=50, dense=True)
    out = write_clip(tmp_path / "clip", synthetic.frames, gt, meta)
    clip = read_clip(out)
    np.testing.assert_array_equal(clip.frames, synthetic.frames)  # PNG is lossless
    assert set(clip.gt) == set(gt)
    for key, value in gt.items():
        np.testing.assert_array_equal(clip.gt[key], value)
    assert clip.meta["preset"] == "easy" and clip.meta["synthetic"] is True
    queries = np.load(out / "queries.npy")
    np.testing.assert_array_equal(queries[:, 0], gt["query_t"])
    np.testing.assert_array_equal(queries[:, 1:], gt["query_xy"])
    assert ground_truth_kind(out) == "clip" and load_ground_truth(out).num_frames == 4
    frames_only = write_clip(tmp_path / "bare", synthetic.frames)
    assert read_clip(frames_only).gt == {}
    with pytest.raises(St4rError, match="already exists"):
        write_clip(out, synthetic.frames)


def test_clip_validation_errors(tmp_path, synthetic):
    with pytest.raises(St4rError, match="'depth' has shape"):
        write_clip(tmp_path / "bad", synthetic.frames, {"depth": synthetic.depth[:3]})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(St4rError, match="'visible' has shape"):
        write_clip(tmp_path / "bad", synthetic.frames, {"tracks3d": np.zeros((5, 4, 3)), "visible": np.ones((4, 5), bool)})
    with pytest.raises(St4rError, match="not a st4r clip folder"):
        read_clip(tmp_path)


def test_scene_npz_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"tracks3d": rng.normal(size=(6, 3, 3)), "tracks2d": rng.normal(size=(6, 3, 2)),
              "visible": rng.uniform(size=(6, 3)) > 0.5, "query_xy": rng.uniform(0, 8, (6, 2)),
              "query_t": np.zeros(6, int), "sigma": rng.uniform(size=(6, 3)),
              "pointmaps": rng.normal(size=(3, 5, 8, 3)), "conf": rng.uniform(size=(3, 5, 8)),
              "colors": rng.integers(0, 255, (3, 5, 8, 3)).astype(np.uint8),
              "intrinsics": np.eye(3), "cam_c2w": _poses(3), "window": np.arange(3)}
    path = write_scene(tmp_path / "scene.npz", arrays)
    back = read_scene(tmp_path)  # a run directory works too
    assert set(back) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_allclose(back[key], value, rtol=1e-6, atol=1e-6)
    assert back["tracks3d"].dtype == np.float32 and back["query_t"].dtype == np.int32
    with pytest.raises(St4rError, match="'visible' has shape"):
        write_scene(tmp_path / "bad.npz", {**arrays, "visible": np.ones((3, 6), bool)})
    with pytest.raises(St4rError, match="NaN"):
        write_scene(tmp_path / "bad.npz", {**arrays, "cam_c2w": np.full((3, 4, 4), np.nan)})
    with pytest.raises(St4rError, match="nothing to evaluate"):
        write_scene(tmp_path / "bad.npz", {"conf": np.ones((3, 5, 8))})
    assert not (tmp_path / "bad.npz").exists()
    with pytest.raises(St4rError, match="no prediction file"):
        read_scene(tmp_path / "missing")
    assert path.exists()


def test_tapvid3d_round_trip_and_world_frame(tmp_path, synthetic):
    rng = np.random.default_rng(0)
    w2c = np.linalg.inv(_poses(4))
    tracks = rng.uniform([-1, -1, 2], [1, 1, 5], size=(7, 4, 3))
    clip = tapvid3d.TapVid3DClip(frames=synthetic.frames, tracks_cam=tracks, visible=rng.uniform(size=(7, 4)) > 0.3,
                                 fx_fy_cx_cy=np.array([30.0, 31.0, 15.5, 11.5]),
                                 queries_xyt=np.c_[rng.uniform(0, 30, (7, 2)), np.zeros(7)],
                                 extrinsics_w2c=w2c, depth=synthetic.depth)
    tapvid3d.write_tapvid3d(tmp_path / "seq.npz", clip)
    back = tapvid3d.read_tapvid3d(tmp_path / "seq.npz")
    np.testing.assert_allclose(back.tracks_cam, tracks, rtol=1e-6)
    np.testing.assert_array_equal(back.visible, clip.visible)
    np.testing.assert_allclose(back.extrinsics_w2c, w2c, rtol=1e-5, atol=1e-6)
    assert np.abs(back.frames.astype(int) - synthetic.frames).mean() < 12  # JPEG
    gt = tapvid3d.to_clip_gt(back)
    np.testing.assert_allclose(gt["cam_c2w"][0], np.eye(4), atol=1e-5)
    # world = frame-0 camera: at frame 0 the world tracks are the camera-0 tracks
    np.testing.assert_allclose(gt["tracks3d"][:, 0], tracks[:, 0], rtol=1e-5, atol=1e-5)
    # and every frame maps back to its own camera coordinates
    w2c_norm = np.linalg.inv(gt["cam_c2w"].astype(np.float64))
    cam = np.einsum("tij,ntj->nti", w2c_norm[:, :3, :3], gt["tracks3d"]) + w2c_norm[None, :, :3, 3]
    np.testing.assert_allclose(cam, tracks, atol=1e-4)
    assert load_ground_truth(tmp_path / "seq.npz").has("tracks3d", "depth", "cam_c2w")
    with pytest.raises(St4rError, match="not a TAPVid-3D file"):
        np.savez(tmp_path / "other.npz", x=np.zeros(3))
        tapvid3d.read_tapvid3d(tmp_path / "other.npz")


def test_clip_to_tapvid3d_and_back(tmp_path, synthetic):
    gt, _ = synthetic_gt(synthetic, num_tracks=40)
    tapvid3d.write_tapvid3d(tmp_path / "syn.npz", tapvid3d.from_clip_gt(synthetic.frames, gt))
    back = tapvid3d.to_clip_gt(tapvid3d.read_tapvid3d(tmp_path / "syn.npz"))
    np.testing.assert_allclose(back["tracks3d"], gt["tracks3d"], atol=1e-4)   # world = frame-0 camera both
    np.testing.assert_allclose(back["cam_c2w"], gt["cam_c2w"], atol=1e-5)
    np.testing.assert_array_equal(back["visible"], gt["visible"])
    np.testing.assert_allclose(back["query_xy"], gt["query_xy"], atol=1e-4)
    finite = np.isfinite(gt["tracks2d"]).all(-1)
    np.testing.assert_allclose(back["tracks2d"][finite], gt["tracks2d"][finite], atol=1e-2)


def test_tapvid2d_pickle_and_folder_round_trip(tmp_path):
    clip = tapvid2d.read_tapvid_folder(DATA / "davis-mini")
    assert clip.frames.shape == (3, 60, 107, 3) and clip.tracks_xy.shape[1] == 3
    tapvid2d.write_tapvid_pickle(tmp_path / "davis.pkl", [clip])
    (back,) = tapvid2d.read_tapvid_pickle(tmp_path / "davis.pkl")
    np.testing.assert_allclose(back.tracks_xy, clip.tracks_xy, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(back.visible, clip.visible)
    np.testing.assert_array_equal(back.query_t, tapvid2d.first_visible(clip.visible))
    tapvid2d.write_tapvid_folder(tmp_path / "folder", back)
    again = tapvid2d.read_tapvid_folder(tmp_path / "folder")
    np.testing.assert_allclose(again.tracks_xy, clip.tracks_xy, rtol=1e-5, atol=1e-4)
    gt = load_ground_truth(DATA / "davis-mini").gt
    rows = np.arange(len(gt["query_t"]))
    np.testing.assert_array_equal(gt["visible"][rows, gt["query_t"]], True)


def test_sevenscenes_round_trip_and_static_tracks(tmp_path):
    seq = sevenscenes.read_sevenscenes(DATA / "7scenes-mini")
    assert seq.frames.shape == (3, 60, 80, 3) and seq.frame_ids == [0, 4, 8]
    assert seq.depth_m.max() < 10 and seq.valid.mean() > 0.5
    sevenscenes.write_sevenscenes(tmp_path / "seq", seq)
    back = sevenscenes.read_sevenscenes(tmp_path / "seq")
    np.testing.assert_allclose(back.depth_m, seq.depth_m, atol=5e-4)
    np.testing.assert_allclose(back.cam_c2w, seq.cam_c2w, atol=1e-12)
    np.testing.assert_allclose(back.intrinsics, seq.intrinsics)
    np.testing.assert_array_equal(back.frames, seq.frames)  # written as PNG

    gt = sevenscenes.to_clip_gt(seq, grid_step=8)
    assert gt["visible"][:, 0].all() and gt["visible"].mean() > 0.8
    np.testing.assert_allclose(gt["tracks2d"][:, 0], gt["query_xy"], atol=1e-3)


def test_static_tracks_exact_on_synthetic_static_scene():
    clip = render_clip("static-scene", seed=2, num_frames=5, size_hw=(36, 48))
    queries = sevenscenes.grid_queries(clip.valid[0], 4)
    derived = sevenscenes.static_scene_tracks(clip.depth, clip.cam_c2w, clip.intrinsics.astype(float), queries)
    truth = clip.tracks3d_dense[:, queries[:, 1], queries[:, 0]].transpose(1, 0, 2)
    np.testing.assert_allclose(derived["tracks3d"], truth, atol=1e-4)
    agree = derived["visible"] == clip.visible_dense[:, queries[:, 1], queries[:, 0]].T
    assert agree.mean() > 0.97   # the depth test vs the renderer's exact z-buffer (pixel rounding at edges)


def test_tum_round_trip(tmp_path):
    poses = _poses(5)
    tum.write_tum(tmp_path / "traj.txt", poses, timestamps=np.arange(5) * 0.1)
    stamps, back = tum.read_tum(tmp_path / "traj.txt")
    np.testing.assert_allclose(stamps, np.arange(5) * 0.1)
    np.testing.assert_allclose(back, poses, atol=1e-8)
    first = (tmp_path / "traj.txt").read_text().splitlines()[1].split()
    assert len(first) == 8 and float(first[-1]) >= 0  # qw last, non-negative
    (tmp_path / "bad.txt").write_text("0 1 2\n")
    with pytest.raises(St4rError, match="expected 8 values"):
        tum.read_tum(tmp_path / "bad.txt")
