"""The exports users expect (issue "Outputs users expect", items 3, 5, 6, 7), each read back with the
library users would use: the static fused cloud and the `dynamic` property (trimesh), COLMAP's binary
model (pycolmap), the GLB's cameras and point squares (the GLB's own JSON and binary chunks, trimesh),
and `--axes` for PLY and GLB."""

import json
import shutil
import struct

import numpy as np
import pytest
import trimesh

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import write_scene
from st4r_cli.formats.tum import quaternion_xyzw_to_rotation, read_tum
from st4r_cli.stages.export import ExportConfig, export_scene, frame_points

T, H, W = 5, 12, 16
K = np.array([[14.0, 0, (W - 1) / 2], [0, 14.0, (H - 1) / 2], [0, 0, 1]])
WALL_Z = 4.03            # the static wall: the plane z = WALL_Z of st4r's world (frame 0's camera)
BLOB_DEPTH = 2.0         # the moving blob: 2 units in front of each camera
FLIP = np.array([1.0, -1.0, -1.0])   # OpenCV -> glTF axes


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _blob_rows_cols(t):
    return slice(3, 7), slice(2 + 2 * t, 6 + 2 * t)


def _project(points, c2w):
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    return cam[:, :2] / cam[:, 2:] * K[0, 0] + K[:2, 2]


def _blob_scene(with_mask=True):
    """A wall (static, green) seen by a moving camera, a red blob sliding right over known pixels (the
    dynamic_mask), 8 unconfident outliers per frame far behind the wall; 12 static tracks on the wall
    and one track following the blob."""
    rng = np.random.default_rng(3)
    cam_c2w = np.stack([np.eye(4) for _ in range(T)])
    for t in range(T):
        cam_c2w[t, :3, :3] = _rot([0.1, 1.0, 0.2], 0.02 * t)
        cam_c2w[t, :3, 3] = [0.05 * t, -0.01 * t, 0.02 * t]
    ys, xs = np.mgrid[0:H, 0:W].astype(float)
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1)
    pointmaps, mask = np.zeros((T, H, W, 3)), np.zeros((T, H, W), bool)
    conf = rng.uniform(2, 5, (T, H, W))
    colors = np.stack([rng.integers(0, 100, (T, H, W)), rng.integers(150, 256, (T, H, W)),
                       rng.integers(0, 100, (T, H, W))], -1).astype(np.uint8)
    for t in range(T):
        world_rays = rays @ cam_c2w[t, :3, :3].T
        centre = cam_c2w[t, :3, 3]
        depth = (WALL_Z - centre[2]) / world_rays[..., 2]                  # hit the wall plane
        pointmaps[t] = centre + world_rays * depth[..., None]
        rows, cols = _blob_rows_cols(t)
        mask[t, rows, cols] = True
        pointmaps[t, rows, cols] = centre + world_rays[rows, cols] * BLOB_DEPTH
        colors[t, rows, cols] = [255, 0, 0]
        outliers = rng.choice(H * W, 8, replace=False)
        conf[t].reshape(-1)[outliers] = 0.1
        pointmaps[t].reshape(-1, 3)[outliers] = centre + world_rays.reshape(-1, 3)[outliers] * 30.0
    query_xy = np.array([[x, y] for y in (1.0, 6.0, 10.0) for x in (1.0, 6.0, 10.0, 14.0)])
    wall = pointmaps[0][query_xy[:, 1].astype(int), query_xy[:, 0].astype(int)]
    moving = np.stack([pointmaps[t][4, 3 + 2 * t] for t in range(T)])        # inside the blob
    tracks3d = np.concatenate([np.repeat(wall[:, None], T, 1), moving[None]])
    tracks2d = np.stack([np.stack([_project(tracks3d[:, t], cam_c2w[t])[n] for t in range(T)])
                         for n in range(len(tracks3d))])
    scene = {"pointmaps": pointmaps.astype(np.float32), "conf": conf.astype(np.float32), "colors": colors,
             "intrinsics": K.astype(np.float32), "cam_c2w": cam_c2w.astype(np.float32),
             "tracks3d": tracks3d.astype(np.float32), "tracks2d": tracks2d.astype(np.float32),
             "visible": np.ones((len(tracks3d), T), bool), "query_t": np.zeros(len(tracks3d), np.int32),
             "query_xy": tracks2d[:, 0].astype(np.float32), "sigma": np.ones((len(tracks3d), T), np.float32)}
    if with_mask:
        scene["dynamic_mask"] = mask
    return scene


