"""Bundle adjustment of cameras, a shared focal and per-track inverse depths on 2D tracks.

The problem (all float64, torch):
    track n starts at pixel q_n of its query frame s_n with inverse depth rho_n; its 3D point is
        X_n = R_s^T (K^-1 [q_n, 1] / rho_n - t_s)                   (the world of the cameras)
    every other frame t where the tracker sees it gives the residual
        r_nt = pi(K (R_t X_n + t_t)) - y_nt                         (pixels)
    with w2c_t = [R_t | t_t], K = [[f, 0, cx], [0, f, cy], [0, 0, 1]] (principal point fixed).

We minimise sum_nt rho_cauchy(|r_nt| / s) with Levenberg-Marquardt and iteratively re-weighted
least squares, s going from coarse to fine (`BundleOptions.robust_scales_px`). Every track has one
unknown (its inverse depth), so the normal equations are solved by the Schur complement on the
cameras (`_System`): the point side stays sparse, as (track, frame) couplings; the camera block
H_cc is summed per (observing, query) frame pair; the reduction H_cp H_pp^-1 H_cp^T is formed in
blocks of REDUCTION_BLOCK frames, once per linearisation (the points are damped like the cameras,
so a new LM damping only rescales it). Work per iteration: linear in the observations, ~36 x
sum over tracks of (frames it touches)^2 for the reduction (linear in the frames for tracks of
bounded length), plus one dense Cholesky of the (6F+1)^2 camera system (cubic with a small
constant: 0.05 s at 150 frames, 1.4 s at 600 on one busy core). Memory: O(observations + F^2).

Solving is incremental (`bundle_adjust`): the first chunk of frames starts from two-view geometry (two
starts, with and without a triangulated baseline; the better fit is kept, `_first_chunk`),
later frames are placed by RANSAC PnP on the points already fixed and adjusted with the last
`local_frames` frames; the final solve moves every frame (no cap unless `global_max_frames` is set)
against every track. Tracks that some observation does not fit are then dropped and the last stage
runs again. Frame 0 stays fixed; the remaining scale freedom is removed by rescaling so the median
track depth equals the initial one (the caller's scene scale is kept).

Per-observation Jacobians are analytic (`_Problem._linearise`) in the 14 local unknowns: the two
camera increments (left-multiplied: R <- exp(omega) R, t <- exp(omega) t + v), the inverse depth, f.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


MIN_FRONT_FRACTION = 0.9  # a PnP pose is kept when this fraction of its inliers is in front of the camera
MIN_INIT_PARALLAX_DEG = 0.5  # two-view starts below this median parallax keep a zero baseline
OBS_CHUNK = 1 << 18       # observations linearised at a time (bounds the solver's memory)
REDUCTION_BLOCK = 16      # moving frames per dense block of the Schur complement's point reduction


@dataclass
class BundleOptions:
    """Solver settings."""

    robust_scales_px: tuple[float, ...] = (8.0, 2.0, 1.0)  # Cauchy scale per stage (coarse to fine)
    iters_per_stage: int = 15
    refine_focal: bool = True
    focal_from_stage: int = 2        # the focal is refined from this robust stage on (cameras settle first)
    damping: float = 1e-3            # initial LM lambda (relative to the diagonal)
    min_depth_ratio: float = 1e-3    # inverse depths are kept in (0, 1 / (ratio * median depth)]
    reject_track_px: float = 3.0     # after the solve, tracks with any residual above this are dropped
                                     # and the last stage runs again without them (0: keep all)
    local_frames: int = 16           # frames that move when a chunk joins (earlier ones stay fixed)
    global_max_frames: int | None = None  # None: the final solve moves every frame (no cap); N: only
                                     # videos up to N frames get a global solve, longer ones move their
                                     # last `local_frames` (the behaviour before the sparse solver)


@dataclass
class BundleResult:
    """Refined cameras and points, and how well they fit."""

    cam_w2c: np.ndarray        # (T, 4, 4)
    focal: float
    inv_depth: np.ndarray      # (N,) in the query frame's camera
    residual_px: np.ndarray    # (M,) |r| of every observation at the solution (inf: behind the camera)
    initial_residual_px: np.ndarray  # (M,) before refinement (inf: behind the camera)
    obs_track: np.ndarray      # (M,) track index of each observation
    obs_frame: np.ndarray      # (M,) frame index of each observation


def bundle_adjust(cam_w2c: np.ndarray, focal: float, principal_point: tuple[float, float],
                  query_t: np.ndarray, query_xy: np.ndarray, inv_depth: np.ndarray,
                  tracks_xy: np.ndarray, visible: np.ndarray, options: BundleOptions | None = None,
                  chunk: int = 8, progress_desc: str | None = None) -> BundleResult:
    """Refine cameras, focal and inverse depths on 2D tracks (see `_bundle_adjust`).

    Runs with one torch thread: the work is many small tensor operations, which extra threads
    only slow down (about 4x on a busy 2-core machine; the global solve over 150 frames took 2x
    longer with 2 threads than with 1 on the shared 2-core test machine).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bundle_adjust(cam_w2c, focal, principal_point, query_t, query_xy, inv_depth, tracks_xy, visible,
                              options, chunk, progress_desc)
    finally:
        torch.set_num_threads(threads)


