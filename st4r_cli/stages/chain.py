"""World-frame chaining: per-window predictions -> one `scene.npz` in the camera frame of frame 0.

Per window w (anchor a_w, frames a_w .. a_w + L - 1), the adapt stage predicted, for every frame j,
head 1 (the anchor's pixels at time j) and head 2 (frame j's pixels), both in the window's frame.

1. Cameras. Each camera j of each window is solved by weighted PnP on head 2 (pixels = the grid,
   weights = head-2 confidence) with the shared K, giving w2c in the window's frame.
2. Gauge. Window 0 defines the world; window w is mapped into it by the Sim(3) S_w that best aligns
   its head-2 pointmaps of the frames it shares with window w-1 onto window w-1's (already in the
   world), pixel by pixel (confidence-weighted Umeyama with one trimmed refit). Frames and pixels
   correspond exactly on the overlap, so scale, rotation and translation are all fixed there.
   Finally everything is expressed in the camera of frame 0 (the world of `scene.npz`).
3. Per-frame outputs (poses, pointmaps, confidences) come from the latest window containing the frame
   (its anchor is the closest in time).
4. 3D tracks. A track is carried by a window when its anchor pixel is known: the query pixel when the
   query is on the anchor, else the 2D track's pixel at the anchor when the tracker sees it there, else
   the projection of the track's 3D position at the anchor time (from the previous window) when the
   z-buffer test says it is visible. The window then gives its 3D position at every frame: head 1 at
   that pixel, mapped by S_w. Where two windows overlap their estimates are blended with linear
   ramps. Frames no window covers use head 2 at the 2D track where the tracker sees the point, else
   linear interpolation in time (held at the ends), with sigma `sigma_fill_px`.
5. 2D tracks are the 3D tracks projected into each camera; visibility is the tracker's for its own
   tracks (`chain.visibility=tracker`), else the z-buffer test against frame t's own pointmap
   (`mask`, or `both`). The tracker's is the default: on 10 DAVIS clips the z-buffer test of the
   tiny network's pointmaps called 55% of the points occluded where the annotation has 13% (OA 0.47
   vs 0.84). For grid or dense queries, which the tracker did not track, the test's tolerance is
   calibrated on the tracker's tracks: it accepts `visibility_quantile` of the points the tracker
   sees (`visibility_eps_rel` in the scene). Sigma (pixels) comes from the head-1 confidence as in the
   robust TTA loss.
6. Refinement (`chain.refine=ba`, st4r_cli/stages/refine.py): the cameras and the focal are bundle
   adjusted on the 2D tracks of static points, and pointmaps and 3D tracks are re-lifted into the
   refined cameras (3D tracks follow the 2D tracks where the tracker sees them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CHAIN_VERSION = 2


@dataclass
class ChainConfig:
    """Windowing and world-frame chaining settings."""

    window: int = 24                  # frames per window
    overlap: int = 4                  # frames shared by consecutive windows (>= 1)
    queries: str = "tracks"           # tracks (the tracks stage's queries) | grid | dense (frame 0)
    grid_size: int = 32               # points per side for queries=grid
    dense_stride: int = 1             # pixel stride for queries=dense
    visibility: str = "tracker"       # tracker (its flags; the z-buffer test for queries it did not
                                      # track: queries=grid|dense) | mask (z-buffer) | both
    mask_eps_rel: float = 0.05        # z-buffer tolerance relative to the surface depth
    visibility_quantile: float = 0.9  # visibility=tracker, queries the tracker did not track: the z-buffer
                                      # tolerance accepts this share of the points the tracker sees (0: off)
    pnp_stride: int = 4               # every k-th pixel of head 2 for PnP
    sim3_stride: int = 4              # every k-th pixel of the overlap pointmaps for the Sim(3)
    sigma_floor_px: float = 1.0
    conf_alpha: float = 0.2
    sigma_fill_px: float = 16.0       # sigma of interpolated track positions
    # refinement (st4r_cli/stages/refine.py): bundle adjustment of the cameras on the 2D tracks
    refine: str = "ba"                # ba | none
    fuse_tracks: bool = True          # 3D tracks follow the 2D tracks where the tracker sees them
    ba_every_k: int = 8               # bundle tracks: a grid re-seeded every k frames ...
    ba_grid_size: int = 16            # ... of this many points per side
    ba_chunk: int = 8                 # frames join the bundle adjustment in chunks of this size
    ba_dynamic_rel: float = 0.05      # a track moving more than this x the scene depth is dynamic
    ba_accept_px: float = 4.0         # the refined cameras are kept when the median reprojection is below
    ba_refine_focal: bool = False     # also refine the focal (needs rotation and parallax to be observable)
    ba_point_max_px: float = 2.0      # static tracks become bundle points below this median residual ...
    ba_min_parallax_deg: float = 6.0  # ... and above this parallax at the bundle's solution ...
    ba_min_parallax_2d_deg: float = 1.0  # ... and this one on the 2D tracks, the best camera rotation taken out


def check_chain_config(config: ChainConfig) -> None:
    """St4rError for invalid values."""
    from st4r_cli.errors import St4rError

    if config.window < 2:
        raise St4rError("chain.window must be >= 2")
    if not 1 <= config.overlap < config.window:
        raise St4rError("chain.overlap must be >= 1 and smaller than chain.window")
    if config.queries not in ("tracks", "grid", "dense"):
        raise St4rError(f"chain.queries must be tracks, grid or dense, got '{config.queries}'")
    if config.visibility not in ("mask", "tracker", "both"):
        raise St4rError(f"chain.visibility must be mask, tracker or both, got '{config.visibility}'")
    if config.refine not in ("ba", "none"):
        raise St4rError(f"chain.refine must be ba or none, got '{config.refine}'")
    if not 0 <= config.visibility_quantile < 1:
        raise St4rError("chain.visibility_quantile must be in [0, 1)")
    if min(config.ba_every_k, config.ba_grid_size, config.ba_chunk) < 2:
        raise St4rError("chain.ba_every_k, ba_grid_size and ba_chunk must be >= 2")
    if min(config.ba_point_max_px, config.ba_min_parallax_deg, config.ba_min_parallax_2d_deg) < 0:
        raise St4rError("chain.ba_point_max_px, ba_min_parallax_deg and ba_min_parallax_2d_deg must be >= 0")
    if min(config.grid_size, config.dense_stride, config.pnp_stride, config.sim3_stride) < 1:
        raise St4rError("chain.grid_size, dense_stride, pnp_stride and sim3_stride must be >= 1")


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


def chain_windows(pred: dict[str, np.ndarray], frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                  config: ChainConfig) -> dict[str, np.ndarray]:
    """Turn the adapt stage's per-window predictions into the `scene.npz` arrays.

    pred: adapt-stage arrays (window_start (W,), window_frames (W, L), track_pts / recon_pts
    (W*L, H, W, 3), track_conf / recon_conf (W*L, H, W), intrinsics (3, 3)); frames (T, H, W, 3) uint8;
    tracks: tracks-stage arrays (tracks_xy (N,T,2), visible (N,T), queries (N,3)) or None.
    Returns tracks3d (N,T,3), tracks2d (N,T,2), visible (N,T), query_xy (N,2), query_t (N,),
    sigma (N,T), pointmaps (T,H,W,3), conf (T,H,W), colors (T,H,W,3), intrinsics (3,3),
    cam_c2w (T,4,4), image_hw (2,), window_start (W,), window_sim3_scale (W,).
    """
    import numpy as np

    from st4r_cli import progress

    check_chain_config(config)
    num_frames, h, w = frames.shape[:3]
    k_mat = np.asarray(pred["intrinsics"], dtype=np.float64)
    starts = [int(s) for s in pred["window_start"]]
    slots = np.asarray(pred["window_frames"])
    length = slots.shape[1]
    windows = [_Window(i, starts[i], [int(f) for f in slots[i] if f >= 0], length, pred) for i in range(len(starts))]

    for win in progress.track(windows, "cameras"):
        win.local_w2c = _solve_window_poses(win, k_mat, config.pnp_stride)
    gauges = [Sim3(1.0, np.eye(3), np.zeros(3))]
    for prev, win in zip(windows, windows[1:]):
        gauges.append(_align_window(prev, gauges[-1], win, config.sim3_stride))
    # Re-express the world in the camera of frame 0.
    c2w0 = gauges[0].c2w(np.linalg.inv(windows[0].local_w2c[0]))
    to_cam0 = Sim3(1.0, c2w0[:3, :3].T, -c2w0[:3, :3].T @ c2w0[:3, 3])
    gauges = [_compose(to_cam0, g) for g in gauges]
    for win, gauge in zip(windows, gauges):
        win.gauge = gauge

    owner = _frame_owner(windows, num_frames)
    cam_c2w = np.zeros((num_frames, 4, 4))
    pointmaps = np.zeros((num_frames, h, w, 3), np.float32)
    conf = np.zeros((num_frames, h, w), np.float32)
    for t in range(num_frames):
        win = windows[owner[t]]
        slot = win.frames.index(t)
        cam_c2w[t] = win.gauge.c2w(np.linalg.inv(win.local_w2c[slot]))
        pointmaps[t] = win.gauge.points(win.recon_pts(slot).astype(np.float64))
        conf[t] = win.recon_conf(slot)
    w2c_world = np.linalg.inv(cam_c2w)
    surface_z = surface_depths(pointmaps, w2c_world)

    query_t, query_xy = _queries(tracks, config, (h, w))
    scene_tracks = _chain_tracks(windows, owner, query_t, query_xy, tracks if config.queries == "tracks" else None,
                                 k_mat, w2c_world, surface_z, config, (h, w), num_frames)
    tracks3d, sigma, source = scene_tracks
    tracks2d, z = project_tracks(tracks3d, w2c_world, k_mat)
    eps_rel = config.mask_eps_rel
    if config.queries != "tracks" and tracks is not None and config.visibility == "tracker":
        eps_rel = _calibrated_eps_rel(windows, owner, tracks, k_mat, w2c_world, surface_z, config, (h, w))
    visible = _visibility(tracks2d, z, surface_z, tracks if config.queries == "tracks" else None,
                          replace(config, mask_eps_rel=eps_rel), (h, w))
    scene = {
        "tracks3d": tracks3d.astype(np.float32), "tracks2d": tracks2d.astype(np.float32),
        "visible": visible, "query_xy": query_xy.astype(np.float32), "query_t": query_t.astype(np.int32),
        "sigma": sigma.astype(np.float32), "pointmaps": pointmaps, "conf": conf,
        "colors": np.asarray(frames, dtype=np.uint8), "intrinsics": k_mat.astype(np.float32),
        "cam_c2w": cam_c2w.astype(np.float32), "image_hw": np.asarray([h, w], np.int32),
        "window_start": np.asarray(starts, np.int64),
        "window_sim3_scale": np.asarray([g.scale for g in gauges], np.float64),
        "track_source": source.astype(np.uint8), "visibility_eps_rel": np.float32(eps_rel),
    }
    if config.refine == "ba":
        from st4r_cli.stages.refine import refine_scene

        scene = refine_scene(scene, frames, tracks, config)
    return scene


# ----------------------------------------------------------------------------------------------
# windows, cameras, gauges
# ----------------------------------------------------------------------------------------------

class _Window:
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


def _solve_window_poses(win: _Window, k_mat: np.ndarray, stride: int) -> np.ndarray:
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


def _align_window(prev: _Window, prev_gauge: Sim3, win: _Window, stride: int) -> Sim3:
    """Sim(3) mapping window `win` into the world, from its head-2 overlap with `prev`."""
    import numpy as np

    from st4r_cli.errors import St4rError
    from st4r_cli.geometry.align import umeyama

    shared = [t for t in win.frames if t in prev.frames]
    if not shared:
        raise St4rError(f"windows starting at {prev.start} and {win.start} share no frame; raise chain.overlap")
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


def _compose(outer: Sim3, inner: Sim3) -> Sim3:
    """outer(inner(x))."""
    return Sim3(outer.scale * inner.scale, outer.rotation @ inner.rotation,
                outer.scale * outer.rotation @ inner.translation + outer.translation)


def _frame_owner(windows: list[_Window], num_frames: int) -> np.ndarray:
    """(T,) index of the latest window containing each frame."""
    import numpy as np

    owner = np.full(num_frames, -1, np.int64)
    for win in windows:
        owner[win.frames] = win.index
    if (owner < 0).any():
        from st4r_cli.errors import St4rError

        raise St4rError("the adapt predictions do not cover every frame (rerun with --force adapt)")
    return owner


# ----------------------------------------------------------------------------------------------
# tracks
# ----------------------------------------------------------------------------------------------

def _queries(tracks: dict[str, np.ndarray] | None, config: ChainConfig, hw: tuple[int, int]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(query_t (N,), query_xy (N, 2)) for the configured query mode."""
    import numpy as np

    from st4r_cli.errors import St4rError

    h, w = hw
    if config.queries == "tracks":
        if tracks is None:
            raise St4rError("chain.queries=tracks needs the tracks stage; use chain.queries=grid or dense")
        queries = np.asarray(tracks["queries"], dtype=np.float64)
        return np.rint(queries[:, 0]).astype(np.int64), queries[:, 1:3]
    if config.queries == "grid":
        n = config.grid_size
        xs = (np.arange(n) + 0.5) * w / n - 0.5
        ys = (np.arange(n) + 0.5) * h / n - 0.5
    else:
        xs = np.arange(0, w, config.dense_stride, dtype=np.float64)
        ys = np.arange(0, h, config.dense_stride, dtype=np.float64)
    gx, gy = np.meshgrid(xs, ys)
    xy = np.stack([gx.ravel(), gy.ravel()], -1)
    return np.zeros(len(xy), np.int64), xy


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(H, W, C) or (H, W) image sampled bilinearly at xy (N, 2) (clamped to the border)."""
    import numpy as np

    h, w = image.shape[:2]
    x = np.clip(xy[:, 0], 0, w - 1)
    y = np.clip(xy[:, 1], 0, h - 1)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(h - 2, 0))
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = x - x0
    fy = y - y0
    if image.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    return (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x1] * fx * (1 - fy)
            + image[y1, x0] * (1 - fx) * fy + image[y1, x1] * fx * fy)


def _inside(xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import numpy as np

    return (np.isfinite(xy).all(-1) & (xy[..., 0] >= 0) & (xy[..., 0] <= hw[1] - 1)
            & (xy[..., 1] >= 0) & (xy[..., 1] <= hw[0] - 1))


def surface_depths(pointmaps: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """(T, H, W) z-depth of each frame's own pointmap (T, H, W, 3) (world) in its camera w2c (T, 4, 4)."""
    import numpy as np

    return (np.einsum("tj,thwj->thw", w2c[:, 2, :3], np.asarray(pointmaps, np.float64))
            + w2c[:, 2, 3][:, None, None])


