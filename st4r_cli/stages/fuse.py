"""Fuse stage: world 3D tracks, 2D tracks, visibility and per-frame pointmaps -> the `scene.npz` arrays.

Input artifacts: decode (frames, for colours), tracks, predict (window pointmaps), cameras (the solved
cameras and the bundle points) and depth (the multi-view depth, when it ran); config: `FuseConfig`, plus
`VisibilityConfig` (z-buffer tolerance, sigma) and the `CamerasConfig` threshold of the bundle points
(`ba_point_max_px`), which it shares with the cameras stage.

0. The network's own cameras: each camera j of each window by weighted PnP on head 2 with the network's
   K, each window mapped into the world by the Sim(3) that aligns its head-2 pointmaps of the frames it
   shares with the window before (`st4r_cli.geometry.chaining`); the world is the camera of frame 0.
1. Per-frame pointmaps and confidences come from the latest window containing the frame (its anchor
   is the closest in time), mapped into the world by that window's Sim(3).
2. 3D tracks. A track is carried by a window when its anchor pixel is known: the query pixel when the
   query is on the anchor, else the 2D track's pixel at the anchor when the tracker sees it there, else
   the projection of the track's 3D position at the anchor time (from the previous window) when the
   z-buffer test says it is visible. The window then gives its 3D position at every frame: head 1 at
   that pixel, mapped by its Sim(3). Where two windows overlap their estimates are blended with linear
   ramps. Frames no window covers use head 2 at the 2D track where the tracker sees the point, else
   linear interpolation in time (held at the ends), with sigma `sigma_fill_px`.
3. 2D tracks are the 3D tracks projected into each camera; visibility is the tracker's for its own
   tracks (`fuse.visibility=tracker`), else the z-buffer test against frame t's own pointmap
   (`mask`, or `both`). The tracker's is the default: on 10 DAVIS clips the z-buffer test of the
   tiny network's pointmaps called 55% of the points occluded where the annotation has 13% (OA 0.47
   vs 0.84). For grid or dense queries, which the tracker did not track, the test's tolerance is
   calibrated on the tracker's tracks: it accepts `visibility_quantile` of the points the tracker
   sees (`visibility_eps_rel` in the scene). Sigma (pixels) comes from the head-1 confidence as in the
   robust TTA loss.
4. Re-lifting into the solved cameras (when the cameras stage solved them). The network's world is first
   scaled to the solved cameras' units (median ratio of the multi-view depth to the network's over the
   static pixels, else of the bundle's track depths). Each frame's pointmap keeps its depth along each
   pixel's ray and moves with the new camera. A 3D track (head 1) keeps its depth in camera t and moves
   onto the ray of its 2D track wherever the tracker sees it (`fuse_tracks`); elsewhere its projection
   is shifted by the tracker-minus-projection offset of the nearest frame where the tracker saw it. A
   track the network sees static (the static test on head 1) stays at its query-frame position, as long
   as that fixed point reprojects onto its 2D track (median within `cameras.ba_point_max_px`). That
   position keeps the network's depth when it fits; when it does not, the bundle's triangulated point
   replaces it if the cameras stage found it well fixed. Otherwise the track is treated as moving.
5. Multi-view statics (`fuse.multiview`, with multi-view depth and solved cameras). Every pixel with a
   valid multi-view depth that the depth stage did not flag as moving takes its multi-view point
   (`pointmap_source` 1), a pixel within `fill_radius_px` of one that is not moving a smooth fill of the
   multi-view depth around it (2, `_filled_depth`); the rest keeps the adapted network's (0). A track
   whose visible positions on pixels of source 1 or 2 lift to world points that agree (2+ of them,
   spread under `static_spread_rel` x depth) is static at their median, moved in each frame onto the
   tracker's ray at its depth (the 2D track keeps the tracker's precision); the others keep the
   network's motion. A static pixel left with the network's depth (source 0: no multi-view depth and
   no measured pixel within the fill radius; where the video holds no signal, a pure pan or a camera
   standing still) gets confidence NO_GEOMETRY_CONF, below any of the network's, so the viewer hides it
   by default and the exports' confidence filters drop it first; so does every static pixel of a video
   whose multi-view depth found no parallax anywhere. `dynamic_mask` is the depth stage's. A track the
   cameras stage found moving (`track_moving`, its step 5) is never static, in step 4 or here.
6. Movers' depth (`fuse.mover_depth`, after step 5; `st4r_cli.geometry.mover_depth`). Each connected part
   of a frame's motion mask is put upright at the depth of the static surface just below its bottom edge
   (a figure standing on the floor or a table; `pointmap_source` 3), unless that would put it behind the
   static surface it covers (rendered from the multi-view points of the COVER_FRAMES frames either side);
   a part with no contact keeps its depth. The tracks on moving pixels in most frames where seen take its
   factor in each frame along their rays (their 2D tracks do not change), and their median factor in the
   frames where they are on none. On the movers benchmark (`benchmarks/results/movers.json`) a card
   standing on the table went from AbsRel 0.64 / 1.29 to 0.28 / 0.16 (tuned on redkitchen-0, confirmed on
   redkitchen-3); a part floating above a surface is indistinguishable here from one standing on it and
   is put on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from st4r_cli.configs import CamerasConfig, FuseConfig, VisibilityConfig

if TYPE_CHECKING:
    import numpy as np

    from st4r_cli.geometry.chaining import Window

__all__ = ["CAMERAS_FIELDS", "FUSE_VERSION", "FuseConfig", "check_fuse_config", "fuse_scene"]

FUSE_VERSION = 10
# the cameras stage's settings the fuse stage reads (its cache key holds them; the solved cameras are an input)
CAMERAS_FIELDS = ("ba_point_max_px",)
SPECK_SUPPORT = 0.25     # a multi-view pixel needs this share of its 7x7 neighbourhood valid to be kept
FILL_MIN_SUPPORT = 0.05  # a hole pixel is filled at the finest scale whose valid-pixel weight reaches this
NO_GEOMETRY_CONF = 0.5    # step 5: confidence of static pixels with no geometry (the network's: 1 + exp(.))
COVER_FRAMES = 8         # step 6: the static surface a mover covers is rendered from this many frames either side


def check_fuse_config(config: FuseConfig) -> None:
    """St4rError for invalid values."""
    from st4r_cli.errors import St4rError

    if config.queries not in ("tracks", "grid", "dense"):
        raise St4rError(f"fuse.queries must be tracks, grid or dense, got '{config.queries}'")
    if config.visibility not in ("mask", "tracker", "both"):
        raise St4rError(f"fuse.visibility must be mask, tracker or both, got '{config.visibility}'")
    if not 0 <= config.visibility_quantile < 1:
        raise St4rError("fuse.visibility_quantile must be in [0, 1)")
    if min(config.grid_size, config.dense_stride) < 1:
        raise St4rError("fuse.grid_size and dense_stride must be >= 1")


def fuse_scene(frames: np.ndarray, tracks: dict[str, np.ndarray] | None, pred: dict[str, np.ndarray],
               cameras: dict[str, np.ndarray], config: FuseConfig, cameras_config: CamerasConfig,
               visibility: VisibilityConfig, depth: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The `scene.npz` arrays.

    frames (T, H, W, 3) uint8; tracks: tracks-stage arrays (tracks_xy (N,T,2), visible (N,T), queries
    (N,3)) or None; pred: predict-stage arrays; cameras: cameras-stage arrays; depth: depth-stage arrays
    or None (multi-view depth: its static pixels replace the network's, step 5).
    Returns tracks3d (N,T,3), tracks2d (N,T,2), visible (N,T), query_xy (N,2), query_t (N,),
    sigma (N,T), pointmaps (T,H,W,3), conf (T,H,W), colors (T,H,W,3), intrinsics (3,3),
    cam_c2w (T,4,4), image_hw (2,), window_start (W,), window_sim3_scale (W,), track_source (N,T),
    visibility_eps_rel (), camera_status (); with solved cameras also ba_initial_residual_px,
    ba_residual_px, ba_accepted and track_static (N,); with multi-view depth `dynamic_mask (T,H,W)` and
    `pointmap_source (T,H,W)` (0: network, 1: multi-view, 2: filled, 3: a mover at its contact depth).
    """
    import numpy as np

    from st4r_cli.geometry.camera_np import project_tracks, surface_depths
    from st4r_cli.geometry.chaining import chain_gauges, frame_owner, windows_from_predictions, world_cameras, world_frames

    check_fuse_config(config)
    num_frames, h, w = frames.shape[:3]
    k_mat = np.asarray(pred["intrinsics"], dtype=np.float64)
    windows = windows_from_predictions(pred)
    gauges = chain_gauges(windows, k_mat, config.pnp_stride, config.sim3_stride)
    owner = frame_owner(windows, num_frames)
    cam_c2w = world_cameras(windows, owner)
    pointmaps, conf = world_frames(windows, owner, (h, w))
    w2c_world = np.linalg.inv(cam_c2w)
    surface_z = surface_depths(pointmaps, w2c_world)

    query_t, query_xy = _queries(tracks, config, (h, w))
    own = tracks if config.queries == "tracks" else None
    count = len(query_t)
    calibrate = (config.queries != "tracks" and tracks is not None and config.visibility == "tracker"
                 and config.visibility_quantile > 0)
    if calibrate:  # the tracker's tracks, for the z-buffer tolerance, go through the same pass (rows are independent)
        rows_t, rows_xy, rows_tracks = _with_tracker_tracks(query_t, query_xy, tracks)
    else:
        rows_t, rows_xy, rows_tracks = query_t, query_xy, own
    tracks3d, sigma, source = _chain_tracks(windows, owner, rows_t, rows_xy, rows_tracks, k_mat, w2c_world, surface_z,
                                            config, visibility, (h, w), num_frames)
    tracks2d, z = project_tracks(tracks3d, w2c_world, k_mat)
    eps_rel = visibility.mask_eps_rel
    if calibrate:
        eps_rel = _calibrated_eps_rel(tracks2d[count:], z[count:], tracks, surface_z, config, visibility, (h, w))
        tracks3d, sigma, source, tracks2d, z = (a[:count] for a in (tracks3d, sigma, source, tracks2d, z))
    visible = _visibility(tracks2d, z, surface_z, own, config.visibility, eps_rel, (h, w))
    scene = {
        "tracks3d": tracks3d.astype(np.float32), "tracks2d": tracks2d.astype(np.float32),
        "visible": visible, "query_xy": query_xy.astype(np.float32), "query_t": query_t.astype(np.int32),
        "sigma": sigma.astype(np.float32), "pointmaps": pointmaps, "conf": conf,
        "colors": np.asarray(frames, dtype=np.uint8), "intrinsics": k_mat.astype(np.float32),
        "cam_c2w": cam_c2w.astype(np.float32), "image_hw": np.asarray([h, w], np.int32),
        "window_start": np.asarray([win.start for win in windows], np.int64),
        "window_sim3_scale": np.asarray([g.scale for g in gauges], np.float64),
        "track_source": source.astype(np.uint8), "visibility_eps_rel": np.float32(eps_rel),
        "camera_status": np.str_(str(cameras["camera_status"])),
    }
    if str(cameras["camera_status"]).startswith("not run"):
        return scene
    if bool(cameras["ba_accepted"]):
        scene = _to_solved_scale(scene, cameras, depth)
    scene = _relift(scene, own, cameras, config, cameras_config, (h, w))
    if depth is not None and "dynamic" in depth and config.multiview and bool(cameras["ba_accepted"]):
        if np.asarray(depth["valid"]).any():
            scene = _multiview_statics(scene, own, depth, config, (h, w))
        else:
            scene = _without_geometry(scene, np.asarray(depth["dynamic"], bool))
    return scene


