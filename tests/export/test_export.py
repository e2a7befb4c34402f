"""Every export format round-trips: trimesh reads the PLY/GLB, our COLMAP reader and the TUM reader
read back the exact cameras, and static tracks reproject onto their COLMAP observations."""

import numpy as np
import pytest
import trimesh

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import read_scene, write_scene
from st4r_cli.formats.tum import quaternion_xyzw_to_rotation, read_tum
from st4r_cli.stages.export import (ExportConfig, export_scene, frame_points, frustum_segments,
                                    read_colmap_text)

T, H, W = 4, 6, 8
K = np.array([[9.0, 0, (W - 1) / 2], [0, 9.0, (H - 1) / 2], [0, 0, 1]])


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _scene():
    rng = np.random.default_rng(0)
    cam_c2w = np.stack([np.eye(4) for _ in range(T)])
    for t in range(T):
        cam_c2w[t, :3, :3] = _rot([0.2, 1.0, 0.1], 0.05 * t)
        cam_c2w[t, :3, 3] = [0.1 * t, -0.02 * t, 0.03 * t]
    ys, xs = np.mgrid[0:H, 0:W].astype(float)
    pointmaps = np.zeros((T, H, W, 3))
    for t in range(T):
        depth = 3.0 + 0.1 * xs + 0.05 * ys
        cam = np.stack([(xs - K[0, 2]) / K[0, 0] * depth, (ys - K[1, 2]) / K[1, 1] * depth, depth], -1)
        pointmaps[t] = cam @ cam_c2w[t, :3, :3].T + cam_c2w[t, :3, 3]
    # static tracks: frame-0 points, exactly projected into every camera
    query_xy = np.array([[1.0, 1.0], [4.0, 2.0], [6.0, 4.0]])
    tracks3d = np.repeat(pointmaps[0][query_xy[:, 1].astype(int), query_xy[:, 0].astype(int)][:, None], T, 1)
    tracks2d = np.zeros((3, T, 2))
    for t in range(T):
        w2c = np.linalg.inv(cam_c2w[t])
        cam = tracks3d[:, t] @ w2c[:3, :3].T + w2c[:3, 3]
        tracks2d[:, t] = cam[:, :2] / cam[:, 2:] * K[0, 0] + K[:2, 2]
    visible = np.ones((3, T), bool)
    visible[2, 3] = False
    return {"pointmaps": pointmaps.astype(np.float32), "conf": rng.uniform(1, 5, (T, H, W)).astype(np.float32),
            "colors": rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), "intrinsics": K.astype(np.float32),
            "cam_c2w": cam_c2w.astype(np.float32), "tracks3d": tracks3d.astype(np.float32),
            "tracks2d": tracks2d.astype(np.float32), "visible": visible,
            "query_xy": query_xy.astype(np.float32), "query_t": np.zeros(3, np.int32),
            "sigma": np.ones((3, T), np.float32)}


def test_ply_round_trip(tmp_path):
    scene = _scene()
    export_scene(scene, tmp_path, ["ply"], ExportConfig(conf_quantile=0.5, axes="opencv"))   # st4r's own world
    for t in (0, 3):
        cloud = trimesh.load(tmp_path / "ply" / f"frame_{t:05d}.ply")
        xyz, rgb, conf, _ = frame_points(scene, t, 0.5)
        assert len(cloud.vertices) == len(xyz) == (scene["conf"][t] >= np.quantile(scene["conf"][t], 0.5)).sum()
        assert np.allclose(cloud.vertices, xyz, atol=1e-6)
        assert np.array_equal(np.asarray(cloud.colors)[:, :3], rgb)
    acc = trimesh.load(tmp_path / "ply" / "accumulated.ply")
    assert len(acc.vertices) == sum(len(frame_points(scene, t, 0.5)[0]) for t in range(T))


def _glb_json(path):
    import json
    import struct

    data = path.read_bytes()
    length, kind = struct.unpack("<II", data[12:20])
    assert data[:4] == b"glTF" and kind == 0x4E4F534A
    return json.loads(data[20:20 + length])