def _ply(path):
    """(vertex structured array, header comments) of a PLY: trimesh's raw vertex data (every property,
    ours included), and the `comment` lines read from the header as any PLY parser would."""
    cloud = trimesh.load(path, process=False)
    data = cloud.metadata["_ply_raw"]["vertex"]["data"]
    header = path.read_bytes().split(b"end_header\n")[0].decode("ascii").splitlines()
    return data, [line[len("comment "):] for line in header if line.startswith("comment ")]


def _xyz(data):
    return np.stack([data["x"], data["y"], data["z"]], -1).astype(np.float64)


# -- item 3: the static fused cloud ------------------------------------------------------------------
def test_static_ply_fuses_static_points_only_one_per_voxel(tmp_path):
    scene = _blob_scene()
    config = ExportConfig(conf_quantile=0.1, static_voxel=0.137, axes="opencv")
    written = export_scene(scene, tmp_path, ["ply"], config)
    assert tmp_path / "ply" / "static.ply" in written
    data, comments = _ply(tmp_path / "ply" / "static.ply")
    assert "axes opencv: x right, y down, z forward (st4r's world: frame 0's OpenCV camera)" in comments
    voxel = float(next(c for c in comments if c.startswith("voxel_size ")).split()[1])
    assert voxel == 0.137
    # what went in: the confident pixels of every frame outside the dynamic mask
    inputs = []
    for t in range(T):
        xyz, _, _, pixel = frame_points(scene, t, 0.1)
        inputs.append(xyz[~scene["dynamic_mask"][t][pixel[:, 1].astype(int), pixel[:, 0].astype(int)]])
    inputs = np.concatenate(inputs).astype(np.float64)
    expected = {tuple(k) for k in np.floor(inputs / voxel).astype(int)}
    xyz = _xyz(data)
    keys = [tuple(k) for k in np.floor(xyz / voxel).astype(int)]
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected   # one point per voxel
    assert int(data["count"].sum()) == len(inputs)
    # no point of the blob (2 units in front of the cameras, red) and no unconfident outlier (z ~ 30)
    assert (xyz[:, 2] > WALL_Z - 0.5).all() and (xyz[:, 2] < WALL_Z + 0.5).all()
    assert (data["red"] < 120).all()


def test_static_voxel_defaults_to_a_fraction_of_the_median_depth(tmp_path):
    scene = _blob_scene()
    export_scene(scene, tmp_path, ["ply"], ExportConfig(conf_quantile=0.1))
    _, comments = _ply(tmp_path / "ply" / "static.ply")
    line = next(c for c in comments if c.startswith("voxel_size "))
    w2c = np.linalg.inv(scene["cam_c2w"].astype(np.float64))
    depth = np.einsum("thwj,tj->thw", scene["pointmaps"], w2c[:, 2, :3]) + w2c[:, 2, 3, None, None]
    assert float(line.split()[1]) == pytest.approx(0.01 * np.median(depth), rel=1e-5)
    assert "1% of the median depth" in line


