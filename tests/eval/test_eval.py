"""`st4r eval`: perfect on ground truth, moved by perturbations as each metric's definition says,
clear errors on mismatched inputs; `st4r synth` writes clips eval reads."""

import json
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.cli.app import run as cli_run
from st4r_cli.errors import St4rError
from st4r_cli.eval.evaluate import evaluate_clip
from st4r_cli.formats import load_ground_truth
from st4r_cli.formats.clip import Clip
from st4r_cli.formats.scene import write_scene
from st4r_cli.synthetic.scene import axis_angle_to_matrix

DATA = Path(__file__).resolve().parents[1] / "data" / "formats"


def scene_from_gt(clip: Clip) -> dict[str, np.ndarray]:
    """A perfect prediction: the ground truth re-expressed in the scene.npz contract."""
    gt = clip.gt
    c2w = gt["cam_c2w"].astype(np.float64)
    w2c0 = np.linalg.inv(c2w[0])
    poses = w2c0[None] @ c2w
    T, H, W = gt["depth"].shape
    K = gt["intrinsics"].astype(np.float64)
    ys, xs = np.mgrid[0:H, 0:W]
    z = gt["depth"].astype(np.float64)
    cam = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    points = np.einsum("tij,thwj->thwi", poses[:, :3, :3], cam) + poses[:, None, None, :3, 3]
    scene = {"pointmaps": points, "conf": np.ones((T, H, W)), "colors": clip.frames, "intrinsics": K,
             "cam_c2w": poses}
    if "tracks3d" in gt:
        scene.update(tracks3d=gt["tracks3d"] @ w2c0[:3, :3].T + w2c0[:3, 3], tracks2d=gt["tracks2d"],
                     visible=gt["visible"], query_xy=gt["query_xy"], query_t=gt["query_t"])
    return scene


def transform_scene(scene, scale=1.0, rotation=np.eye(3), translation=np.zeros(3)):
    """The same prediction in another world frame/scale (a similarity of everything)."""
    out = dict(scene)
    out["tracks3d"] = scale * scene["tracks3d"] @ rotation.T + translation
    out["pointmaps"] = scale * scene["pointmaps"] @ rotation.T + translation
    poses = scene["cam_c2w"].copy()
    poses[:, :3, :3] = rotation @ poses[:, :3, :3]
    poses[:, :3, 3] = scale * poses[:, :3, 3] @ rotation.T + translation
    out["cam_c2w"] = poses
    return out


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for preset, seed in (("mixed", 4), ("occlusion", 1)):
        assert cli_run(["synth", str(root / f"{preset}-{seed}"), "--preset", preset, "--seed", str(seed),
                        "--frames", "6", "--size", "64x48", "--tracks", "300", "-q"]) == 0
    return root


@pytest.fixture(scope="module")
def clip(synth_dir):
    return load_ground_truth(synth_dir / "occlusion-1", load_frames=True)


def test_ground_truth_scores_perfectly(clip):
    m = evaluate_clip(scene_from_gt(clip), clip).metrics
    assert m["tracks/matched"] == 300
    for key in ("worldtrack/global/apd", "worldtrack/sim3/apd", "worldtrack/per_traj/apd", "worldtrack/global/apd_rel",
                "worldtrack/global_dyn/apd", "tapvid3d/average_jaccard", "tapvid3d/occlusion_accuracy",
                "tapvid2d/average_jaccard", "tapvid2d/average_pts_within_thresh", "depth/median/delta_1.25"):
        assert m[key] == pytest.approx(1.0), key
    for key in ("worldtrack/global/epe", "depth/median/abs_rel", "depth/scale_shift/abs_rel", "camera/ate",
                "camera/rpe_trans", "camera/rpe_rot"):
        assert m[key] == pytest.approx(0.0, abs=1e-4), key
    assert m["worldtrack/num_dynamic"] > 0


