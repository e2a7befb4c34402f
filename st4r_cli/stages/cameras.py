"""Cameras stage: every frame's camera and the focal, from the 2D tracks alone (before depth and TTA).

Input artifacts: tracks (the stage's tracks plus the camera solver's own `camera_*` tracks, from the
chosen tracker) and the frame size; config: `CamerasConfig`. It needs no network: the multi-view depth
and the TTA that follow use its cameras.

1. Bundle tracks: the tracks stage's tracks (first) and its camera tracks (a grid re-seeded every
   `tracks.camera_every_k` frames), so every part of the video is covered by tracks that start in it.
2. Bundle adjustment (`st4r_cli.geometry.bundle`) of the cameras, the focal and the tracks' inverse
   depths, from nothing but the focal: every camera at the origin, every track at depth 1, the focal
   `focal_init` or (0) the one the un-adapted network's frame-0 pointmap implies. The first chunk of
   frames starts from two-view geometry, later frames are placed by RANSAC PnP on the points already
   fixed; Cauchy-robust, and tracks that some observation does not fit (moving objects) are dropped
   before the last pass. (The first chunk is solved from two two-view starts, a zero baseline and the
   baseline that puts the shared tracks at depth 1, and the better fit is kept: from a zero baseline
   alone a forward-moving camera converged to a wrong rotation, 17 deg for the true 4, on the synthetic
   static-scene/1.) The scene's scale is the bundle's: the median track depth is 1. (Measured on
   7-Scenes redkitchen-0 / -3: ATE 0.013 / 0.022 m from nothing, 0.014 / 0.021 m when started from the
   network's chained cameras.)
   The focal (`ba_focal`): on a short clip it is weakly observable, so with `auto` the video is solved
   twice, at the start focal and refining it, and the refined solution is kept only when it passes the
   checks, stays within 1.3x of the start and fits clearly better (`_pick_focal`; `focal_status` says
   which). Refined freely it landed at 2-5x the start on near-still or panning clips for a slightly lower
   residual; kept by this rule it fixes the network's 14% error on the synthetic static-scene/3 (ATE
   0.020 -> 0.003) and a DAVIS clip whose residual grew frame by frame at the network's focal. A video
   longer than 48 frames makes this choice on its first 48 frames (`_auto_focal`).
3. Checks. The solution is kept only when its median reprojection is under `ba_accept_px` and it puts at
   most 1% of the observations behind their camera (a point behind a camera still projects onto a pixel
   that can fit its track). A camera step the static points' image motion does not support
   (`geometry.camera_checks`) is repaired when it is a spike (one frame off the path: put back between
   its neighbours) and rejects the solution when it is a break, as does a step from frame t-1 to t that
   fewer than MIN_LINKS tracks fitted under `ba_link_px` link (the parts on either side are solved
   separately: their relative pose is arbitrary), and a frame whose median reprojection is 3x the video's and over 1 px
   (a stretch the bundle fits in a wrong minimum, hidden by a low median over the video).
   `camera_status` says which.
4. Bundle points. For the tracks stage's own tracks, the bundle's triangulated point, its depth in the
   query camera, and whether it is well fixed: 3+ views, median residual under `ba_point_max_px`,
   parallax over `ba_min_parallax_deg` at the bundle's solution, and over `ba_min_parallax_2d_deg` on
   the 2D tracks once the best camera rotation is taken out (with little parallax the bundle can trade
   depth for baseline, then see the parallax it made up in its own solution). The fuse stage uses them.

5. Movers (`window_k_sigma`, `geometry.window_triangulation`): each track is triangulated separately from
   every 8-frame stretch of the video in the solved cameras; a static point lands in the same place from
   each, within its triangulation noise, a moving one follows its motion, also when it moves along its
   epipolar lines (a subject the camera follows) and so fits the bundle as a static point at a wrong
   depth. Tracks whose stretches disagree by more than `window_k_sigma` x their noise are `track_moving`,
   never well fixed, and their positions join `moving_obs`. Off by default (0): at k = 6 (tuned on the
   movers benchmark's redkitchen-0 composites: 2.5% of their static tracks flagged) it takes the standing
   card's tracks called static from 33% / 18% to 0% / 15% (redkitchen-0 / -3), but misses the floating
   and the following cards in cameras they drag, the flagged tracks keep the network's motion (the
   standing card's 3D error 0.45 -> 0.70 m), and 1.3 / 0.3 points fewer of the static clips' tracks come
   out static (`benchmarks/results/movers_window_k6.json`, `sevenscenes_window_k6.json`).

Output arrays:
    ba_accepted () bool, camera_status () str: solved | repaired | rejected: <why> | not run: <why>
    cam_w2c (T, 4, 4) f64, intrinsics (3, 3) f64      the solution (identity / the guess when rejected)
    ba_initial_residual_px () f32, ba_residual_px () f32 (medians), focal_status () str (step 2),
    camera_spikes (S,) int64,
    camera_breaks (B,) int64, track_bundle_points (N, 3) f64, track_bundle_depth (N,) f64,
    track_bundle_fixed (N,) bool, track_moving (N,) bool   for the tracks stage's N tracks
    moving_obs (M, 3) f32, fitted_obs (K, 3) f32    (t, x, y) of every visible position of the bundle
                                                    tracks it dropped (seen in 2+ other frames, fit by
                                                    no static point: moving objects, or tracker slips)
                                                    and of the ones it kept (the depth stage's motion cue)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from st4r_cli.configs import CamerasConfig

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CAMERAS_VERSION", "CamerasConfig", "check_cameras_config", "compute_cameras", "bundle_tracks"]

CAMERAS_VERSION = 7
MAX_BEHIND_FRACTION = 0.01  # solved cameras may put at most this fraction of observations behind the camera
MIN_LINKS = 8               # fitted tracks that must link every two consecutive frames
FRAME_RESIDUAL_RATIO = 3.0  # a frame fit worse than this x the video's median reprojection ...
FRAME_RESIDUAL_MIN_PX = 1.0  # ... and than this many pixels rejects the solution
FOCAL_MAX_RATIO = 1.3       # ba_focal=auto keeps a refined focal within this factor of the start ...
FOCAL_MIN_GAIN = 0.9        # ... when its median reprojection is at most this x the fixed focal's
FOCAL_PREFIX_FRAMES = 48    # ... measured on at most this many first frames


def check_cameras_config(config: CamerasConfig) -> None:
    """St4rError for invalid values."""
    from st4r_cli.errors import St4rError

    if config.refine not in ("ba", "none"):
        raise St4rError(f"cameras.refine must be ba or none, got '{config.refine}'")
    if config.ba_focal not in ("fixed", "refine", "auto"):
        raise St4rError(f"cameras.ba_focal must be fixed, refine or auto, got '{config.ba_focal}'")
    if config.ba_chunk < 2:
        raise St4rError("cameras.ba_chunk must be >= 2")
    if config.focal_init < 0:
        raise St4rError("cameras.focal_init must be >= 0 (0: the long side)")
    if min(config.ba_point_max_px, config.ba_min_parallax_deg, config.ba_min_parallax_2d_deg) < 0:
        raise St4rError("cameras.ba_point_max_px, ba_min_parallax_deg and ba_min_parallax_2d_deg must be >= 0")


def _not_solved(num_frames: int, hw: tuple[int, int], count: int, focal: float, status: str) -> dict[str, Any]:
    import numpy as np

    k_mat = np.array([[focal, 0.0, (hw[1] - 1) / 2], [0.0, focal, (hw[0] - 1) / 2], [0.0, 0.0, 1.0]])
    return {"ba_accepted": np.bool_(False), "camera_status": np.str_(status),
            "cam_w2c": np.repeat(np.eye(4)[None], num_frames, 0), "intrinsics": k_mat,
            "ba_initial_residual_px": np.float32(np.nan), "ba_residual_px": np.float32(np.nan),
            "camera_spikes": np.zeros(0, np.int64), "camera_breaks": np.zeros(0, np.int64),
            "track_bundle_points": np.zeros((count, 3)), "track_bundle_depth": np.full(count, np.nan),
            "track_bundle_fixed": np.zeros(count, bool), "track_moving": np.zeros(count, bool),
            "moving_obs": np.zeros((0, 3), np.float32),
            "fitted_obs": np.zeros((0, 3), np.float32),
            "focal_status": np.str_(f"the start, {focal:.1f} px (cameras not solved)")}


def compute_cameras(tracks: dict[str, np.ndarray] | None, hw: tuple[int, int], num_frames: int,
                    config: CamerasConfig, focal: float | None = None) -> dict[str, Any]:
    """The cameras stage's arrays (module doc) from the tracks-stage arrays (or None), the frame size
    (H, W), and the focal to start from (pixels; `config.focal_init` wins, None: the long side)."""
    import numpy as np

    from st4r_cli import progress

    check_cameras_config(config)
    count = len(tracks["queries"]) if tracks is not None and "queries" in tracks else 0
    focal = float(config.focal_init or focal or max(hw))
    if config.refine != "ba":
        return _not_solved(num_frames, hw, count, focal, "not run: cameras.refine=none")
    if tracks is None or num_frames < 3:
        return _not_solved(num_frames, hw, count, focal, "not run: needs 2D tracks and 3+ frames")
    bundle = bundle_tracks(tracks)
    start = _not_solved(num_frames, hw, count, focal, "")
    principal = (float(start["intrinsics"][0, 2]), float(start["intrinsics"][1, 2]))
    solve = {"fixed": False, "refine": True, "auto": False}[config.ba_focal]
    chosen = _solve(bundle, focal, principal, num_frames, config, refine_focal=solve)
    focal_status = f"{'refined' if solve else 'fixed'}: {chosen.result.focal:.1f} px"
    if config.ba_focal == "auto":
        chosen, focal_status = _auto_focal(bundle, chosen, focal, principal, num_frames, config)
    out = {"ba_initial_residual_px": np.float32(chosen.initial_px), "ba_residual_px": np.float32(chosen.median_px),
           "camera_spikes": chosen.jumps["spikes"], "camera_breaks": chosen.jumps["breaks"],
           "focal_status": np.str_(focal_status)}
    if chosen.problems:
        status = "rejected: " + "; ".join(chosen.problems)
        progress.log(f"[yellow]-[/yellow] cameras: bundle adjustment {status}; the network's cameras will be used")
        return {**_not_solved(num_frames, hw, count, focal, status), **out}
    spikes = chosen.jumps["spikes"]
    repaired = f"; frame(s) {', '.join(map(str, spikes.tolist()))} put back on the path" if spikes.size else ""
    progress.log(f"[green]✓[/green] cameras: solved on {len(bundle['query_t'])} tracks, median reprojection "
                 f"{chosen.median_px:.2f} px, focal {focal_status}{repaired}")
    new_k = start["intrinsics"].copy()
    new_k[0, 0] = new_k[1, 1] = chosen.result.focal
    points, depth, fixed = _bundle_points_and_flags(chosen.result, bundle, principal, chosen.w2c, config)
    moving = _moving_tracks(bundle, chosen.w2c, new_k, config)
    if moving.any():
        progress.log(f"[green]✓[/green] cameras: {moving.sum()} of {len(moving)} tracks move (their points from "
                     "different stretches of the video disagree)")
    out.update(ba_accepted=np.bool_(True), camera_status=np.str_("repaired" if spikes.size else "solved"),
               cam_w2c=chosen.w2c, intrinsics=new_k, track_bundle_points=points[:count],
               track_bundle_depth=depth[:count], track_bundle_fixed=fixed[:count] & ~moving[:count],
               track_moving=moving[:count], **_dropped_and_kept(chosen.result, bundle, moving))
    return out


def _moving_tracks(bundle: dict[str, np.ndarray], w2c: np.ndarray, k_mat: np.ndarray, config: CamerasConfig
                   ) -> np.ndarray:
    """(B,) bool: bundle tracks whose window triangulations disagree (step 5 of the module doc)."""
    import numpy as np

    from st4r_cli.geometry.window_triangulation import WindowOptions, moving_by_windows

    if config.window_k_sigma <= 0:
        return np.zeros(len(bundle["query_t"]), bool)
    moving, _ = moving_by_windows(bundle["tracks_xy"], bundle["visible"], w2c, k_mat,
                                  WindowOptions(k_sigma=config.window_k_sigma))
    return moving


@dataclass
class _Solution:
    """One bundle adjustment of the video and what the checks (module doc, step 3) found wrong with it."""

    result: Any                 # geometry.bundle.BundleResult
    w2c: np.ndarray             # (T, 4, 4) its cameras, spikes repaired
    jumps: dict[str, np.ndarray]  # spikes (repaired) and breaks (T,) int64
    problems: list[str]         # why it cannot be accepted (empty: it can)
    initial_px: float           # median reprojection before / after the solve
    median_px: float


def _solve(bundle: dict[str, np.ndarray], focal: float, principal: tuple[float, float], num_frames: int,
           config: CamerasConfig, refine_focal: bool) -> _Solution:
    """Bundle-adjust the video from `focal` (refining it or not) and check the result."""
    import numpy as np

    from st4r_cli.geometry.bundle import BundleOptions, bundle_adjust

    result = bundle_adjust(np.repeat(np.eye(4)[None], num_frames, 0), focal, principal, bundle["query_t"],
                           bundle["query_xy"], np.ones(len(bundle["query_t"])), bundle["tracks_xy"],
                           bundle["visible"], BundleOptions(refine_focal=refine_focal), chunk=config.ba_chunk,
                           progress_desc=f"cameras: bundle adjustment ({'refined' if refine_focal else 'fixed'} focal)")
    fits = np.isfinite(result.residual_px)
    before = float(np.median(result.initial_residual_px)) if result.residual_px.size else float("nan")
    after = float(np.median(result.residual_px)) if result.residual_px.size else float("nan")
    jumps, w2c = _check_path(result, bundle, np.asarray(result.cam_w2c, np.float64), config)
    behind = max(1.0 - float(fits.mean()) if fits.size else 1.0, _behind_fraction(result, bundle, principal, w2c))
    problems = []
    if not (np.isfinite(after) and after < config.ba_accept_px):
        problems.append(f"median reprojection {after:.2f} px over {config.ba_accept_px} px")
    if behind > MAX_BEHIND_FRACTION:
        problems.append(f"{100 * behind:.1f}% of the observations behind their camera")
    if jumps["breaks"].size:
        problems.append(f"the camera path breaks at frame(s) {', '.join(map(str, jumps['breaks'].tolist()))}")
    unlinked = _unlinked_steps(result, bundle, num_frames, config.ba_link_px)
    if unlinked.size:
        problems.append("no tracks link frame(s) " + ", ".join(f"{t - 1}-{t}" for t in unlinked.tolist())
                        + " (the video falls into separately solved parts)")
        jumps["breaks"] = np.union1d(jumps["breaks"], unlinked).astype(np.int64)
    badly_fit, frame_px = _badly_fit_frames(result, num_frames, after)
    if badly_fit.size:
        problems.append("frame(s) " + ", ".join(f"{t} ({frame_px[t]:.2f} px)" for t in badly_fit.tolist())
                        + f" fit far worse than the video's median {after:.2f} px")
    return _Solution(result, w2c, jumps, problems, before, after)


def _badly_fit_frames(result: Any, num_frames: int, median_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(frames (int64) whose median reprojection exceeds max(FRAME_RESIDUAL_RATIO x the video's median,
    FRAME_RESIDUAL_MIN_PX), every frame's median reprojection (T,), NaN where nothing is observed).
    A low median over the whole video can hide a stretch of frames the bundle fits badly: there it sits
    in a wrong minimum (measured: a fast pan with few tracks across frames 15-19, whose cameras stalled
    while the true ones moved 0.19 units a frame, fit at 1.8 px beside a 0.31 px median)."""
    import numpy as np

    frame_px = np.full(num_frames, np.nan)
    fits = np.isfinite(result.residual_px)
    for t in np.unique(result.obs_frame[fits]):
        frame_px[t] = float(np.median(result.residual_px[fits & (result.obs_frame == t)]))
    limit = max(FRAME_RESIDUAL_RATIO * median_px, FRAME_RESIDUAL_MIN_PX)
    return np.flatnonzero(np.nan_to_num(frame_px) > limit).astype(np.int64), frame_px


