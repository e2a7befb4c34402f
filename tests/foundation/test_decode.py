"""Decode stage: sizes, selection, timestamps, rotation, pixel formats, image folders."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from foundation_videos import gray_level_frames, index_of, write_video
from st4r_cli.errors import St4rError
from st4r_cli.stages.decode import DecodeConfig, decode, expected_count, processing_hw


@pytest.mark.parametrize("orig_hw, cfg, expected", [
    ((406, 724), DecodeConfig(long_side=256), (144, 256)),     # 406*256/724 = 143.6 -> 144
    ((1080, 1920), DecodeConfig(long_side=512), (288, 512)),
    ((1920, 1080), DecodeConfig(long_side=512), (512, 288)),   # portrait keeps its orientation
    ((480, 854), DecodeConfig(long_side=512, multiple=8), (288, 512)),  # 287.8 -> 288
    ((47, 33), DecodeConfig(long_side=256), (48, 32)),         # small: not enlarged, only rounded
    ((47, 33), DecodeConfig(long_side=256, upscale=True), (256, 176)),  # 33*256/47 = 179.7 -> 176
    ((5, 7), DecodeConfig(long_side=256), (16, 16)),           # never below one multiple
])
def test_processing_size(orig_hw, cfg, expected):
    assert processing_hw(orig_hw, cfg) == expected


def test_absurd_aspect_ratio_is_an_error():
    with pytest.raises(St4rError, match="absurd frame size"):
        processing_hw((16, 1024), DecodeConfig())


@pytest.mark.parametrize("total, cfg, expected", [
    (100, DecodeConfig(), 100),
    (100, DecodeConfig(start=10, end=20), 10),
    (100, DecodeConfig(start=10, end=20, stride=3), 4),        # 10 13 16 19
    (100, DecodeConfig(stride=7, max_frames=5), 5),
    (10, DecodeConfig(start=12), 0),
])
def test_expected_count(total, cfg, expected):
    assert expected_count(total, cfg) == expected


def test_video_basic_outputs(tmp_path):
    path = write_video(tmp_path / "v.mp4", gray_level_frames(12, (48, 64)), rate=10)
    out = decode(path, DecodeConfig())
    assert out["frames"].shape == (12, 48, 64, 3) and out["frames"].dtype == np.uint8
    assert out["orig_hw"].tolist() == [48, 64]
    np.testing.assert_allclose(out["timestamps_s"], np.arange(12) / 10.0, atol=1e-6)
    assert float(out["fps"]) == pytest.approx(10.0)
    assert out["frame_indices"].tolist() == list(range(12))
    assert [index_of(f) for f in out["frames"]] == list(range(12))


def test_start_end_stride_max_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", gray_level_frames(30, (32, 32)), rate=10)
    out = decode(path, DecodeConfig(start=3, end=25, stride=4))
    assert out["frame_indices"].tolist() == [3, 7, 11, 15, 19, 23]
    assert [index_of(f) for f in out["frames"]] == [3, 7, 11, 15, 19, 23]
    np.testing.assert_allclose(out["timestamps_s"], np.array([3, 7, 11, 15, 19, 23]) / 10, atol=1e-6)
    assert float(out["fps"]) == pytest.approx(2.5)   # every 4th frame of a 10 fps video
    out = decode(path, DecodeConfig(start=5, stride=2, max_frames=3))
    assert out["frame_indices"].tolist() == [5, 7, 9]


def test_resizes_to_long_side_and_multiple(tmp_path):
    frames = np.zeros((3, 90, 160, 3), np.uint8)
    frames[:, :, 80:] = 200                                   # right half bright
    path = write_video(tmp_path / "v.mp4", frames)
    out = decode(path, DecodeConfig(long_side=64))
    assert out["frames"].shape == (3, 32, 64, 3)               # 90*64/160 = 36 -> 32
    assert out["orig_hw"].tolist() == [90, 160]
    assert out["frames"][0, :, :30].max() < 20 and out["frames"][0, :, 34:].min() > 180


@pytest.mark.parametrize("rotation, expect_corner", [(-90, "top_right"), (90, "bottom_left"),
                                                     (180, "bottom_right"), (0, "top_left")])
def test_rotation_metadata(tmp_path, rotation, expect_corner):
    frames = np.zeros((3, 32, 64, 3), np.uint8)
    frames[:, :8, :8] = 255                                   # marker in the stored top-left corner
    path = write_video(tmp_path / "r.mp4", frames, rotation=rotation)
    out = decode(path, DecodeConfig())
    image = out["frames"][0].mean(axis=2)
    h, w = image.shape
    assert (h, w) == ((64, 32) if rotation in (90, -90) else (32, 64))
    assert out["orig_hw"].tolist() == [h, w]
    corners = {"top_left": image[:6, :6], "top_right": image[:6, -6:],
               "bottom_left": image[-6:, :6], "bottom_right": image[-6:, -6:]}
    for name, patch in corners.items():
        assert (patch.mean() > 200) == (name == expect_corner), name


def test_variable_frame_rate_keeps_real_timestamps(tmp_path):
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 1.0]
    for name, codec, pix_fmt in [("v.mp4", "libx264", "yuv420p"), ("v.mkv", "ffv1", "yuv444p")]:
        path = write_video(tmp_path / name, gray_level_frames(6), codec=codec, pix_fmt=pix_fmt,
                           times_s=times)
        out = decode(path, DecodeConfig())
        np.testing.assert_allclose(out["timestamps_s"], times, atol=1e-6)
        assert [index_of(f) for f in out["frames"]] == list(range(6))
        assert float(out["fps"]) == pytest.approx(5.0)          # 5 intervals over 1 s


def test_grayscale_video(tmp_path):
    gray = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (4, 32, 1))       # (T, H, W)
    path = write_video(tmp_path / "g.mkv", gray, codec="ffv1", pix_fmt="gray", in_format="gray")
    out = decode(path, DecodeConfig())
    assert out["frames"].shape == (4, 32, 32, 3)
    for channel in range(3):                                   # lossless and replicated to RGB
        np.testing.assert_array_equal(out["frames"][..., channel], gray)


def test_alpha_video_is_composited_over_black(tmp_path):
    rgba = np.zeros((3, 16, 16, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :, :8, 3] = 255                                    # left: opaque
    rgba[:, :, 8:, 3] = 0                                      # right: fully transparent
    path = write_video(tmp_path / "a.mov", rgba, codec="png", pix_fmt="rgba", in_format="rgba")
    out = decode(path, DecodeConfig())
    np.testing.assert_array_equal(out["frames"][:, :, :8], 200)
    np.testing.assert_array_equal(out["frames"][:, :, 8:], 0)


def test_odd_size_video(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 47, 33, 3), dtype=np.uint8)
    path = write_video(tmp_path / "odd.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    out = decode(path, DecodeConfig())
    assert out["orig_hw"].tolist() == [47, 33]
    assert out["frames"].shape == (4, 48, 32, 3)


def test_image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    frames = gray_level_frames(11, (20, 30))
    for i, frame in enumerate(frames):                          # natural order: 2 before 10
        Image.fromarray(frame).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._frame_3.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")   # macOS metadata, not a frame
    out = decode(folder, DecodeConfig(fps=5.0))
    assert [index_of(f) for f in out["frames"]] == list(range(11))
    assert out["frames"].shape == (11, 16, 32, 3)              # 20x30 rounded to 16x32
    np.testing.assert_allclose(out["timestamps_s"], np.arange(11) / 5.0)
    out = decode(folder, DecodeConfig(start=2, stride=3))
    assert out["frame_indices"].tolist() == [2, 5, 8]


def test_image_folder_modes_and_exif_orientation(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((16, 32), 128, np.uint8), "L").save(folder / "0.png")
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 100, 255
    Image.fromarray(rgba, "RGBA").save(folder / "1.png")
    Image.fromarray(np.full((16, 32), 65535, np.uint16)).save(folder / "2.png")     # 16-bit
    # A JPEG stored 32 wide x 16 tall, tagged "rotate 90 CW to display" (EXIF orientation 6).
    stored = np.full((16, 32, 3), 60, np.uint8)
    stored[:6, :6] = 250                                       # marker: stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "3.jpg", exif=exif.tobytes(), quality=95)
    with pytest.raises(St4rError, match="frame 3 is 16x32"):
        decode(folder, DecodeConfig())                          # displayed 16 wide x 32 tall
    out = decode(folder, DecodeConfig(end=3))
    assert np.abs(out["frames"][0].astype(int) - 128).max() == 0
    assert np.abs(out["frames"][1].astype(int) - 100).max() == 0
    assert out["frames"][2].min() == 255
    single = tmp_path / "rot"
    single.mkdir()
    for i in range(2):
        Image.fromarray(stored).save(single / f"{i}.jpg", exif=exif.tobytes(), quality=95)
    out = decode(single, DecodeConfig())
    assert out["orig_hw"].tolist() == [32, 16]                 # displayed size, after EXIF rotation
    image = out["frames"][0].mean(axis=2)
    assert image[:4, -4:].mean() > 200 and image[:4, :4].mean() < 100   # top-left -> top-right


@pytest.mark.parametrize("orig_hw, block_xy", [((64, 128), (40, 16)), ((90, 160), (100, 50))])
def test_pixel_mapping_formula(tmp_path, orig_hw, block_xy):
    """A bright block's centroid lands where (x + 0.5) * W / W0 - 0.5 (same for y) says."""
    frames = np.zeros((2, *orig_hw, 3), np.uint8)
    x0, y0 = block_xy
    frames[:, y0:y0 + 10, x0:x0 + 10] = 255
    path = write_video(tmp_path / "b.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    out = decode(path, DecodeConfig(long_side=64))
    h, w = out["frames"].shape[1:3]
    image = out["frames"][0, ..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:h, 0:w]
    centroid = np.array([(image * xs).sum(), (image * ys).sum()]) / image.sum()
    centre_src = np.array([x0 + 4.5, y0 + 4.5])
    expected = (centre_src + 0.5) * np.array([w / orig_hw[1], h / orig_hw[0]]) - 0.5
    np.testing.assert_allclose(centroid, expected, atol=0.05)


def test_frame_buffer_grows_past_a_wrong_header_count_and_trims_to_the_frames():
    """decode copies each frame into one buffer sized from the header's count (the video in memory once);
    a header that says fewer or more frames than there are still gives exactly the decoded frames."""
    import numpy as np

    from st4r_cli.stages.decode import _FrameBuffer

    frames = np.random.default_rng(0).integers(0, 255, (7, 4, 6, 3), dtype=np.uint8)
    for capacity in (2, 7, 20):
        buffer = _FrameBuffer()
        buffer.reserve(capacity, (4, 6))
        for frame in frames:
            buffer.append(frame)
        out = buffer.array()
        assert len(buffer) == 7 and out.shape == (7, 4, 6, 3) and np.array_equal(out, frames)


def test_stored_frames_reads_a_cached_decode_frame_by_frame(tmp_path):
    """The tracker reads the tracking-resolution frames one at a time from the cache's .npz."""
    import numpy as np
    import pytest

    from st4r_cli.errors import St4rError
    from st4r_cli.runs.atomic import atomic_save_npz
    from st4r_cli.stages.decode import StoredFrames

    frames = np.random.default_rng(1).integers(0, 255, (5, 7, 9, 3), dtype=np.uint8)
    path = tmp_path / "decode.npz"
    atomic_save_npz(path, {"frame_indices": np.arange(5), "frames": frames, "fps": np.asarray(3.0)})
    stored = StoredFrames(path)
    assert len(stored) == 5 and stored.shape == (5, 7, 9, 3) and stored.dtype == np.uint8 and stored.ndim == 4
    assert all(np.array_equal(stored[t], frames[t]) for t in (0, 3, 1, 4))
    assert np.array_equal(np.ascontiguousarray(stored), frames)
    with pytest.raises(IndexError):
        stored[5]
    atomic_save_npz(path, {"frames": frames}, compressed=True)
    with pytest.raises(St4rError, match="compressed"):
        StoredFrames(path)
