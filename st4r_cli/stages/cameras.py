"""Cameras stage: every frame's camera and the focal, from the window predictions and the 2D tracks.

Input artifacts: predict (window pointmaps, intrinsics) and tracks (the stage's tracks plus the camera
solver's own `camera_*` tracks, from the chosen tracker); config: `CamerasConfig`. It does not need the
adapted network, only pointmaps (today the predict stage's).

1. Network cameras. Each camera j of each window is solved by weighted PnP on head 2 (pixels = the
   grid, weights = head-2 confidence) with the shared K; window w is mapped into the world by the
   Sim(3) that aligns its head-2 pointmaps of the frames it shares with window w-1 onto window w-1's;
   the world is the camera of frame 0 (`st4r_cli.geometry.chaining`). A frame's camera comes from
   the latest window containing it.
2. Bundle tracks (`cameras.refine=ba`): the tracks stage's tracks (first) and its camera tracks (a
   grid re-seeded every `tracks.camera_every_k` frames), so every part of the video is covered by
   tracks that start in it.
3. Static tracks. A bundle track is used only when the network says its point does not move: its
   world position from frame t's pointmap at the tracked pixel stays close to its position at the
   query frame (median over the frames where it is seen): within `ba_dynamic_rel` x the scene depth,
   or 3x the median of that motion over all tracks when the pointmaps are less consistent than that.
4. Bundle adjustment (`st4r_cli.geometry.bundle`): cameras, the focal and the tracks' inverse depths
   (initialised from the chained pointmaps), Cauchy-robust, frames added in chunks with RANSAC PnP.
   The result is kept only when it fits the tracks better than the network's cameras did, does not
   put more of them behind the cameras (a point behind a camera still projects onto a pixel that can
   fit its track), and keeps the network's pointmaps in front of them (a part of the video that no
   track links to the rest can come out in its own, even mirrored, frame). Otherwise the network's
   cameras stay.
5. Bundle points. For the tracks stage's own tracks, the bundle's triangulated point and whether it
   is well fixed: 3+ views, median residual under `ba_point_max_px`, parallax over
   `ba_min_parallax_deg` at the bundle's solution, and over `ba_min_parallax_2d_deg` on the 2D tracks
   once the best camera rotation is taken out (with little parallax the bundle can trade depth for
   baseline, then see the parallax it made up in its own solution). The fuse stage uses them.

Output arrays:
    network_cam_c2w (T, 4, 4) f64, network_intrinsics (3, 3) f64   step 1
    window_start (W,), window_sim3_scale (W,), window_sim3_rotation (W, 3, 3),
    window_sim3_translation (W, 3)                                  each window's Sim(3) into the world
    cam_w2c (T, 4, 4) f64, intrinsics (3, 3) f64                    the result (bundle-adjusted when accepted)
  when the bundle adjustment ran (refine=ba, 3+ frames, tracks):
    ba_initial_residual_px () f32, ba_residual_px () f32 (medians), ba_accepted () bool,
    track_bundle_points (N, 3) f64, track_bundle_fixed (N,) bool    for the tracks stage's N tracks
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from st4r_cli.configs import CamerasConfig

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CAMERAS_VERSION", "CamerasConfig", "check_cameras_config", "compute_cameras", "bundle_tracks"]

CAMERAS_VERSION = 1
MAX_BEHIND_FRACTION = 0.01  # refined cameras may put at most this fraction of observations (or as many as
                            # the network's cameras did) behind the camera that sees them ...
MAX_SCENE_BEHIND = 0.1      # ... and at most this fraction of any frame's network pointmap


def check_cameras_config(config: CamerasConfig) -> None:
    """St4rError for invalid values."""
    from st4r_cli.errors import St4rError

    if config.refine not in ("ba", "none"):
        raise St4rError(f"cameras.refine must be ba or none, got '{config.refine}'")
    if config.ba_chunk < 2:
        raise St4rError("cameras.ba_chunk must be >= 2")
    if min(config.ba_point_max_px, config.ba_min_parallax_deg, config.ba_min_parallax_2d_deg) < 0:
        raise St4rError("cameras.ba_point_max_px, ba_min_parallax_deg and ba_min_parallax_2d_deg must be >= 0")
    if min(config.pnp_stride, config.sim3_stride) < 1:
        raise St4rError("cameras.pnp_stride and sim3_stride must be >= 1")


def compute_cameras(pred: dict[str, np.ndarray], tracks: dict[str, np.ndarray] | None,
                    config: CamerasConfig) -> dict[str, np.ndarray]:
    """The cameras stage's arrays (module doc) from predict-stage arrays and tracks-stage arrays (or None)."""
    import numpy as np

    from st4r_cli.geometry.chaining import (chain_gauges, frame_owner, gauge_arrays, windows_from_predictions,
                                            world_cameras, world_frames)

    check_cameras_config(config)
    windows = windows_from_predictions(pred)
    num_frames = int(np.asarray(pred["window_frames"]).max()) + 1
    k_mat = np.asarray(pred["intrinsics"], dtype=np.float64)
    gauges = chain_gauges(windows, k_mat, config.pnp_stride, config.sim3_stride)
    owner = frame_owner(windows, num_frames)
    cam_c2w = world_cameras(windows, owner)
    out = {"network_cam_c2w": cam_c2w, "network_intrinsics": k_mat,
           "window_start": np.asarray([w.start for w in windows], np.int64), **gauge_arrays(gauges),
           "cam_w2c": np.linalg.inv(cam_c2w), "intrinsics": k_mat}
    if config.refine == "ba" and num_frames >= 3 and tracks is not None:
        pointmaps, _ = world_frames(windows, owner, tuple(np.asarray(pred["recon_pts"]).shape[1:3]))
        # the bundle starts from the cameras as scene.npz stores them (float32)
        out.update(_bundle_adjust(cam_c2w.astype(np.float32), k_mat.astype(np.float32), pointmaps, tracks, config))
    return out


