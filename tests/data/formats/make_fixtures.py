"""Provenance of the tiny fixtures in this folder (run once by hand; tests never read ../shared).

- `7scenes-mini/`: frames 0, 4, 8 of 7scenes-redkitchen-0, colour and depth downscaled 8x (nearest for
  depth) to 80x60, intrinsics scaled accordingly; poses unchanged.
- `davis-mini/`: frames 0-2 of tapvid-davis-32/davis-breakdance downscaled to 107x60 (JPEG), with its
  TAP-Vid tracks cut to those frames and scaled to the new size.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/benchmarks")
HERE = Path(__file__).parent


def seven_scenes() -> None:
    src, dst = SHARED / "7scenes-redkitchen-0", HERE / "7scenes-mini"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    for number in (0, 4, 8):
        stem = f"frame-{number:06d}"
        Image.open(src / f"{stem}.color.jpg").resize((80, 60), Image.BILINEAR).save(dst / f"{stem}.color.jpg", quality=90)
        depth = np.asarray(Image.open(src / f"{stem}.depth.png"))[4::8, 4::8]
        Image.fromarray(depth.astype(np.uint16)).save(dst / f"{stem}.depth.png")
        shutil.copy(src / f"{stem}.pose.txt", dst / f"{stem}.pose.txt")
    K = np.loadtxt(src / "camera-intrinsics.txt")
    K[:2] /= 8.0
    K[0, 2], K[1, 2] = (320 - 4) / 8.0, (240 - 4) / 8.0  # original pixel 8 j + 4 is new pixel j ([4::8] depth sampling)
    np.savetxt(dst / "camera-intrinsics.txt", K)


def davis() -> None:
    src, dst = SHARED / "tapvid-davis-32" / "davis-breakdance", HERE / "davis-mini"
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "frames").mkdir(parents=True)
    data = np.load(src / "tracks2d.npz")
    width, height = int(data["width"]), int(data["height"])
    new_w, new_h = 107, 60
    for i in range(3):
        Image.open(src / "frames" / f"{i:05d}.jpg").resize((new_w, new_h), Image.BILINEAR).save(
            dst / "frames" / f"{i:05d}.jpg", quality=90)
    points = data["points"][:, :3] * np.array([new_w / width, new_h / height], dtype=np.float32)
    occluded = data["occluded"][:, :3]
    keep = (~occluded).any(axis=1)
    query_t = np.argmax(~occluded[keep], axis=1).astype(np.int32)
    np.savez(dst / "tracks2d.npz", points=points[keep].astype(np.float32), occluded=occluded[keep],
             query_t=query_t, width=np.int32(new_w), height=np.int32(new_h))
    source = json.loads((src / "source.json").read_text())
    source.update(note="first 3 frames, downscaled to 107x60 for st4r tests")
    (dst / "source.json").write_text(json.dumps(source, indent=1))


if __name__ == "__main__":
    seven_scenes()
    davis()