def test_frame_and_accumulated_clouds_say_which_points_move(tmp_path):
    scene = _blob_scene()
    export_scene(scene, tmp_path, ["ply"], ExportConfig(conf_quantile=0.1, axes="opencv"))
    for t in range(T):
        data, comments = _ply(tmp_path / "ply" / f"frame_{t:05d}.ply")
        xyz, _, _, pixel = frame_points(scene, t, 0.1)
        assert np.allclose(_xyz(data), xyz, atol=1e-6)
        moving = scene["dynamic_mask"][t][pixel[:, 1].astype(int), pixel[:, 0].astype(int)]
        assert data["dynamic"].dtype == np.uint8 and np.array_equal(data["dynamic"], moving.astype(np.uint8))
        assert (data["red"][data["dynamic"] == 1] == 255).all() and (data["red"][data["dynamic"] == 0] < 120).all()
        assert "dynamic: 1 = moving, from the scene's dynamic_mask" in comments
    data, _ = _ply(tmp_path / "ply" / "accumulated.ply")
    assert set(np.unique(data["dynamic"])) == {0, 1}
    assert np.array_equal(data["dynamic"] == 1, data["red"] == 255)


def test_without_a_mask_the_nearest_tracks_decide_and_without_tracks_no_static_cloud(tmp_path):
    scene = _blob_scene(with_mask=False)
    export_scene(scene, tmp_path / "tracks", ["ply"], ExportConfig(conf_quantile=0.0, axes="opencv"))
    for t in range(T):
        data, comments = _ply(tmp_path / "tracks" / "ply" / f"frame_{t:05d}.ply")
        labels = data["dynamic"].reshape(H, W)               # conf_quantile 0: every pixel, row by row
        assert labels[4, 3 + 2 * t] == 1 and labels[11, 15] == 0  # the blob's track moves, the wall's stay
        assert any("nearest track" in c for c in comments)
    assert (tmp_path / "tracks" / "ply" / "static.ply").is_file()
    bare = {k: v for k, v in scene.items() if not k.startswith("track") and k not in ("visible", "query_xy")}
    written = export_scene(bare, tmp_path / "bare", ["ply"], ExportConfig())
    assert not (tmp_path / "bare" / "ply" / "static.ply").exists()
    assert all(path.name != "static.ply" for path in written)
    data, _ = _ply(tmp_path / "bare" / "ply" / "frame_00000.ply")
    assert "dynamic" not in data.dtype.names


