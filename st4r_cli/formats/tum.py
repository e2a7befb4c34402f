"""TUM RGB-D trajectory files: one line per pose, `timestamp tx ty tz qx qy qz qw` (camera-to-world).

evo reads them with `evo_ape tum gt.txt est.txt -as`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError


def rotation_to_quaternion_xyzw(rotations: np.ndarray) -> np.ndarray:
    """Rotation matrices `(T, 3, 3)` -> unit quaternions `(T, 4)` (x, y, z, w) with w >= 0."""
    r = np.asarray(rotations, dtype=np.float64)
    quats = np.zeros((len(r), 4))
    for i, m in enumerate(r):
        trace = np.trace(m)
        if trace > 0:
            s = 2.0 * np.sqrt(trace + 1.0)
            quats[i] = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
        else:
            k = int(np.argmax(np.diag(m)))
            a, b = (k + 1) % 3, (k + 2) % 3
            s = 2.0 * np.sqrt(max(1.0 + m[k, k] - m[a, a] - m[b, b], 1e-300))
            q = np.zeros(4)
            q[k] = 0.25 * s
            q[a] = (m[a, k] + m[k, a]) / s
            q[b] = (m[b, k] + m[k, b]) / s
            q[3] = (m[b, a] - m[a, b]) / s
            quats[i] = q
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats[quats[:, 3] < 0] *= -1.0
    return quats


def quaternion_xyzw_to_rotation(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions `(T, 4)` (x, y, z, w) -> rotation matrices `(T, 3, 3)`."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1)], axis=1)


def format_tum(cam_c2w: np.ndarray, timestamps: np.ndarray | None = None) -> str:
    """The TUM text of poses `(T, 4, 4)`; timestamps default to the frame index."""
    cam_c2w = np.asarray(cam_c2w, dtype=np.float64)
    stamps = np.arange(len(cam_c2w), dtype=np.float64) if timestamps is None else np.asarray(timestamps, float)
    quats = rotation_to_quaternion_xyzw(cam_c2w[:, :3, :3])
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for stamp, pose, quat in zip(stamps, cam_c2w, quats):
        values = [stamp, *pose[:3, 3], *quat]
        lines.append(" ".join(f"{v:.9f}" for v in values))
    return "\n".join(lines) + "\n"


def write_tum(path: Path, cam_c2w: np.ndarray, timestamps: np.ndarray | None = None) -> Path:
    """Write a TUM trajectory file atomically."""
    from st4r_cli.runs.atomic import atomic_write_text

    atomic_write_text(Path(path), format_tum(cam_c2w, timestamps))
    return Path(path)


def read_tum(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory: `timestamps (T,)`, `cam_c2w (T, 4, 4)`."""
    path = Path(path)
    if not path.is_file():
        raise St4rError(f"file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise St4rError(f"{path}:{number}: expected 8 values (timestamp tx ty tz qx qy qz qw)")
        rows.append([float(p) for p in parts])
    if not rows:
        raise St4rError(f"{path}: no poses")
    data = np.array(rows)
    poses = np.tile(np.eye(4), (len(data), 1, 1))
    poses[:, :3, :3] = quaternion_xyzw_to_rotation(data[:, 4:8])
    poses[:, :3, 3] = data[:, 1:4]
    return data[:, 0], poses
