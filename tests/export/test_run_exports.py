"""From a real (tiny) `st4r adapt` run: the summary picture, then `st4r export --colmap --video` with
the run's own artifacts: COLMAP images at the source video's resolution, observations at the
tracker's positions rescaled to it, read back by pycolmap with the same errors; videos with one frame
per decoded frame."""

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest

from st4r_cli.cli.app import run as cli_run
from st4r_cli.formats.scene import read_scene
from st4r_cli.model.io import save_model
from st4r_cli.runs import Run


def _tta_helpers():
    """The micro network and plane clip of tests/tta (loaded by path: its conftest is not ours)."""
    spec = importlib.util.spec_from_file_location("tta_helpers", Path(__file__).parents[1] / "tta" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_adapt_summary_then_colmap_and_videos_from_the_run(tmp_path, capsys):
    pycolmap = pytest.importorskip("pycolmap")
    import torch

    torch.set_num_threads(1)
    helpers = _tta_helpers()
    frames, _ = helpers.plane_clip(num_frames=8)
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # the source: 96x64, processed at 48x32
    video = _write_video(tmp_path / "clip.mkv", big)
    model_path = save_model(helpers.prefit_model(), tmp_path / "micro.safetensors")
    run_dir = tmp_path / "run"
    args = ["adapt", str(video), "--out", str(run_dir), "--model", str(model_path), "--device", "cpu",
            "--long-side", "48", "--set", "tracks.grid_size=6", "--set", "adapt.iters=2",
            "--set", "adapt.frames_per_step=3", "--set", "adapt.pnp_stride=2", "--set", "predict.window=5",
            "--set", "predict.overlap=2"]
    assert cli_run(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    printed = (captured.out + captured.err).replace("\n", "")
    assert (run_dir / "summary.png").is_file() and "summary.png" in printed

    assert cli_run(["export", str(run_dir), "--colmap", "--video", "-q"]) == 0, capsys.readouterr().err
    scene = read_scene(run_dir / "scene.npz")
    tracker = Run.open(run_dir).artifact("tracks")
    rec = pycolmap.Reconstruction(str(run_dir / "export" / "colmap" / "sparse" / "0"))
    cam = rec.cameras[1]
    assert (cam.width, cam.height) == (96, 64)
    k_mat = scene["intrinsics"]
    assert np.allclose(cam.params, [2 * k_mat[0, 0], 2 * k_mat[1, 1], 2 * (k_mat[0, 2] + 0.5),
                                    2 * (k_mat[1, 2] + 0.5)], rtol=1e-5)
    from PIL import Image

    image = Image.open(run_dir / "export" / "colmap" / "images" / "frame_00000.png")
    assert image.size == (96, 64)
    assert rec.num_points3D() >= 5
    static = scene["track_static"] if "track_static" in scene else np.ones(len(scene["tracks3d"]), bool)
    tracker_px = (tracker["tracks_xy"] + 0.5) * 2  # COLMAP pixels of the 96x64 images
    written = {}
    for pid, point in rec.points3D.items():
        assert point.track.length() >= 2
        written[pid] = point.error
        for element in point.track.elements:
            xy = rec.images[element.image_id].points2D[element.point2D_idx].xy
            t = element.image_id - 1
            distance = np.linalg.norm(tracker_px[:, t] - xy, axis=1)
            n = int(np.argmin(distance))
            assert distance[n] < 1e-3 and static[n] and tracker["visible"][n, t]
    rec.update_point_3d_errors()
    for pid, point in rec.points3D.items():
        assert abs(point.error - written[pid]) < 1e-3 + 1e-4 * written[pid]
    for name in ("tracks2d.mp4", "depth.mp4"):
        with av.open(str(run_dir / "export" / name)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 8
