"""Multi-view depth from solved cameras and dense optical flow (CPU, OpenCV DIS flow).

For every frame i and every neighbour j = i + o (o in `offsets`):
0. (given the scene's median depth) frame i gets depth of its own only when the baseline to one of its
   neighbours subtends at least `min_parallax_deg` there. On a camera that barely moves the pixels that
   pass the per-pixel parallax test are the near ones and the moving ones whose motion runs along the
   epipolar lines, and all its short pairs agree on them: on the synthetic occlusion/0 (camera path 2%
   of the scene depth) that depth doubled the world-track error (EPE 1.03 without it, 1.68 with). Gating
   each pair instead dropped the short pairs of frames that also have long ones, which cost 7-Scenes
   redkitchen-0 frame 0 (AbsRel 0.105 -> 0.118).
1. dense flow i -> j and j -> i: DIS flow between neighbours, chained frame by frame for larger offsets
   (each link warps frame j by the flow so far and adds DIS's residual flow, so large motions stay within
   DIS's range);
2. forward-backward check (`max_fb_px`) and in-image test;
3. triangulation along frame i's rays with the solved cameras (`geometry.triangulate`), kept where the
   parallax exceeds `min_parallax_deg` and the point is in front of both cameras;
4. epipolar test: a static pixel's match lies on its epipolar line. The threshold is robust per pair,
   `max(epipolar_px, epipolar_k * 1.4826 * MAD-scale)`, so camera error does not flag the whole frame.

Per pixel: `dynamic` when at least `dynamic_vote` of the pairs that checked it put its match off the
epipolar line; `depth` is the median over the static pairs, `valid` where at least `min_views` pairs agree
within `consistency_rel` of that median and the pixel is not dynamic, `conf` the fraction of the frame's
pairs that agree. A frame whose pairs have too little parallax (pure rotation, a camera that stands still)
gets no valid depth of its own and is listed in `low_parallax (T,) bool`.

4b. Motion from the camera solver (`track_motion_mask`, when its dropped and kept tracks are given):
   where the tracks the bundle adjustment dropped crowd, the pixels are dynamic too.
5. Propagation (`propagate_reach`): the static points of frames t +- reach are rendered into frame t, and
   its pixels without depth take them where several frames agree (`propagated (T, H, W) bool`), so a
   frame without parallax still gets the surfaces its neighbours triangulated; a frame whose neighbours
   have none either gets nothing (the caller falls back and says so).

Shapes: frames `(T, H, W, 3) uint8`, intrinsics `(3, 3)` (pixels of the frames), `cam_c2w (T, 4, 4)`.
Output: `depth (T, H, W) f32` (0 where invalid), `valid (T, H, W) bool`, `conf (T, H, W) f32` in [0, 1],
`dynamic (T, H, W) bool`, `parallax_deg (T,) f32` (median over the frame's triangulated pixels),
`low_parallax (T,) bool`, `propagated (T, H, W) bool` (valid pixels that came from other frames).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.geometry.camera_np import in_image
from st4r_cli.geometry.triangulate import triangulate_on_rays

if TYPE_CHECKING:
    from st4r_cli.configs import DepthConfig


@dataclass(frozen=True)
class MultiviewOptions:
    offsets: tuple[int, ...] = (-16, -8, -4, 4, 8, 16)   # neighbour frames j = i + o
    spare_offsets: tuple[int, ...] = (6, 12, 24)          # |o| tried, on either side, near the video's ends
    max_fb_px: float = 1.0            # forward-backward flow consistency
    min_parallax_deg: float = 1.0     # triangulation angle below which a pair gives no depth
    min_views: int = 2                # agreeing pairs needed for a valid depth
    consistency_rel: float = 0.10     # a pair agrees when within this fraction of the median depth
    epipolar_px: float = 1.5          # smallest epipolar threshold (pixels)
    epipolar_k: float = 4.0           # epipolar threshold in robust standard deviations of the pair
    dynamic_vote: float = 0.5         # share of the checking pairs that must flag a pixel as moving
    min_checks: int = 2               # pairs that must check a pixel before it can be called dynamic
    low_parallax_fraction: float = 0.02  # a frame with fewer valid pixels than this is 'low parallax'
    track_mask_sigma_rel: float = 0.04  # motion from the camera solver's dropped tracks: Gaussian radius
                                      # (x the long side) of their density ...
    track_mask_share: float = 0.7     # ... moving where they are this share of the tracks around ...
    track_mask_count: float = 3.0     # ... and at least this many
    propagate_reach: int = 8          # frames t +- this many lend their static points to frame t (0: off)
    propagate_min_frames: int = 2     # ... a pixel takes them where this many frames agree within consistency_rel


class ChainedFlow:
    """Dense flow between frames i and i + o, chained through the frames in between.

    Flows are `(H, W, 2) float32`, `(dx, dy)` from a pixel of the source frame to its match. Each frame's
    chains are computed once, on demand; only the offsets asked for (and their opposites) are kept, and
    `forget_before` drops frames no longer needed, so memory does not grow with the video's length.
    """

    def __init__(self, frames: np.ndarray, offsets: Iterable[int]) -> None:
        import cv2

        self._cv2 = cv2
        self.gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        self.kept = {o for o in offsets} | {-o for o in offsets}   # a pair needs both directions
        self.max_offset = max(abs(o) for o in self.kept)
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        height, width = self.gray[0].shape
        self.grid = np.stack(np.meshgrid(np.arange(width, dtype=np.float32),
                                          np.arange(height, dtype=np.float32)), axis=-1)
        self._chains: dict[int, dict[int, np.ndarray]] = {}

    def _compose(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow of `first` followed by `second` (sampled where `first` lands)."""
        where = self.grid + first
        later = self._cv2.remap(second, where[..., 0], where[..., 1], self._cv2.INTER_LINEAR,
                                borderMode=self._cv2.BORDER_REPLICATE)
        return first + later

    def _refine(self, src: int, dst: int, guess: np.ndarray) -> np.ndarray:
        """DIS's residual flow between frame `src` and frame `dst` warped by `guess`, added to `guess`."""
        where = self.grid + guess
        warped = self._cv2.remap(self.gray[dst], where[..., 0], where[..., 1], self._cv2.INTER_LINEAR,
                                 borderMode=self._cv2.BORDER_REPLICATE)
        return self._compose(self._dis.calc(self.gray[src], warped, None), guess)

    def _build(self, src: int) -> dict[int, np.ndarray]:
        chains: dict[int, np.ndarray] = {}
        num_frames = len(self.gray)
        for step in (1, -1):
            flow = None
            for hop in range(1, self.max_offset + 1):
                dst = src + step * hop
                if not 0 <= dst < num_frames:
                    break
                if flow is None:
                    flow = self._dis.calc(self.gray[src], self.gray[dst], None)
                else:
                    flow = self._refine(src, dst, flow)
                if step * hop in self.kept:
                    chains[step * hop] = flow
        return chains

    def __call__(self, src: int, offset: int) -> np.ndarray:
        if src not in self._chains:
            self._chains[src] = self._build(src)
        return self._chains[src][offset]

    def forget_before(self, frame: int) -> None:
        for src in [s for s in self._chains if s < frame]:
            del self._chains[src]


