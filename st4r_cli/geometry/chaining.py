"""Chaining windows into one world frame (NumPy): the maths the cameras and fuse stages share.

Per window w (anchor a_w, frames a_w .. a_w + L - 1) the predict stage gives, for every frame j,
head 1 (the anchor's pixels at time j) and head 2 (frame j's pixels), both in the window's frame.
Each camera j of a window is solved by weighted PnP on head 2 (`solve_window_poses`); window w is
mapped into the world by the Sim(3) that best aligns its head-2 pointmaps of the frames it shares
with window w-1 onto window w-1's (`align_window`); each frame belongs to the latest window that
contains it (`frame_owner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Sim3:
    """x_world = scale * rotation @ x + translation."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def points(self, pts: np.ndarray) -> np.ndarray:
        return self.scale * pts @ self.rotation.T + self.translation

    def inverse_points(self, pts: np.ndarray) -> np.ndarray:
        return (pts - self.translation) @ self.rotation / self.scale

    def c2w(self, local_c2w: np.ndarray) -> np.ndarray:
        """Camera-to-window poses (..., 4, 4) -> camera-to-world (rigid; the scale moves centres)."""
        import numpy as np

        out = np.array(local_c2w, dtype=np.float64, copy=True)
        out[..., :3, :3] = self.rotation @ out[..., :3, :3]
        out[..., :3, 3] = self.points(out[..., :3, 3])
        return out


class Window:
    """One window's predictions (views into the adapt arrays) and its solved cameras / gauge."""

    def __init__(self, index: int, start: int, frames: list[int], length: int, pred: dict[str, np.ndarray]) -> None:
        self.index = index
        self.start = start
        self.frames = frames
        self.offset = index * length
        self.pred = pred
        self.local_w2c: np.ndarray | None = None   # (L, 4, 4) window frame -> camera j
        self.gauge: Sim3 | None = None

    def track_pts(self, slot: int) -> np.ndarray:
        return self.pred["track_pts"][self.offset + slot]

    def track_conf(self, slot: int) -> np.ndarray:
        return self.pred["track_conf"][self.offset + slot]

    def recon_pts(self, slot: int) -> np.ndarray:
        return self.pred["recon_pts"][self.offset + slot]

    def recon_conf(self, slot: int) -> np.ndarray:
        return self.pred["recon_conf"][self.offset + slot]

    @property
    def end(self) -> int:
        return self.frames[-1] + 1


def solve_window_poses(win: Window, k_mat: np.ndarray, stride: int) -> np.ndarray:
    """(L, 4, 4) w2c of every camera of the window by PnP on head 2."""
    import numpy as np
    import torch

    from st4r_cli.geometry.camera import pixel_grid
    from st4r_cli.geometry.pnp import PnPOptions, solve_pnp

    sl = slice(win.offset, win.offset + len(win.frames))
    pts = torch.as_tensor(win.pred["recon_pts"][sl][:, ::stride, ::stride], dtype=torch.float64)
    conf = torch.as_tensor(win.pred["recon_conf"][sl][:, ::stride, ::stride], dtype=torch.float64)
    count, hs, ws, _ = pts.shape
    h, w = win.pred["recon_pts"].shape[1:3]
    grid = pixel_grid((h, w), dtype=torch.float64)[::stride, ::stride].reshape(1, -1, 2).expand(count, -1, -1)
    with torch.no_grad():
        w2c = solve_pnp(pts.reshape(count, -1, 3), grid, torch.as_tensor(k_mat), weights=conf.reshape(count, -1),
                        options=PnPOptions(grad_steps=0))
    return w2c.numpy().astype(np.float64)


def align_window(prev: Window, prev_gauge: Sim3, win: Window, stride: int) -> Sim3:
    """Sim(3) mapping window `win` into the world, from its head-2 overlap with `prev`."""
    import numpy as np

    from st4r_cli.errors import St4rError
    from st4r_cli.geometry.align import umeyama

    shared = [t for t in win.frames if t in prev.frames]
    if not shared:
        raise St4rError(f"windows starting at {prev.start} and {win.start} share no frame; raise predict.overlap")
    src, dst, wts = [], [], []
    for t in shared:
        a = prev.recon_pts(prev.frames.index(t))[::stride, ::stride].reshape(-1, 3).astype(np.float64)
        b = win.recon_pts(win.frames.index(t))[::stride, ::stride].reshape(-1, 3).astype(np.float64)
        ca = prev.recon_conf(prev.frames.index(t))[::stride, ::stride].reshape(-1)
        cb = win.recon_conf(win.frames.index(t))[::stride, ::stride].reshape(-1)
        dst.append(prev_gauge.points(a))
        src.append(b)
        wts.append(np.sqrt(np.clip(ca, 0, None) * np.clip(cb, 0, None)))
    src_all, dst_all, w_all = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
    ok = np.isfinite(src_all).all(1) & np.isfinite(dst_all).all(1) & np.isfinite(w_all) & (w_all > 0)
    src_all, dst_all, w_all = src_all[ok], dst_all[ok], w_all[ok]
    if len(src_all) < 3:
        raise St4rError(f"window at frame {win.start}: too few valid overlap points to place it")
    # Most confident half, fit, drop residuals beyond 2.5x the median, refit.
    keep = w_all >= np.median(w_all)
    scale, rot, trans = umeyama(src_all[keep], dst_all[keep], weights=w_all[keep])
    resid = np.linalg.norm(scale * src_all @ rot.T + trans - dst_all, axis=1)
    inliers = keep & (resid <= 2.5 * np.median(resid[keep]) + 1e-12)
    if inliers.sum() >= 3:
        scale, rot, trans = umeyama(src_all[inliers], dst_all[inliers], weights=w_all[inliers])
    return Sim3(float(scale), rot, trans)