def _project(points: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) and depth (N,) of world points (N, 3) in a camera."""
    import numpy as np

    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    safe = np.where(z > 1e-12, z, np.nan)
    return np.stack([k_mat[0, 0] * cam[:, 0] / safe + k_mat[0, 2], k_mat[1, 1] * cam[:, 1] / safe + k_mat[1, 2]], -1), z


def _ramp(win: _Window, windows: list[_Window]) -> dict[int, float]:
    """Blend weight of `win` at each of its frames: linear ramps on the overlaps with its neighbours."""
    weights = {t: 1.0 for t in win.frames}
    if win.index > 0:
        prev = windows[win.index - 1]
        shared = [t for t in win.frames if t in prev.frames]
        for k, t in enumerate(shared):
            weights[t] *= (k + 1) / (len(shared) + 1)
    if win.index + 1 < len(windows):
        nxt = windows[win.index + 1]
        shared = [t for t in win.frames if t in nxt.frames]
        for k, t in enumerate(shared):
            weights[t] *= 1.0 - (k + 1) / (len(shared) + 1)
    return weights


def _sigma_px(conf: np.ndarray, depth: np.ndarray, scene_depth: float, focal: float, config: ChainConfig) -> np.ndarray:
    """Pixel sigma from a confidence, as the robust TTA loss defines it."""
    import numpy as np

    raw = focal * config.conf_alpha * scene_depth / (np.clip(conf, 1e-6, None) * np.clip(depth, 1e-9, None))
    return np.sqrt(config.sigma_floor_px**2 + raw**2)


def _chain_tracks(windows: list[_Window], owner: np.ndarray, query_t: np.ndarray, query_xy: np.ndarray,
                  tracks: dict[str, np.ndarray] | None, k_mat: np.ndarray, w2c_world: np.ndarray,
                  surface_z: np.ndarray, config: ChainConfig, hw: tuple[int, int], num_frames: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World 3D tracks (N, T, 3), sigma (N, T) and source (N, T): 1 head 1, 2 head 2, 3 filled."""
    import numpy as np

    count = len(query_t)
    num = np.zeros((count, num_frames, 3))
    den = np.zeros((count, num_frames))
    sig_num = np.zeros((count, num_frames))
    focal = float(k_mat[0, 0])
    for win in windows:
        anchor = win.start
        ramp = _ramp(win, windows)
        pixel = np.full((count, 2), np.nan)
        at_anchor = query_t == anchor
        pixel[at_anchor] = query_xy[at_anchor]
        if tracks is not None:
            seen = (query_t < anchor) & tracks["visible"][:, anchor].astype(bool) & _inside(tracks["tracks_xy"][:, anchor], hw)
            pixel[seen] = tracks["tracks_xy"][seen, anchor]
        # Carry tracks the previous windows placed at this anchor time, when visible from the anchor.
        todo = np.flatnonzero((query_t < anchor) & ~np.isfinite(pixel).all(1) & (den[:, anchor] > 0))
        if todo.size:
            pos = num[todo, anchor] / den[todo, anchor, None]
            proj, z = _project(pos, w2c_world[anchor], k_mat)
            ok = _inside(proj, hw) & (z > 0)
            z_surf = np.full(len(todo), np.nan)
            z_surf[ok] = surface_z[anchor][np.rint(proj[ok, 1]).astype(int), np.rint(proj[ok, 0]).astype(int)]
            ok &= z <= z_surf * (1.0 + config.mask_eps_rel)
            pixel[todo[ok]] = proj[ok]
        carried = np.flatnonzero(np.isfinite(pixel).all(1))
        if carried.size == 0:
            continue
        anchor_depth = win.recon_pts(0)[..., 2]
        scene_depth = float(np.median(np.abs(anchor_depth))) * win.gauge.scale
        for slot, t in enumerate(win.frames):
            live = carried[query_t[carried] <= t]
            if live.size == 0:
                continue
            local = _bilinear(win.track_pts(slot), pixel[live]).astype(np.float64)
            world = win.gauge.points(local)
            c = _bilinear(win.track_conf(slot), pixel[live])
            depth = world @ w2c_world[t, 2, :3] + w2c_world[t, 2, 3]
            weight = ramp[t]
            num[live, t] += weight * world
            den[live, t] += weight
            sig_num[live, t] += weight * _sigma_px(c, depth, scene_depth, focal, config)
    known = den > 0
    tracks3d = np.where(known[..., None], num / np.where(known, den, 1.0)[..., None], np.nan)
    sigma = np.where(known, sig_num / np.where(known, den, 1.0), np.nan)
    source = known.astype(np.uint8)
    _fill_from_head2(windows, owner, query_t, query_xy, tracks, tracks3d, sigma, source, k_mat, config, hw)
    _fill_by_interpolation(tracks3d, sigma, source, config.sigma_fill_px)
    return tracks3d, sigma, source


