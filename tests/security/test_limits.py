"""Every size a user can ask for is bounded before any stage runs: one `error:` line naming the value and
the limit, no run directory created, nothing allocated (integrity round two, item 4).

The payloads are the real ones of the report: a 248-byte `.npy` whose header claims 1e11 rows, a
safetensors whose model_config declares `enc_embed_dim=32768`, a video header of 16000x16000 pixels, a
PNG header of 12000x12000, absurd `--set` values.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest

from st4r_cli.cli.app import run as cli_run
from test_integrity import one_error_line


def adapt(clip: Path, out: Path, *extra: str) -> list[str]:
    return ["adapt", str(clip), "--out", str(out), "-q", "--device", "cpu", *extra]


@pytest.mark.parametrize("override, pattern", [
    ("fuse.grid_size=100000", r"fuse\.grid_size=100000: must be in \[1, 1024\]"),
    ("adapt.weight_decay=-1", r"adapt\.weight_decay=-1: must be in \[0, 10\]"),
    ("fuse.pnp_stride=0", r"fuse\.pnp_stride=0: must be in \[1, 64\]"),
    ("fuse.pnp_stride=-2", r"fuse\.pnp_stride=-2: must be in \[1, 64\]"),
    ("predict.cpu_threads=100000", r"predict\.cpu_threads=100000: must be in"),
    ("visibility.sigma_floor_px=-1", r"visibility\.sigma_floor_px=-1: must be in \(0, 1000\]"),
    ("visibility.conf_alpha=0", r"visibility\.conf_alpha=0: must be in \(0, 100\]"),
    ("visibility.mask_eps_rel=-5", r"visibility\.mask_eps_rel=-5: must be in \[0, 10\]"),
    ("seed=1180591620717411303424", r"seed=1180591620717411303424: must be in \[0, 4294967295\]"),
])
def test_out_of_range_values(tmp_path, capsys, clip_folder, override, pattern):
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--set", override))
    one_error_line(capsys, code, pattern)
    assert not (tmp_path / "run").exists()


def test_seed_flag_and_config_file_are_bounded_too(tmp_path, capsys, clip_folder):
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--seed", str(2**70)))
    one_error_line(capsys, code, r"seed=1180591620717411303424: must be in \[0, 4294967295\]")
    config = tmp_path / "config.yaml"
    config.write_text("fuse:\n  pnp_stride: 0\n")
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--config", str(config)))
    one_error_line(capsys, code, r"fuse\.pnp_stride=0: must be in \[1, 64\]")
    assert not (tmp_path / "run").exists()


def test_cpu_threads_above_the_cores(tmp_path, capsys, clip_folder):
    import os

    cores = os.cpu_count() or 1
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--set", f"predict.cpu_threads={cores + 1}"))
    one_error_line(capsys, code, rf"cpu_threads={cores + 1}: at most this machine's {cores} CPU cores")
    assert not (tmp_path / "run").exists()


def test_api_values_are_checked_like_the_cli(tmp_path, clip_folder):
    from st4r_cli.api import run_adapt
    from st4r_cli.errors import St4rError

    with pytest.raises(St4rError, match=r"fuse\.pnp_stride=0: must be in"):
        run_adapt(clip_folder, tmp_path / "run", set={"fuse.pnp_stride": 0}, device="cpu")
    assert not (tmp_path / "run").exists()


def test_every_numeric_config_field_is_bounded():
    from st4r_cli.configs import SECTIONS
    from st4r_cli.runs.config import RunConfig

    unbounded = []
    for section, cls in [*SECTIONS.items(), ("", RunConfig)]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = {hints[f.name], *typing.get_args(hints[f.name])}
            numeric = kinds & {int, float} or any(set(typing.get_args(k)) & {int, float} for k in kinds)
            if numeric and f.name not in getattr(cls, "LIMITS", {}):
                unbounded.append(f"{section}.{f.name}")
    assert not unbounded, f"add these to their section's LIMITS: {unbounded}"


# -- query points -----------------------------------------------------------------------------------
def bomb_npy(path: Path, rows: int) -> Path:
    """A .npy whose header claims `rows` x 3 float32 and that holds 120 bytes of data."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 3), np.float32))
    header["shape"] = (rows, 3)
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 120)
    return path


def test_query_file_header_claiming_1e11_rows(tmp_path, capsys, clip_folder):
    bomb = bomb_npy(tmp_path / "bomb.npy", 10**11)
    assert bomb.stat().st_size == 248
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--queries", str(bomb)))
    one_error_line(capsys, code, r"holds 100,000,000,000 points; st4r tracks at most 1,000,000")
    truncated = bomb_npy(tmp_path / "short.npy", 1000)
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--queries", str(truncated)))
    one_error_line(capsys, code, r"is truncated")
    assert not (tmp_path / "run").exists()


def test_query_files_with_too_many_rows(tmp_path, capsys, clip_folder):
    many = np.zeros((1_000_001, 3), np.float32)
    np.save(tmp_path / "many.npy", many)
    (tmp_path / "many.txt").write_text("0,1,1\n" * 1_000_001)
    for name in ("many.npy", "many.txt"):
        code = cli_run(adapt(clip_folder, tmp_path / "run", "--queries", str(tmp_path / name)))
        one_error_line(capsys, code, r"holds 1,000,001 points; st4r tracks at most 1,000,000")
    assert not (tmp_path / "run").exists()