def _bundle_adjust(cam_w2c: np.ndarray, focal: float, principal_point: tuple[float, float],
                   query_t: np.ndarray, query_xy: np.ndarray, inv_depth: np.ndarray,
                   tracks_xy: np.ndarray, visible: np.ndarray, options: BundleOptions | None,
                   chunk: int, progress_desc: str | None) -> BundleResult:
    """Refine cameras, focal and inverse depths on 2D tracks, incrementally (see module doc).

    cam_w2c (T, 4, 4) initial world-to-camera poses (frame 0 stays fixed); query_t (N,) int and
    query_xy (N, 2) the start of each track; inv_depth (N,) > 0 initial inverse depths in the query
    camera; tracks_xy (N, T, 2) and visible (N, T) bool the 2D tracks (observations at the query frame
    itself are not residuals).

    Frames join in chunks of `chunk`: each new frame is placed by RANSAC PnP on the points the frames
    before it already fix (its initial pose is only the fallback), the inverse depths of the tracks
    starting in the new frames are the initial ones brought to the current scale, then every frame so
    far is adjusted. A wrong initial rotation therefore cannot trap the whole solution.
    """
    import numpy as np

    from st4r_cli import progress

    opts = options or BundleOptions()
    query_t = np.asarray(query_t, dtype=np.int64)
    tracks_xy = np.asarray(tracks_xy, dtype=np.float64)
    seen = np.asarray(visible, bool) & np.isfinite(tracks_xy).all(-1)
    seen[np.arange(len(query_t)), query_t] = False
    num_frames = len(cam_w2c)
    state = _State(np.array(cam_w2c, dtype=np.float64), float(focal), np.array(inv_depth, dtype=np.float64),
                   np.array(cam_w2c, dtype=np.float64))
    depth_ref = float(np.median(1.0 / state.inv_depth)) if len(query_t) else 1.0
    initial = _make_problem(state, principal_point, query_t, query_xy, tracks_xy, seen, 0, num_frames)[0]
    initial_px = initial.residual_norms().numpy()
    ends = [*range(min(chunk, num_frames), num_frames, chunk), num_frames]
    light = BundleOptions(robust_scales_px=opts.robust_scales_px[-2:], iters_per_stage=max(3, opts.iters_per_stage // 3),
                          refine_focal=False, damping=opts.damping, min_depth_ratio=opts.min_depth_ratio)
    capped = opts.global_max_frames is not None and num_frames > opts.global_max_frames
    final_start = max(0, num_frames - opts.local_frames) if capped else 0
    for k, end in enumerate(progress.track(ends, progress_desc) if progress_desc else ends):
        if k > 0:
            _rescale_new_tracks(state, query_t, inv_depth, ends[k - 1], end)
            for frame in range(ends[k - 1], end):
                _place_frame(state, principal_point, query_t, query_xy, tracks_xy, seen, frame, ends[k - 1])
        if k == 0:
            state = _first_chunk(state, principal_point, query_t, query_xy, tracks_xy, seen, end, opts)
            if end == num_frames and final_start > 0:
                _solve(state, principal_point, query_t, query_xy, tracks_xy, seen, final_start, end, opts)
        elif end == num_frames:
            _solve(state, principal_point, query_t, query_xy, tracks_xy, seen, final_start, end, opts)
        else:
            start = 0 if k == 0 else max(0, end - opts.local_frames)
            _solve(state, principal_point, query_t, query_xy, tracks_xy, seen, start, end, opts if k == 0 else light)
    if opts.reject_track_px > 0:
        _reject_tracks(state, principal_point, query_t, query_xy, tracks_xy, seen, final_start, opts)
    # the scale is free: give the tracks their initial median depth back
    factor = depth_ref / float(np.median(1.0 / state.inv_depth)) if len(query_t) else 1.0
    state.w2c[:, :3, 3] *= factor
    state.inv_depth /= factor
    problem, ids = _make_problem(state, principal_point, query_t, query_xy, tracks_xy, seen, 0, num_frames)
    return BundleResult(state.w2c.copy(), state.focal, state.inv_depth.copy(), problem.residual_norms().numpy(),
                        initial_px, ids[problem.obs_n.numpy()], problem.obs_t.numpy())


def _first_chunk(state: _State, principal_point: tuple[float, float], query_t: np.ndarray, query_xy: np.ndarray,
                 tracks_xy: np.ndarray, seen: np.ndarray, end: int, opts: BundleOptions) -> _State:
    """Frames [0, end) solved from two two-view starts, the better fit kept (lower median residual).

    Each frame's rotation and translation direction come from its essential matrix with frame 0; the
    baseline is either the initial one (zero for cameras from nothing) or the one that puts the shared
    tracks at their initial depth. Neither start wins everywhere: from a zero baseline a camera walking
    forward converged to a made-up rotation (synthetic static-scene/1: 17 deg for the true 4), while
    on DAVIS pigs, where moving animals fill the frame, the triangulated baseline settled at 0.83 px
    median residual against 0.13 px from zero.
    """
    import copy

    import numpy as np

    best, best_px = state, np.inf
    for with_baseline in (False, True):
        trial = copy.deepcopy(state)
        for frame in range(1, end):
            _two_view_init(trial, principal_point, query_t, tracks_xy, seen, frame, with_baseline)
        _solve(trial, principal_point, query_t, query_xy, tracks_xy, seen, 0, end, opts)
        problem = _make_problem(trial, principal_point, query_t, query_xy, tracks_xy, seen, 0, end)[0]
        residual_px = problem.residual_norms()
        median_px = float(np.median(residual_px.numpy())) if residual_px.numel() else np.inf  # behind: inf
        if median_px < best_px:
            best, best_px = trial, median_px
    return best


@dataclass
class _State:
    """The solution being built: cameras (T, 4, 4), focal, inverse depths (N,)."""

    w2c: np.ndarray
    focal: float
    inv_depth: np.ndarray
    initial_w2c: np.ndarray


def _make_problem(state: _State, principal_point: tuple[float, float], query_t: np.ndarray, query_xy: np.ndarray,
                  tracks_xy: np.ndarray, seen: np.ndarray, start: int, end: int) -> tuple[_Problem, np.ndarray]:
    """The problem on frames [start, end) (frame 0 and every other frame fixed) and its track ids.

    Its tracks start before `end` and are seen in [start, end); their observations in
    [start - (end - start), end) count (older ones would only add cost: those cameras are fixed).
    """
    import numpy as np
    import torch

    ids = np.flatnonzero(seen[:, start:end].any(1) & (query_t < end))
    first = max(0, start - (end - start))
    obs_n, obs_t = np.nonzero(seen[ids, first:end])
    obs_t = obs_t + first
    fixed = {0, *range(start), *range(end, len(state.w2c))}
    problem = _Problem(torch.as_tensor(state.w2c), state.focal, principal_point, torch.as_tensor(query_t[ids]),
                       torch.as_tensor(np.asarray(query_xy, dtype=np.float64)[ids]),
                       torch.as_tensor(state.inv_depth[ids]), torch.as_tensor(obs_n), torch.as_tensor(obs_t),
                       torch.as_tensor(tracks_xy[ids[obs_n], obs_t]), fixed)
    return problem, ids


def _reject_tracks(state: _State, principal_point: tuple[float, float], query_t: np.ndarray,
                   query_xy: np.ndarray, tracks_xy: np.ndarray, seen: np.ndarray, start: int,
                   opts: BundleOptions) -> None:
    """Drop (from `seen`, in place) the tracks that some observation does not fit, then re-solve."""
    import numpy as np

    num_frames = len(state.w2c)
    problem, ids = _make_problem(state, principal_point, query_t, query_xy, tracks_xy, seen, 0, num_frames)
    worst = np.zeros(len(query_t))
    np.maximum.at(worst, ids[problem.obs_n.numpy()], np.nan_to_num(problem.residual_norms().numpy(), nan=np.inf))
    bad = worst > opts.reject_track_px
    if not bad.any() or bad.mean() > 0.5:
        return
    seen[bad] = False
    last = BundleOptions(robust_scales_px=opts.robust_scales_px[-1:], iters_per_stage=opts.iters_per_stage,
                         refine_focal=opts.refine_focal, focal_from_stage=0, damping=opts.damping,
                         min_depth_ratio=opts.min_depth_ratio)
    _solve(state, principal_point, query_t, query_xy, tracks_xy, seen, start, num_frames, last)


def _solve(state: _State, principal_point: tuple[float, float], query_t: np.ndarray, query_xy: np.ndarray,
           tracks_xy: np.ndarray, seen: np.ndarray, start: int, end: int, opts: BundleOptions) -> None:
    """Adjust frames [start, end) (frame 0 fixed) and their tracks; write the result back into state."""
    problem, ids = _make_problem(state, principal_point, query_t, query_xy, tracks_xy, seen, start, end)
    if len(ids) == 0:
        return
    for stage, scale in enumerate(opts.robust_scales_px):
        problem.solve(scale, opts, with_focal=opts.refine_focal and stage >= opts.focal_from_stage)
    state.w2c[start:end] = problem.w2c.numpy()[start:end]
    state.focal = float(problem.focal)
    state.inv_depth[ids] = problem.rho.numpy()


def _rescale_new_tracks(state: _State, query_t: np.ndarray, initial_inv_depth: np.ndarray, end: int,
                        new_end: int) -> None:
    """Initial inverse depths of tracks starting in [end, new_end), at the scale the solution has now."""
    import numpy as np

    solved = query_t < end
    ratio = float(np.median(state.inv_depth[solved] / initial_inv_depth[solved])) if solved.any() else 1.0
    new = (query_t >= end) & (query_t < new_end)
    state.inv_depth[new] = np.asarray(initial_inv_depth)[new] * ratio


def _place_frame(state: _State, principal_point: tuple[float, float], query_t: np.ndarray, query_xy: np.ndarray,
                 tracks_xy: np.ndarray, seen: np.ndarray, frame: int, solved_end: int) -> None:
    """Pose of `frame` by RANSAC PnP on the points of tracks starting in [0, solved_end) that it sees.

    Falls back to the previous frame's pose moved by the initial relative motion when PnP fails or
    puts its inliers behind the camera.
    """
    import cv2
    import numpy as np

    initial_motion = state.initial_w2c[frame] @ np.linalg.inv(state.initial_w2c[frame - 1])
    fallback = initial_motion @ state.w2c[frame - 1]
    use = np.flatnonzero(seen[:, frame] & (query_t < solved_end))
    if use.size >= 12:
        world = _track_points(state, principal_point, query_t[use], np.asarray(query_xy)[use], state.inv_depth[use])
        k_mat = np.array([[state.focal, 0, principal_point[0]], [0, state.focal, principal_point[1]], [0, 0, 1.0]])
        guess = state.w2c[frame - 1]
        rvec, _ = cv2.Rodrigues(guess[:3, :3])
        cv2.setRNGSeed(frame)
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            world, tracks_xy[use, frame], k_mat, None, rvec=rvec.copy(), tvec=guess[:3, 3:4].copy(),
            useExtrinsicGuess=True, iterationsCount=200, reprojectionError=3.0, confidence=0.999,
            flags=cv2.SOLVEPNP_ITERATIVE)
        if ok and inliers is not None and len(inliers) >= 8:
            pose = np.eye(4)
            pose[:3, :3] = cv2.Rodrigues(rvec)[0]
            pose[:3, 3] = tvec[:, 0]
            depth = world[inliers[:, 0]] @ pose[2, :3] + pose[2, 3]
            if np.mean(depth > 0) >= MIN_FRONT_FRACTION:  # PnP can fit the mirrored points behind the camera
                state.w2c[frame] = pose
                return
    state.w2c[frame] = fallback