def _without_geometry(scene: dict[str, np.ndarray], dynamic: np.ndarray) -> dict[str, np.ndarray]:
    """Step 5 when the multi-view depth found no parallax anywhere (a camera that only turns or stands
    still): every static pixel keeps the network's point with confidence NO_GEOMETRY_CONF (source 0), and
    the scene says so as step 5 does for its holes."""
    import numpy as np

    return _with_sources(scene, np.zeros(dynamic.shape, np.uint8), dynamic)


def _with_sources(scene: dict[str, np.ndarray], source: np.ndarray, dynamic: np.ndarray) -> dict[str, np.ndarray]:
    """The scene with `pointmap_source` and `dynamic_mask` (T, H, W), and confidence NO_GEOMETRY_CONF
    (at most) on the static pixels without geometry (`viz.selection.no_geometry_mask`)."""
    import numpy as np

    from st4r_cli.viz.selection import no_geometry_mask

    out = dict(scene)
    out.update(dynamic_mask=dynamic, pointmap_source=source)
    if "conf" in scene:
        lowered = np.minimum(scene["conf"], NO_GEOMETRY_CONF)
        out["conf"] = np.where(no_geometry_mask(out), lowered, scene["conf"]).astype(np.float32)
    return out


def _to_solved_scale(scene: dict[str, np.ndarray], cameras: dict[str, np.ndarray],
                     depth: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The network's world (pointmaps, tracks, camera centres) scaled to the solved cameras' units: the
    median ratio of the multi-view depth to the network's depth over the static pixels both have, else of
    the bundle's well-fixed track depths to the network's at the query frames, else (no parallax fixes
    any point) the bundle's normalisation: the median track depth becomes 1. World = camera 0 in both,
    so one factor about the origin maps one onto the other."""
    import numpy as np

    from st4r_cli.geometry.camera_np import surface_depths

    w2c = np.linalg.inv(np.asarray(scene["cam_c2w"], np.float64))
    ratio = np.zeros(0)
    if depth is not None and "dynamic" in depth:
        net_z = surface_depths(scene["pointmaps"], w2c)
        both = depth["valid"] & ~depth["dynamic"] & (net_z > 0)
        ratio = depth["depth"][both] / net_z[both]
    query_t = np.asarray(scene["query_t"], np.int64)
    start = np.asarray(scene["tracks3d"], np.float64)[np.arange(len(query_t)), query_t]
    track_z = (start * w2c[query_t, 2, :3]).sum(-1) + w2c[query_t, 2, 3]
    if ratio.size < 100:
        ba_z = np.asarray(cameras["track_bundle_depth"], np.float64)
        if len(ba_z) == len(track_z):
            use = np.asarray(cameras["track_bundle_fixed"], bool) & np.isfinite(ba_z) & (track_z > 0)
            ratio = ba_z[use] / track_z[use] if use.sum() >= 20 else np.zeros(0)
    if ratio.size:
        scale = float(np.median(ratio))
    else:
        # no static point fixes the scale (little parallax): the bundle's own normalisation, which puts
        # the median track depth at 1
        front = track_z[np.isfinite(track_z) & (track_z > 0)]
        scale = 1.0 / float(np.median(front)) if front.size else 1.0
    out = dict(scene)
    out["pointmaps"] = (np.asarray(scene["pointmaps"], np.float64) * scale).astype(np.float32)
    out["tracks3d"] = (np.asarray(scene["tracks3d"], np.float64) * scale).astype(np.float32)
    cam_c2w = np.asarray(scene["cam_c2w"], np.float64).copy()
    cam_c2w[:, :3, 3] *= scale
    out["cam_c2w"] = cam_c2w.astype(np.float32)
    out["network_to_solved_scale"] = np.float32(scale)
    return out


def _multiview_statics(scene: dict[str, np.ndarray], own: dict[str, np.ndarray] | None,
                       depth: dict[str, np.ndarray], config: FuseConfig, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Step 5 of the module doc: static pixels and static tracks from the multi-view depth."""
    import numpy as np

    from st4r_cli.geometry.camera_np import project_tracks, surface_depths, unproject_depth

    k_mat = np.asarray(scene["intrinsics"], np.float64)
    c2w = np.asarray(scene["cam_c2w"], np.float64)
    w2c = np.linalg.inv(c2w)
    static_px = np.asarray(depth["valid"], bool) & ~np.asarray(depth["dynamic"], bool)
    depth_m, source = _filled_depth(np.asarray(depth["depth"], np.float64), static_px,
                                    np.asarray(depth["dynamic"], bool), config.fill_radius_px)
    pointmaps = np.asarray(scene["pointmaps"], np.float32).copy()
    for t in range(len(pointmaps)):
        cam = unproject_depth(depth_m[t], k_mat)
        world = cam @ c2w[t, :3, :3].T + c2w[t, :3, 3]
        pointmaps[t][source[t] > 0] = world[source[t] > 0]
    scale_map = np.full(source.shape, np.nan)
    if config.mover_depth:
        pointmaps, source, scale_map = _mover_depths(pointmaps, source, depth_m, np.asarray(depth["dynamic"], bool),
                                                     k_mat, c2w)
    out = _with_sources(scene, source, np.asarray(depth["dynamic"], bool))
    out["pointmaps"] = pointmaps
    tracks3d = np.asarray(scene["tracks3d"], np.float64)
    points, static = _lift_static_tracks(np.asarray(scene["tracks2d"], np.float64), np.asarray(scene["visible"], bool),
                                         depth_m, source > 0, k_mat, c2w, config.static_spread_rel, hw)
    static &= ~np.asarray(scene.get("track_moving", np.zeros(len(static), bool)), bool)
    tracks3d = np.where(static[:, None, None], points[:, None, :], tracks3d)
    tracker_xy, tracker_seen = _tracker_positions(scene, own, config, hw)
    mostly_dynamic = _mostly_dynamic(scene, depth, hw)
    on_movers = ~static & mostly_dynamic
    tracks3d = _scaled_movers(tracks3d, on_movers, scale_map, tracker_xy, tracker_seen, w2c, k_mat, hw)
    if tracker_xy is not None and static.any():
        # the fixed point, at its depth in each camera, onto the tracker's ray: the 2D track keeps the
        # tracker's precision (the point moves by its reprojection error, a few mm on 7-Scenes)
        tracks3d[static] = _fuse(tracks3d[static], tracker_xy[static], tracker_seen[static], w2c, k_mat)
    tracks2d, z = project_tracks(tracks3d, w2c, k_mat)
    surface_z = surface_depths(pointmaps, w2c)
    out.update(tracks3d=tracks3d.astype(np.float32), tracks2d=tracks2d.astype(np.float32),
               visible=_visibility(tracks2d, z, surface_z, own, config.visibility,
                                   float(scene["visibility_eps_rel"]), hw),
               track_static=static | (np.asarray(scene.get("track_static", np.zeros(len(static), bool)), bool)
                                      & ~mostly_dynamic))
    return out


def _mover_depths(pointmaps: np.ndarray, source: np.ndarray, depth_m: np.ndarray, dynamic: np.ndarray,
                  k_mat: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 6 of the module doc: every moving part of every frame at the depth its contact with the static
    world gives, in front of what it covers (`geometry.mover_depth`). Returns the pointmaps (T, H, W, 3),
    the source (T, H, W), 3 on the parts moved, and the scale applied (T, H, W), NaN off them."""
    import numpy as np

    from st4r_cli import progress
    from st4r_cli.geometry.camera_np import surface_depths
    from st4r_cli.geometry.mover_depth import covered_depth, mover_scales

    w2c = np.linalg.inv(c2w)
    num_frames, h, w = source.shape
    depth_now = surface_depths(pointmaps, w2c)
    measured = source == 1
    out_points, out_source = pointmaps.copy(), source.copy()
    scale_map = np.full(source.shape, np.nan)
    kinds: list[str] = []
    for t in range(num_frames):
        if not dynamic[t].any():
            continue
        near = [s for s in range(max(0, t - COVER_FRAMES), min(num_frames, t + COVER_FRAMES + 1)) if s != t]
        static_points = np.concatenate([pointmaps[s][measured[s]] for s in near] or [np.zeros((0, 3))])
        covered = covered_depth(static_points, w2c[t], k_mat, (h, w))
        for part in mover_scales(dynamic[t], depth_now[t], depth_m[t], source[t] > 0, covered):
            kinds.append(part.kind)
            if part.kind == "none":
                continue
            centre = c2w[t, :3, 3]
            factor = part.scale[part.mask][:, None]
            out_points[t][part.mask] = centre + factor * (pointmaps[t][part.mask] - centre)
            out_source[t][part.mask] = 3
            scale_map[t][part.mask] = part.scale[part.mask]
    if kinds:
        progress.log(f"[green]✓[/green] fuse: {kinds.count('contact')} of {len(kinds)} moving parts (over all frames) "
                     "stand on a static surface and take its depth; the others keep the network's")
    return out_points, out_source, scale_map


def _scaled_movers(tracks3d: np.ndarray, moving: np.ndarray, scale_map: np.ndarray, tracker_xy: np.ndarray | None,
                   tracker_seen: np.ndarray | None, w2c: np.ndarray, k_mat: np.ndarray, hw: tuple[int, int]
                   ) -> np.ndarray:
    """(N, T, 3): the moving tracks' points scaled about each camera centre like the moving part they are
    on (scale_map (T, H, W), NaN off the parts, at the tracker's pixel where it sees them); in frames
    where they are on no part, by their median scale over the frames where they are."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, project_tracks, surface_z_at

    if not moving.any() or not np.isfinite(scale_map).any():
        return tracks3d
    own_xy, _ = project_tracks(tracks3d, w2c, k_mat)
    xy = own_xy if tracker_xy is None else np.where(tracker_seen[..., None], tracker_xy, own_xy)
    scale = np.where(in_image(xy, hw), surface_z_at(xy, scale_map, hw), np.nan)
    scale[~moving] = np.nan
    with np.errstate(all="ignore"):
        typical = np.nanmedian(np.where(np.isfinite(scale).any(1, keepdims=True), scale, 1.0), axis=1)
    scale = np.where(np.isfinite(scale), scale, typical[:, None])
    scale[~moving] = 1.0
    centres = np.linalg.inv(w2c)[:, :3, 3]                                        # (T, 3)
    return centres[None] + scale[..., None] * (tracks3d - centres[None])


def _filled_depth(depth_m: np.ndarray, static_px: np.ndarray, dynamic: np.ndarray, radius_px: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(depth (T, H, W), source (T, H, W) uint8): the multi-view depth on its static pixels (source 1) and,
    on the pixels within `radius_px` of them that are not moving, a smooth fill (source 2); 0 elsewhere
    (the network's).

    Isolated multi-view pixels (under SPECK_SUPPORT of their 7x7 neighbourhood valid) are dropped first:
    a stray match would otherwise paint a disc of its depth. The fill is normalised convolution of the
    inverse depth at growing Gaussian scales (1, 2, 4, ... px), each hole pixel taking the finest scale
    whose valid-pixel weight reaches FILL_MIN_SUPPORT: no nearest-neighbour polygons, and a hole takes
    the depth of the surface around it. The radius is a trade: on 7-Scenes redkitchen-0 / -3 (multi-view
    depth on 72% / 69% of the pixels, the network at AbsRel 0.35 on the rest) filling within 64 px
    instead of 16 lowers the all-frame AbsRel from 0.105 / 0.098 to 0.100 / 0.086, but on the synthetic
    occlusion/0 (10% multi-view pixels, too near on undetected moving occluders) it spread them over 43%
    of the image: AbsRel 0.20 -> 1.08, world EPE 0.87 -> 3.91."""
    import numpy as np
    from scipy import ndimage

    out = np.zeros(depth_m.shape, np.float64)
    source = np.zeros(depth_m.shape, np.uint8)
    for t in range(len(depth_m)):
        valid = static_px[t] & (ndimage.uniform_filter(static_px[t].astype(np.float64), 7) >= SPECK_SUPPORT)
        if not valid.any():
            continue
        out[t][valid] = depth_m[t][valid]
        source[t][valid] = 1
        todo = ~valid & ~dynamic[t] & (ndimage.distance_transform_edt(~valid) <= radius_px)
        inv_depth = np.where(valid, 1.0 / np.maximum(depth_m[t], 1e-12), 0.0)
        sigma = 1.0
        while todo.any() and sigma <= max(radius_px, 1.0):
            weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="nearest")
            inv_sum = ndimage.gaussian_filter(inv_depth, sigma, mode="nearest")
            take = todo & (weight >= FILL_MIN_SUPPORT) & (inv_sum > 0)
            out[t][take] = weight[take] / inv_sum[take]
            source[t][take] = 2
            todo &= ~take
            sigma *= 2.0
    return out, source


def _lift_static_tracks(tracks2d: np.ndarray, visible: np.ndarray, depth_m: np.ndarray,
                        static_px: np.ndarray, k_mat: np.ndarray, c2w: np.ndarray, spread_rel: float,
                        hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3), static (N,)): every visible (track, frame) on a static pixel (T, H, W) with depth
    (T, H, W) gives a world point; a track with 2+ such points that agree (median distance to their
    median under `spread_rel` x its depth) is static at their median."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, surface_z_at, unproject

    count = len(tracks2d)
    points = np.full((count, 3), np.nan)
    static = np.zeros(count, bool)
    usable = visible & in_image(tracks2d, hw) & surface_z_at(tracks2d, static_px, hw)
    n_idx, t_idx = np.nonzero(usable)
    if n_idx.size == 0:
        return points, static
    z = surface_z_at(tracks2d, np.asarray(depth_m, np.float64), hw)[n_idx, t_idx]
    cam = unproject(tracks2d[n_idx, t_idx], z, k_mat)
    world = np.einsum("kij,kj->ki", c2w[t_idx, :3, :3], cam) + c2w[t_idx, :3, 3]
    order = np.argsort(n_idx, kind="stable")
    bounds = np.flatnonzero(np.diff(n_idx[order])) + 1
    for sel in np.split(order, bounds):
        if sel.size < 2:
            continue
        centre = np.median(world[sel], axis=0)
        spread = np.median(np.linalg.norm(world[sel] - centre, axis=1))
        n = n_idx[sel[0]]
        points[n] = centre
        static[n] = spread <= spread_rel * float(np.median(z[sel]))
    return points, static


def _mostly_dynamic(scene: dict[str, np.ndarray], depth: dict[str, np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """(N,) bool: tracks on pixels the multi-view depth calls moving in most of the frames where seen."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, surface_z_at

    tracks2d = np.asarray(scene["tracks2d"], np.float64)
    seen = np.asarray(scene["visible"], bool) & in_image(tracks2d, hw)
    moving = surface_z_at(tracks2d, np.asarray(depth["dynamic"], bool), hw) & seen
    return moving.sum(1) > 0.5 * np.maximum(seen.sum(1), 1)


def _relift(scene: dict[str, np.ndarray], own: dict[str, np.ndarray] | None, cameras: dict[str, np.ndarray],
            config: FuseConfig, cameras_config: CamerasConfig, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Step 4 of the module doc: the scene in the cameras stage's cameras."""
    import numpy as np

    from st4r_cli.geometry.camera_np import surface_depths

    k_mat = np.asarray(scene["intrinsics"], np.float64)
    cam_w2c = np.linalg.inv(np.asarray(scene["cam_c2w"], np.float64))
    out = dict(scene)
    out.update(ba_initial_residual_px=np.float32(cameras["ba_initial_residual_px"]),
               ba_residual_px=np.float32(cameras["ba_residual_px"]), ba_accepted=np.bool_(cameras["ba_accepted"]))
    if not bool(cameras["ba_accepted"]):
        # the 3D tracks still follow the 2D tracks, in the network's cameras
        out.update(_relift_tracks(scene, own, cam_w2c, k_mat, config, cameras_config, None, None,
                                  surface_depths(scene["pointmaps"], cam_w2c), hw))
        return out
    new_k = np.asarray(cameras["intrinsics"], np.float64)
    new_w2c = np.asarray(cameras["cam_w2c"], np.float64)
    out["intrinsics"] = new_k.astype(np.float32)
    out["cam_c2w"] = np.linalg.inv(new_w2c).astype(np.float32)
    out["pointmaps"] = _relift_pointmaps(scene["pointmaps"], cam_w2c, new_w2c, new_k)
    count = len(scene["tracks3d"])
    shared = own is not None and len(cameras["track_bundle_points"]) == count
    surface_z = surface_depths(out["pointmaps"], new_w2c)
    moving = np.asarray(cameras["track_moving"], bool) if shared and "track_moving" in cameras else None
    out.update(_relift_tracks(scene, own, new_w2c, new_k, config, cameras_config,
                              np.asarray(cameras["track_bundle_points"]) if shared else None,
                              np.asarray(cameras["track_bundle_fixed"], bool) if shared else None, surface_z, hw,
                              moving))
    if moving is not None:     # the cameras stage's movers (its step 5): never static, here or in step 5
        out["track_moving"] = moving
    return out


# ----------------------------------------------------------------------------------------------
# tracks
# ----------------------------------------------------------------------------------------------

def _queries(tracks: dict[str, np.ndarray] | None, config: FuseConfig, hw: tuple[int, int]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(query_t (N,), query_xy (N, 2)) for the configured query mode."""
    import numpy as np

    from st4r_cli.errors import St4rError

    h, w = hw
    if config.queries == "tracks":
        if tracks is None:
            raise St4rError("fuse.queries=tracks needs the tracks stage; use fuse.queries=grid or dense")
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


def _ramp(win: Window, windows: list[Window]) -> dict[int, float]:
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


def _chain_tracks(windows: list[Window], owner: np.ndarray, query_t: np.ndarray, query_xy: np.ndarray,
                  tracks: dict[str, np.ndarray] | None, k_mat: np.ndarray, w2c_world: np.ndarray,
                  surface_z: np.ndarray, config: FuseConfig, vis: VisibilityConfig, hw: tuple[int, int],
                  num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World 3D tracks (N, T, 3), sigma (N, T) and source (N, T): 1 head 1, 2 head 2, 3 filled."""
    import numpy as np

    from st4r_cli.geometry.camera_np import (in_image, project_world, sample_bilinear, sigma_from_confidence,
                                             zbuffer_visible)

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
            seen = (query_t < anchor) & tracks["visible"][:, anchor].astype(bool) & in_image(tracks["tracks_xy"][:, anchor], hw)
            pixel[seen] = tracks["tracks_xy"][seen, anchor]
        # Carry tracks the previous windows placed at this anchor time, when visible from the anchor.
        todo = np.flatnonzero((query_t < anchor) & ~np.isfinite(pixel).all(1) & (den[:, anchor] > 0))
        if todo.size:
            pos = num[todo, anchor] / den[todo, anchor, None]
            proj, z = project_world(pos, w2c_world[anchor], k_mat)
            ok = zbuffer_visible(proj[:, None], z[:, None], surface_z[anchor][None], vis.mask_eps_rel, hw)[:, 0]
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
            local = sample_bilinear(win.track_pts(slot), pixel[live]).astype(np.float64)
            world = win.gauge.points(local)
            c = sample_bilinear(win.track_conf(slot), pixel[live])
            depth = world @ w2c_world[t, 2, :3] + w2c_world[t, 2, 3]
            weight = ramp[t]
            num[live, t] += weight * world
            den[live, t] += weight
            sig_num[live, t] += weight * sigma_from_confidence(c, depth, scene_depth, focal, vis.conf_alpha,
                                                                      vis.sigma_floor_px)
    known = den > 0
    tracks3d = np.where(known[..., None], num / np.where(known, den, 1.0)[..., None], np.nan)
    sigma = np.where(known, sig_num / np.where(known, den, 1.0), np.nan)
    source = known.astype(np.uint8)
    _fill_from_head2(windows, owner, query_t, query_xy, tracks, tracks3d, sigma, source, k_mat, vis, hw)
    _fill_by_interpolation(tracks3d, sigma, source, config.sigma_fill_px)
    return tracks3d, sigma, source


def _fill_from_head2(windows: list[Window], owner: np.ndarray, query_t: np.ndarray, query_xy: np.ndarray,
                     tracks: dict[str, np.ndarray] | None, tracks3d: np.ndarray, sigma: np.ndarray,
                     source: np.ndarray, k_mat: np.ndarray, vis: VisibilityConfig, hw: tuple[int, int]) -> None:
    """Unknown positions where the point is seen (query frame; tracker-visible frames): head 2 there."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, sample_bilinear, sigma_from_confidence

    num_frames = tracks3d.shape[1]
    for t in range(num_frames):
        win = windows[owner[t]]
        slot = win.frames.index(t)
        need = ~np.isfinite(tracks3d[:, t]).all(1)
        pixel = np.full((len(query_t), 2), np.nan)
        at_query = need & (query_t == t)
        pixel[at_query] = query_xy[at_query]
        if tracks is not None:
            seen = need & (query_t <= t) & tracks["visible"][:, t].astype(bool) & in_image(tracks["tracks_xy"][:, t], hw)
            pixel[seen] = tracks["tracks_xy"][seen, t]
        idx = np.flatnonzero(np.isfinite(pixel).all(1) & in_image(pixel, hw))
        if idx.size == 0:
            continue
        world = win.gauge.points(sample_bilinear(win.recon_pts(slot), pixel[idx]).astype(np.float64))
        tracks3d[idx, t] = world
        c = sample_bilinear(win.recon_conf(slot), pixel[idx])
        depth = np.abs(sample_bilinear(win.recon_pts(slot)[..., 2], pixel[idx])) * win.gauge.scale
        scene_depth = float(np.median(np.abs(win.recon_pts(slot)[..., 2]))) * win.gauge.scale
        sigma[idx, t] = sigma_from_confidence(c, depth, scene_depth, float(k_mat[0, 0]), vis.conf_alpha,
                                              vis.sigma_floor_px)
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


def _with_tracker_tracks(query_t: np.ndarray, query_xy: np.ndarray, tracks: dict[str, np.ndarray]
                         ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The queries (Q,) / (Q, 2) followed by the tracker's own tracks, and tracks arrays for all rows in
    which the queries' rows are never seen (as when chained without tracks)."""
    import numpy as np

    queries = np.asarray(tracks["queries"], np.float64)
    num, num_frames = len(query_t), tracks["tracks_xy"].shape[1]
    padded = {"tracks_xy": np.concatenate([np.zeros((num, num_frames, 2), tracks["tracks_xy"].dtype),
                                           tracks["tracks_xy"]]),
              "visible": np.concatenate([np.zeros((num, num_frames), bool), np.asarray(tracks["visible"], bool)])}
    return (np.concatenate([query_t, np.rint(queries[:, 0]).astype(np.int64)]),
            np.concatenate([query_xy, queries[:, 1:3]]), padded)


def _calibrated_eps_rel(xy: np.ndarray, z: np.ndarray, tracks: dict[str, np.ndarray], surface_z: np.ndarray,
                        config: FuseConfig, vis: VisibilityConfig, hw: tuple[int, int]) -> float:
    """z-buffer tolerance for queries the tracker did not track: the `visibility_quantile` of the
    relative depth gap z / z_surface - 1 over the tracker's own tracks (their chained 3D tracks
    projected: xy (N, T, 2), z (N, T)) where it sees them (at least `mask_eps_rel`). The tiny network's
    two heads disagree by far more than 5% on real video, so a fixed tolerance calls most visible
    points occluded."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image, surface_z_at

    seen = tracks["visible"].astype(bool) & in_image(xy, hw) & (z > 0)
    z_surf = surface_z_at(xy, surface_z, hw)[seen]
    gap = z[seen] / np.where(z_surf > 0, z_surf, np.nan) - 1.0
    gap = gap[np.isfinite(gap)]
    if gap.size < 20:
        return vis.mask_eps_rel
    return max(vis.mask_eps_rel, float(np.quantile(gap, config.visibility_quantile)))


def _visibility(tracks2d: np.ndarray, z: np.ndarray, surface_z: np.ndarray, tracks: dict[str, np.ndarray] | None,
                mode: str, eps_rel: float, hw: tuple[int, int]) -> np.ndarray:
    """(N, T) visibility: z-buffer test (mode mask), the tracker's flags (tracker), or both."""
    from st4r_cli.geometry.camera_np import zbuffer_visible

    mask = zbuffer_visible(tracks2d, z, surface_z, eps_rel, hw)
    if mode == "mask" or tracks is None:
        return mask
    tracker = tracks["visible"].astype(bool)
    return tracker if mode == "tracker" else (mask & tracker)


def _relift_pointmaps(pointmaps: np.ndarray, old_w2c: np.ndarray, new_w2c: np.ndarray, new_k: np.ndarray
                      ) -> np.ndarray:
    """(T, H, W, 3) f32: each pixel at its old depth along its ray, in the new camera."""
    import numpy as np

    from st4r_cli.geometry.camera_np import pixel_grid, pixel_rays

    num_frames, h, w = pointmaps.shape[:3]
    ray = pixel_rays(pixel_grid((h, w)), new_k)
    out = np.empty_like(pointmaps, dtype=np.float32)
    new_c2w = np.linalg.inv(new_w2c)
    for t in range(num_frames):
        depth = pointmaps[t].astype(np.float64) @ old_w2c[t, 2, :3] + old_w2c[t, 2, 3]
        cam = ray * depth[..., None]
        out[t] = cam @ new_c2w[t, :3, :3].T + new_c2w[t, :3, 3]
    return out


def _static_tracks(tracks3d: np.ndarray, query_t: np.ndarray, rel: float) -> np.ndarray:
    """(N,) bool: scene tracks whose network trajectory (head 1) stays put (threshold as in module doc)."""
    import numpy as np

    from st4r_cli.geometry.motion import static_by_motion

    start = tracks3d[np.arange(len(tracks3d)), query_t]                    # (N, 3)
    motion = np.linalg.norm(tracks3d - start[:, None], axis=-1)             # (N, T)
    motion[np.arange(tracks3d.shape[1])[None] < query_t[:, None]] = np.nan
    scene_depth = float(np.median(np.abs(start[:, 2]))) if len(start) else 1.0
    return static_by_motion(motion, scene_depth, rel)


def _relift_tracks(scene: dict[str, np.ndarray], tracks: dict[str, np.ndarray] | None, new_w2c: np.ndarray,
                   new_k: np.ndarray, config: FuseConfig, cameras: CamerasConfig, bundle_points: np.ndarray | None,
                   use_bundle: np.ndarray | None, surface_z: np.ndarray, hw: tuple[int, int],
                   moving: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """tracks3d / tracks2d / visible of the scene's tracks under the refined cameras (module doc, 4).

    bundle_points (N, 3) and use_bundle (N,) refer to the scene's own tracks (the first N bundle
    tracks) or are None; surface_z (T, H, W) is each frame's depth map in its refined camera.
    """
    import numpy as np

    from st4r_cli.geometry.camera_np import project_tracks

    tracks3d = np.asarray(scene["tracks3d"], np.float64)                   # (N, T, 3)
    query_t = np.rint(np.asarray(scene["query_t"])).astype(np.int64)
    count = len(tracks3d)
    tracker_xy, tracker_seen = _tracker_positions(scene, tracks, config, hw)
    if tracker_xy is not None:
        tracks3d = _fuse(tracks3d, tracker_xy, tracker_seen, new_w2c, new_k)
    static = _static_tracks(np.asarray(scene["tracks3d"], np.float64), query_t, config.dynamic_rel)
    if moving is not None:
        static &= ~moving
    start = tracks3d[np.arange(count), query_t]
    if tracker_xy is not None:  # the 2D track must agree: a point that stays put reprojects onto it
        fits = _fits_static(start, tracker_xy, tracker_seen, new_w2c, new_k, cameras.ba_point_max_px)
        if bundle_points is not None and use_bundle is not None:
            # the network's depth where it fits the 2D track, else the bundle's triangulated point
            swap = static & use_bundle & ~fits
            start = np.where(swap[:, None], bundle_points, start)
            fits |= swap & _fits_static(bundle_points, tracker_xy, tracker_seen, new_w2c, new_k,
                                        cameras.ba_point_max_px)
        static &= fits
    tracks3d = np.where(static[:, None, None], start[:, None, :], tracks3d)
    tracks2d, z = project_tracks(tracks3d, new_w2c, new_k)
    eps_rel = float(scene["visibility_eps_rel"])   # calibrated in `fuse_scene`
    visible = _visibility(tracks2d, z, surface_z, tracks, config.visibility, eps_rel, hw)
    return {"tracks3d": tracks3d.astype(np.float32), "tracks2d": tracks2d.astype(np.float32), "visible": visible,
            "track_static": static}


def _tracker_positions(scene: dict[str, np.ndarray], tracks: dict[str, np.ndarray] | None, config: FuseConfig,
                       hw: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(tracker_xy (N, T, 2), seen (N, T)) of the scene's own tracks where the tracker sees them inside
    the image (the query pixel at the query frame), or (None, None) without tracker tracks for these
    rows or with `fuse.fuse_tracks` off."""
    import numpy as np

    from st4r_cli.geometry.camera_np import in_image

    query_t = np.rint(np.asarray(scene["query_t"])).astype(np.int64)
    count, num_frames = np.asarray(scene["tracks3d"]).shape[:2]
    if tracks is None or not config.fuse_tracks or len(tracks["tracks_xy"]) != count:
        return None, None
    tracker_xy = np.array(tracks["tracks_xy"], np.float64)
    seen = np.asarray(tracks["visible"], bool) & in_image(tracker_xy, hw)
    seen &= np.arange(num_frames)[None] >= query_t[:, None]
    seen[np.arange(count), query_t] = True
    tracker_xy[np.arange(count), query_t] = np.asarray(scene["query_xy"], np.float64)
    return tracker_xy, seen


def _fits_static(points: np.ndarray, tracker_xy: np.ndarray, tracker_seen: np.ndarray, w2c: np.ndarray,
                 k_mat: np.ndarray, max_px: float) -> np.ndarray:
    """(N,) bool: fixed world points (N, 3) reproject within `max_px` (median) of their 2D tracks."""
    import numpy as np

    from st4r_cli.geometry.camera_np import project_static
    from st4r_cli.geometry.motion import row_nanmedian

    xy, z = project_static(points, w2c, k_mat)                                 # NaN where z <= 0
    with np.errstate(all="ignore"):
        err = np.where(tracker_seen & (z > 0), np.linalg.norm(xy - tracker_xy, axis=-1), np.nan)
    typical = row_nanmedian(err)
    return ~(typical > max_px) & (np.isfinite(err).sum(1) > 0)


def _fuse(tracks3d: np.ndarray, tracker_xy: np.ndarray, tracker_seen: np.ndarray, w2c: np.ndarray,
          k_mat: np.ndarray) -> np.ndarray:
    """(N, T, 3): each point moved, at its depth in camera t, onto the ray of its 2D track.

    Where the tracker does not see the point, the pixel is the point's own projection shifted by the
    tracker-minus-projection offset at the nearest frame (in time) where it was seen.
    """
    import numpy as np

    from st4r_cli.geometry.camera_np import project_tracks, unproject

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
    c2w = np.linalg.inv(w2c)
    moved = np.einsum("tij,ntj->nti", c2w[:, :3, :3], unproject(pixel, depth, k_mat)) + c2w[None, :, :3, 3]
    ok = np.isfinite(moved).all(-1) & (depth > 0)
    return np.where(ok[..., None], moved, tracks3d)