def _auto_focal(bundle: dict[str, np.ndarray], fixed: _Solution, focal: float, principal: tuple[float, float],
                num_frames: int, config: CamerasConfig) -> tuple[_Solution, str]:
    """`ba_focal=auto` (module doc, step 2): (the solution kept, focal_status). A video longer than
    FOCAL_PREFIX_FRAMES decides on its first FOCAL_PREFIX_FRAMES frames (solved at both focals) and is
    solved again at the refined focal only when that wins there: a second solve of the whole video
    doubled the cameras stage on 150 frames (112 -> 210 s), for a focal that rarely changes."""
    if num_frames <= FOCAL_PREFIX_FRAMES:
        return _pick_focal(fixed, _solve(bundle, focal, principal, num_frames, config, refine_focal=True), focal)
    head = _first_frames(bundle, FOCAL_PREFIX_FRAMES)
    head_fixed = _solve(head, focal, principal, FOCAL_PREFIX_FRAMES, config, refine_focal=False)
    head_refined = _solve(head, focal, principal, FOCAL_PREFIX_FRAMES, config, refine_focal=True)
    pick, status = _pick_focal(head_fixed, head_refined, focal)
    status = f"{status}, on the first {FOCAL_PREFIX_FRAMES} frames"
    if pick is head_fixed:
        return fixed, status
    again = _solve(bundle, pick.result.focal, principal, num_frames, config, refine_focal=False)
    if again.problems and not fixed.problems:
        return fixed, (f"kept at {focal:.1f} px (the whole video at the focal refined on its first "
                       f"{FOCAL_PREFIX_FRAMES} frames, {pick.result.focal:.1f} px, failed its checks)")
    return again, f"{status}; the whole video solved at {pick.result.focal:.1f} px"