def test_scale_and_rigid_motion_move_only_the_metrics_they_should(clip):
    perfect = scene_from_gt(clip)
    scaled = evaluate_clip(transform_scene(perfect, scale=3.0), clip).metrics
    assert scaled["worldtrack/global/apd"] == pytest.approx(1.0)       # median scaling undoes a scale
    assert scaled["camera/ate"] == pytest.approx(0.0, abs=1e-4)
    assert scaled["depth/median/abs_rel"] == pytest.approx(0.0, abs=1e-5)
    rotation = axis_angle_to_matrix(np.array([0.0, 1.0, 0.2]), np.array([0.4]))[0]
    moved = evaluate_clip(transform_scene(perfect, 1.0, rotation, np.array([0.5, 0.0, 1.0])), clip).metrics
    assert moved["worldtrack/sim3/apd"] == pytest.approx(1.0)          # Sim(3) undoes a rigid motion
    assert moved["worldtrack/global/apd"] < 0.8                        # median scaling cannot
    assert moved["camera/ate"] == pytest.approx(0.0, abs=1e-4)         # trajectories are Sim(3)-aligned
    assert moved["depth/median/abs_rel"] == pytest.approx(0.0, abs=1e-5)  # depth is in each camera
    assert moved["tapvid2d/average_jaccard"] == pytest.approx(1.0)


def test_noise_degrades_each_metric(clip):
    perfect = scene_from_gt(clip)
    rng = np.random.default_rng(0)
    last = None
    for sigma in (0.02, 0.2, 1.0):
        noisy = dict(perfect)
        noisy["tracks3d"] = perfect["tracks3d"] + rng.normal(scale=sigma, size=perfect["tracks3d"].shape)
        noisy["tracks2d"] = perfect["tracks2d"] + rng.normal(scale=10 * sigma, size=perfect["tracks2d"].shape)
        noisy["pointmaps"] = perfect["pointmaps"] * np.exp(rng.normal(scale=sigma / 4, size=perfect["pointmaps"].shape[:3]))[..., None]
        poses = perfect["cam_c2w"].copy()
        poses[:, :3, 3] += rng.normal(scale=sigma / 4, size=(len(poses), 3))
        noisy["cam_c2w"] = poses
        m = evaluate_clip(noisy, clip).metrics
        if last is not None:
            assert m["worldtrack/global/epe"] > last["worldtrack/global/epe"]
            assert m["worldtrack/global/apd"] < last["worldtrack/global/apd"]
            assert m["tapvid2d/average_jaccard"] < last["tapvid2d/average_jaccard"]
            assert m["depth/median/abs_rel"] > last["depth/median/abs_rel"]
            assert m["camera/ate"] > last["camera/ate"]
        last = m
    flipped = dict(perfect, visible=~perfect["visible"])
    m = evaluate_clip(flipped, clip).metrics
    assert m["tapvid2d/occlusion_accuracy"] == 0.0 and m["worldtrack/global/apd"] == pytest.approx(1.0)


def test_mismatches_give_clear_errors(clip):
    perfect = scene_from_gt(clip)
    dropped = {k: (v[:, :-1] if k in ("tracks3d", "tracks2d", "visible") else v[:-1]) if k not in
               ("intrinsics", "query_xy", "query_t") else v for k, v in perfect.items()}
    with pytest.raises(St4rError, match="5 frames but the ground truth .* has 6"):
        evaluate_clip(dropped, clip)
    wide = dict(perfect, image_hw=np.array([48, 96]))
    with pytest.raises(St4rError, match="different aspect ratio"):
        evaluate_clip(wide, clip)
    only_camera = {"cam_c2w": perfect["cam_c2w"]}
    result = evaluate_clip(only_camera, clip)
    assert set(k.split("/")[0] for k in result.metrics) == {"camera"}
    assert any("no tracks" in n for n in result.notes) and any("depth metrics skipped" in n for n in result.notes)
    bare = Clip(frames=clip.frames, gt={}, name="bare")
    with pytest.raises(St4rError, match="nothing to evaluate"):
        evaluate_clip(only_camera, bare)
    far = dict(perfect, query_xy=perfect["query_xy"] + 1000.0)
    far_result = evaluate_clip(far, clip)
    assert "worldtrack/global/apd" not in far_result.metrics
    assert any("within 1 px" in n for n in far_result.notes)