def _two_view_init(state: _State, principal_point: tuple[float, float], query_t: np.ndarray,
                   tracks_xy: np.ndarray, seen: np.ndarray, frame: int, with_baseline: bool) -> None:
    """Rotation of `frame` relative to frame 0 from the essential matrix of their shared tracks.

    The translation takes the essential matrix's direction with the initial length, or (`with_baseline`
    and a zero initial length) the length that puts the shared tracks at their initial median depth.
    Nothing changes when too few tracks are shared or RANSAC finds too few inliers.
    """
    import cv2
    import numpy as np

    both = np.flatnonzero((query_t == 0) & seen[:, frame])
    if both.size < 16:
        return
    pts0 = tracks_xy[both, 0]
    pts1 = tracks_xy[both, frame]
    if np.median(np.linalg.norm(pts1 - pts0, axis=1)) < 1.0:
        return  # no parallax: keep the initial pose
    k_mat = np.array([[state.focal, 0, principal_point[0]], [0, state.focal, principal_point[1]], [0, 0, 1.0]])
    cv2.setRNGSeed(frame)
    ess, inl = cv2.findEssentialMat(pts0, pts1, k_mat, method=cv2.RANSAC, prob=0.999, threshold=1.0)
    if ess is None or ess.shape != (3, 3) or inl is None or int(inl.sum()) < 12:
        return
    count, rot, trans, _ = cv2.recoverPose(ess, pts0, pts1, k_mat, mask=inl.copy())
    if count < 12:
        return
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = trans[:, 0]
    length = float(np.linalg.norm(state.w2c[frame, :3, 3]))  # frame 0 is the identity
    if with_baseline and length < 1e-9:  # cameras from nothing: the baseline that puts the tracks at their depth
        length = _baseline_for_depth(pts0[inl[:, 0] > 0], pts1[inl[:, 0] > 0], k_mat, pose,
                                     float(np.median(1.0 / state.inv_depth[both])))
    pose[:3, 3] *= length
    state.w2c[frame] = pose