def neighbour_frames(i: int, num_frames: int, opts: MultiviewOptions) -> list[int]:
    """Frames paired with frame i: `i + offsets` inside the video, topped up from `spare_offsets` (either
    side) near the video's ends so that every frame gets as many pairs as the middle ones."""
    chosen = [i + o for o in opts.offsets if 0 <= i + o < num_frames]
    for spare in opts.spare_offsets:
        for j in (i + spare, i - spare):
            if len(chosen) < len(opts.offsets) and 0 <= j < num_frames and j not in chosen:
                chosen.append(j)
    return chosen


def _pair_evidence(flows: ChainedFlow, i: int, j: int, intrinsics: np.ndarray, cam_c2w: np.ndarray,
                   opts: MultiviewOptions) -> dict[str, np.ndarray]:
    """Depth, agreement masks and epipolar verdict of frame i's pixels from the pair (i, j)."""
    import cv2

    forward, backward = flows(i, j - i), flows(j, i - j)
    height, width = forward.shape[:2]
    grid = flows.grid
    matched = grid + forward
    back = cv2.remap(backward, matched[..., 0], matched[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan, np.nan))
    fb_px = np.hypot(*(forward + back).transpose(2, 0, 1))
    checked = in_image(matched, (height, width)) & (fb_px < opts.max_fb_px)
    cam_i_to_j = np.linalg.inv(cam_c2w[j]) @ cam_c2w[i]
    tri = triangulate_on_rays(grid, matched, intrinsics, cam_i_to_j)
    epi = tri["epipolar_px"]
    if checked.sum() > 16:
        scale = 1.4826 * np.nanmedian(epi[checked])
    else:
        scale = np.inf
    moving = checked & (epi > max(opts.epipolar_px, opts.epipolar_k * scale))
    depth_ok = checked & ~moving & (tri["depth"] > 0) & (tri["depth_j"] > 0) & \
        (tri["parallax_deg"] > opts.min_parallax_deg)
    return {"depth": np.where(depth_ok, tri["depth"], np.nan), "checked": checked, "moving": moving,
            "parallax": np.where(depth_ok, tri["parallax_deg"], np.nan)}