def test_glb_is_in_gltf_axes_with_one_node_per_frame(tmp_path):
    scene = _scene()
    export_scene(scene, tmp_path, ["glb"], ExportConfig(conf_quantile=0.0))
    glb = trimesh.load(tmp_path / "scene.glb")
    names = set(glb.geometry)
    assert {f"frame_{t:05d}" for t in range(T)} | {"cameras", "camera_path", "tracks"} == names
    flip = np.array([1.0, -1.0, -1.0])  # OpenCV -> glTF axes
    for t in range(T):
        cloud = glb.geometry[f"frame_{t:05d}"]
        assert len(cloud.vertices) == H * W
        expected = scene["pointmaps"][t].reshape(-1, 3) * flip
        assert np.allclose(np.sort(cloud.vertices, axis=0), np.sort(expected, axis=0), atol=1e-5)
    # the scene lies in front of camera 0, which looks down -z in glTF
    assert (glb.geometry["frame_00000"].vertices[:, 2] < 0).all()
    tracks = glb.geometry["tracks"]
    assert np.allclose(np.unique(np.round(tracks.vertices, 5), axis=0),
                       np.unique(np.round(scene["tracks3d"].reshape(-1, 3) * flip, 5), axis=0), atol=1e-5)
    cams = glb.geometry["cameras"]
    for c in scene["cam_c2w"][:, :3, 3] * flip:  # each camera centre is a frustum vertex
        assert np.min(np.linalg.norm(cams.vertices - c, axis=1)) < 1e-5
    # time: frame 0 shown by default, an animation shows frame t during [t / fps, (t + 1) / fps)
    doc = _glb_json(tmp_path / "scene.glb")
    nodes = {node["name"]: i for i, node in enumerate(doc["nodes"])}
    assert doc["nodes"][nodes["frame_00001"]].get("scale") == [0.0, 0.0, 0.0]
    assert "scale" not in doc["nodes"][nodes["frame_00000"]]
    (animation,) = doc["animations"]
    assert sorted(c["target"]["node"] for c in animation["channels"]) == sorted(nodes[f"frame_{t:05d}"] for t in range(T))
    assert all(s["interpolation"] == "STEP" for s in animation["samplers"])


def test_glb_floor_is_below_the_cameras_in_gltf(tmp_path):
    """A floor 1 unit below the OpenCV cameras (y = +1, y down) must end up at y = -1 in glTF (y up)."""
    scene = _scene()
    pts = scene["pointmaps"].copy()
    pts[..., 1] = 1.0
    scene["pointmaps"] = pts
    export_scene(scene, tmp_path, ["glb"], ExportConfig(conf_quantile=0.0))
    glb = trimesh.load(tmp_path / "scene.glb")
    floor_y = glb.geometry["frame_00000"].vertices[:, 1]
    assert np.allclose(floor_y, -1.0)
    camera_y = scene["cam_c2w"][:, 1, 3] * -1
    assert (camera_y > floor_y.max()).all()


def test_frustum_geometry():
    pose = np.eye(4)
    seg = frustum_segments(pose[None], K, (H, W), depth=2.0)
    assert seg.shape == (8, 2, 3)
    corner = seg[0, 1]  # top-left image corner (-0.5, -0.5) at depth 2
    assert np.allclose(corner, [(-0.5 - K[0, 2]) / 9 * 2, (-0.5 - K[1, 2]) / 9 * 2, 2.0])


def test_tum_round_trip(tmp_path):
    scene = _scene()
    stamps = np.arange(T) / 30.0
    export_scene(scene, tmp_path, ["tum"], ExportConfig(), timestamps=stamps)
    read_stamps, poses = read_tum(tmp_path / "trajectory_tum.txt")
    assert np.allclose(read_stamps, stamps)
    assert np.allclose(poses, scene["cam_c2w"], atol=1e-6)


def _moving_scene():
    """_scene() plus a fourth track that moves in the world (its 2D track follows it)."""
    scene = _scene()
    moving = scene["tracks3d"][:1].astype(np.float64).copy()
    moving[0] += np.arange(T)[:, None] * np.array([0.3, 0.1, 0.0])
    tracks2d = np.zeros((1, T, 2))
    for t in range(T):
        w2c = np.linalg.inv(scene["cam_c2w"][t].astype(np.float64))
        cam = moving[:, t] @ w2c[:3, :3].T + w2c[:3, 3]
        tracks2d[:, t] = cam[:, :2] / cam[:, 2:] * K[0, 0] + K[:2, 2]
    for key, extra in (("tracks3d", moving), ("tracks2d", tracks2d), ("visible", np.ones((1, T), bool)),
                       ("query_xy", tracks2d[:, 0]), ("query_t", np.zeros(1)), ("sigma", np.ones((1, T)))):
        scene[key] = np.concatenate([scene[key], extra.astype(scene[key].dtype)])
    return scene


