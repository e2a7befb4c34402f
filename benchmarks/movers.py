"""Things that move: real static RGB-D clips with a moving card composited in, exact ground truth.

    python benchmarks/movers.py [--clips ../shared/benchmarks/7scenes-redkitchen-0 ...]
        [--kinds float stand follow] [--set SECTION.FIELD=VALUE ...] [--out benchmarks/results/movers.json]

Per 7-Scenes clip (32 frames, static, metric depth and poses) and per mover (`st4r_cli.synthetic.composite`:
a real photo on a card; `float` slides sideways in mid-air, comes closer and turns; `stand` stands on the
table and slides along it, as a figure walks; `follow` is held in front of the moving camera, so it moves
along its epipolar lines), `st4r adapt` runs on the composite as a user runs it, and once on the clip
without the mover. Scored on `scene.npz`, at its resolution:
- `mover_pixels_flagged` / `static_pixels_flagged`: share of the mover's / other pixels in `dynamic_mask`;
- `mover_tracks_static`: share of the tracks starting on the mover that `track_static` calls static;
- `mover_depth_abs_rel`: AbsRel of the scene's depth on the mover's pixels, after one median scale fitted
  on the static pixels of the whole clip (the scale the static world fixes);
- `mover_track_error_m`: median over (mover track, frame) of the 3D error in metres, after the Sim(3)
  that aligns the predicted camera centres to the true ones;
- `mover_motion_ratio`: median over mover tracks of the predicted 3D displacement from the query frame
  (largest over frames, after that Sim(3)) divided by the true one;
- `ate_m` with the mover, and `ate_without_mover_m` on the same clip without it (and their ratio).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _provenance import provenance
from multiview_depth import network_depth

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
OUT = ROOT / "benchmarks" / "results" / "movers.json"
# real photos for the cards: (DAVIS clip, frame, crop rows, crop cols)
TEXTURES = {"float": ("davis-dog", "00000.jpg", (60, 420), (250, 610)),
            "stand": ("davis-pigs", "00010.jpg", (100, 400), (300, 700)),
            "follow": ("davis-goat", "00005.jpg", (40, 400), (200, 560))}


def texture(kind: str, textures: dict[str, tuple] | None = None) -> np.ndarray:
    from PIL import Image

    clip, frame, rows, cols = (textures or TEXTURES)[kind]
    image = np.asarray(Image.open(SHARED / "tapvid-davis-32" / clip / "frames" / frame).convert("RGB"))
    return np.ascontiguousarray(image[rows[0]:rows[1], cols[0]:cols[1]])


def run_adapt(frames: np.ndarray, workdir: Path, name: str, flags: list[str]) -> tuple[dict[str, np.ndarray], float]:
    from PIL import Image

    folder = workdir / f"{name}-frames"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    out = workdir / f"{name}-run"
    command = [sys.executable, "-m", "st4r_cli.cli.app", "adapt", str(folder), "--out", str(out), "--quiet", *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    with np.load(out / "scene.npz") as scene:
        return {key: scene[key] for key in scene.files}, seconds


def resize_nearest(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(m.astype(np.float32), (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
                     for m in maps])


def native_xy(xy: np.ndarray, scene_hw: tuple[int, int], native_hw: tuple[int, int]) -> np.ndarray:
    return np.stack([(xy[:, 0] + 0.5) * native_hw[1] / scene_hw[1] - 0.5,
                     (xy[:, 1] + 0.5) * native_hw[0] / scene_hw[0] - 0.5], 1)


def score(scene: dict[str, np.ndarray], truth: dict[str, np.ndarray], card, gt_c2w: np.ndarray) -> dict[str, float]:
    """The module doc's metrics of one composite run."""
    from st4r_cli.geometry.align import apply_sim3, umeyama
    from st4r_cli.metrics.camera import camera_metrics
    from st4r_cli.synthetic.composite import card_points

    hw = scene["pointmaps"].shape[1:3]
    native_hw = truth["mask"].shape[1:3]
    mask = resize_nearest(truth["mask"], hw) > 0.5
    gt_depth = resize_nearest(truth["depth_m"], hw)
    dynamic = np.asarray(scene.get("dynamic_mask", np.zeros_like(mask)), bool)
    row = {"mover_pixels": round(float(mask.mean()), 4),
           "mover_pixels_flagged": round(float(dynamic[mask].mean()), 4) if mask.any() else None,
           "static_pixels_flagged": round(float(dynamic[~mask].mean()), 4)}
    depth = network_depth(scene)
    static = ~mask & (gt_depth > 0) & np.isfinite(depth) & (depth > 0)
    scale = float(np.median(gt_depth[static] / depth[static]))
    on_mover = mask & (gt_depth > 0) & np.isfinite(depth)
    row["mover_depth_abs_rel"] = round(float(np.mean(np.abs(scale * depth[on_mover] - gt_depth[on_mover])
                                                     / gt_depth[on_mover])), 4) if on_mover.any() else None
    cams = camera_metrics(scene["cam_c2w"], gt_c2w)
    row["ate_m"] = round(cams["ate"], 4)
    # tracks that start on the mover
    query_t = scene["query_t"].astype(int)
    xy = native_xy(scene["query_xy"].astype(np.float64), hw, native_hw)
    cols = np.clip(np.round(xy[:, 0]).astype(int), 0, native_hw[1] - 1)
    rows = np.clip(np.round(xy[:, 1]).astype(int), 0, native_hw[0] - 1)
    on = truth["mask"][query_t, rows, cols]
    row["mover_tracks"] = int(on.sum())
    if not on.any():
        return row
    static = scene.get("track_static")
    row["mover_tracks_static"] = round(float(np.mean(static[on])), 4) if static is not None else None
    uv = truth["card_uv"][query_t[on], rows[on], cols[on]].astype(np.float64)
    world0 = np.linalg.inv(truth["cam0_c2w"])
    true = card_points(card, uv)                                                 # (T, M, 3) clip world
    true = np.einsum("ij,tmj->tmi", world0[:3, :3], true) + world0[:3, 3]        # camera-0 frame
    true = true.transpose(1, 0, 2)                                               # (M, T, 3)
    s, r, t = umeyama(scene["cam_c2w"][:, :3, 3], gt_c2w[:, :3, 3])
    pred = apply_sim3(scene["tracks3d"][on].astype(np.float64), s, r, t)
    row["mover_track_error_m"] = round(float(np.median(np.linalg.norm(pred - true, axis=-1))), 4)
    start = np.arange(len(uv)), query_t[on]
    pred_motion = np.linalg.norm(pred - pred[start][:, None], axis=-1).max(axis=1)
    true_motion = np.linalg.norm(true - true[start][:, None], axis=-1).max(axis=1)
    row["mover_true_motion_m"] = round(float(np.median(true_motion)), 4)
    row["mover_motion_ratio"] = round(float(np.median(pred_motion) / max(np.median(true_motion), 1e-9)), 4)
    return row