def _baseline_deg(centre_i: np.ndarray, centre_j: np.ndarray, scene_depth: float) -> float:
    """Angle (degrees) the baseline between two camera centres subtends at `scene_depth`."""
    return float(np.degrees(np.arctan2(np.linalg.norm(centre_i - centre_j), scene_depth)))


def _fuse_frame(pairs: list[dict[str, np.ndarray]], opts: MultiviewOptions) -> dict[str, np.ndarray]:
    """Per-pixel depth / valid / conf / dynamic of one frame from its pairs' evidence."""
    depths = np.stack([p["depth"] for p in pairs])                       # (P, H, W)
    checks = np.stack([p["checked"] for p in pairs]).sum(0)
    moves = np.stack([p["moving"] for p in pairs]).sum(0)
    dynamic = (checks >= opts.min_checks) & (moves >= opts.dynamic_vote * np.maximum(checks, 1))
    with np.errstate(all="ignore"):
        median = _nanmedian0(depths)
        agree = (np.abs(depths - median[None]) <= opts.consistency_rel * median[None]).sum(0)
    valid = (agree >= opts.min_views) & ~dynamic & np.isfinite(median)
    parallax = np.concatenate([p["parallax"][np.isfinite(p["parallax"])] for p in pairs])
    return {"depth": np.where(valid, median, 0.0).astype(np.float32), "valid": valid,
            "conf": (agree / len(pairs)).astype(np.float32) * valid, "dynamic": dynamic,
            "parallax_deg": np.float32(np.median(parallax)) if parallax.size else np.float32(0.0)}