def _bundle_adjust(cam_c2w: np.ndarray, intrinsics: np.ndarray, pointmaps: np.ndarray,
                   tracks: dict[str, np.ndarray], config: CamerasConfig) -> dict[str, np.ndarray]:
    """Steps 2-5 of the module doc: the bundle-adjusted cameras when accepted, and the bundle points."""
    import numpy as np

    from st4r_cli import progress
    from st4r_cli.geometry.bundle import BundleOptions, bundle_adjust

    bundle = bundle_tracks(tracks)
    k_mat = np.asarray(intrinsics, np.float64)
    cam_w2c = np.linalg.inv(np.asarray(cam_c2w, np.float64))
    depth_q, static = _network_depth_and_static(pointmaps, cam_w2c, bundle, config)
    usable = np.isfinite(depth_q) & (depth_q > 0)
    seen = bundle["visible"] & (static & usable)[:, None]
    principal = (float(k_mat[0, 2]), float(k_mat[1, 2]))
    inv_depth = np.where(usable, 1.0 / np.where(usable, depth_q, 1.0), 1.0)
    result = bundle_adjust(cam_w2c, float(k_mat[0, 0]), principal, bundle["query_t"], bundle["query_xy"],
                           inv_depth, bundle["tracks_xy"], seen, BundleOptions(refine_focal=config.ba_refine_focal),
                           chunk=config.ba_chunk, progress_desc="cameras: bundle adjustment")
    before = float(np.median(result.initial_residual_px)) if result.residual_px.size else float("nan")
    after = float(np.median(result.residual_px)) if result.residual_px.size else float("nan")
    behind, scene_behind = _behind_cameras(result, pointmaps)
    accepted = bool(np.isfinite(after) and after < before and after < config.ba_accept_px
                    and behind <= max(_behind_fraction(result.initial_residual_px), MAX_BEHIND_FRACTION)
                    and scene_behind <= MAX_SCENE_BEHIND)
    count = len(tracks["queries"])
    out: dict[str, Any] = {"ba_initial_residual_px": np.float32(before), "ba_residual_px": np.float32(after),
                           "ba_accepted": np.bool_(accepted), "track_bundle_points": np.zeros((count, 3)),
                           "track_bundle_fixed": np.zeros(count, bool)}
    if not accepted:
        progress.log(f"[yellow]-[/yellow] cameras: bundle adjustment rejected (median {before:.2f} -> {after:.2f} px; "
                     f"{100 * behind:.0f}% of the observations and up to {100 * scene_behind:.0f}% of a frame's "
                     "pointmap behind the cameras); keeping the network's cameras")
        return out
    progress.log(f"[green]✓[/green] cameras: bundle-adjusted on {len(bundle['query_t'])} tracks, median "
                 f"reprojection {before:.2f} -> {after:.2f} px (focal {result.focal:.1f} px)")
    new_k = k_mat.copy()
    new_k[0, 0] = new_k[1, 1] = result.focal
    new_w2c = result.cam_w2c
    bundle_points = _bundle_points(result, bundle, principal, new_w2c)
    # parallax both at the bundle's solution and on the 2D tracks alone: with little parallax the
    # bundle can trade depth for baseline (bas-relief) and then see the parallax it made up
    parallax_ok = ((_parallax_deg(result, bundle_points, new_w2c, bundle["query_t"]) >= config.ba_min_parallax_deg)
                   & (_rotation_free_parallax_deg(result, bundle, result.focal, principal)
                      >= config.ba_min_parallax_2d_deg))
    fixed = _well_triangulated(result, config.ba_point_max_px) & parallax_ok & static & usable
    out.update(cam_w2c=np.asarray(new_w2c, np.float64), intrinsics=new_k, track_bundle_points=bundle_points[:count],
               track_bundle_fixed=fixed[:count])
    return out