def main() -> None:
    from st4r_cli.formats.sevenscenes import read_sevenscenes
    from st4r_cli.metrics.camera import camera_metrics
    from st4r_cli.synthetic.composite import composite, make_card

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", nargs="+", type=Path,
                        default=[SHARED / "7scenes-redkitchen-0", SHARED / "7scenes-redkitchen-3"])
    parser.add_argument("--kinds", nargs="+", default=["float", "stand", "follow"])
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--texture", dest="texture_overrides", nargs="*", default=[], metavar="KIND=CLIP/FRAME",
                        help="another real photo for a kind, e.g. stand=davis-goat/00005.jpg (composites of the "
                             "same construction not tuned on; its central crop as in TEXTURES)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    textures = dict(TEXTURES)
    for item in args.texture_overrides:
        kind, path = item.split("=", 1)
        clip_name, frame_name = path.split("/", 1)
        textures[kind] = (clip_name, frame_name, *TEXTURES[kind][2:])
    flags = [item for override in args.overrides for item in ("--set", override)]
    result = {"provenance": provenance(), "config": {"adapt_flags": flags, "kinds": args.kinds,
                                                     "textures": {k: textures[k][:2] for k in args.kinds}},
              "clips": {}}
    for clip in args.clips:
        sequence = read_sevenscenes(clip)
        gt_c2w = np.linalg.inv(sequence.cam_c2w[0]) @ sequence.cam_c2w
        rows: dict[str, dict] = {}
        with tempfile.TemporaryDirectory() as tmp:
            plain, seconds = run_adapt(sequence.frames, Path(tmp), "plain", flags)
            ate_plain = round(camera_metrics(plain["cam_c2w"], gt_c2w)["ate"], 4)
            rows["none"] = {"ate_m": ate_plain, "seconds": round(seconds, 1)}
            print(clip.name, "none", json.dumps(rows["none"]), flush=True)
            for kind in args.kinds:
                card = make_card(kind, texture(kind, textures), sequence.depth_m[0], sequence.cam_c2w,
                                 sequence.intrinsics)
                truth = composite(sequence.frames, sequence.depth_m, sequence.cam_c2w, sequence.intrinsics, card)
                truth["cam0_c2w"] = sequence.cam_c2w[0]
                scene, seconds = run_adapt(truth["frames"], Path(tmp), kind, flags)
                row = score(scene, truth, card, gt_c2w)
                row.update(ate_without_mover_m=ate_plain, ate_ratio=round(row["ate_m"] / max(ate_plain, 1e-9), 2),
                           seconds=round(seconds, 1))
                rows[kind] = row
                print(clip.name, kind, json.dumps(row), flush=True)
        result["clips"][clip.name] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
