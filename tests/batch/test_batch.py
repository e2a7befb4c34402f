"""`st4r batch`: inputs, run names, and a real local Ray batch (2 CPUs) with a failing video and a rerun."""

import json

import pytest

from st4r_cli.batch import collect_videos, run_names
from st4r_cli.cli.app import run as cli_run
from st4r_cli.errors import St4rError


def test_collect_videos_from_a_folder_and_a_list(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("b.mp4", "a.MOV", "notes.txt", "c.mkv"):
        (folder / name).write_bytes(b"x")
    (folder / "frames").mkdir()
    (folder / "frames" / "0001.png").write_bytes(b"x")
    (folder / "empty").mkdir()
    assert [p.name for p in collect_videos(folder)] == ["a.MOV", "b.mp4", "c.mkv", "frames"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my clips\nvideos/c.mkv\n\n  videos/frames  # an image folder\n"
                       f"{folder / 'a.MOV'}\n")
    assert [p.name for p in collect_videos(listing)] == ["c.mkv", "frames", "a.MOV"]
    listing.write_text("videos/c.mkv\nvideos/missing.mp4\n")
    with pytest.raises(St4rError, match=r"list.txt:2: input not found: videos/missing.mp4"):
        collect_videos(listing)
    with pytest.raises(St4rError, match="no videos in"):
        collect_videos(folder / "empty")
    with pytest.raises(St4rError, match="input not found"):
        collect_videos(tmp_path / "nowhere")


def test_run_names_are_unique(tmp_path):
    paths = [tmp_path / "x" / "clip.mp4", tmp_path / "y" / "clip.mov", tmp_path / "y" / "other.mp4",
             tmp_path / "z" / "clip.mp4"]
    assert run_names(paths) == ["clip_mp4", "clip_mov", "other", "clip_mp4_2"]


def test_bad_options_fail_before_ray_starts(tmp_path, plane_clip_folder, capsys):
    code = cli_run(["batch", str(plane_clip_folder.parent), "--out", str(tmp_path / "runs"),
                    "--set", "adapt.nope=1", "-q"])
    assert code != 0 and "'adapt' has no option 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "summary.json").exists()


def test_batch_on_local_ray(tmp_path, micro_checkpoint, tiny_set, make_plane_clip, capsys):
    import ray

    videos = tmp_path / "videos"
    make_plane_clip(videos / "pan_a", num_frames=6, seed=1)
    make_plane_clip(videos / "pan_b", num_frames=6, seed=2)
    (videos / "broken.mp4").write_bytes(b"this is not a video")
    runs = tmp_path / "runs"
    args = ["batch", str(videos), "--out", str(runs), "--num-cpus", "2", "--cpus-per-video", "2",
            "--model", str(micro_checkpoint), "--device", "cpu", "--long-side", "48", "-q"]
    for key, value in tiny_set.items():
        args += ["--set", f"{key}={value}"]
    assert cli_run(args) == 1  # one video failed: the others still ran
    err = capsys.readouterr().err
    assert "error: 1 of 3 video(s) failed" in err and "Traceback" not in err
    assert not ray.is_initialized()
    summary = json.loads((runs / "summary.json").read_text())
    assert summary["counts"] == {"complete": 2, "skipped": 0, "failed": 1}
    by_name = {entry["run_dir"].split("/")[-1]: entry for entry in summary["videos"]}
    assert by_name["broken"]["status"] == "failed" and "broken.mp4" in by_name["broken"]["error"]
    assert "\n" not in by_name["broken"]["error"]
    for name in ("pan_a", "pan_b"):
        assert by_name[name]["status"] == "complete" and by_name[name]["seconds"] > 0
        assert by_name[name]["torch_threads"] == 2  # the task's CPUs
        assert (runs / name / "scene.npz").is_file()
        assert json.loads((runs / name / "run.json").read_text())["status"] == "complete"
    # the same batch again over a list of the good clips: both skipped, Ray not even needed
    listing = tmp_path / "good.txt"
    listing.write_text("videos/pan_a\nvideos/pan_b\n")
    args[1] = str(listing)
    assert cli_run(args) == 0
    summary = json.loads((runs / "summary.json").read_text())
    assert summary["counts"] == {"complete": 0, "skipped": 2, "failed": 0}