def _first_frames(bundle: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """The bundle tracks (`bundle_tracks`) cut to frames [0, count): those that start there."""
    keep = bundle["query_t"] < count
    return {"query_t": bundle["query_t"][keep], "query_xy": bundle["query_xy"][keep],
            "tracks_xy": bundle["tracks_xy"][keep, :count], "visible": bundle["visible"][keep, :count]}


def _pick_focal(fixed: _Solution, refined: _Solution, start_focal: float) -> tuple[_Solution, str]:
    """`ba_focal=auto`: the refined-focal solution when it passes the checks, its focal stays within
    FOCAL_MAX_RATIO of the start and it fits clearly better (median reprojection at most
    FOCAL_MIN_GAIN x the fixed one's) or the fixed one fails its checks; else the fixed one.
    (The focal of a short clip is weakly observable: refined freely it went to 5.5x the true one on a
    near-still synthetic camera for a 2x lower residual.) Returns (solution, focal_status)."""
    ratio = refined.result.focal / start_focal
    plausible = 1.0 / FOCAL_MAX_RATIO <= ratio <= FOCAL_MAX_RATIO
    better = refined.median_px <= FOCAL_MIN_GAIN * fixed.median_px or bool(fixed.problems)
    if plausible and better and not refined.problems:
        return refined, (f"refined {start_focal:.1f} -> {refined.result.focal:.1f} px (median reprojection "
                         f"{fixed.median_px:.2f} -> {refined.median_px:.2f} px)")
    why = ("it did not fit clearly better" if plausible and not refined.problems else
           "that solution failed its checks" if plausible else f"{ratio:.2f}x the start is not plausible")
    return fixed, (f"kept at {start_focal:.1f} px (refined: {refined.result.focal:.1f} px, median reprojection "
                   f"{refined.median_px:.2f} px for {fixed.median_px:.2f}; {why})")


def _dropped_and_kept(result: Any, bundle: dict[str, np.ndarray], moving: np.ndarray) -> dict[str, np.ndarray]:
    """`moving_obs` / `fitted_obs` (module doc): (t, x, y) rows of the visible positions of the bundle
    tracks the solution dropped (seen in 2+ frames besides their query frame, none of it kept) or found
    moving (`moving`, step 5), and of the others it kept."""
    import numpy as np

    kept = np.zeros(len(bundle["query_t"]), bool)
    kept[result.obs_track] = True
    kept &= ~moving
    visible = np.asarray(bundle["visible"], bool) & np.isfinite(bundle["tracks_xy"]).all(-1)
    others = visible.copy()
    others[np.arange(len(others)), bundle["query_t"]] = False
    dropped = ((others.sum(1) >= 2) & ~kept) | moving

    def rows(select: np.ndarray) -> np.ndarray:
        n_idx, t_idx = np.nonzero(visible & select[:, None])
        return np.concatenate([t_idx[:, None], bundle["tracks_xy"][n_idx, t_idx]], 1).astype(np.float32)

    return {"moving_obs": rows(dropped), "fitted_obs": rows(kept)}


def _check_path(result: Any, bundle: dict[str, np.ndarray], w2c: np.ndarray, config: CamerasConfig
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(spikes/breaks of the solved path, the path with its spikes repaired) against the image motion of
    the tracks the bundle fits."""
    import numpy as np

    from st4r_cli.geometry.camera_checks import classify_jumps, repair_spikes, suspect_steps

    fits = _well_triangulated(result, config.ba_point_max_px)
    depth = 1.0 / np.asarray(result.inv_depth, np.float64)
    scene_depth = float(np.median(depth[fits & np.isfinite(depth)])) if (fits & np.isfinite(depth)).any() else 1.0
    c2w = np.linalg.inv(w2c)
    jumps = classify_jumps(suspect_steps(c2w, result.focal, scene_depth, bundle["tracks_xy"][fits],
                                         bundle["visible"][fits]))
    if jumps["spikes"].size:
        w2c = np.linalg.inv(repair_spikes(c2w, jumps["spikes"]))
    return jumps, w2c


def _unlinked_steps(result: Any, bundle: dict[str, np.ndarray], num_frames: int, max_px: float) -> np.ndarray:
    """Frames t (int64) that fewer than MIN_LINKS bundle tracks link to frame t-1: tracks fitted in both
    frames (an observation under `max_px`, `cameras.ba_link_px`, or the track's query frame).
    Across such a step nothing ties the two parts of the solution together, so its relative pose is
    arbitrary however low the reprojection error (a fast pan that the tracker loses between two frames)."""
    import numpy as np

    fits = np.isfinite(result.residual_px) & (result.residual_px < max_px)
    seen = np.zeros((len(bundle["query_t"]), num_frames), bool)
    seen[result.obs_track[fits], result.obs_frame[fits]] = True
    used = np.unique(result.obs_track[fits])
    seen[used, bundle["query_t"][used]] = True
    links = (seen[:, 1:] & seen[:, :-1]).sum(0)
    return (np.flatnonzero(links < MIN_LINKS) + 1).astype(np.int64)


def _behind_fraction(result: Any, bundle: dict[str, np.ndarray], principal: tuple[float, float],
                     w2c: np.ndarray) -> float:
    """Fraction of the bundle's observations whose point lies behind the camera that observes it, in the
    final cameras `w2c (T, 4, 4)` (a solution can fit its tracks with part of the video mirrored
    behind its cameras, when no track links that part to the rest)."""
    import numpy as np

    if not len(result.obs_track):
        return 0.0
    points = _bundle_points(result, bundle, principal, w2c)[result.obs_track]
    z = (points * w2c[result.obs_frame, 2, :3]).sum(-1) + w2c[result.obs_frame, 2, 3]
    return float(np.mean(~(z > 0)))


def _bundle_points_and_flags(result: Any, bundle: dict[str, np.ndarray], principal: tuple[float, float],
                             w2c: np.ndarray, config: CamerasConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4 of the module doc: (points (B, 3), depth in the query camera (B,), well fixed (B,))."""
    import numpy as np

    points = _bundle_points(result, bundle, principal, w2c)
    # parallax both at the bundle's solution and on the 2D tracks alone: with little parallax the
    # bundle can trade depth for baseline (bas-relief) and then see the parallax it made up
    parallax_ok = ((_parallax_deg(result, points, w2c, bundle["query_t"]) >= config.ba_min_parallax_deg)
                   & (_rotation_free_parallax_deg(result, bundle, result.focal, principal)
                      >= config.ba_min_parallax_2d_deg))
    fixed = _well_triangulated(result, config.ba_point_max_px) & parallax_ok
    return points, 1.0 / np.asarray(result.inv_depth, np.float64), fixed


def bundle_tracks(tracks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tracks for the bundle: the tracks stage's own (first, in their order), its grid tracks (present
    when the output queries are the user's: a handful of points cannot fix the cameras) and its camera
    tracks.

    Returns query_t (B,) int64, query_xy (B, 2), tracks_xy (B, T, 2) f64, visible (B, T) bool.
    """
    import numpy as np

    parts = [(np.asarray(tracks["queries"], np.float64), np.asarray(tracks["tracks_xy"], np.float64),
              np.asarray(tracks["visible"], bool))]
    for prefix in ("grid_", "camera_"):
        if f"{prefix}queries" in tracks and len(tracks[f"{prefix}queries"]):
            parts.append((np.asarray(tracks[f"{prefix}queries"], np.float64),
                          np.asarray(tracks[f"{prefix}tracks_xy"], np.float64),
                          np.asarray(tracks[f"{prefix}visible"], bool)))
    queries = np.concatenate([p[0] for p in parts])
    return {"query_t": np.rint(queries[:, 0]).astype(np.int64), "query_xy": queries[:, 1:3],
            "tracks_xy": np.concatenate([p[1] for p in parts]), "visible": np.concatenate([p[2] for p in parts])}


def _bundle_points(result: Any, bundle: dict[str, np.ndarray], principal: tuple[float, float],
                   new_w2c: np.ndarray) -> np.ndarray:
    """(B, 3) world points of the bundle tracks at the solution."""
    import numpy as np

    from st4r_cli.geometry.camera_np import pixel_rays

    k_mat = np.array([[result.focal, 0.0, principal[0]], [0.0, result.focal, principal[1]], [0.0, 0.0, 1.0]])
    cam = pixel_rays(bundle["query_xy"], k_mat) / result.inv_depth[:, None]
    rot, trans = new_w2c[bundle["query_t"], :3, :3], new_w2c[bundle["query_t"], :3, 3]
    return np.einsum("kji,kj->ki", rot, cam - trans)


def _rotation_free_parallax_deg(result: Any, bundle: dict[str, np.ndarray], focal: float,
                                principal: tuple[float, float]) -> np.ndarray:
    """(B,) parallax of each bundle track that no camera rotation explains, in degrees.

    For every (query frame s, observing frame t) pair, the rotation that best maps the query pixels'
    bearing vectors onto the tracked pixels' (Procrustes, refitted twice without observations over 3x
    the median angle) stands for a camera that only turns; an observation's parallax is the angle
    between its tracked bearing and the rotated query bearing, and a track's is its largest one. This
    needs only the 2D tracks and the focal: it cannot be fooled by a bundle solution that trades depth
    for baseline when there is little parallax (the bas-relief ambiguity). Pairs with fewer than 3
    observations give 0.
    """
    import numpy as np

    from st4r_cli.geometry.camera_np import pixel_rays

    k_mat = np.array([[focal, 0.0, principal[0]], [0.0, focal, principal[1]], [0.0, 0.0, 1.0]])

    def bearings(xy: np.ndarray) -> np.ndarray:
        ray = pixel_rays(xy, k_mat)
        return ray / np.linalg.norm(ray, axis=1, keepdims=True)

    query_t = bundle["query_t"][result.obs_track]
    from_query = bearings(bundle["query_xy"][result.obs_track])                             # (M, 3)
    tracked = bearings(bundle["tracks_xy"][result.obs_track, result.obs_frame])              # (M, 3)
    angle = np.zeros(len(result.obs_track))
    pair = query_t * (int(result.obs_frame.max(initial=0)) + 1) + result.obs_frame
    order = np.argsort(pair, kind="stable")
    bounds = np.flatnonzero(np.diff(pair[order])) + 1
    for sel in np.split(order, bounds):
        if sel.size < 3:
            continue
        keep = np.ones(sel.size, bool)
        for _refit in range(3):
            u, _, vt = np.linalg.svd(tracked[sel[keep]].T @ from_query[sel[keep]])
            rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
            cos = (tracked[sel] * (from_query[sel] @ rot.T)).sum(1)
            angle[sel] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
            keep = angle[sel] <= 3.0 * np.median(angle[sel]) + 1e-9
    parallax = np.zeros(len(bundle["query_t"]))
    np.maximum.at(parallax, result.obs_track, angle)
    return parallax


def _well_triangulated(result: Any, max_px: float) -> np.ndarray:
    """(B,) bool: bundle tracks seen in at least 3 other frames with a median residual under `max_px`."""
    import numpy as np

    count = len(result.inv_depth)
    obs = np.bincount(result.obs_track, minlength=count)
    order = np.argsort(result.obs_track, kind="stable")
    starts = np.concatenate([[0], np.cumsum(obs)[:-1]]).astype(np.int64)
    sorted_res = result.residual_px[order]
    median = np.full(count, np.inf)
    for n in np.flatnonzero(obs >= 3):
        median[n] = np.median(sorted_res[starts[n]:starts[n] + obs[n]])
    return (obs >= 3) & (median < max_px)


def _parallax_deg(result: Any, points: np.ndarray, w2c: np.ndarray, query_t: np.ndarray) -> np.ndarray:
    """(B,) largest angle (degrees) at each world point (B, 3) between the ray from its query camera
    and the ray from a camera that observes it in the bundle; cameras w2c (T, 4, 4)."""
    import numpy as np

    centres = np.linalg.inv(w2c)[:, :3, 3]
    ray_q = points[result.obs_track] - centres[query_t[result.obs_track]]
    ray_t = points[result.obs_track] - centres[result.obs_frame]
    cos = (ray_q * ray_t).sum(-1) / (np.linalg.norm(ray_q, axis=-1) * np.linalg.norm(ray_t, axis=-1) + 1e-12)
    parallax = np.zeros(len(points))
    np.maximum.at(parallax, result.obs_track, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return parallax