def _baseline_for_depth(pts0: np.ndarray, pts1: np.ndarray, k_mat: np.ndarray, unit_pose: np.ndarray,
                        depth: float) -> float:
    """Length of the unit-baseline relative pose `unit_pose` (frame 0 -> frame) that gives the matches
    `pts0 -> pts1` (K, 2) a median triangulated depth of `depth` in frame 0. 0 (no baseline, as before
    two-view geometry) when fewer than 8 matches triangulate in front of both cameras or their median
    parallax is under MIN_INIT_PARALLAX_DEG (a turning camera: the depths, hence the length, are noise)."""
    import numpy as np

    from st4r_cli.geometry.triangulate import triangulate_on_rays

    tri = triangulate_on_rays(pts0, pts1, k_mat, unit_pose)
    front = np.isfinite(tri["depth"]) & (tri["depth"] > 0) & (tri["depth_j"] > 0)
    if front.sum() < 8 or np.median(tri["parallax_deg"][front]) < MIN_INIT_PARALLAX_DEG:
        return 0.0
    return depth / float(np.median(tri["depth"][front]))


def _track_points(state: _State, principal_point: tuple[float, float], query_t: np.ndarray, query_xy: np.ndarray,
                  inv_depth: np.ndarray) -> np.ndarray:
    """(K, 3) world points of tracks from their query pixel, query camera and inverse depth."""
    import numpy as np

    ray = np.concatenate([(query_xy - np.asarray(principal_point)) / state.focal, np.ones((len(query_t), 1))], 1)
    cam = ray / inv_depth[:, None]
    rot, trans = state.w2c[query_t, :3, :3], state.w2c[query_t, :3, 3]
    return np.einsum("kji,kj->ki", rot, cam - trans)