def test_in_memory_synthetic_clip_matches_the_written_one(clip):
    from st4r_cli.formats.clip import clip_from_synthetic
    from st4r_cli.synthetic import render_clip

    rendered = render_clip("occlusion", seed=1, num_frames=6, size_hw=(48, 64))
    in_memory = clip_from_synthetic(rendered, num_tracks=300, seed=1)
    for key, value in clip.gt.items():
        np.testing.assert_array_equal(in_memory.gt[key], value)
    assert evaluate_clip(scene_from_gt(in_memory), in_memory).metrics["worldtrack/global/apd"] == 1.0


def test_half_resolution_prediction_is_rescaled(clip):
    perfect = scene_from_gt(clip)
    half = dict(perfect)
    half["pointmaps"] = perfect["pointmaps"][:, ::2, ::2]  # a 32x24 prediction (nearest samples)
    half["conf"] = perfect["conf"][:, ::2, ::2]
    half["colors"] = perfect["colors"][:, ::2, ::2]
    # corners aligned, pixel centres at integers: ground-truth x = 2 x_half + 0.5
    half["tracks2d"] = (perfect["tracks2d"] - 0.5) / 2.0
    half["query_xy"] = (perfect["query_xy"] - 0.5) / 2.0
    result = evaluate_clip(half, clip)
    assert any("rescaled" in n for n in result.notes)
    assert result.metrics["tracks/matched"] == 300
    assert result.metrics["tapvid2d/average_jaccard"] == pytest.approx(1.0)
    assert result.metrics["depth/median/delta_1.25"] > 0.9