def _nanmedian0(values: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN (without numpy's All-NaN warning) where every value is NaN."""
    finite = np.isfinite(values)
    filled = np.where(finite, values, np.inf)
    ordered = np.sort(filled, axis=0)
    count = finite.sum(0)
    lo = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[None], 0)[0]
    hi = np.take_along_axis(ordered, np.maximum(count // 2, 0)[None], 0)[0]
    return np.where(count > 0, 0.5 * (lo + hi), np.nan)


def multiview_depth(frames: np.ndarray, intrinsics: np.ndarray, cam_c2w: np.ndarray,
                    opts: MultiviewOptions = MultiviewOptions(),
                    progress: Callable[[Iterable[int], str], Iterable[int]] | None = None,
                    track_obs: tuple[np.ndarray, np.ndarray] | None = None,
                    scene_depth: float | None = None) -> dict[str, np.ndarray]:
    """Dense per-frame depth of a video from its solved cameras (see the module docstring).

    Args:
        frames: `(T, H, W, 3) uint8` RGB.
        intrinsics: `(3, 3)` in pixels of `frames` (one camera for the whole video).
        cam_c2w: `(T, 4, 4)` camera-to-world poses (any scale: depth comes out in the poses' units).
        opts: thresholds and neighbours.
        progress: optional wrapper of the frame loop (e.g. `st4r_cli.progress.track`).
        track_obs: optional `(moving_obs (M, 3), fitted_obs (K, 3))` (t, x, y) positions of the camera
            solver's dropped and kept tracks (the cameras stage's arrays): where dropped tracks crowd,
            the pixels are moving (`track_motion_mask`), whatever the epipolar test said.
        scene_depth: optional median depth of the scene in the poses' units: a frame none of whose
            pairs' baselines subtends `min_parallax_deg` there gets no depth of its own (step 0).
    Returns:
        `depth (T,H,W) f32`, `valid (T,H,W) bool`, `conf (T,H,W) f32`, `dynamic (T,H,W) bool`,
        `parallax_deg (T,) f32`, `low_parallax (T,) bool`, `propagated (T,H,W) bool`.
    """
    frames = np.asarray(frames)
    num_frames, height, width = frames.shape[:3]
    cam_c2w = np.asarray(cam_c2w, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    flows = ChainedFlow(frames, opts.offsets + opts.spare_offsets + tuple(-o for o in opts.spare_offsets))
    out = {"depth": np.zeros((num_frames, height, width), np.float32),
           "valid": np.zeros((num_frames, height, width), bool),
           "conf": np.zeros((num_frames, height, width), np.float32),
           "dynamic": np.zeros((num_frames, height, width), bool),
           "parallax_deg": np.zeros(num_frames, np.float32)}
    frame_loop: Iterable[int] = range(num_frames)
    if progress is not None:
        frame_loop = progress(frame_loop, "multi-view depth")
    centres = cam_c2w[:, :3, 3]
    for i in frame_loop:
        neighbours = neighbour_frames(i, num_frames, opts)
        if scene_depth is not None and neighbours and max(
                _baseline_deg(centres[i], centres[j], scene_depth) for j in neighbours) < opts.min_parallax_deg:
            neighbours = []              # the camera barely moves around frame i (step 0)
        if neighbours:
            fused = _fuse_frame([_pair_evidence(flows, i, j, intrinsics, cam_c2w, opts) for j in neighbours],
                                opts)
            for key in out:
                out[key][i] = fused[key]
        flows.forget_before(i + 1 - flows.max_offset)
    if track_obs is not None:
        moving = track_motion_mask(track_obs[0], track_obs[1], num_frames, (height, width), opts)
        out["dynamic"] |= moving
        out["valid"] &= ~moving
        out["depth"][moving] = 0.0
        out["conf"][moving] = 0.0
    low = out["valid"].reshape(num_frames, -1).mean(1) < opts.low_parallax_fraction
    out["valid"][low] = False          # a few scattered depths of a frame without parallax are noise
    out["depth"][low] = 0.0
    out["conf"][low] = 0.0
    out["low_parallax"] = low
    out["propagated"] = np.zeros_like(out["valid"])
    if opts.propagate_reach > 0:
        _propagate(out, intrinsics, cam_c2w, opts)
    return out


def track_motion_mask(moving_obs: np.ndarray, fitted_obs: np.ndarray, num_frames: int, hw: tuple[int, int],
                      opts: MultiviewOptions = MultiviewOptions()) -> np.ndarray:
    """(T, H, W) bool: pixels where the tracks the camera solver dropped crowd (step 4b).

    A track the bundle adjustment drops fits no static point: a moving object, or a tracker slip. Slips
    are scattered (20% of the tracks on a static 7-Scenes clip), moving objects drop whole groups: per
    frame, the Gaussian-weighted counts (radius `track_mask_sigma_rel` x the long side) of dropped and
    kept positions (`moving_obs`, `fitted_obs`: (M, 3) rows t, x, y) mark the pixels where the dropped
    are at least `track_mask_share` of the tracks and `track_mask_count` of them. The epipolar test
    misses motion along the epipolar lines and slow motion; this covers a person waving on the demo
    clip and the walking dog of DAVIS (3% / 1% of the pixels of 7-Scenes redkitchen-0 / -3, chair slats).
    """
    from scipy import ndimage

    height, width = hw
    sigma = opts.track_mask_sigma_rel * max(hw)
    area = 2.0 * np.pi * sigma**2

    def per_frame(obs: np.ndarray) -> list[np.ndarray]:
        """The (x, y) rows of each frame 0..T-1, grouped in one sort."""
        frame = np.rint(obs[:, 0]).astype(np.int64)
        order = np.argsort(frame, kind="stable")
        bounds = np.searchsorted(frame[order], np.arange(num_frames + 1))
        return [obs[order[bounds[t]:bounds[t + 1]], 1:] for t in range(num_frames)]

    def counts(xy: np.ndarray) -> np.ndarray:
        inside = in_image(xy, hw)
        image = np.zeros(hw)
        np.add.at(image, (np.rint(xy[inside, 1]).astype(np.int64), np.rint(xy[inside, 0]).astype(np.int64)), 1.0)
        return ndimage.gaussian_filter(image, sigma, mode="constant") * area

    mask = np.zeros((num_frames, height, width), bool)
    moving_xy, fitted_xy = per_frame(moving_obs), per_frame(fitted_obs)
    for t in range(num_frames):
        if not len(moving_xy[t]):
            continue
        dropped, kept = counts(moving_xy[t]), counts(fitted_xy[t])
        mask[t] = (dropped >= opts.track_mask_count) & (dropped >= opts.track_mask_share * (dropped + kept))
    return mask


def _propagate(out: dict[str, np.ndarray], intrinsics: np.ndarray, cam_c2w: np.ndarray,
               opts: MultiviewOptions) -> None:
    """Step 5 (in place): frame t's pixels without depth take the static points of frames t +- reach.

    Every frame's valid, non-moving pixels are lifted to world points and rendered into frame t
    (z-buffer, one pixel per point); a pixel of t that is neither valid nor moving takes the median of
    the rendered depths where at least `propagate_min_frames` frames agree within `consistency_rel` of
    it (`propagated`, `conf` = the agreeing share). A frame without parallax of its own (a turning
    camera) thus gets the depth of the surfaces its neighbours triangulated. On 7-Scenes redkitchen-0
    / -3 this adds 26% / 23% of the pixels at AbsRel 0.11 / 0.09 (the frames' own: 0.08 / 0.05). The
    pixels a frame cannot triangulate itself are often at occlusion edges, where a neighbour's
    foreground can spill over them (z-buffer, one pixel per point): on the synthetic static scene the
    added pixels' relative error has median 0.10 and mean 0.19 (own pixels: 0.05 / 0.09).
    """
    from st4r_cli.geometry.camera_np import render_depth, unproject_depth

    num_frames, height, width = out["depth"].shape
    w2c = np.linalg.inv(cam_c2w)
    static = out["valid"] & ~out["dynamic"]
    world = []
    for s in range(num_frames):
        cam = unproject_depth(out["depth"][s].astype(np.float64), intrinsics)[static[s]]
        world.append(cam @ cam_c2w[s, :3, :3].T + cam_c2w[s, :3, 3])
    for t in range(num_frames):
        sources = [s for s in range(max(0, t - opts.propagate_reach), min(num_frames, t + opts.propagate_reach + 1))
                   if s != t and len(world[s])]
        if len(sources) < opts.propagate_min_frames:
            continue
        rendered = np.stack([render_depth(world[s], w2c[t], intrinsics, (height, width)) for s in sources])
        hit = np.isfinite(rendered)
        rendered[~hit] = np.nan
        median = np.zeros((height, width))
        some = hit.any(axis=0)
        median[some] = np.nanmedian(rendered[:, some], axis=0)
        with np.errstate(invalid="ignore"):
            agreeing = np.sum(np.abs(rendered - median[None]) <= opts.consistency_rel * median[None], axis=0)
        take = (agreeing >= opts.propagate_min_frames) & ~out["valid"][t] & ~out["dynamic"][t]
        out["depth"][t][take] = median[take]
        out["conf"][t][take] = agreeing[take] / len(sources)
        out["valid"][t] |= take
        out["propagated"][t] = take


# -- the depth registry's entry points (st4r_cli/backends.py) ---------------------------------------
def compute(frames: np.ndarray, cfg: DepthConfig, device: str = "cpu", cameras: dict[str, Any] | None = None
            ) -> dict[str, np.ndarray]:
    """`multiview_depth` on the cameras stage's solution (St4rError when the cameras were not solved),
    with the depth stage's settings; adds the cameras' `intrinsics`."""
    from st4r_cli import progress

    if cameras is None or not bool(cameras["ba_accepted"]):
        raise St4rError("depth backend 'multiview' needs solved cameras (the cameras stage)")
    opts = MultiviewOptions(offsets=tuple(int(o) for o in cfg.mv_offsets), max_fb_px=cfg.mv_max_fb_px,
                            min_parallax_deg=cfg.mv_min_parallax_deg, consistency_rel=cfg.mv_consistency_rel,
                            propagate_reach=cfg.mv_propagate_reach)
    k_mat = np.asarray(cameras["intrinsics"], np.float64)
    track_obs = (np.asarray(cameras["moving_obs"]), np.asarray(cameras["fitted_obs"]))
    out = multiview_depth(frames, k_mat, np.linalg.inv(np.asarray(cameras["cam_w2c"], np.float64)), opts,
                          progress=progress.track, track_obs=track_obs, scene_depth=_bundle_depth(cameras))
    low = int(out["low_parallax"].sum())
    lent = int((out["low_parallax"] & out["propagated"].any(axis=(1, 2))).sum())
    progress.log(f"[green]✓[/green] depth (multiview): {100 * out['valid'].mean():.0f}% of the pixels, "
                 f"{100 * out['dynamic'].mean():.1f}% moving"
                 + (f"; {low} frame(s) with too little parallax of their own"
                    + (f", {lent} of them take depth from their neighbours" if lent else "") if low else ""))
    out["intrinsics"] = k_mat.astype(np.float32)
    return out


def _bundle_depth(cameras: dict[str, Any]) -> float:
    """Median depth of the bundle's tracks in the solved cameras' units (the bundle sets it to 1)."""
    depth = np.asarray(cameras["track_bundle_depth"], np.float64)
    depth = depth[np.isfinite(depth) & (depth > 0)]
    return float(np.median(depth)) if depth.size else 1.0


def check(cfg: DepthConfig) -> None:
    """Nothing to install (OpenCV flow, NumPy geometry)."""


def input_files(cfg: DepthConfig) -> list[Path]:
    return []