def test_colmap_round_trip_static_points_only(tmp_path):
    scene = _moving_scene()
    export_scene(scene, tmp_path, ["colmap"], ExportConfig(conf_quantile=0.0))
    model = read_colmap_text(tmp_path / "colmap" / "sparse" / "0")
    (cam_model, width, height, params), = model["cameras"].values()
    assert (cam_model, width, height) == ("PINHOLE", W, H)
    assert np.allclose(params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])  # COLMAP pixel centres
    assert sorted(model["images"]) == [1, 2, 3, 4]
    for image_id, image in model["images"].items():
        q_wxyz = image["q_wxyz"]
        rot = quaternion_xyzw_to_rotation(np.array([[*q_wxyz[1:], q_wxyz[0]]]))[0]
        w2c = np.linalg.inv(scene["cam_c2w"][image_id - 1].astype(np.float64))
        assert np.allclose(rot, w2c[:3, :3], atol=1e-6) and np.allclose(image["t"], w2c[:3, 3], atol=1e-6)
        assert (tmp_path / "colmap" / "images" / image["name"]).is_file()
        for xy, pid in zip(image["xys"], image["point3d_ids"]):  # observations = the tracker's positions
            t = image_id - 1
            assert np.min(np.linalg.norm(scene["tracks2d"][:3, t] + 0.5 - xy, axis=1)) < 1e-3
    # the moving track is left out; the 3 static ones are seen in >= 2 images (track 2 hidden in frame 3)
    assert len(model["points"]) == 3
    assert sorted(len(p["track"]) for p in model["points"].values()) == [3, 4, 4]
    for pid, point in model["points"].items():
        assert point["error"] < 1e-3  # exact synthetic tracks reproject exactly
        for image_id, idx in point["track"]:
            assert model["images"][image_id]["point3d_ids"][idx] == pid


