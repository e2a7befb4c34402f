"""`st4r export --rrd`: the Rerun recording, read back with rerun's own reader (rerun.chunk.RrdReader),
holds the frames, each frame's confident points split by the dynamic mask, the cameras (pose, pinhole,
image) and the track trails; a missing rerun-sdk is a one-line error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import write_scene
from st4r_cli.stages.export import ExportConfig, frame_points

T, H, W, N = 4, 8, 12, 6
K = np.array([[10.0, 0, (W - 1) / 2], [0, 11.0, (H - 1) / 2], [0, 0, 1]])
STAMPS = np.array([0.0, 0.04, 0.08, 0.12])
NEED_RERUN = "rerun-sdk is not installed (pip install -e '.[rerun]'); the .rrd cannot be written or read"


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _scene(dynamic: bool = True, gap: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    cam_c2w = np.stack([np.eye(4) for _ in range(T)])
    for t in range(T):
        cam_c2w[t, :3, :3] = _rot([0.3, 1.0, -0.2], 0.1 * t)
        cam_c2w[t, :3, 3] = [0.2 * t, -0.05 * t, 0.1 * t]
    ys, xs = np.mgrid[0:H, 0:W].astype(float)
    pointmaps = np.zeros((T, H, W, 3))
    mask = np.zeros((T, H, W), bool)
    for t in range(T):
        depth = 4.0 + 0.1 * xs - 0.05 * ys
        mask[t, 2:5, 2 + 2 * t:6 + 2 * t] = True                     # a patch moving right
        depth[mask[t]] -= 1.0
        cam = np.stack([(xs - K[0, 2]) / K[0, 0] * depth, (ys - K[1, 2]) / K[1, 1] * depth, depth], -1)
        pointmaps[t] = cam @ cam_c2w[t, :3, :3].T + cam_c2w[t, :3, 3]
    tracks3d = rng.normal(size=(N, T, 3))
    if gap:   # a gap in track 0 (scene.npz files hold none; the exporter skips non-finite points anyway)
        tracks3d[0, 1] = np.nan
    visible = np.ones((N, T), bool)
    visible[1, 2] = False
    scene = {"pointmaps": pointmaps.astype(np.float32), "conf": rng.uniform(1, 5, (T, H, W)).astype(np.float32),
             "colors": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), "intrinsics": K.astype(np.float32),
             "cam_c2w": cam_c2w.astype(np.float32), "tracks3d": tracks3d.astype(np.float32), "visible": visible,
             "query_xy": rng.uniform(0, W - 1, (N, 2)).astype(np.float32)}
    if dynamic:
        scene["dynamic_mask"] = mask
    return scene


def _read_rrd(path):
    """{entity path: {"static": {column: value}, "frames": {frame: {column: value}}}} via rerun's reader."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    assert len(reader.recordings()) == 1
    entities: dict[str, dict] = {}
    for chunk in reader.stream():
        batch = chunk.to_record_batch()
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names
                   if name != "rerun.controls.RowId"}
        entry = entities.setdefault(chunk.entity_path, {"static": {}, "frames": {}})
        for row in range(batch.num_rows):
            values = {name: column[row] for name, column in columns.items()}
            if chunk.is_static:
                entry["static"].update(values)
            else:
                entry["frames"].setdefault(values["frame"], {}).update(values)
    return entities


def _mat3(flat_columns):
    """Rerun's Mat3x3 is stored column by column."""
    return np.asarray(flat_columns, np.float64).reshape(3, 3).T