def _fill_from_head2(windows: list[_Window], owner: np.ndarray, query_t: np.ndarray, query_xy: np.ndarray,
                     tracks: dict[str, np.ndarray] | None, tracks3d: np.ndarray, sigma: np.ndarray,
                     source: np.ndarray, k_mat: np.ndarray, config: ChainConfig, hw: tuple[int, int]) -> None:
    """Unknown positions where the point is seen (query frame; tracker-visible frames): head 2 there."""
    import numpy as np

    num_frames = tracks3d.shape[1]
    for t in range(num_frames):
        win = windows[owner[t]]
        slot = win.frames.index(t)
        need = ~np.isfinite(tracks3d[:, t]).all(1)
        pixel = np.full((len(query_t), 2), np.nan)
        at_query = need & (query_t == t)
        pixel[at_query] = query_xy[at_query]
        if tracks is not None:
            seen = need & (query_t <= t) & tracks["visible"][:, t].astype(bool) & _inside(tracks["tracks_xy"][:, t], hw)
            pixel[seen] = tracks["tracks_xy"][seen, t]
        idx = np.flatnonzero(np.isfinite(pixel).all(1) & _inside(pixel, hw))
        if idx.size == 0:
            continue
        world = win.gauge.points(_bilinear(win.recon_pts(slot), pixel[idx]).astype(np.float64))
        tracks3d[idx, t] = world
        c = _bilinear(win.recon_conf(slot), pixel[idx])
        depth = np.abs(_bilinear(win.recon_pts(slot)[..., 2], pixel[idx])) * win.gauge.scale
        scene_depth = float(np.median(np.abs(win.recon_pts(slot)[..., 2]))) * win.gauge.scale
        sigma[idx, t] = _sigma_px(c, depth, scene_depth, float(k_mat[0, 0]), config)
        source[idx, t] = 2