# -- item 5: COLMAP's binary model -------------------------------------------------------------------
def test_colmap_binary_and_text_models_are_the_same_for_pycolmap(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    scene = _blob_scene()
    rng = np.random.default_rng(1)
    scene["tracks2d"] = scene["tracks2d"] + rng.normal(0, 0.2, scene["tracks2d"].shape).astype(np.float32)
    original = {"frames": np.zeros((T, 2 * H, 2 * W, 3), np.uint8), "orig_hw": np.array([2 * H, 2 * W])}
    written = export_scene(scene, tmp_path / "out", ["colmap"], ExportConfig(), original=original)
    model_dir = tmp_path / "out" / "colmap" / "sparse" / "0"
    for name in ("cameras", "images", "points3D"):
        assert model_dir / f"{name}.bin" in written and model_dir / f"{name}.txt" in written
    models = {}
    for kind in ("bin", "txt"):
        alone = tmp_path / kind
        alone.mkdir()
        for path in model_dir.glob(f"*.{kind}"):
            shutil.copy(path, alone / path.name)
        models[kind] = pycolmap.Reconstruction(str(alone))
    binary, text = models["bin"], models["txt"]
    assert binary.num_points3D() == text.num_points3D() == 12    # the wall's tracks; the blob's is left out
    (cam_b,), (cam_t,) = binary.cameras.values(), text.cameras.values()
    assert (cam_b.model, cam_b.width, cam_b.height) == (cam_t.model, cam_t.width, cam_t.height) \
        == (pycolmap.CameraModelId.PINHOLE, 2 * W, 2 * H)
    assert np.allclose(cam_b.params, cam_t.params, rtol=1e-9)
    assert sorted(binary.images) == sorted(text.images) == list(range(1, T + 1))
    for image_id in binary.images:
        image_b, image_t = binary.images[image_id], text.images[image_id]
        assert image_b.name == image_t.name == f"frame_{image_id - 1:05d}.png"
        pose_b, pose_t = image_b.cam_from_world(), image_t.cam_from_world()
        assert np.allclose(pose_b.matrix(), pose_t.matrix(), atol=1e-9)
        w2c = np.linalg.inv(scene["cam_c2w"][image_id - 1].astype(np.float64))
        assert np.allclose(pose_b.matrix(), w2c[:3], atol=1e-6)
        xy_b = np.array([p.xy for p in image_b.points2D])
        assert np.allclose(xy_b, [p.xy for p in image_t.points2D], atol=1e-4)
        assert [p.point3D_id for p in image_b.points2D] == [p.point3D_id for p in image_t.points2D]
    for pid, point_b in binary.points3D.items():
        point_t = text.points3D[pid]
        assert np.allclose(point_b.xyz, point_t.xyz, atol=1e-7)
        assert np.array_equal(point_b.color, point_t.color)
        assert point_b.track.length() == point_t.track.length() >= 2
        assert [(e.image_id, e.point2D_idx) for e in point_b.track.elements] == \
            [(e.image_id, e.point2D_idx) for e in point_t.track.elements]
        assert point_b.error == pytest.approx(point_t.error, rel=1e-5) and point_b.error > 0


# -- item 6: GLB cameras and point squares -----------------------------------------------------------
def _glb(path):
    """(JSON document, binary chunk) of a GLB, parsed with struct."""
    data = path.read_bytes()
    magic, version, total = struct.unpack("<III", data[:12])
    json_len, json_kind = struct.unpack("<II", data[12:20])
    assert (magic, version, total, json_kind) == (0x46546C67, 2, len(data), 0x4E4F534A)
    bin_len, bin_kind = struct.unpack("<II", data[20 + json_len:28 + json_len])
    assert bin_kind == 0x004E4942
    return json.loads(data[20:20 + json_len]), data[28 + json_len:28 + json_len + bin_len]


def _accessor(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5121: "u1", 5123: "<u2", 5125: "<u4"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
    offset = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    values = np.frombuffer(binary, dtype, acc["count"] * width, offset)
    return values if width == 1 else values.reshape(acc["count"], width)


def _primitive(doc, name):
    (mesh,) = [m for m in doc["meshes"] if m["name"] == name]
    return mesh["primitives"][0]


def test_glb_has_one_gltf_camera_per_frame_at_the_cameras_pose(tmp_path):
    scene = _blob_scene()
    export_scene(scene, tmp_path, ["glb"], ExportConfig(conf_quantile=0.0, axes="gltf"))
    doc, _ = _glb(tmp_path / "scene.glb")
    assert len(doc["cameras"]) == T
    nodes = {node["name"]: node for node in doc["nodes"]}
    for t in range(T):
        node = nodes[f"camera_{t:05d}"]
        camera = doc["cameras"][node["camera"]]
        assert camera["name"] == f"frame_{t:05d}" and camera["type"] == "perspective"
        assert camera["perspective"]["yfov"] == pytest.approx(2 * np.arctan(H / 2 / K[1, 1]))
        assert camera["perspective"]["aspectRatio"] == pytest.approx(W / H)
        assert camera["extras"]["fx"] == pytest.approx(K[0, 0]) and camera["extras"]["cx"] == pytest.approx(K[0, 2])
        pose = scene["cam_c2w"][t].astype(np.float64)
        assert np.allclose(node["translation"], FLIP * pose[:3, 3], atol=1e-6)
        rotation = quaternion_xyzw_to_rotation(np.array([node["rotation"]]))[0]
        # a glTF camera looks down its -z with y up; the OpenCV camera down its +z with y down
        assert np.allclose(rotation @ [0, 0, -1], FLIP * (pose[:3, :3] @ [0, 0, 1]), atol=1e-6)
        assert np.allclose(rotation @ [0, 1, 0], FLIP * (pose[:3, :3] @ [0, -1, 0]), atol=1e-6)
    assert all(f"camera_{t:05d}" in [doc["nodes"][i]["name"] for i in doc["scenes"][0]["nodes"]] for t in range(T))
    assert doc["asset"]["extras"]["point_size"] == 0.0
    assert _primitive(doc, "frame_00000")["mode"] == 0          # points by default in the API
    glb = trimesh.load(tmp_path / "scene.glb")                  # viewers still read it
    assert len(glb.geometry["frame_00000"].vertices) == H * W


def test_glb_point_squares_have_four_corners_around_each_point(tmp_path):
    scene = _blob_scene()
    size = 0.05
    export_scene(scene, tmp_path, ["glb"], ExportConfig(conf_quantile=0.0, glb_point_size=size))
    doc, binary = _glb(tmp_path / "scene.glb")
    assert doc["asset"]["extras"]["point_size"] == size
    assert doc["materials"][0]["doubleSided"] is True
    for t in (0, T - 1):
        primitive = _primitive(doc, f"frame_{t:05d}")
        assert primitive["mode"] == 4
        corners = _accessor(doc, binary, primitive["attributes"]["POSITION"]).astype(np.float64)
        colors = _accessor(doc, binary, primitive["attributes"]["COLOR_0"])
        triangles = _accessor(doc, binary, primitive["indices"]).reshape(-1, 3)
        xyz, rgb, _, _ = frame_points(scene, t, 0.0)
        assert len(corners) == 4 * len(xyz) and len(triangles) == 2 * len(xyz)
        squares = corners.reshape(-1, 4, 3)
        assert np.allclose(squares.mean(1), xyz * FLIP, atol=1e-5)            # centred on the point
        rotation = FLIP[:, None] * scene["cam_c2w"][t, :3, :3].astype(np.float64)
        right, down = rotation[:, 0], rotation[:, 1]                         # the camera's x, y (glTF axes)
        assert np.allclose(squares[:, 3] - squares[:, 0], size * right, atol=1e-5)   # top-left -> top-right
        assert np.allclose(squares[:, 1] - squares[:, 0], size * down, atol=1e-5)    # top-left -> bottom-left
        assert np.array_equal(colors.reshape(-1, 4, 4)[:, 0, :3], rgb)
        assert np.array_equal(triangles // 4, np.repeat(np.arange(len(xyz)), 2)[:, None].repeat(3, 1))
    mesh = trimesh.load(tmp_path / "scene.glb", process=False).geometry["frame_00000"]
    assert len(mesh.vertices) == 4 * H * W and len(mesh.faces) == 2 * H * W


def test_glb_point_size_from_the_cli_auto_or_given(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", _blob_scene())
    assert cli_run(["export", str(run_dir), "--glb", "-q", "-o", str(tmp_path / "auto")]) == 0
    doc, _ = _glb(tmp_path / "auto" / "scene.glb")
    size = doc["asset"]["extras"]["point_size"]
    # auto: 1.5 x the points' spacing (all pixels but the 30% least confident: sqrt(1 / 0.7) pixels) x a
    # pixel's footprint at the median depth
    w2c = np.linalg.inv(_blob_scene()["cam_c2w"].astype(np.float64))
    depth = np.einsum("thwj,tj->thw", _blob_scene()["pointmaps"], w2c[:, 2, :3]) + w2c[:, 2, 3, None, None]
    assert size == pytest.approx(1.5 * np.median(depth) / K[0, 0] * np.sqrt(H * W / (H * W - int(0.3 * H * W))),
                                 rel=0.02)
    assert _primitive(doc, "frame_00000")["mode"] == 4
    assert cli_run(["export", str(run_dir), "--glb", "-q", "--glb-point-size", "0", "-o", str(tmp_path / "pts")]) == 0
    doc, _ = _glb(tmp_path / "pts" / "scene.glb")
    assert _primitive(doc, "frame_00000")["mode"] == 0
    capsys.readouterr()
    for bad in ("big", "-1", "nan"):
        code = cli_run(["export", str(run_dir), "--glb", "-q", "--glb-point-size", bad, "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code != 0 and "--glb-point-size" in err and "Traceback" not in err


# -- item 7: --axes ----------------------------------------------------------------------------------
def test_axes_flip_ply_and_glb_exactly_and_headers_say_so(tmp_path):
    scene = _blob_scene()
    for axes in ("opencv", "gltf"):
        export_scene(scene, tmp_path / axes, ["ply", "glb", "tum", "colmap"],
                     ExportConfig(conf_quantile=0.1, axes=axes, glb_point_size=0.02))
    flip = FLIP.astype(np.float32)
    for name in ("frame_00000.ply", "frame_00004.ply", "accumulated.ply", "static.ply"):
        cv, cv_comments = _ply(tmp_path / "opencv" / "ply" / name)
        gl, gl_comments = _ply(tmp_path / "gltf" / "ply" / name)
        assert np.array_equal(_xyz(cv).astype(np.float32) * flip, _xyz(gl).astype(np.float32)), name
        assert np.array_equal(cv["red"], gl["red"])
        assert any(c.startswith("axes opencv: x right, y down, z forward") for c in cv_comments)
        assert any(c.startswith("axes gltf: x right, y up, z backward") for c in gl_comments)
    (cv_doc, cv_bin), (gl_doc, gl_bin) = _glb(tmp_path / "opencv" / "scene.glb"), _glb(tmp_path / "gltf" / "scene.glb")
    assert (cv_doc["asset"]["extras"]["axes"], gl_doc["asset"]["extras"]["axes"]) == ("opencv", "gltf")
    for name in ("frame_00000", "frame_00004", "tracks", "cameras", "camera_path"):
        cv = _accessor(cv_doc, cv_bin, _primitive(cv_doc, name)["attributes"]["POSITION"])
        gl = _accessor(gl_doc, gl_bin, _primitive(gl_doc, name)["attributes"]["POSITION"])
        assert np.array_equal(cv * flip, gl), name
    for cv, gl in zip(cv_doc["nodes"], gl_doc["nodes"]):
        if "camera" in cv:   # the same camera, its pose in either world
            assert np.allclose(np.array(cv["translation"]) * FLIP, gl["translation"], atol=1e-7)
            cv_rot = quaternion_xyzw_to_rotation(np.array([cv["rotation"]]))[0]
            gl_rot = quaternion_xyzw_to_rotation(np.array([gl["rotation"]]))[0]
            assert np.allclose(np.diag(FLIP) @ cv_rot, gl_rot, atol=1e-6)
    # COLMAP and TUM keep st4r's world and OpenCV cameras whatever --axes says
    for name in ("trajectory_tum.txt", "colmap/sparse/0/images.bin", "colmap/sparse/0/points3D.txt"):
        assert (tmp_path / "opencv" / name).read_bytes() == (tmp_path / "gltf" / name).read_bytes()
    _, poses = read_tum(tmp_path / "gltf" / "trajectory_tum.txt")
    assert np.allclose(poses, scene["cam_c2w"], atol=1e-6)
    assert "OpenCV cameras" in (tmp_path / "gltf" / "trajectory_tum.txt").read_text().splitlines()[1]


def test_cli_default_axes_is_gltf_and_every_file_is_in_the_manifest(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", _blob_scene())
    assert cli_run(["export", str(run_dir), "-q"]) == 0
    out = run_dir / "export"
    for name in ("ply/frame_00000.ply", "ply/accumulated.ply", "ply/static.ply"):
        _, comments = _ply(out / name)
        assert any(c.startswith("axes gltf:") for c in comments), name
    doc, _ = _glb(out / "scene.glb")
    assert doc["asset"]["extras"]["axes"] == "gltf"
    manifest = set(json.loads((out / "st4r-export.json").read_text())["files"])
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "st4r-export.json"}
    assert on_disk == manifest
    assert {"ply/static.ply", "colmap/sparse/0/cameras.bin", "colmap/sparse/0/images.bin",
            "colmap/sparse/0/points3D.bin"} <= manifest
    assert cli_run(["export", str(run_dir), "--ply", "-q", "--axes", "opencv"]) == 0
    _, comments = _ply(out / "ply" / "static.ply")
    assert any(c.startswith("axes opencv:") for c in comments)
    code = cli_run(["export", str(run_dir), "--ply", "-q", "--axes", "blender"])
    assert code != 0 and "Traceback" not in capsys.readouterr().err
