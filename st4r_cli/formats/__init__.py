"""Readers and writers of the clip, prediction and benchmark formats st4r uses.

- `clip`: the st4r clip folder (frames + gt.npz + meta.json), what `st4r synth` writes;
- `scene`: `scene.npz`, the prediction file `st4r adapt` writes and `st4r eval` reads;
- `tapvid3d`: TAPVid-3D / WorldTrack `.npz`;
- `tapvid2d`: TAP-Vid 2D official pickle and `tapvid-davis-32` folders;
- `sevenscenes`: RGB-D sequences in the 7-Scenes layout (+ static-scene track derivation);
- `tum`: TUM trajectory text files.

`load_ground_truth(path)` reads any of these as a `Clip` for evaluation.
"""

from __future__ import annotations

from pathlib import Path

from st4r_cli.errors import St4rError
from st4r_cli.formats.clip import Clip, is_clip_folder, read_clip


def ground_truth_kind(path: Path) -> str | None:
    """`clip`, `tapvid2d`, `sevenscenes`, `tapvid3d` or None when `path` is none of them."""
    from st4r_cli.formats.tapvid2d import is_tapvid_folder

    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return "tapvid3d"
    if path.is_dir():
        if is_tapvid_folder(path):
            return "tapvid2d"
        if is_clip_folder(path):
            return "clip"
        if any(path.glob("frame-*.color.*")):
            return "sevenscenes"
    return None


def load_ground_truth(path: Path, load_frames: bool = False) -> Clip:
    """Read ground truth in any supported format as a `Clip` (frames + `GT_SCHEMA` arrays + meta).

    Frames are only decoded when `load_frames` (eval needs only their count and size, except for
    TAPVid-3D files, whose JPEG frames are always decoded).
    """
    path = Path(path)
    clip = _load_ground_truth(path, load_frames)
    check_finite_cameras(clip.gt, path)
    return clip


def check_finite_cameras(gt: dict, where: Path | str) -> None:
    """St4rError naming the first frame whose ground-truth pose (`cam_c2w`) or intrinsics hold NaN/inf:
    metrics on such cameras mean nothing (and their inverses fail)."""
    import numpy as np

    for key in ("cam_c2w", "intrinsics"):
        if key not in gt:
            continue
        values = np.asarray(gt[key], dtype=np.float64)
        if values.ndim < 3:
            values = values[None]
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            frame = int(np.flatnonzero(~finite)[0])
            raise St4rError(f"{where}: ground-truth {key} of frame {frame} is not finite (NaN or inf); "
                            f"{int((~finite).sum())} of {len(finite)} frame(s) affected")


def _load_ground_truth(path: Path, load_frames: bool) -> Clip:
    kind = ground_truth_kind(path)
    if kind is None:
        raise St4rError(f"{path}: not a clip folder, TAP-Vid folder, 7-Scenes sequence or TAPVid-3D .npz")
    if kind == "clip":
        return read_clip(path, load_frames=load_frames)
    if kind == "tapvid2d":
        from st4r_cli.formats import tapvid2d

        clip = tapvid2d.read_tapvid_folder(path, load_frames=load_frames)
        return Clip(frames=clip.frames, gt=tapvid2d.to_clip_gt(clip),
                    meta={"source": "tapvid2d", **clip.source}, name=path.name)
    if kind == "sevenscenes":
        from st4r_cli.formats import sevenscenes

        sequence = sevenscenes.read_sevenscenes(path)
        return Clip(frames=sequence.frames, gt=sevenscenes.to_clip_gt(sequence),
                    meta={"source": "7scenes", "static_scene": True}, name=path.name)
    from st4r_cli.formats import tapvid3d

    clip = tapvid3d.read_tapvid3d(path)
    return Clip(frames=clip.frames, gt=tapvid3d.to_clip_gt(clip), meta={"source": "tapvid3d"},
                name=path.stem)


__all__ = ["Clip", "ground_truth_kind", "load_ground_truth", "read_clip"]
