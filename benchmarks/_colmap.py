"""COLMAP (pycolmap) structure-from-motion as a camera-pose baseline for the benchmarks.

`run_colmap(images, intrinsics, workdir)` runs the classic COLMAP pipeline on one clip: SIFT features
(CPU), exhaustive matching with geometric verification, incremental mapping; it returns the camera
trajectory of the largest reconstruction as st4r poses (`cam_c2w (T, 4, 4)`, OpenCV axes, COLMAP's own
world frame and scale) with a mask of the frames COLMAP registered.

Pixel convention: COLMAP puts the image origin at the top-left corner of the top-left pixel (pixel centres
at +0.5), st4r at its centre (OpenCV); K crosses the boundary with cx, cy shifted by 0.5 each way.

- `intrinsics (3, 3)` given: one PINHOLE camera with those parameters, held fixed (a user who knows K).
- `intrinsics=None`: one SIMPLE_RADIAL camera shared by all frames (f, cx, cy, k); COLMAP initialises f
  at 1.2 x the long side and refines f and k (principal point fixed at the centre, its default).

Determinism: `pycolmap.set_random_seed(seed)`, every `random_seed` option set to `seed` and
`num_threads=1` (the default) make repeated runs give the same poses.

pycolmap is an optional dependency (`pip install st4r[bench]`, numpy only; it does not pull torch).
Scratch files (images, database.db, sparse models) live in `workdir` or a temporary directory that is
removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError


@dataclass
class ColmapResult:
    """Registered trajectory of one clip.

    cam_c2w: `(T, 4, 4)` float64 camera-to-world (OpenCV axes, COLMAP's world frame and arbitrary
        scale); NaN for frames COLMAP did not register.
    registered: `(T,)` bool.
    intrinsics: `(3, 3)` float64 K of the shared camera after mapping, st4r pixel convention (pinhole
        part; SIMPLE_RADIAL's radial coefficient is in `camera_params`).
    camera_params: COLMAP's own camera parameters (its pixel convention: principal point + 0.5).
    """

    cam_c2w: np.ndarray
    registered: np.ndarray
    intrinsics: np.ndarray
    camera_model: str
    camera_params: list[float]
    num_points3d: int
    num_models: int
    seconds: dict[str, float] = field(default_factory=dict)   # wall: extract, match, map, total; cpu
    version: str = ""


def require_pycolmap():
    """Import pycolmap or raise a one-line St4rError saying how to install it."""
    try:
        import pycolmap
    except ImportError:
        raise St4rError("pycolmap is not installed: pip install 'st4r[bench]' (or: pip install --no-deps pycolmap)") from None
    return pycolmap


def cam_c2w_from_cam_from_world(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Camera-to-world `(4, 4)` from COLMAP's world-to-camera pose x_cam = R x_world + t.

    COLMAP cameras use OpenCV axes (x right, y down, z forward), like st4r, so only the inversion is
    needed: c2w = [R^T | -R^T t].
    """
    rotation = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    translation = np.asarray(translation, dtype=np.float64).reshape(3)
    cam_c2w = np.eye(4)
    cam_c2w[:3, :3] = rotation.T
    cam_c2w[:3, 3] = -rotation.T @ translation
    return cam_c2w


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_frames(folder: Path) -> list[Path]:
    """The frame files of a clip folder, in clip order.

    7-Scenes layout (`frame-NNNNNN.color.jpg`, by frame number), an st4r clip folder (`frames/*`), or a
    plain folder of images (sorted by name).
    """
    folder = Path(folder)
    sevenscenes = sorted(folder.glob("frame-*.color.*"), key=lambda p: int(p.name.split(".")[0].split("-")[1]))
    if sevenscenes:
        return sevenscenes
    if (folder / "frames").is_dir():
        folder = folder / "frames"
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not frames:
        raise St4rError(f"{folder}: no frames (.png/.jpg) found")
    return frames


def _stage_images(images: Sequence[Path] | np.ndarray, image_dir: Path) -> list[str]:
    """Put the clip's frames into `image_dir` as `00000.<ext>` ... (in clip order); returns the names.

    Paths are hard-linked or copied as they are (no re-encoding); an array `(T, H, W, 3) uint8` RGB is
    written as lossless PNG.
    """
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise St4rError(f"frames must be (T, H, W, 3) uint8; got {images.shape} {images.dtype}")
        for index, frame in enumerate(images):
            names.append(f"{index:05d}.png")
            Image.fromarray(frame).save(image_dir / names[-1])
        return names
    for index, source in enumerate(images):
        source = Path(source)
        if not source.is_file():
            raise St4rError(f"{source}: image not found")
        names.append(f"{index:05d}{source.suffix.lower()}")
        try:
            os.link(source, image_dir / names[-1])
        except OSError:
            shutil.copyfile(source, image_dir / names[-1])
    return names


def _options(pycolmap, intrinsics: np.ndarray | None, seed: int, num_threads: int) -> dict:
    """pycolmap option objects for one run."""
    reader = pycolmap.ImageReaderOptions()
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.use_gpu = False
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = seed
    verification.ransac.num_threads = num_threads
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = num_threads
    mapping.random_seed = seed
    mapping.mapper.num_threads = num_threads
    mapping.mapper.random_seed = seed
    mapping.triangulation.random_seed = seed
    mapping.extract_colors = False
    if intrinsics is not None:
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        if intrinsics.shape != (3, 3):
            raise St4rError(f"intrinsics must be (3, 3); got {intrinsics.shape}")
        reader.camera_model = "PINHOLE"
        colmap_params = (intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2] + 0.5, intrinsics[1, 2] + 0.5)
        reader.camera_params = ",".join(repr(float(v)) for v in colmap_params)
        mapping.ba_refine_focal_length = False
        mapping.ba_refine_principal_point = False
        mapping.ba_refine_extra_params = False
        mapping.mapper.abs_pose_refine_focal_length = False
        mapping.mapper.abs_pose_refine_extra_params = False
    else:
        reader.camera_model = "SIMPLE_RADIAL"
    return {"reader": reader, "extraction": extraction, "matching": matching,
            "verification": verification, "mapping": mapping}