def test_query_grid_on_every_frame_is_refused_before_tracking(tmp_path, capsys, clip_folder):
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--set", "tracks.query_mode=grid_every_k",
                         "--set", "tracks.grid_size=1024", "--set", "tracks.query_every_k=1"))
    one_error_line(capsys, code, r"8,388,864 query points; st4r tracks at most 1,000,000")
    assert not (tmp_path / "run").exists()


def test_query_budget_says_how_much_memory(monkeypatch):
    from st4r_cli.errors import St4rError
    from st4r_cli.tracking import queries

    monkeypatch.setattr(queries, "memory_budget_bytes", lambda: 2**30)
    queries.check_query_budget(1000, 100, "grid")            # 6.1 MiB: fine
    with pytest.raises(St4rError, match=r"900,000 query points over 1,000 frames would need about 53\.6 GiB for "
                                        r"their tracks; the limit is 1\.0 GiB"):
        queries.check_query_budget(900_000, 1000, "grid")


def test_builtin_tracker_samples_flow_at_more_points_than_opencv_map_rows():
    """cv2.remap maps have fewer than 32767 rows: 40,000 points are laid out in rows (was SHRT_MAX error)."""
    from st4r_cli.tracking.builtin import _sample_flow

    rng = np.random.default_rng(0)
    flow = rng.normal(size=(40, 60, 2)).astype(np.float32)
    xy = (rng.uniform(0, 1, size=(40_000, 2)) * (58, 38)).astype(np.float32)
    sampled = _sample_flow(flow, xy, np.float32(1.0))
    import cv2

    expected = np.concatenate([    # the former one-column layout, in chunks OpenCV accepts
        cv2.remap(flow, np.ascontiguousarray(xy[i:i + 20_000, :1]), np.ascontiguousarray(xy[i:i + 20_000, 1:]),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1, 2)
        for i in range(0, len(xy), 20_000)])
    assert sampled.shape == (40_000, 2)
    assert np.array_equal(sampled, expected)


# -- checkpoints ------------------------------------------------------------------------------------
def write_safetensors(path: Path, model_config: str) -> Path:
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, np.float32)}, str(path), metadata={"model_config": model_config})
    return path


def official_size_config(**changes) -> str:
    from st4r_cli.model.config import ModelConfig

    return json.dumps({**ModelConfig().to_dict(), **changes})


@pytest.mark.parametrize("model_config, pattern", [
    (official_size_config(enc_embed_dim=32768), r"invalid model_config: enc_embed_dim=32768 is outside \[8, 4096\]"),
    ("{not json", r"invalid model_config: Expecting property name"),
    (official_size_config(bogus=1), r"invalid model_config: unknown model config keys: \['bogus'\]"),
    (official_size_config(), r"state dict does not match the model config"),
])
def test_checkpoint_refused_from_its_header_before_any_stage(tmp_path, capsys, clip_folder, model_config, pattern):
    bad = write_safetensors(tmp_path / "bad.safetensors", model_config)
    assert bad.stat().st_size < 1000
    code = cli_run(adapt(clip_folder, tmp_path / "run", "--model", str(bad)))
    one_error_line(capsys, code, pattern)
    assert not (tmp_path / "run").exists()


def test_doctor_checks_a_huge_model_config_without_building_it(tmp_path):
    import resource

    from st4r_cli.cli.cmd_doctor import check_checkpoint

    bad = write_safetensors(tmp_path / "bad.safetensors", official_size_config(enc_embed_dim=32768))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok, detail = check_checkpoint(bad)
    assert not ok and "invalid" in detail
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000   # KiB: nothing allocated


# -- pixels -----------------------------------------------------------------------------------------
def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height 8-bit grey pixels (IHDR + IEND, no image data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_huge_video_frames_are_refused_from_the_header(tmp_path, capsys):
    video = tmp_path / "big.y4m"
    video.write_bytes(b"YUV4MPEG2 W16000 H16000 F30:1 Ip A1:1 C420jpeg\nFRAME\n")
    code = cli_run(adapt(video, tmp_path / "run"))
    one_error_line(capsys, code, r"frames of 16000x16000 pixels are too large \(256 Mpx, 0\.7 GiB a frame\)")
    assert not (tmp_path / "run").exists()


def test_huge_png_is_one_line_without_pil_warnings(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(2):
        png_header(folder / f"{t}.png", 12000, 12000)
    code = cli_run(adapt(folder, tmp_path / "run"))
    line = one_error_line(capsys, code, r"image .*0\.png is too large to read safely: 12000x12000 pixels")
    assert "DecompressionBomb" not in line
    assert not (tmp_path / "run").exists()


# -- run names --------------------------------------------------------------------------------------
def test_batch_names_never_collide_with_the_summary_or_the_runs_folder(tmp_path):
    from st4r_cli.batch import SUMMARY_NAME, run_names
    from st4r_cli.errors import St4rError

    video = tmp_path / "summary.json.mp4"
    video.write_bytes(b"")
    other = tmp_path / "clip.mp4"
    other.write_bytes(b"")
    names = run_names([video, other])
    assert SUMMARY_NAME not in names and names[1] == "clip" and len(set(names)) == 2
    with pytest.raises(St4rError, match=r"cannot name a run directory after '/'"):
        run_names([Path("/")])


def test_adapt_dot_names_the_run_after_the_folder(tmp_path, monkeypatch):
    from st4r_cli.api import run_dir_for

    monkeypatch.chdir(tmp_path)
    assert run_dir_for(".", None) == Path("runs") / tmp_path.name