def bundle_tracks(tracks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tracks for the bundle: the tracks stage's own (first, in their order) + its camera tracks.

    Returns query_t (B,) int64, query_xy (B, 2), tracks_xy (B, T, 2) f64, visible (B, T) bool.
    """
    import numpy as np

    parts = [(np.asarray(tracks["queries"], np.float64), np.asarray(tracks["tracks_xy"], np.float64),
              np.asarray(tracks["visible"], bool))]
    if "camera_queries" in tracks and len(tracks["camera_queries"]):
        parts.append((np.asarray(tracks["camera_queries"], np.float64),
                      np.asarray(tracks["camera_tracks_xy"], np.float64), np.asarray(tracks["camera_visible"], bool)))
    queries = np.concatenate([p[0] for p in parts])
    return {"query_t": np.rint(queries[:, 0]).astype(np.int64), "query_xy": queries[:, 1:3],
            "tracks_xy": np.concatenate([p[1] for p in parts]), "visible": np.concatenate([p[2] for p in parts])}


def _network_depth_and_static(pointmaps: np.ndarray, cam_w2c: np.ndarray, bundle: dict[str, np.ndarray],
                              config: CamerasConfig) -> tuple[np.ndarray, np.ndarray]:
    """(depth (B,) of each bundle track in its query camera, static (B,) bool) from the pointmaps."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, sample_bilinear
    from st4r_cli.geometry.motion import static_by_motion

    pointmaps = np.asarray(pointmaps, np.float64)
    num_frames, h, w = pointmaps.shape[:3]
    count = len(bundle["query_t"])
    start = np.full((count, 3), np.nan)
    for t in np.unique(bundle["query_t"]):
        sel = np.flatnonzero(bundle["query_t"] == t)
        start[sel] = sample_bilinear(pointmaps[t], bundle["query_xy"][sel])
    rot_z = cam_w2c[bundle["query_t"], 2, :3]
    depth = (start * rot_z).sum(-1) + cam_w2c[bundle["query_t"], 2, 3]
    scene_depth = float(np.nanmedian(depth)) if np.isfinite(depth).any() else 1.0
    motion = np.full((count, num_frames), np.nan)
    for t in range(num_frames):
        sel = np.flatnonzero(bundle["visible"][:, t] & in_image(bundle["tracks_xy"][:, t], (h, w)))
        if sel.size:
            motion[sel, t] = np.linalg.norm(sample_bilinear(pointmaps[t], bundle["tracks_xy"][sel, t]) - start[sel], axis=1)
    return depth, static_by_motion(motion, scene_depth, config.ba_dynamic_rel)


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


def _behind_fraction(residual_px: np.ndarray) -> float:
    """Fraction of bundle observations behind their camera (their residual is inf), 0 for none."""
    import numpy as np

    return float(np.mean(np.isinf(residual_px))) if residual_px.size else 0.0


def _behind_cameras(result: Any, pointmaps: np.ndarray) -> tuple[float, float]:
    """(fraction of the bundle's observations behind their camera, largest fraction of a frame's
    network pointmap (T, H, W, 3), every 8th pixel, behind that frame's refined camera).

    A part of the video that no bundle track links to the rest can come out of the bundle in its own,
    even mirrored, frame while fitting its tracks: the network's geometry then lies behind its cameras.
    """
    from st4r_cli.geometry.camera_np import surface_depths

    behind = surface_depths(pointmaps[:, ::8, ::8], result.cam_w2c) <= 0                # (T, H/8, W/8)
    return _behind_fraction(result.residual_px), float(behind.mean(axis=(1, 2)).max())


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