def _fill_by_interpolation(tracks3d: np.ndarray, sigma: np.ndarray, source: np.ndarray, sigma_fill: float) -> None:
    """Linear interpolation in time of the remaining gaps (held constant before/after the known span)."""
    import numpy as np

    times = np.arange(tracks3d.shape[1], dtype=np.float64)
    for n in range(tracks3d.shape[0]):
        known = np.isfinite(tracks3d[n]).all(1)
        if known.all():
            continue
        gaps = ~known
        if not known.any():
            tracks3d[n] = 0.0
            sigma[n] = sigma_fill
            source[n] = 3
            continue
        for axis in range(3):
            tracks3d[n, gaps, axis] = np.interp(times[gaps], times[known], tracks3d[n, known, axis])
        sigma[n, gaps] = sigma_fill
        source[n, gaps] = 3


def project_tracks(tracks3d: np.ndarray, w2c: np.ndarray, k_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, T, 2) (NaN behind the camera) and depth z (N, T) of world tracks (N, T, 3) in the
    cameras w2c (T, 4, 4)."""
    import numpy as np

    cam = np.einsum("tij,ntj->nti", w2c[:, :3, :3], tracks3d) + w2c[None, :, :3, 3]
    z = cam[..., 2]
    with np.errstate(all="ignore"):
        safe = np.where(z > 0, z, np.nan)
        xy = np.stack([k_mat[0, 0] * cam[..., 0] / safe + k_mat[0, 2],
                       k_mat[1, 1] * cam[..., 1] / safe + k_mat[1, 2]], -1)
    return xy, z


def _calibrated_eps_rel(windows: list[_Window], owner: np.ndarray, tracks: dict[str, np.ndarray], k_mat: np.ndarray,
                        w2c_world: np.ndarray, surface_z: np.ndarray, config: ChainConfig, hw: tuple[int, int]
                        ) -> float:
    """z-buffer tolerance for queries the tracker did not track: the `visibility_quantile` of the
    relative depth gap z / z_surface - 1 over the tracker's own tracks where it sees them (at least
    `mask_eps_rel`). The tiny network's two heads disagree by far more than 5% on real video, so a
    fixed tolerance calls most visible points occluded."""
    import numpy as np

    if config.visibility_quantile <= 0:
        return config.mask_eps_rel
    queries = np.asarray(tracks["queries"], np.float64)
    query_t = np.rint(queries[:, 0]).astype(np.int64)
    tracks3d, _, _ = _chain_tracks(windows, owner, query_t, queries[:, 1:3], tracks, k_mat, w2c_world, surface_z,
                                   config, hw, surface_z.shape[0])
    xy, z = project_tracks(tracks3d, w2c_world, k_mat)
    seen = tracks["visible"].astype(bool) & _inside(xy, hw) & (z > 0)
    z_surf = _surface_z_at(xy, surface_z, hw)[seen]
    gap = z[seen] / np.where(z_surf > 0, z_surf, np.nan) - 1.0
    gap = gap[np.isfinite(gap)]
    if gap.size < 20:
        return config.mask_eps_rel
    return max(config.mask_eps_rel, float(np.quantile(gap, config.visibility_quantile)))


def _surface_z_at(tracks2d: np.ndarray, surface_z: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, T) depth of frame t's own surface (surface_z (T, H, W)) at the pixel nearest each track's
    (N, T, 2) position (clamped into the image; callers mask what is outside)."""
    import numpy as np

    col = np.clip(np.rint(np.nan_to_num(tracks2d[..., 0])).astype(int), 0, hw[1] - 1)
    row = np.clip(np.rint(np.nan_to_num(tracks2d[..., 1])).astype(int), 0, hw[0] - 1)
    t_idx = np.broadcast_to(np.arange(surface_z.shape[0])[None], col.shape)
    return surface_z[t_idx, row, col]