def test_cli_directory_of_clips(tmp_path, synth_dir):
    runs = tmp_path / "runs"
    for name in ("mixed-4", "occlusion-1"):
        clip = load_ground_truth(synth_dir / name, load_frames=True)
        (runs / name).mkdir(parents=True)
        write_scene(runs / name / "scene.npz", scene_from_gt(clip))
    assert cli_run(["eval", str(runs), "--gt", str(synth_dir), "-q"]) == 0
    report = json.loads((runs / "metrics.json").read_text())
    assert set(report["clips"]) == {"mixed-4", "occlusion-1"}
    assert report["mean"]["worldtrack/global/apd"] == pytest.approx(1.0)
    (runs / "mixed-4" / "scene.npz").unlink()
    assert cli_run(["eval", str(runs), "--gt", str(synth_dir), "-q"]) != 0
    assert cli_run(["eval", str(runs / "occlusion-1" / "scene.npz"), "--gt", str(synth_dir / "occlusion-1"),
                    "-q", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["mean"]["camera/ate"] == pytest.approx(0.0, abs=1e-4)
    assert cli_run(["eval", str(tmp_path / "nope"), "--gt", str(synth_dir / "occlusion-1")]) != 0


def test_static_scene_ground_truth_follows_the_prediction_queries():
    from st4r_cli.formats.sevenscenes import static_scene_tracks

    seven = load_ground_truth(DATA / "7scenes-mini", load_frames=True)
    perfect = scene_from_gt(seven)
    # the prediction tracks its own grid (not the ground truth's): exact static tracks at those pixels
    ys, xs = np.mgrid[3:60:5, 3:80:5]
    queries = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float)
    queries = queries[seven.gt["depth"][0][ys.ravel(), xs.ravel()] > 0]
    own = static_scene_tracks(seven.gt["depth"], seven.gt["cam_c2w"], seven.gt["intrinsics"].astype(float), queries)
    scene = dict(perfect, tracks3d=own["tracks3d"], tracks2d=own["tracks2d"], visible=own["visible"],
                 query_xy=own["query_xy"], query_t=own["query_t"])
    result = evaluate_clip(scene, seven)
    assert any("static scene" in n for n in result.notes)
    assert result.metrics["tracks/matched"] > 0.7 * len(queries)    # depth edges are left out
    assert result.metrics["worldtrack/global/apd"] == pytest.approx(1.0)
    moved = dict(scene, tracks3d=scene["tracks3d"] + np.array([0.0, 0.0, 0.2]))
    assert evaluate_clip(moved, seven).metrics["worldtrack/global/epe"] > 0.05


def test_dense_ground_truth_follows_the_prediction_queries():
    from st4r_cli.formats.clip import clip_from_synthetic
    from st4r_cli.synthetic import render_clip, sample_tracks

    rendered = render_clip("fast-motion", seed=2, num_frames=5, size_hw=(48, 64))
    dense = clip_from_synthetic(rendered, num_tracks=50, seed=0, dense=True)
    grid = sample_tracks(rendered, 200, mode="grid")          # the prediction's own query grid
    perfect = scene_from_gt(dense)
    scene = dict(perfect, tracks3d=grid.tracks3d, tracks2d=grid.tracks2d, visible=grid.visible,
                 query_xy=grid.query_xy, query_t=grid.query_t)
    result = evaluate_clip(scene, dense)
    assert any("dense ground truth" in n for n in result.notes)
    assert result.metrics["tracks/matched"] == len(grid.query_t)
    for key in ("worldtrack/global/apd", "worldtrack/global_dyn/apd", "tapvid2d/average_jaccard",
                "tapvid3d/average_jaccard"):
        assert result.metrics[key] == pytest.approx(1.0), key
    noisy = dict(scene, tracks3d=grid.tracks3d + 0.3)
    assert evaluate_clip(noisy, dense).metrics["worldtrack/sim3/apd"] == pytest.approx(1.0)   # a translation
    assert evaluate_clip(noisy, dense).metrics["worldtrack/global/apd"] < 1.0


def test_real_benchmark_layouts(tmp_path):
    seven = load_ground_truth(DATA / "7scenes-mini", load_frames=True)
    m = evaluate_clip(scene_from_gt(seven), seven).metrics
    assert m["camera/ate"] == pytest.approx(0.0, abs=1e-4) and m["worldtrack/global/apd"] == pytest.approx(1.0)
    assert m["depth/median/abs_rel"] == pytest.approx(0.0, abs=1e-5)
    davis = load_ground_truth(DATA / "davis-mini")
    gt = davis.gt
    rng = np.random.default_rng(0)
    prediction = {"tracks2d": gt["tracks2d"] + rng.normal(scale=0.5, size=gt["tracks2d"].shape),
                  "visible": gt["visible"], "query_xy": gt["query_xy"], "query_t": gt["query_t"]}
    m = evaluate_clip(prediction, davis).metrics
    assert 0.5 < m["tapvid2d/average_pts_within_thresh"] < 1.0 and m["tapvid2d/occlusion_accuracy"] == 1.0
    assert set(k.split("/")[0] for k in m) == {"tracks", "tapvid2d"}


def test_tapvid_pickle_ground_truth(tmp_path):
    from dataclasses import replace

    from st4r_cli.formats import tapvid2d

    clip = tapvid2d.read_tapvid_folder(DATA / "davis-mini")
    videos = [replace(clip, name="first"), replace(clip, name="second")]
    tapvid2d.write_tapvid_pickle(tmp_path / "davis.pkl", videos)
    runs = tmp_path / "runs"
    for video, offset in zip(videos, (0.0, 3.0)):
        gt = tapvid2d.to_clip_gt(video)
        (runs / video.name).mkdir(parents=True)
        write_scene(runs / video.name / "scene.npz", {
            "tracks2d": gt["tracks2d"] + np.array([offset * 107 / 256, 0.0]), "visible": gt["visible"],
            "query_xy": gt["query_xy"], "query_t": gt["query_t"]})
    assert cli_run(["eval", str(runs), "--gt", str(tmp_path / "davis.pkl"), "-q"]) == 0
    report = json.loads((runs / "metrics.json").read_text())["clips"]
    assert report["first"]["metrics"]["tapvid2d/average_pts_within_thresh"] == pytest.approx(1.0)
    # a 3 px error at 256 px: within 4, 8, 16 but not 1, 2 -> 3/5 on the frames after each query
    assert report["second"]["metrics"]["tapvid2d/average_pts_within_thresh"] == pytest.approx(0.6, abs=1e-6)