def test_rrd_holds_points_cameras_and_tracks(tmp_path):
    pytest.importorskip("rerun", reason=NEED_RERUN)
    from st4r_cli.stages.export_rerun import export_rrd

    scene = _scene(gap=True)
    config = ExportConfig(conf_quantile=0.25)
    path = export_rrd(scene, tmp_path / "scene.rrd", config, timestamps=STAMPS)
    assert path == tmp_path / "scene.rrd" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.rrd"]          # no temp file left
    rrd = _read_rrd(path)

    for entity in ("/world", "/world/points/static", "/world/points/dynamic", "/world/camera",
                   "/world/camera/image", "/world/camera_path", "/world/tracks/trails", "/world/tracks/heads"):
        assert entity in rrd, (entity, sorted(rrd))
    assert "/world/points/all" not in rrd
    for entity in ("/world/points/static", "/world/points/dynamic", "/world/camera", "/world/camera/image",
                   "/world/tracks/trails"):
        frames = rrd[entity]["frames"]
        assert sorted(frames) == list(range(T)), entity                         # T frames on `frame`
        times = [frames[t]["time"].total_seconds() for t in range(T)]           # and `time` in seconds
        assert np.allclose(times, STAMPS, atol=1e-9), entity
    assert rrd["/world"]["static"]["ViewCoordinates:xyz"] == [[3, 2, 5]]      # Right, Down, Forward

    for t in (0, 2):   # points: the frame's confident pixels, split by the dynamic mask
        conf = scene["conf"][t]
        confident = conf >= np.quantile(conf, config.conf_quantile)
        static = np.asarray(rrd["/world/points/static"]["frames"][t]["Points3D:positions"])
        dynamic = np.asarray(rrd["/world/points/dynamic"]["frames"][t]["Points3D:positions"])
        assert len(static) + len(dynamic) == confident.sum()
        assert len(dynamic) == (confident & scene["dynamic_mask"][t]).sum() > 0
        xyz, _, _, pixel = frame_points(scene, t, config.conf_quantile)
        moving = scene["dynamic_mask"][t][pixel[:, 1].astype(int), pixel[:, 0].astype(int)]
        assert np.allclose(static, xyz[~moving], atol=1e-6) and np.allclose(dynamic, xyz[moving], atol=1e-6)
        colors = np.asarray(rrd["/world/points/dynamic"]["frames"][t]["Points3D:colors"], np.uint32)
        expected = scene["colors"][t][confident & scene["dynamic_mask"][t]].astype(np.uint32)
        assert np.array_equal(colors, (expected[:, 0] << 24) | (expected[:, 1] << 16) | (expected[:, 2] << 8) | 255)

    camera = rrd["/world/camera"]["frames"][2]          # camera to world, as cam_c2w
    pose = np.eye(4)
    pose[:3, :3] = _mat3(camera["Transform3D:mat3x3"][0])
    pose[:3, 3] = camera["Transform3D:translation"][0]
    assert np.allclose(pose, scene["cam_c2w"][2], atol=1e-6)
    pinhole = rrd["/world/camera/image"]["static"]      # shared K, Rerun's pixel centres at +0.5
    k_rr = _mat3(pinhole["Pinhole:image_from_camera"][0])
    assert np.allclose(k_rr, K + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), atol=1e-6)
    assert pinhole["Pinhole:resolution"] == [[W, H]] and pinhole["Pinhole:camera_xyz"] == [[3, 2, 5]]
    image = rrd["/world/camera/image"]["frames"][2]
    assert image["Image:format"][0]["width"] == W and image["Image:format"][0]["height"] == H
    assert np.array_equal(np.asarray(image["Image:buffer"][0], np.uint8), scene["colors"][2].reshape(-1))

    trails = rrd["/world/tracks/trails"]["frames"]
    assert trails[0]["LineStrips3D:strips"] == []                            # one point is no trail yet
    strips = [np.asarray(s) for s in trails[2]["LineStrips3D:strips"]]
    assert len(strips) == N and len(strips[0]) == 2 and all(len(s) == 3 for s in strips[1:])  # track 0's gap
    assert np.allclose(strips[0], scene["tracks3d"][0, [0, 2]], atol=1e-6)
    assert np.allclose(strips[3], scene["tracks3d"][3, :3], atol=1e-6)
    heads = np.asarray(rrd["/world/tracks/heads"]["frames"][2]["Points3D:positions"])
    assert np.allclose(heads, scene["tracks3d"][[0, 2, 3, 4, 5], 2], atol=1e-6)   # track 1 is occluded at 2
    path_strip = np.asarray(rrd["/world/camera_path"]["static"]["LineStrips3D:strips"][0])
    assert np.allclose(path_strip, scene["cam_c2w"][:, :3, 3], atol=1e-6)


def test_rrd_without_mask_or_timestamps_and_per_frame_intrinsics(tmp_path):
    pytest.importorskip("rerun", reason=NEED_RERUN)
    from st4r_cli.stages.export_rerun import export_rrd

    scene = _scene(dynamic=False)
    scene["intrinsics"] = np.stack([K * [[1 + 0.1 * t], [1 + 0.1 * t], [1]] for t in range(T)]).astype(np.float32)
    scene["image_hw"] = np.array([2 * H, 2 * W])        # K refers to frames twice the pointmaps' size
    rrd = _read_rrd(export_rrd(scene, tmp_path / "scene.rrd", ExportConfig(conf_quantile=0.0)))
    assert "/world/points/all" in rrd and "/world/points/static" not in rrd
    frames = rrd["/world/points/all"]["frames"]
    assert sorted(frames) == list(range(T)) and all("time" not in row for row in frames.values())
    assert len(frames[1]["Points3D:positions"]) == H * W
    k_rr = _mat3(rrd["/world/camera/image"]["frames"][3]["Pinhole:image_from_camera"][0])
    k_expected = np.diag([0.5, 0.5, 1.0]) @ (scene["intrinsics"][3] + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])
    assert np.allclose(k_rr, k_expected, atol=1e-5)


def test_cli_rrd_writes_scene_rrd_and_lists_it(tmp_path):
    pytest.importorskip("rerun", reason=NEED_RERUN)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", _scene())
    assert cli_run(["export", str(run_dir), "--rrd", "-q"]) == 0
    out = run_dir / "export"
    assert sorted(p.name for p in out.iterdir()) == ["scene.rrd", "st4r-export.json"]   # --rrd alone: only it
    assert json.loads((out / "st4r-export.json").read_text())["files"] == ["scene.rrd"]
    assert "/world/points/dynamic" in _read_rrd(out / "scene.rrd")


def test_missing_rerun_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", _scene())
    monkeypatch.setitem(sys.modules, "rerun", None)      # `import rerun` raises ImportError
    code = cli_run(["export", str(run_dir), "--rrd", "--tum", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "rerun-sdk" in err and 'pip install -e ".[rerun]"' in err
    assert not (run_dir / "export" / "trajectory_tum.txt").exists()      # it fails before writing anything
