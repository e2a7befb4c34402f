"""Camera refinement and track fusion: the last step of the chain stage (`chain.refine=ba`).

The network gives every frame a depth map and a camera, and every query pixel a 3D trajectory; the
2D tracker gives precise image positions. This step makes the two agree:

1. Bundle tracks. The tracks stage's tracks plus a grid re-seeded every `ba_every_k` frames
   (built-in tracker), so every part of the video is covered by tracks that start in it.
2. Static tracks. A bundle track is used only when the network says its point does not move: its
   world position from frame t's pointmap at the tracked pixel stays close to its position at the
   query frame (median over the frames where it is seen): within `ba_dynamic_rel` x the scene depth,
   or 3x the median of that motion over all tracks when the pointmaps are less consistent than that.
3. Bundle adjustment (`st4r_cli.geometry.bundle`): cameras, the focal and the tracks' inverse depths
   (initialised from the chained pointmaps), Cauchy-robust, frames added in chunks with RANSAC PnP.
   The result is kept only when it fits the tracks better than the network's cameras did, does not
   put more of them behind the cameras (a point behind a camera still projects onto a pixel that can
   fit its track), and keeps the network's pointmaps in front of them (a part of the video that no
   track links to the rest can come out in its own, even mirrored, frame). Otherwise the network's
   cameras stay, and step 4 runs in them.
4. Re-lifting. Each frame's pointmap keeps its depth along each pixel's ray and moves with the new
   camera. A 3D track (head 1) keeps its depth in the refined camera t and moves onto the ray of its
   2D track wherever the tracker sees it (`fuse_tracks`); elsewhere its projection is shifted by the
   tracker-minus-projection offset of the nearest frame where the tracker saw it. A track the network
   sees static (same test as 2, on head 1) stays at its query-frame position, as long as that fixed
   point reprojects onto its 2D track (median within `ba_point_max_px`). That position keeps the
   network's depth when it fits; when it does not, the bundle's triangulated point replaces it if that
   is well fixed: 3+ views, median residual under `ba_point_max_px`, parallax over
   `ba_min_parallax_deg` at the bundle's solution, and over `ba_min_parallax_2d_deg` on the 2D tracks
   once the best camera rotation is taken out (with little parallax the bundle can trade depth for
   baseline, then see the parallax it made up in its own solution). Otherwise the track is treated
   as moving.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.stages.chain import ChainConfig

MAX_BEHIND_FRACTION = 0.01  # refined cameras may put at most this fraction of observations (or as many as
                            # the network's cameras did) behind the camera that sees them ...
MAX_SCENE_BEHIND = 0.1      # ... and at most this fraction of any frame's network pointmap


def refine_scene(scene: dict[str, np.ndarray], frames: np.ndarray, tracks: dict[str, np.ndarray] | None,
                 config: ChainConfig) -> dict[str, np.ndarray]:
    """The chained scene with bundle-adjusted cameras and re-lifted pointmaps and tracks.

    scene: `chain_windows` arrays (cam_c2w (T,4,4), intrinsics (3,3), pointmaps (T,H,W,3),
    tracks3d (N,T,3), query_t (N,), query_xy (N,2), ...); frames (T,H,W,3) uint8; tracks: the tracks
    stage's arrays or None (the scene's 3D tracks are theirs when chain.queries=tracks).
    Adds `ba_residual_px` () (median, after), `ba_initial_residual_px` (), `ba_accepted` () and
    `track_static` (N,) bool. When the bundle's cameras are rejected, the network's are kept and the
    tracks are re-lifted (fused with the 2D tracks) in them.
    """
    import numpy as np

    from st4r_cli import progress
    from st4r_cli.geometry.bundle import BundleOptions, bundle_adjust
    from st4r_cli.stages.chain import surface_depths

    num_frames, h, w = frames.shape[:3]
    if num_frames < 3:
        return scene
    bundle = bundle_tracks(frames, tracks, config)
    k_mat = np.asarray(scene["intrinsics"], np.float64)
    cam_w2c = np.linalg.inv(np.asarray(scene["cam_c2w"], np.float64))
    depth_q, static = _network_depth_and_static(scene, cam_w2c, bundle, config)
    usable = np.isfinite(depth_q) & (depth_q > 0)
    seen = bundle["visible"] & (static & usable)[:, None]
    principal = (float(k_mat[0, 2]), float(k_mat[1, 2]))
    inv_depth = np.where(usable, 1.0 / np.where(usable, depth_q, 1.0), 1.0)
    result = bundle_adjust(cam_w2c, float(k_mat[0, 0]), principal, bundle["query_t"], bundle["query_xy"],
                           inv_depth, bundle["tracks_xy"], seen, BundleOptions(refine_focal=config.ba_refine_focal),
                           chunk=config.ba_chunk, progress_desc="refine: bundle adjustment")
    before = float(np.median(result.initial_residual_px)) if result.residual_px.size else float("nan")
    after = float(np.median(result.residual_px)) if result.residual_px.size else float("nan")
    behind, scene_behind = _behind_cameras(result, scene["pointmaps"])
    accepted = bool(np.isfinite(after) and after < before and after < config.ba_accept_px
                    and behind <= max(_behind_fraction(result.initial_residual_px), MAX_BEHIND_FRACTION)
                    and scene_behind <= MAX_SCENE_BEHIND)
    own = tracks if config.queries == "tracks" and tracks is not None else None
    out = dict(scene)
    out.update(ba_initial_residual_px=np.float32(before), ba_residual_px=np.float32(after),
               ba_accepted=np.bool_(accepted))
    if not accepted:
        progress.log(f"[yellow]-[/yellow] refine: bundle adjustment rejected (median {before:.2f} -> {after:.2f} px; "
                     f"{100 * behind:.0f}% of the observations and up to {100 * scene_behind:.0f}% of a frame's "
                     "pointmap behind the cameras); keeping the network's cameras")
        # the 3D tracks still follow the 2D tracks, in the network's cameras
        out.update(_relift_tracks(scene, own, cam_w2c, k_mat, config, None, None,
                                  surface_depths(scene["pointmaps"], cam_w2c), (h, w)))
        return out
    progress.log(f"[green]✓[/green] refine: cameras bundle-adjusted on {len(bundle['query_t'])} tracks, median "
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
    out["intrinsics"] = new_k.astype(np.float32)
    out["cam_c2w"] = np.linalg.inv(new_w2c).astype(np.float32)
    out["pointmaps"] = _relift_pointmaps(scene["pointmaps"], cam_w2c, new_w2c, new_k)
    count = len(scene["tracks3d"])
    shared = own is not None and bool(bundle["from_stage"][:count].all()) and len(bundle["from_stage"]) >= count
    surface_z = surface_depths(out["pointmaps"], new_w2c)
    out.update(_relift_tracks(scene, own, new_w2c, new_k, config, bundle_points[:count] if shared else None,
                              fixed[:count] if shared else None, surface_z, (h, w)))
    return out


# ----------------------------------------------------------------------------------------------
# bundle tracks and the network's static test
# ----------------------------------------------------------------------------------------------

def bundle_tracks(frames: np.ndarray, tracks: dict[str, np.ndarray] | None, config: ChainConfig
                  ) -> dict[str, np.ndarray]:
    """Tracks for the bundle: the tracks stage's (first, when given) + a re-seeded built-in grid.

    Returns query_t (B,) int64, query_xy (B, 2), tracks_xy (B, T, 2) f64, visible (B, T) bool,
    from_stage (B,) bool (True for the tracks stage's own tracks, in their order).
    """
    import numpy as np

    from st4r_cli.tracking.builtin import track_points
    from st4r_cli.tracking.queries import grid_queries

    num_frames, h, w = frames.shape[:3]
    seeds = list(range(config.ba_every_k if tracks is not None else 0, num_frames - 1, config.ba_every_k))
    parts = []
    if tracks is not None:
        parts.append((np.asarray(tracks["queries"], np.float64), np.asarray(tracks["tracks_xy"], np.float64),
                      np.asarray(tracks["visible"], bool), True))
    if seeds:
        queries = grid_queries(config.ba_grid_size, (h, w), seeds).astype(np.float64)
        extra = track_points(frames, queries.astype(np.float32), progress_desc="refine: bundle tracks")
        parts.append((queries, np.asarray(extra["tracks_xy"], np.float64), np.asarray(extra["visible"], bool), False))
    queries = np.concatenate([p[0] for p in parts])
    return {"query_t": np.rint(queries[:, 0]).astype(np.int64), "query_xy": queries[:, 1:3],
            "tracks_xy": np.concatenate([p[1] for p in parts]), "visible": np.concatenate([p[2] for p in parts]),
            "from_stage": np.concatenate([np.full(len(p[0]), p[3]) for p in parts])}


def _network_depth_and_static(scene: dict[str, np.ndarray], cam_w2c: np.ndarray, bundle: dict[str, np.ndarray],
                              config: ChainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(depth (B,) of each bundle track in its query camera, static (B,) bool) from the pointmaps."""
    import numpy as np

    from st4r_cli.stages.chain import _bilinear, _inside

    pointmaps = np.asarray(scene["pointmaps"], np.float64)
    num_frames, h, w = pointmaps.shape[:3]
    count = len(bundle["query_t"])
    start = np.full((count, 3), np.nan)
    for t in np.unique(bundle["query_t"]):
        sel = np.flatnonzero(bundle["query_t"] == t)
        start[sel] = _bilinear(pointmaps[t], bundle["query_xy"][sel])
    rot_z = cam_w2c[bundle["query_t"], 2, :3]
    depth = (start * rot_z).sum(-1) + cam_w2c[bundle["query_t"], 2, 3]
    scene_depth = float(np.nanmedian(depth)) if np.isfinite(depth).any() else 1.0
    motion = np.full((count, num_frames), np.nan)
    for t in range(num_frames):
        sel = np.flatnonzero(bundle["visible"][:, t] & _inside(bundle["tracks_xy"][:, t], (h, w)))
        if sel.size:
            motion[sel, t] = np.linalg.norm(_bilinear(pointmaps[t], bundle["tracks_xy"][sel, t]) - start[sel], axis=1)
    return depth, _static_by_motion(motion, scene_depth, config.ba_dynamic_rel)


def _static_by_motion(motion: np.ndarray, scene_depth: float, rel: float) -> np.ndarray:
    """(N,) bool from (N, T) distances of each track's point at t to its query-frame point (NaN: no
    sample): static when the median distance stays within `rel` x `scene_depth`, or within 3x the median
    of that over all tracks (the threshold adapts to the network's own frame-to-frame inconsistency,
    large on real video). A track with no sample counts as static."""
    import numpy as np

    typical = _row_nanmedian(motion)
    noise = float(np.nanmedian(typical)) if np.isfinite(typical).any() else 0.0
    return ~(typical > max(rel * scene_depth, 3.0 * noise))


# ----------------------------------------------------------------------------------------------
# re-lifting
# ----------------------------------------------------------------------------------------------

def _relift_pointmaps(pointmaps: np.ndarray, old_w2c: np.ndarray, new_w2c: np.ndarray, new_k: np.ndarray
                      ) -> np.ndarray:
    """(T, H, W, 3) f32: each pixel at its old depth along its ray, in the new camera."""
    import numpy as np

    num_frames, h, w = pointmaps.shape[:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    ray = np.stack([(xs - new_k[0, 2]) / new_k[0, 0], (ys - new_k[1, 2]) / new_k[1, 1], np.ones_like(xs)], -1)
    out = np.empty_like(pointmaps, dtype=np.float32)
    new_c2w = np.linalg.inv(new_w2c)
    for t in range(num_frames):
        depth = pointmaps[t].astype(np.float64) @ old_w2c[t, 2, :3] + old_w2c[t, 2, 3]
        cam = ray * depth[..., None]
        out[t] = cam @ new_c2w[t, :3, :3].T + new_c2w[t, :3, 3]
    return out


def _bundle_points(result: Any, bundle: dict[str, np.ndarray], principal: tuple[float, float],
                   new_w2c: np.ndarray) -> np.ndarray:
    """(B, 3) world points of the bundle tracks at the solution."""
    import numpy as np

    ray = np.concatenate([(bundle["query_xy"] - np.asarray(principal)) / result.focal,
                          np.ones((len(bundle["query_t"]), 1))], 1)
    cam = ray / result.inv_depth[:, None]
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

    def bearings(xy: np.ndarray) -> np.ndarray:
        ray = np.concatenate([(xy - np.asarray(principal)) / focal, np.ones((len(xy), 1))], 1)
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
    from st4r_cli.stages.chain import surface_depths

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


def _static_tracks(tracks3d: np.ndarray, query_t: np.ndarray, rel: float) -> np.ndarray:
    """(N,) bool: scene tracks whose network trajectory (head 1) stays put (threshold as in module doc)."""
    import numpy as np

    start = tracks3d[np.arange(len(tracks3d)), query_t]                    # (N, 3)
    motion = np.linalg.norm(tracks3d - start[:, None], axis=-1)             # (N, T)
    motion[np.arange(tracks3d.shape[1])[None] < query_t[:, None]] = np.nan
    scene_depth = float(np.median(np.abs(start[:, 2]))) if len(start) else 1.0
    return _static_by_motion(motion, scene_depth, rel)


def _relift_tracks(scene: dict[str, np.ndarray], tracks: dict[str, np.ndarray] | None, new_w2c: np.ndarray,
                   new_k: np.ndarray, config: ChainConfig, bundle_points: np.ndarray | None,
                   use_bundle: np.ndarray | None, surface_z: np.ndarray, hw: tuple[int, int]
                   ) -> dict[str, np.ndarray]:
    """tracks3d / tracks2d / visible of the scene's tracks under the refined cameras (module doc, 4).

    bundle_points (N, 3) and use_bundle (N,) refer to the scene's own tracks (the first N bundle
    tracks) or are None; surface_z (T, H, W) is each frame's depth map in its refined camera.
    """
    import numpy as np

    from st4r_cli.stages.chain import _inside, _visibility, project_tracks

    tracks3d = np.asarray(scene["tracks3d"], np.float64)                   # (N, T, 3)
    query_t = np.rint(np.asarray(scene["query_t"])).astype(np.int64)
    count, num_frames = tracks3d.shape[:2]
    tracker_xy = tracker_seen = None
    if tracks is not None and config.fuse_tracks and len(tracks["tracks_xy"]) == count:
        tracker_xy = np.asarray(tracks["tracks_xy"], np.float64)
        tracker_seen = np.asarray(tracks["visible"], bool) & _inside(tracker_xy, hw)
        tracker_seen &= np.arange(num_frames)[None] >= query_t[:, None]
        tracker_seen[np.arange(count), query_t] = True
        tracker_xy = tracker_xy.copy()
        tracker_xy[np.arange(count), query_t] = np.asarray(scene["query_xy"], np.float64)
    if tracker_xy is not None:
        tracks3d = _fuse(tracks3d, tracker_xy, tracker_seen, new_w2c, new_k)
    static = _static_tracks(np.asarray(scene["tracks3d"], np.float64), query_t, config.ba_dynamic_rel)
    start = tracks3d[np.arange(count), query_t]
    if tracker_xy is not None:  # the 2D track must agree: a point that stays put reprojects onto it
        fits = _fits_static(start, tracker_xy, tracker_seen, new_w2c, new_k, config.ba_point_max_px)
        if bundle_points is not None and use_bundle is not None:
            # the network's depth where it fits the 2D track, else the bundle's triangulated point
            swap = static & use_bundle & ~fits
            start = np.where(swap[:, None], bundle_points, start)
            fits |= swap & _fits_static(bundle_points, tracker_xy, tracker_seen, new_w2c, new_k,
                                        config.ba_point_max_px)
        static &= fits
    tracks3d = np.where(static[:, None, None], start[:, None, :], tracks3d)
    tracks2d, z = project_tracks(tracks3d, new_w2c, new_k)
    eps_rel = float(scene.get("visibility_eps_rel", config.mask_eps_rel))   # calibrated by the chain stage
    visible = _visibility(tracks2d, z, surface_z, tracks, replace(config, mask_eps_rel=eps_rel), hw)
    return {"tracks3d": tracks3d.astype(np.float32), "tracks2d": tracks2d.astype(np.float32), "visible": visible,
            "track_static": static}


def _fits_static(points: np.ndarray, tracker_xy: np.ndarray, tracker_seen: np.ndarray, w2c: np.ndarray,
                 k_mat: np.ndarray, max_px: float) -> np.ndarray:
    """(N,) bool: fixed world points (N, 3) reproject within `max_px` (median) of their 2D tracks."""
    import numpy as np

    cam = np.einsum("tij,nj->nti", w2c[:, :3, :3], points) + w2c[None, :, :3, 3]
    with np.errstate(all="ignore"):
        xy = k_mat[0, 0] * cam[..., :2] / cam[..., 2:3] + k_mat[[0, 1], [2, 2]]
        err = np.where(tracker_seen & (cam[..., 2] > 0), np.linalg.norm(xy - tracker_xy, axis=-1), np.nan)
    typical = _row_nanmedian(err)
    return ~(typical > max_px) & (np.isfinite(err).sum(1) > 0)


def _fuse(tracks3d: np.ndarray, tracker_xy: np.ndarray, tracker_seen: np.ndarray, w2c: np.ndarray,
          k_mat: np.ndarray) -> np.ndarray:
    """(N, T, 3): each point moved, at its depth in camera t, onto the ray of its 2D track.

    Where the tracker does not see the point, the pixel is the point's own projection shifted by the
    tracker-minus-projection offset at the nearest frame (in time) where it was seen.
    """
    import numpy as np

    from st4r_cli.stages.chain import project_tracks

    own_xy, depth = project_tracks(tracks3d, w2c, k_mat)                      # (N, T, 2), (N, T)
    usable = tracker_seen & np.isfinite(own_xy).all(-1) & (depth > 0)
    pixel = own_xy.copy()
    times = np.arange(tracks3d.shape[1])
    for n in np.flatnonzero(usable.any(1)):
        seen = np.flatnonzero(usable[n])
        offset = tracker_xy[n, seen] - own_xy[n, seen]                         # (S, 2)
        nearest = np.abs(times[:, None] - seen[None, :]).argmin(axis=1)         # (T,) index into seen
        pixel[n] = own_xy[n] + offset[nearest]
        pixel[n, seen] = tracker_xy[n, seen]
    ray = np.concatenate([(pixel - k_mat[[0, 1], [2, 2]]) / k_mat[0, 0], np.ones(depth.shape + (1,))], -1)
    c2w = np.linalg.inv(w2c)
    moved = np.einsum("tij,ntj->nti", c2w[:, :3, :3], ray * depth[..., None]) + c2w[None, :, :3, 3]
    ok = np.isfinite(moved).all(-1) & (depth > 0)
    return np.where(ok[..., None], moved, tracks3d)


def _row_nanmedian(values: np.ndarray) -> np.ndarray:
    """(N,) median of each row of (N, T) over its finite entries; NaN, without a warning, for a row with none."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=1)