def test_colmap_pycolmap_reads_it_with_real_errors_at_original_resolution(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    scene = _moving_scene()
    rng = np.random.default_rng(1)
    scene["tracks2d"] = scene["tracks2d"] + rng.normal(0, 0.3, scene["tracks2d"].shape).astype(np.float32)
    original = {"frames": np.zeros((T, 3 * H, 3 * W, 3), np.uint8), "orig_hw": np.array([3 * H, 3 * W])}
    from st4r_cli.stages.export import export_colmap

    export_colmap(scene, tmp_path / "colmap", ExportConfig(), original=original)
    rec = pycolmap.Reconstruction(str(tmp_path / "colmap" / "sparse" / "0"))
    cam = rec.cameras[1]
    assert (cam.width, cam.height) == (3 * W, 3 * H)
    assert np.allclose(cam.params, [3 * K[0, 0], 3 * K[1, 1], 3 * (K[0, 2] + 0.5), 3 * (K[1, 2] + 0.5)])
    assert rec.num_points3D() == 3 and all(p.track.length() >= 2 for p in rec.points3D.values())
    written = {pid: p.error for pid, p in rec.points3D.items()}
    assert max(written.values()) > 0.05  # noisy tracks: real, non-zero errors
    rec.update_point_3d_errors()  # pycolmap recomputes them from the cameras and observations
    for pid, point in rec.points3D.items():
        assert abs(point.error - written[pid]) < 1e-3 * max(1.0, written[pid]) + 2e-4


def test_npz_round_trip(tmp_path):
    scene = _scene()
    export_scene(scene, tmp_path, ["npz"], ExportConfig())
    back = read_scene(tmp_path / "scene.npz")
    for key, value in scene.items():
        assert np.array_equal(back[key], value), key


def test_cli_exports_every_format_and_reports_errors(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = cli_run(["export", str(run_dir), "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "has no scene.npz" in err and "Traceback" not in err
    write_scene(run_dir / "scene.npz", _scene())
    code = cli_run(["export", str(run_dir), "-q", "--conf-quantile", "0.2"])
    assert code == 0
    out = run_dir / "export"
    for name in ("ply/accumulated.ply", "ply/frame_00003.ply", "scene.glb", "trajectory_tum.txt",
                 "colmap/sparse/0/cameras.txt", "colmap/sparse/0/images.txt", "colmap/sparse/0/points3D.txt",
                 "scene.npz"):
        assert (out / name).is_file(), name
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no temp files left behind
    code = cli_run(["export", str(run_dir), "--tum", "-o", str(tmp_path / "only_tum"), "-q"])
    names = sorted(p.name for p in (tmp_path / "only_tum").iterdir())
    assert code == 0 and names == ["st4r-export.json", "trajectory_tum.txt"]   # the file, and st4r's manifest
    code = cli_run(["export", str(run_dir), "--conf-quantile", "1.5", "-q"])
    assert code != 0 and "conf-quantile" in capsys.readouterr().err


def test_missing_keys_are_a_user_error(tmp_path):
    from st4r_cli.errors import St4rError

    scene = {k: v for k, v in _scene().items() if k != "cam_c2w"}
    with pytest.raises(St4rError, match="no cam_c2w"):
        export_scene(scene, tmp_path, ["tum"], ExportConfig())


def test_colmap_observations_are_the_trackers_positions(tmp_path):
    from st4r_cli.stages.export import export_colmap

    scene = _moving_scene()
    tracker = {"tracks_xy": scene["tracks2d"].copy(), "visible": scene["visible"].copy(),
               "queries": np.concatenate([scene["query_t"][:, None], scene["query_xy"]], 1)}
    scene["tracks2d"] = scene["tracks2d"] + 3.0  # e.g. the 3D tracks' projections, not what was tracked
    export_colmap(scene, tmp_path / "a", ExportConfig(), tracker=tracker)
    model = read_colmap_text(tmp_path / "a" / "sparse" / "0")
    assert len(model["points"]) == 3
    for image_id, image in model["images"].items():
        for xy in image["xys"]:
            assert np.min(np.linalg.norm(tracker["tracks_xy"][:3, image_id - 1] + 0.5 - xy, axis=1)) < 1e-3
    tracker["queries"] = tracker["queries"][::-1].copy()  # another run's tracks: not used
    export_colmap(scene, tmp_path / "b", ExportConfig(), tracker=tracker)
    model = read_colmap_text(tmp_path / "b" / "sparse" / "0")
    first = model["images"][1]["xys"]
    assert np.min(np.linalg.norm(scene["tracks2d"][:3, 0] + 0.5 - first[0], axis=1)) < 1e-3


def test_intrinsics_json_reads_back(tmp_path):
    import json

    scene = _scene()
    export_scene(scene, tmp_path, ["intrinsics"], ExportConfig())
    info = json.loads((tmp_path / "intrinsics.json").read_text())
    assert (info["width"], info["height"]) == (W, H) and len(info["frames"]) == T
    frame = info["frames"][3]
    assert [frame[k] for k in ("fx", "fy", "cx", "cy")] == pytest.approx([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    assert frame["fov_x_deg"] == pytest.approx(np.degrees(2 * np.arctan(W / 2 / K[0, 0])))
    assert "not metres" in info["units"]


def test_dynamic_masks_read_back_and_colmap_masks_follow_the_images(tmp_path):
    from PIL import Image

    scene = _scene()
    mask = np.zeros((T, H, W), bool)
    for t in range(T):
        mask[t, 2:5, t:t + 3] = True          # a mover sliding right
    scene["dynamic_mask"] = mask
    export_scene(scene, tmp_path, ["masks", "colmap"], ExportConfig(conf_quantile=0.0),
                 original={"frames": np.zeros((T, 2 * H, 2 * W, 3), np.uint8), "orig_hw": np.array([2 * H, 2 * W])})
    for t in range(T):
        png = np.asarray(Image.open(tmp_path / "masks" / f"dynamic_{t:05d}.png"))
        assert png.dtype == np.uint8 and np.array_equal(png, np.where(mask[t], 255, 0))
        keep = np.asarray(Image.open(tmp_path / "colmap" / "masks" / f"frame_{t:05d}.png"))
        image = Image.open(tmp_path / "colmap" / "images" / f"frame_{t:05d}.png")
        assert keep.shape == (image.height, image.width) == (2 * H, 2 * W)
        assert np.array_equal(keep, np.where(np.kron(mask[t], np.ones((2, 2), bool)), 0, 255))


def test_masks_need_a_dynamic_mask(tmp_path, capsys):
    from st4r_cli.errors import St4rError

    with pytest.raises(St4rError, match="--masks: the scene has no dynamic_mask"):
        export_scene(_scene(), tmp_path, ["masks"], ExportConfig())