def _visibility(tracks2d: np.ndarray, z: np.ndarray, surface_z: np.ndarray, tracks: dict[str, np.ndarray] | None,
                config: ChainConfig, hw: tuple[int, int]) -> np.ndarray:
    """(N, T) visibility: z-buffer test (mask), the tracker's flags, or both."""
    import numpy as np

    inside = _inside(tracks2d, hw) & (z > 0)
    mask = inside & (z <= _surface_z_at(tracks2d, surface_z, hw) * (1.0 + config.mask_eps_rel))
    if config.visibility == "mask" or tracks is None:
        return mask
    tracker = tracks["visible"].astype(bool)
    return tracker if config.visibility == "tracker" else (mask & tracker)


# ----------------------------------------------------------------------------------------------
# pipeline glue (called by st4r_cli.pipeline.run_chain)
# ----------------------------------------------------------------------------------------------

def run_chain_stage(run, artifacts: dict, device: str):  # noqa: ANN001, ANN201 - Run / Artifact
    """The chain stage through the run cache: the adapted model predicts every window, the windows
    are chained into the world frame, and the result is the `scene.npz` arrays.

    Inputs: the adapt artifact (its weight deltas), decode, tracks, depth, and the checkpoint digest.
    """
    import dataclasses

    from st4r_cli import progress
    from st4r_cli.stages.adapt import (apply_delta, load_run_model, model_digest, predict_windows,
                                       stage_key_config)

    config = run.config.chain
    check_chain_config(config)
    decoded, tracks, depth = artifacts["decode"], artifacts.get("tracks"), artifacts.get("depth")
    adapted = artifacts.get("adapt")
    if tracks is None and config.queries == "tracks":
        progress.log("[yellow]-[/yellow] chain: no 2D tracks, 3D tracks start from a frame-0 grid")
        config = dataclasses.replace(config, queries="grid")
    key = {"chain": dataclasses.asdict(config), "adapt": stage_key_config(run, device)}
    inputs = [decoded.digest, tracks.digest if tracks else "no-tracks", depth.digest if depth else "no-depth",
              adapted.digest if adapted else "not-adapted", model_digest(run)]

    def compute() -> dict:
        model = load_run_model(run, device)
        if adapted is not None:
            apply_delta(model, adapted.load())
        depth_arrays = depth.load() if depth else None
        pred = predict_windows(model, decoded["frames"], run.config.adapt, run.config.chain, device, depth_arrays)
        return chain_windows(pred, decoded["frames"], tracks.load() if tracks else None, config)

    return run.stage("chain", CHAIN_VERSION, key, inputs, compute)