class _Problem:
    """State and LM iterations of one bundle adjustment."""

    def __init__(self, w2c: torch.Tensor, focal: float, principal_point: tuple[float, float],
                 query_t: torch.Tensor, query_xy: torch.Tensor, rho: torch.Tensor, obs_n: torch.Tensor,
                 obs_t: torch.Tensor, obs_xy: torch.Tensor, fixed_frames: set[int]) -> None:
        import torch

        self.w2c = w2c.clone()
        self.focal = torch.tensor(focal, dtype=torch.float64)
        self.cx, self.cy = float(principal_point[0]), float(principal_point[1])
        self.query_t, self.query_xy = query_t, query_xy
        self.rho = rho.clone().clamp(min=1e-12)
        self.obs_n, self.obs_t, self.obs_xy = obs_n, obs_t, obs_xy
        num_frames = w2c.shape[0]
        # camera unknown index: frame t -> block of 6 (fixed frames: none); focal is the last unknown
        order = [t for t in range(num_frames) if t not in fixed_frames]
        self.cam_col = torch.full((num_frames,), -1, dtype=torch.long)
        self.cam_col[order] = torch.arange(len(order)) * 6
        self.num_cam = 6 * len(order) + 1

    # --- residuals and Jacobians --------------------------------------------------------
    def _chunks(self) -> list[slice]:
        """The observations in slices of at most OBS_CHUNK (per-observation work is done chunk by chunk,
        so memory stays bounded whatever the number of frames)."""
        count = len(self.obs_n)
        return [slice(lo, lo + OBS_CHUNK) for lo in range(0, count, OBS_CHUNK)] or [slice(0, 0)]

    def _geometry(self, part: slice = slice(None)) -> dict[str, torch.Tensor]:
        """Per-observation intermediate quantities of observations `part` (see `_linearise`)."""
        import torch

        obs_n, obs_t = self.obs_n[part], self.obs_t[part]
        s_frames = self.query_t[obs_n]
        q_xy = self.query_xy[obs_n]
        ray = torch.cat([(q_xy - q_xy.new_tensor([self.cx, self.cy])) / self.focal,
                         q_xy.new_ones(q_xy.shape[0], 1)], dim=-1)            # (M, 3) K^-1 [q, 1]
        rho = self.rho[obs_n]                                                 # (M,)
        rot_s, tr_s = self.w2c[s_frames, :3, :3], self.w2c[s_frames, :3, 3]
        rot_t, tr_t = self.w2c[obs_t, :3, :3], self.w2c[obs_t, :3, 3]
        cam_s = ray / rho[:, None]                                            # (M, 3) in camera s
        world = torch.einsum("mji,mj->mi", rot_s, cam_s - tr_s)               # R_s^T (P_s - t_s)
        cam_t = torch.einsum("mij,mj->mi", rot_t, world) + tr_t               # (M, 3) in camera t
        z = cam_t[:, 2]
        proj = self.focal * cam_t[:, :2] / z[:, None] + cam_t.new_tensor([self.cx, self.cy])
        return {"ray": ray, "rho": rho, "rot_s": rot_s, "rot_t": rot_t, "cam_s": cam_s, "cam_t": cam_t,
                "z": z, "res": proj - self.obs_xy[part]}

    def residuals(self) -> torch.Tensor:
        """(M, 2) residuals at the current state (NaN/inf behind the camera are left to the caller)."""
        return self._geometry()["res"]

    def residual_norms(self) -> torch.Tensor:
        """(M,) |r| per observation; inf where the point is behind the observing camera (a point there
        projects, mirrored, onto a pixel that can fit the track: it must not count as fitting)."""
        import torch

        norms = []
        for part in self._chunks():
            geo = self._geometry(part)
            norms.append(torch.where(geo["z"] > 0, geo["res"].norm(dim=-1), torch.inf))
        return torch.cat(norms)

    def _linearise(self, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals (M, 2) and Jacobians (M, 2, 14): [xi_t (6), xi_s (6), rho, f] of observations `part`.

        With P_t = (x, y, z) the point in camera t and J_pi = f [[1/z, 0, -x/z^2], [0, 1/z, -y/z^2]]:
          camera t (w2c <- exp(xi) w2c): dP_t = -[P_t]x d_omega + d_v
          camera s: dX = R_s^T [P_s]x d_omega - R_s^T d_v, and dP_t = R_t dX
          inverse depth: dP_t/d rho = -R_t R_s^T ray / rho^2
          focal: d proj/df = (x/z, y/z) + J_pi R_t R_s^T (d ray/df) / rho, d ray/df = (-ray_x, -ray_y, 0)/f
        """
        import torch

        g = self._geometry(part)
        cam_t, z = g["cam_t"], g["z"]
        x, y = cam_t[:, 0], cam_t[:, 1]
        fz = self.focal / z
        # J_pi (M, 2, 3) and its product with -[P_t]x written out (the usual pinhole derivatives)
        zero = torch.zeros_like(z)
        j_pi = torch.stack([torch.stack([fz, zero, -fz * x / z], -1),
                            torch.stack([zero, fz, -fz * y / z], -1)], 1)
        j_rot_t = torch.stack([torch.stack([-fz * x * y / z, fz * (z + x * x / z), -fz * y], -1),
                               torch.stack([-fz * (z + y * y / z), fz * x * y / z, fz * x], -1)], 1)
        a_mat = j_pi @ (g["rot_t"] @ g["rot_s"].transpose(-1, -2))             # J_pi R_t R_s^T (M, 2, 3)
        # a^T [P_s]x = (a x P_s)^T for each row a
        j_rot_s = torch.linalg.cross(a_mat, g["cam_s"][:, None, :].expand_as(a_mat), dim=-1)
        rho = g["rho"][:, None]
        d_rho = -(a_mat @ g["ray"][:, :, None])[..., 0] / rho**2               # (M, 2)
        d_ray_f = torch.cat([-g["ray"][:, :2] / self.focal, torch.zeros_like(rho)], dim=-1)
        d_f = (a_mat @ d_ray_f[:, :, None])[..., 0] / rho + cam_t[:, :2] / z[:, None]
        jac = torch.cat([j_rot_t, j_pi, j_rot_s, -a_mat, d_rho[..., None], d_f[..., None]], dim=-1)
        return g["res"], jac

    # --- one LM solve at a fixed robust scale --------------------------------------------
    def solve(self, scale_px: float, opts: BundleOptions, with_focal: bool) -> None:
        import torch

        lam = opts.damping
        cost = self._cost(scale_px)
        for _ in range(opts.iters_per_stage):
            system = self._linearised_system(scale_px, with_focal)
            for _attempt in range(6):
                step = self._step(system, lam)
                if step is None:
                    lam *= 10.0
                    continue
                saved = (self.w2c.clone(), self.focal.clone(), self.rho.clone())
                self._apply(*step, opts)
                new_cost = self._cost(scale_px)
                if torch.isfinite(new_cost) and new_cost < cost:
                    converged = (cost - new_cost) < 1e-6 * cost
                    cost = new_cost
                    lam = max(lam / 3.0, 1e-9)
                    break
                self.w2c, self.focal, self.rho = saved
                lam *= 10.0
            else:
                return
            if converged:
                return

    def _cost(self, scale_px: float) -> torch.Tensor:
        import torch

        norms = torch.nan_to_num(self.residual_norms(), nan=1e12, posinf=1e12)
        return (scale_px**2 / 2.0 * torch.log1p((norms / scale_px) ** 2)).sum()

    def _linearised_system(self, scale_px: float, with_focal: bool) -> _System:
        """The IRLS-weighted normal equations at the current state, built chunk by chunk."""
        total = None
        for part in self._chunks():
            res, jac = self._linearise(part)
            weights = 1.0 / (1.0 + (res.norm(dim=-1) / scale_px) ** 2)  # Cauchy IRLS
            if not with_focal:
                jac[:, :, 13] = 0.0
            system = self._normal_equations(res, jac, weights, part)
            del res, jac
            total = system if total is None else total.add(system)
        return total

    def _normal_equations(self, res: torch.Tensor, jac: torch.Tensor, weights: torch.Tensor,
                          part: slice = slice(None)) -> _System:
        """The weighted normal equations, kept sparse on the point side (see `_System`).

        Work and memory are linear in the observations M; only the camera block H_cc (C, C) is
        dense (C = 6 moving frames + 1).
        """
        import torch

        ok = torch.isfinite(res).all(-1) & torch.isfinite(jac).all(-1).all(-1)
        n_idx, t_frames, w = self.obs_n[part], self.obs_t[part], weights
        if not bool(ok.all()):  # the usual case needs no copies
            res, jac, w = res[ok], jac[ok], weights[ok]
            n_idx, t_frames = n_idx[ok], t_frames[ok]
        s_frames = self.query_t[n_idx]
        num_pts = self.rho.shape[0]
        size = self.num_cam
        # columns of the 13 camera-side local unknowns in the global camera vector (fixed: zeroed)
        col_t = self.cam_col[t_frames][:, None] + torch.arange(6)
        col_s = self.cam_col[s_frames][:, None] + torch.arange(6)
        col_t[self.cam_col[t_frames] < 0] = -1
        col_s[self.cam_col[s_frames] < 0] = -1
        cols = torch.cat([col_t, col_s, torch.full((len(res), 1), size - 1)], dim=1)  # (M, 13)
        jc = jac[:, :, [*range(12), 13]] * (cols >= 0)[:, None, :]            # (M, 2, 13)
        jp = jac[:, :, 12]                                                     # (M, 2)
        cols = cols.clamp(min=0)
        wr = w[:, None] * res                                                  # (M, 2)
        # camera block: one (2 m x 13)^T (2 m x 13) product per (observing frame, query frame) pair
        # of frames (their m observations share the 13 columns), scattered as one 13 x 13 block
        pair_ids, group = torch.unique(t_frames * len(self.cam_col) + s_frames, return_inverse=True)
        order = torch.argsort(group, stable=True)
        rows = (jc * w.sqrt()[:, None, None])[order].reshape(-1, 13)            # (2M, 13) grouped
        sums = torch.empty(len(pair_ids), 13, 13, dtype=torch.float64)
        first = 0
        for k, count in enumerate(torch.bincount(group, minlength=len(pair_ids)).tolist()):
            block = rows[2 * first:2 * (first + count)]
            sums[k] = block.T @ block
            first += count
        pair_cols = cols[order[torch.cumsum(torch.bincount(group), 0) - 1]]    # (G, 13) of each pair
        flat = (pair_cols[:, :, None] * size + pair_cols[:, None, :]).reshape(-1)
        h_cc = torch.zeros(size * size, dtype=torch.float64).index_add_(0, flat, sums.reshape(-1))
        b_c = torch.zeros(size, dtype=torch.float64).index_add_(0, cols.reshape(-1),
                                                                 torch.einsum("mki,mk->mi", jc, wr).reshape(-1))
        h_pp = torch.zeros(num_pts, dtype=torch.float64).index_add_(0, n_idx, (w[:, None] * jp**2).sum(-1))
        b_p = torch.zeros(num_pts, dtype=torch.float64).index_add_(0, n_idx, (jp * wr).sum(-1))
        vals = torch.einsum("mki,mk->mi", jc, w[:, None] * jp)                  # (M, 13): H_cp entries
        # H_cp as (track, moving frame) pairs with a 6-vector each (+ the focal column); a track's
        # couplings to its query camera are summed into one pair
        s_sum = torch.zeros(num_pts, 6, dtype=torch.float64).index_add_(0, n_idx, vals[:, 6:12])
        tracks = torch.arange(num_pts)
        frames = torch.cat([t_frames, self.query_t])
        pair_v = torch.cat([vals[:, :6], s_sum])
        pair_n = torch.cat([n_idx, tracks])
        moving = self.cam_col[frames] >= 0
        h_pf = torch.zeros(num_pts, dtype=torch.float64).index_add_(0, n_idx, vals[:, 12])
        return _System(h_cc.view(size, size), b_c, h_pp, b_p, pair_n[moving],
                       torch.div(self.cam_col[frames[moving]], 6, rounding_mode="floor"), pair_v[moving], h_pf)

    @staticmethod
    def _step(system: _System, lam: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """LM step (camera unknowns (C,), inverse-depth steps (N,)) by the Schur complement."""
        import torch

        # the point block is damped like the cameras, H_pp (1 + lam), so the reduction
        # H_cp H_pp^-1 H_cp^T is formed once per linearisation and divided by (1 + lam)
        inv_pp = system.inv_pp / (1.0 + lam)
        schur = system.reduced() / -(1.0 + lam)                               # one (C, C) temporary
        schur += system.h_cc
        schur.diagonal().add_(lam * torch.diagonal(system.h_cc).clamp(min=1e-9))
        rhs = system.b_c - system.reduced_rhs() / (1.0 + lam)
        try:
            factor, info = torch.linalg.cholesky_ex(schur)
            if int(info) != 0:
                return None
            d_cam = -torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        except RuntimeError:
            return None
        if not torch.isfinite(d_cam).all():
            return None
        d_rho = -(system.b_p + system.pc_times(d_cam)) * inv_pp
        return d_cam, d_rho

    def _apply(self, d_cam: torch.Tensor, d_rho: torch.Tensor, opts: BundleOptions) -> None:
        import torch

        from st4r_cli.geometry.lie import so3_exp

        moving = self.cam_col >= 0
        xi = d_cam[:-1].view(-1, 6)                                            # (T-1, 6) in cam_col order
        rot = so3_exp(xi[:, :3])
        w2c = self.w2c.clone()
        w2c[moving, :3, :3] = rot @ self.w2c[moving, :3, :3]
        w2c[moving, :3, 3] = (rot @ self.w2c[moving, :3, 3, None])[..., 0] + xi[:, 3:]
        self.w2c = w2c
        self.focal = (self.focal + d_cam[-1]).clamp(min=1.0)
        rho = self.rho + d_rho
        typical = torch.median(self.rho)
        self.rho = rho.clamp(min=typical * 1e-3, max=typical / opts.min_depth_ratio)


@dataclass
class _System:
    """Normal equations of one linearisation, sparse on the point side.

    h_cc (C, C) dense camera block (C = 6 per moving frame + 1 for the focal, last), b_c (C,);
    h_pp (N,) and b_p (N,) the diagonal point block; the camera-point block H_cp is kept as (track,
    moving frame, 6-vector) pairs `pair_n` (P,), `pair_f` (P,) (camera columns 6 f .. 6 f + 5),
    `pair_v` (P, 6) (repeated pairs add up) plus its focal row `h_pf` (N,).
    """

    h_cc: torch.Tensor
    b_c: torch.Tensor
    h_pp: torch.Tensor
    b_p: torch.Tensor
    pair_n: torch.Tensor
    pair_f: torch.Tensor
    pair_v: torch.Tensor
    h_pf: torch.Tensor
    _cache: dict = field(default_factory=dict)

    @property
    def inv_pp(self) -> torch.Tensor:
        """1 / H_pp (N,) (a tiny epsilon keeps unobserved points finite)."""
        return 1.0 / (self.h_pp + 1e-12)

    def reduced(self) -> torch.Tensor:
        """H_cp H_pp^-1 H_cp^T (C, C), computed once."""
        if "reduced" not in self._cache:
            self._cache["reduced"] = self.reduction(self.inv_pp)
        return self._cache["reduced"]

    def reduced_rhs(self) -> torch.Tensor:
        """H_cp H_pp^-1 b_p (C,), computed once."""
        if "rhs" not in self._cache:
            self._cache["rhs"] = self.cp_times(self.inv_pp * self.b_p)
        return self._cache["rhs"]

    def add(self, other: _System) -> _System:
        """Add the normal equations of other (disjoint) observations in place; returns self.

        The dense parts are summed in place (no per-chunk copies of the (C, C) block are kept)."""
        import torch

        self.h_cc += other.h_cc
        self.b_c += other.b_c
        self.h_pp += other.h_pp
        self.b_p += other.b_p
        self.h_pf += other.h_pf
        self.pair_n = torch.cat([self.pair_n, other.pair_n])
        self.pair_f = torch.cat([self.pair_f, other.pair_f])
        self.pair_v = torch.cat([self.pair_v, other.pair_v])
        self._cache.clear()
        return self

    def cp_times(self, vec: torch.Tensor) -> torch.Tensor:
        """H_cp @ vec for vec (N,): (C,)."""
        import torch

        size = self.h_cc.shape[0]
        out = torch.zeros(size, dtype=torch.float64)
        cols = (self.pair_f[:, None] * 6 + torch.arange(6)).reshape(-1)
        out.index_add_(0, cols, (self.pair_v * vec[self.pair_n, None]).reshape(-1))
        out[-1] = (self.h_pf * vec).sum()
        return out

    def pc_times(self, vec: torch.Tensor) -> torch.Tensor:
        """H_cp^T @ vec for vec (C,): (N,)."""
        import torch

        cams = vec[:-1].view(-1, 6)
        out = torch.zeros(self.h_pp.shape[0], dtype=torch.float64)
        if len(cams):
            out.index_add_(0, self.pair_n, (self.pair_v * cams[self.pair_f]).sum(-1))
        return out + self.h_pf * vec[-1]

    def reduction(self, inv_pp: torch.Tensor) -> torch.Tensor:
        """H_cp diag(inv_pp) H_cp^T (C, C), dense output, formed blockwise.

        Moving frames are grouped in blocks of REDUCTION_BLOCK; each block gets a dense (tracks that
        touch it x its columns) matrix, and every pair of blocks that share tracks contributes one
        product over their shared tracks. The work is about 36 x sum over tracks of (frames it
        touches)^2, not (6 frames)^2 x tracks: linear in the frames for tracks of bounded length.
        """
        import torch

        size = self.h_cc.shape[0]
        num_pts = self.h_pp.shape[0]
        out = torch.zeros(size, size, dtype=torch.float64)
        root = inv_pp.sqrt()
        out[-1, -1] = (self.h_pf**2 * inv_pp).sum()
        focal_row = self.cp_times(self.h_pf * inv_pp)
        out[-1, :-1] = focal_row[:-1]
        out[:-1, -1] = focal_row[:-1]
        if len(self.pair_n) == 0:
            return out
        num_frames = (size - 1) // 6
        blk = torch.div(self.pair_f, REDUCTION_BLOCK, rounding_mode="floor")
        width = 6 * REDUCTION_BLOCK
        scaled = self.pair_v * root[self.pair_n, None]
        dense, rowmap, tracks = [], [], []
        for b in range((num_frames + REDUCTION_BLOCK - 1) // REDUCTION_BLOCK):
            sel = torch.nonzero(blk == b).flatten()
            ids, rows = torch.unique(self.pair_n[sel], return_inverse=True)
            mat = torch.zeros(len(ids), width, dtype=torch.float64)
            cols = ((self.pair_f[sel] - b * REDUCTION_BLOCK)[:, None] * 6 + torch.arange(6))
            mat.index_put_((rows[:, None].expand(-1, 6), cols), scaled[sel], accumulate=True)
            where = torch.full((num_pts,), -1, dtype=torch.long)
            where[ids] = torch.arange(len(ids))
            dense.append(mat)
            rowmap.append(where)
            tracks.append(ids)
        last_block = torch.full((num_pts,), -1, dtype=torch.long)
        last_block.scatter_reduce_(0, self.pair_n, blk, reduce="amax")
        for b1, ids in enumerate(tracks):
            if len(ids) == 0:
                continue
            r0 = b1 * width
            reach = int(last_block[ids].max())
            for b2 in range(b1, reach + 1):
                shared = ids[rowmap[b2][ids] >= 0]
                if len(shared) == 0:
                    continue
                prod = dense[b1][rowmap[b1][shared]].T @ dense[b2][rowmap[b2][shared]]
                c0 = b2 * width
                rows1 = min(width, size - 1 - r0)
                cols2 = min(width, size - 1 - c0)
                out[r0:r0 + rows1, c0:c0 + cols2] += prod[:rows1, :cols2]
                if b2 != b1:
                    out[c0:c0 + cols2, r0:r0 + rows1] += prod[:rows1, :cols2].T
        return out