def compose(outer: Sim3, inner: Sim3) -> Sim3:
    """outer(inner(x))."""
    return Sim3(outer.scale * inner.scale, outer.rotation @ inner.rotation,
                outer.scale * outer.rotation @ inner.translation + outer.translation)


def frame_owner(windows: list[Window], num_frames: int) -> np.ndarray:
    """(T,) index of the latest window containing each frame."""
    import numpy as np

    owner = np.full(num_frames, -1, np.int64)
    for win in windows:
        owner[win.frames] = win.index
    if (owner < 0).any():
        from st4r_cli.errors import St4rError

        raise St4rError("the window predictions do not cover every frame (rerun with --force predict)")
    return owner


def windows_from_predictions(pred: dict[str, np.ndarray]) -> list[Window]:
    """The windows of predict-stage arrays (window_start (W,), window_frames (W, L), track_pts ...)."""
    import numpy as np

    starts = [int(s) for s in pred["window_start"]]
    slots = np.asarray(pred["window_frames"])
    length = slots.shape[1]
    return [Window(i, starts[i], [int(f) for f in slots[i] if f >= 0], length, pred) for i in range(len(starts))]


def chain_gauges(windows: list[Window], k_mat: np.ndarray, pnp_stride: int, sim3_stride: int) -> list[Sim3]:
    """Every window's Sim(3) into the world of `scene.npz` (the camera of frame 0); also sets each
    window's `local_w2c` (PnP) and `gauge`."""
    import numpy as np

    from st4r_cli import progress

    for win in progress.track(windows, "cameras"):
        win.local_w2c = solve_window_poses(win, k_mat, pnp_stride)
    gauges = [Sim3(1.0, np.eye(3), np.zeros(3))]
    for prev, win in zip(windows, windows[1:]):
        gauges.append(align_window(prev, gauges[-1], win, sim3_stride))
    # Re-express the world in the camera of frame 0.
    c2w0 = gauges[0].c2w(np.linalg.inv(windows[0].local_w2c[0]))
    to_cam0 = Sim3(1.0, c2w0[:3, :3].T, -c2w0[:3, :3].T @ c2w0[:3, 3])
    gauges = [compose(to_cam0, g) for g in gauges]
    for win, gauge in zip(windows, gauges):
        win.gauge = gauge
    return gauges


def gauge_arrays(gauges: list[Sim3]) -> dict[str, np.ndarray]:
    """window_sim3_scale (W,), window_sim3_rotation (W, 3, 3), window_sim3_translation (W, 3), float64."""
    import numpy as np

    return {"window_sim3_scale": np.asarray([g.scale for g in gauges], np.float64),
            "window_sim3_rotation": np.asarray([g.rotation for g in gauges], np.float64),
            "window_sim3_translation": np.asarray([g.translation for g in gauges], np.float64)}


def gauges_from_arrays(arrays: dict[str, np.ndarray]) -> list[Sim3]:
    """The inverse of `gauge_arrays`."""
    import numpy as np

    return [Sim3(float(s), np.asarray(r, np.float64), np.asarray(t, np.float64))
            for s, r, t in zip(arrays["window_sim3_scale"], arrays["window_sim3_rotation"],
                               arrays["window_sim3_translation"])]


def world_frames(windows: list[Window], owner: np.ndarray, hw: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame t, from its owner window (gauges set): pointmaps (T, H, W, 3) f32 world, conf (T, H, W) f32."""
    import numpy as np

    num_frames = len(owner)
    pointmaps = np.zeros((num_frames, *hw, 3), np.float32)
    conf = np.zeros((num_frames, *hw), np.float32)
    for t in range(num_frames):
        win = windows[owner[t]]
        slot = win.frames.index(t)
        pointmaps[t] = win.gauge.points(win.recon_pts(slot).astype(np.float64))
        conf[t] = win.recon_conf(slot)
    return pointmaps, conf


def world_cameras(windows: list[Window], owner: np.ndarray) -> np.ndarray:
    """(T, 4, 4) float64 cam_c2w of every frame from its owner window (local_w2c and gauges set)."""
    import numpy as np

    cam_c2w = np.zeros((len(owner), 4, 4))
    for t in range(len(owner)):
        win = windows[owner[t]]
        cam_c2w[t] = win.gauge.c2w(np.linalg.inv(win.local_w2c[win.frames.index(t)]))
    return cam_c2w