def _trajectory(reconstruction, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`cam_c2w (T, 4, 4)` (NaN where unregistered) and `registered (T,)` of one reconstruction."""
    index_of = {name: index for index, name in enumerate(names)}
    cam_c2w = np.full((len(names), 4, 4), np.nan)
    registered = np.zeros(len(names), dtype=bool)
    for image in reconstruction.images.values():
        if not image.has_pose or image.name not in index_of:
            continue
        pose = image.cam_from_world()
        index = index_of[image.name]
        cam_c2w[index] = cam_c2w_from_cam_from_world(pose.rotation.matrix(), pose.translation)
        registered[index] = True
    return cam_c2w, registered


def run_colmap(images: Path | Sequence[Path] | np.ndarray, intrinsics: np.ndarray | None = None,
               workdir: Path | None = None, seed: int = 0, num_threads: int = 1,
               quiet: bool = True) -> ColmapResult:
    """COLMAP SfM (SIFT, exhaustive matching, incremental mapping) on one clip.

    Args:
        images: the clip's frames in order: a clip folder (see `list_frames`), image file paths, or
            `(T, H, W, 3) uint8` RGB.
        intrinsics: `(3, 3)` known K in pixels of the images (fixed PINHOLE camera), or None to let
            COLMAP calibrate one shared SIMPLE_RADIAL camera.
        workdir: where the scratch files go (kept); None = a temporary directory, removed afterwards.
        seed: seed of every RANSAC / mapper random choice.
        num_threads: COLMAP worker threads (1 = deterministic).
        quiet: silence COLMAP's own log (glog) below errors.
    Returns:
        `ColmapResult` with `cam_c2w (T, 4, 4)` of the reconstruction that registers the most frames.
    """
    pycolmap = require_pycolmap()
    if isinstance(images, (str, Path)):
        images = list_frames(Path(images))
    previous_log_level = pycolmap.logging.minloglevel
    if quiet:
        pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    pycolmap.set_random_seed(seed)
    options = _options(pycolmap, intrinsics, seed, num_threads)
    scratch = None if workdir is not None else tempfile.TemporaryDirectory(prefix="st4r-colmap-")
    root = Path(workdir) if workdir is not None else Path(scratch.name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        image_dir, database, sparse = root / "images", root / "database.db", root / "sparse"
        if database.exists():
            database.unlink()
        names = _stage_images(images, image_dir)
        if len(names) < 2:
            raise St4rError(f"COLMAP needs at least 2 frames; got {len(names)}")
        seconds = {}
        cpu_start = time.process_time()
        start = time.perf_counter()
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=options["reader"], extraction_options=options["extraction"],
                                  device=pycolmap.Device.cpu)
        seconds["extract"] = time.perf_counter() - start
        start = time.perf_counter()
        pycolmap.match_exhaustive(database, matching_options=options["matching"],
                                  verification_options=options["verification"], device=pycolmap.Device.cpu)
        seconds["match"] = time.perf_counter() - start
        start = time.perf_counter()
        sparse.mkdir(exist_ok=True)
        models = pycolmap.incremental_mapping(database, image_dir, sparse, options=options["mapping"])
        seconds["map"] = time.perf_counter() - start
        seconds["total"] = seconds["extract"] + seconds["match"] + seconds["map"]
        seconds["cpu"] = time.process_time() - cpu_start          # CPU seconds of all threads
        return _result(pycolmap, models, names, seconds)
    finally:
        pycolmap.logging.minloglevel = previous_log_level
        if scratch is not None:
            scratch.cleanup()


def _result(pycolmap, models: dict, names: list[str], seconds: dict[str, float]) -> ColmapResult:
    """The largest reconstruction as a `ColmapResult` (all frames unregistered when there is none)."""
    best = max(models.values(), key=lambda model: model.num_reg_images(), default=None)
    if best is None:
        return ColmapResult(np.full((len(names), 4, 4), np.nan), np.zeros(len(names), bool), np.full((3, 3), np.nan),
                            "", [], 0, 0, seconds, pycolmap.__version__)
    cam_c2w, registered = _trajectory(best, names)
    camera = next(iter(best.cameras.values()))
    intrinsics = np.asarray(camera.calibration_matrix(), dtype=np.float64)
    intrinsics[:2, 2] -= 0.5                                  # COLMAP pixel corners -> st4r pixel centres
    return ColmapResult(cam_c2w, registered, intrinsics,
                        camera.model.name, [float(v) for v in camera.params], best.num_points3D(), len(models),
                        seconds, pycolmap.__version__)
