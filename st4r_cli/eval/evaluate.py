"""Score a prediction (`scene.npz`) against ground truth (`Clip`) with every metric both support.

Matching rules:
- Frame counts must be equal. Pixel quantities are compared in the ground truth's pixels: a prediction
  made at another resolution with the same aspect ratio (within 1%) is rescaled (tracks2d, queries,
  depth maps); a different aspect ratio is an error.
- Tracks: each ground-truth track is matched to the predicted track with the same query frame whose
  query pixel is nearest, within `match_px` ground-truth pixels (run `adapt` on the ground truth's
  queries, e.g. a clip's `queries.npy`, to match them all). Unmatched ground-truth tracks are left out
  and counted. Two kinds of ground truth follow the prediction's own frame-0 queries instead: static
  scenes (7-Scenes: tracks re-derived from frame-0 depth and poses) and clips with dense tracks
  (`st4r synth --dense`: the track of the query's nearest pixel).
- World frames: the prediction's world is its frame-0 camera (the `scene.npz` contract); the ground
  truth's world is re-expressed in its frame-0 camera with `cam_c2w[0]`.

Metric groups (keys `group/...` in the result):
- `worldtrack`: St4RTrack WorldTrack APD/EPE (global, per_traj, sim3 alignment; all and dynamic
  tracks); frame-0 queries visible at frame 0; scale-relative APD for synthetic clips.
- `tapvid3d`: APD3D, OA, 3D-AJ with median scaling, in each frame's camera (needs both poses).
- `tapvid2d`: delta_avg, OA, AJ in `first` query mode at 256x256.
- `depth`: AbsRel and delta<1.25 of the pointmaps' z-depth, per-sequence median and scale-and-shift.
- `camera`: ATE, RPE translation/rotation after Sim(3) alignment (evo).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from st4r_cli.errors import St4rError
from st4r_cli.geometry.camera_np import project_tracks, surface_depths
from st4r_cli.formats.clip import Clip
from st4r_cli.formats.scene import scene_dims, scene_image_hw

ASPECT_TOLERANCE = 0.01


@dataclass
class EvalResult:
    """Metrics of one clip: flat `group/name -> value`, plus notes on what was skipped or rescaled."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pixel_scale(pred_hw: tuple[int, int] | None, gt_hw: tuple[int, int], notes: list[str]) -> np.ndarray:
    """(sx, sy) mapping prediction pixels to ground-truth pixels."""
    if pred_hw is None or tuple(pred_hw) == tuple(gt_hw):
        return np.ones(2)
    pred_aspect, gt_aspect = pred_hw[1] / pred_hw[0], gt_hw[1] / gt_hw[0]
    if abs(pred_aspect / gt_aspect - 1.0) > ASPECT_TOLERANCE:
        raise St4rError(f"prediction is {pred_hw[1]}x{pred_hw[0]} but the ground truth is {gt_hw[1]}x{gt_hw[0]} "
                        "(different aspect ratio); predict on frames of the ground truth's shape")
    notes.append(f"prediction at {pred_hw[1]}x{pred_hw[0]} rescaled to the ground truth's {gt_hw[1]}x{gt_hw[0]}")
    return np.array([gt_hw[1] / pred_hw[1], gt_hw[0] / pred_hw[0]])


def to_gt_pixels(xy: np.ndarray, scale_xy: np.ndarray) -> np.ndarray:
    """Prediction pixel coordinates -> ground-truth pixels, image corners aligned (centres at integers)."""
    if np.all(scale_xy == 1.0):
        return np.asarray(xy, dtype=np.float64)
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale_xy - 0.5


def _to_frame0(gt: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Ground-truth `tracks3d` and `cam_c2w` re-expressed in frame 0's camera coordinates."""
    tracks = gt.get("tracks3d")
    poses = gt.get("cam_c2w")
    if poses is None:
        return (None if tracks is None else tracks.astype(np.float64)), None
    poses = poses.astype(np.float64)
    w2c0 = np.linalg.inv(poses[0])
    poses0 = w2c0[None] @ poses
    if tracks is not None:
        tracks = tracks.astype(np.float64) @ w2c0[:3, :3].T + w2c0[:3, 3]
    return tracks, poses0


def match_tracks(gt_query_t: np.ndarray, gt_query_xy: np.ndarray, pred_query_t: np.ndarray,
                 pred_query_xy: np.ndarray, match_px: float) -> np.ndarray:
    """`(N_gt,)` index of the matching predicted track, -1 where none is within `match_px`."""
    from scipy.spatial import cKDTree

    match = np.full(len(gt_query_t), -1, dtype=np.int64)
    for t in np.unique(gt_query_t):
        pred_rows = np.flatnonzero(pred_query_t == t)
        gt_rows = np.flatnonzero(gt_query_t == t)
        if len(pred_rows) == 0:
            continue
        dist, nearest = cKDTree(pred_query_xy[pred_rows]).query(gt_query_xy[gt_rows], k=1)
        close = dist <= match_px
        match[gt_rows[close]] = pred_rows[nearest[close]]
    return match


def _pred_queries(scene: dict[str, np.ndarray], scale_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    num_tracks = scene_dims(scene).get("N")
    if num_tracks is None:
        return None
    query_t = scene["query_t"].astype(np.int64) if "query_t" in scene else np.zeros(num_tracks, np.int64)
    if "query_xy" in scene:
        query_xy = scene["query_xy"].astype(np.float64)
    elif "tracks2d" in scene:
        query_xy = scene["tracks2d"][np.arange(num_tracks), query_t].astype(np.float64)
    else:
        return None
    return query_t, to_gt_pixels(query_xy, scale_xy)


def _pred_depth(scene: dict[str, np.ndarray]) -> np.ndarray:
    """z-depth `(T, H, W)` of the predicted world pointmaps in each predicted camera."""
    return surface_depths(scene["pointmaps"], np.linalg.inv(scene["cam_c2w"].astype(np.float64)))


def _resize_nearest(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of `(T, h, w)` maps to `size_hw` (pixel-centre aligned)."""
    height, width = size_hw
    rows = np.clip(((np.arange(height) + 0.5) * maps.shape[1] / height - 0.5).round().astype(int), 0, maps.shape[1] - 1)
    cols = np.clip(((np.arange(width) + 0.5) * maps.shape[2] / width - 0.5).round().astype(int), 0, maps.shape[2] - 1)
    return maps[:, rows][:, :, cols]


def evaluate_clip(scene: dict[str, np.ndarray], clip: Clip, match_px: float = 1.0, name: str | None = None) -> EvalResult:
    """Every metric the ground truth and the prediction both support (see the module docstring)."""
    result = EvalResult(name=name or clip.name)
    dims = scene_dims(scene)
    if dims.get("T", clip.num_frames) != clip.num_frames:
        raise St4rError(f"prediction has {dims['T']} frames but the ground truth {clip.name} has {clip.num_frames}")
    scale_xy = _pixel_scale(scene_image_hw(scene), clip.size_hw, result.notes)
    queries = _pred_queries(scene, scale_xy)
    gt = _ground_truth_for_queries(clip, queries, match_px, result.notes)
    match = _match(gt, queries, match_px, result)
    if match is not None:
        result.metrics.update(_track_metrics(scene, clip, gt, match, scale_xy, result.notes))
    result.metrics.update(_depth_metrics(scene, clip, result.notes))
    result.metrics.update(_camera_metrics(scene, clip, gt, result.notes))
    if not any(not key.startswith("tracks/") for key in result.metrics):
        raise St4rError(f"nothing to evaluate for {result.name}: the ground truth has "
                        f"{', '.join(sorted(clip.gt)) or 'no ground truth'} and the prediction has "
                        f"{', '.join(sorted(scene))}; " + "; ".join(result.notes))
    return result


def _ground_truth_for_queries(clip: Clip, queries: tuple[np.ndarray, np.ndarray] | None, match_px: float,
                              notes: list[str]) -> dict[str, np.ndarray]:
    """The clip's ground truth, with tracks re-derived at the prediction's queries when the clip allows."""
    gt = clip.gt
    if queries is None:
        return gt
    if clip.meta.get("static_scene") and all(k in gt for k in ("depth", "cam_c2w", "intrinsics")):
        gt = _static_scene_gt_at(clip, *queries)
        notes.append(f"static scene: ground-truth tracks derived at the prediction's {len(gt['query_t'])} "
                     "frame-0 queries with valid depth")
    elif all(k in gt for k in ("tracks3d_dense", "visible_dense", "intrinsics")):
        gt = dense_gt_at(clip, *queries, match_px)
        notes.append(f"dense ground truth: tracks taken at the nearest pixel of the prediction's "
                     f"{len(gt['query_t'])} frame-0 queries")
    return gt


def _match(gt: dict[str, np.ndarray], queries: tuple[np.ndarray, np.ndarray] | None, match_px: float,
           result: EvalResult) -> np.ndarray | None:
    """`(N_gt,)` predicted track index per ground-truth track (-1: none), or None when nothing matches."""
    if "query_xy" not in gt or not ("tracks3d" in gt or "tracks2d" in gt):
        return None
    if queries is None:
        result.notes.append("prediction has no tracks: track metrics skipped")
        return None
    gt_query_t = gt["query_t"].astype(np.int64) if "query_t" in gt else np.zeros(len(gt["query_xy"]), np.int64)
    match = match_tracks(gt_query_t, gt["query_xy"].astype(np.float64), *queries, match_px)
    result.metrics["tracks/matched"] = float((match >= 0).sum())
    result.metrics["tracks/gt_tracks"] = float(len(match))
    if not (match >= 0).any():
        result.notes.append(f"no predicted track starts within {match_px:g} px of a ground-truth query: track "
                            "metrics skipped (adapt on the ground truth's queries, e.g. the clip's queries.npy)")
        return None
    if (match < 0).any():
        result.notes.append(f"{int((match < 0).sum())} of {len(match)} ground-truth tracks have no predicted "
                            f"track within {match_px:g} px and are left out")
    return match


def _track_metrics(scene: dict[str, np.ndarray], clip: Clip, gt: dict[str, np.ndarray], match: np.ndarray,
                   scale_xy: np.ndarray, notes: list[str]) -> dict[str, float]:
    """WorldTrack, TAPVid-3D and TAP-Vid 2D metrics of the matched tracks."""
    from st4r_cli.metrics.tapvid2d import compute_tapvid2d_metrics, scale_tracks_to_256
    from st4r_cli.metrics.tapvid3d import compute_tapvid3d_metrics, intrinsics_at_256, world_to_camera_tracks
    from st4r_cli.metrics.worldtrack import evaluate_worldtrack

    out: dict[str, float] = {}
    rows = np.flatnonzero(match >= 0)
    pred_rows = match[rows]
    all_visible = np.ones((len(rows), clip.num_frames), bool)
    gt_visible = gt["visible"][rows].astype(bool) if "visible" in gt else all_visible
    pred_visible = scene["visible"][pred_rows].astype(bool) if "visible" in scene else all_visible
    gt_query_t = gt["query_t"][rows].astype(np.int64) if "query_t" in gt else np.zeros(len(rows), np.int64)
    gt_tracks0, gt_poses0 = _to_frame0(gt)
    if gt_tracks0 is not None and "tracks3d" in scene:
        frame0 = gt_query_t == 0
        if frame0.any():
            report = evaluate_worldtrack(scene["tracks3d"][pred_rows][frame0], gt_tracks0[rows][frame0],
                                         gt_visible[frame0], relative=bool(clip.meta.get("synthetic")))
            out.update({f"worldtrack/{key}": value for key, value in report.items()})
        else:
            notes.append("no frame-0 queries: world-track metrics skipped")
        if gt_poses0 is not None and "cam_c2w" in scene and "intrinsics" in gt:
            K = gt["intrinsics"] if gt["intrinsics"].ndim == 2 else gt["intrinsics"][0]
            fx_fy_cx_cy = intrinsics_at_256(np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]), clip.size_hw)
            report = compute_tapvid3d_metrics(
                world_to_camera_tracks(gt_tracks0[rows], gt_poses0), gt_visible,
                world_to_camera_tracks(scene["tracks3d"][pred_rows], scene["cam_c2w"]), pred_visible,
                fx_fy_cx_cy, scaling="median")
            out.update({f"tapvid3d/{key}": value for key, value in report.items()})
    if "tracks2d" in gt and "tracks2d" in scene:
        pred_2d = to_gt_pixels(scene["tracks2d"][pred_rows].astype(np.float64), scale_xy)
        report = compute_tapvid2d_metrics(
            scale_tracks_to_256(gt["tracks2d"][rows], clip.size_hw), gt_visible,
            scale_tracks_to_256(pred_2d, clip.size_hw), pred_visible, gt_query_t, query_mode="first")
        out.update({f"tapvid2d/{key}": value for key, value in report.items()})
    return out


def _depth_metrics(scene: dict[str, np.ndarray], clip: Clip, notes: list[str]) -> dict[str, float]:
    """AbsRel / delta<1.25 of the pointmaps' z-depth (median and scale-and-shift alignment)."""
    from st4r_cli.metrics.depth import depth_metrics

    if "depth" not in clip.gt:
        return {}
    if "pointmaps" not in scene or "cam_c2w" not in scene:
        notes.append("prediction has no pointmaps + cam_c2w: depth metrics skipped")
        return {}
    pred_depth = _pred_depth(scene)
    if pred_depth.shape[1:] != clip.size_hw:
        pred_depth = _resize_nearest(pred_depth, clip.size_hw)
    out = {}
    for alignment in ("median", "scale_shift"):
        report = depth_metrics(pred_depth, clip.gt["depth"], clip.depth_valid(), alignment=alignment)
        out.update({f"depth/{alignment}/{key}": value for key, value in report.items()})
    return out


def _camera_metrics(scene: dict[str, np.ndarray], clip: Clip, gt: dict[str, np.ndarray],
                    notes: list[str]) -> dict[str, float]:
    """ATE / RPE of the predicted poses against the ground truth's (both with frame 0 = world)."""
    from st4r_cli.metrics.camera import camera_metrics

    _, gt_poses0 = _to_frame0(gt)
    if gt_poses0 is None:
        return {}
    if "cam_c2w" not in scene:
        notes.append("prediction has no cam_c2w: camera metrics skipped")
        return {}
    if clip.num_frames < 2:
        return {}
    return {f"camera/{key}": value for key, value in camera_metrics(scene["cam_c2w"], gt_poses0).items()}


def _static_scene_gt_at(clip: Clip, query_t: np.ndarray, query_xy: np.ndarray) -> dict[str, np.ndarray]:
    """Ground truth of a static scene re-derived at the prediction's frame-0 queries (GT pixels).

    Every frame-0 pixel with valid depth has an exact world track (its back-projection, constant in
    time), so the prediction's own queries are scored instead of a fixed grid; queries at depth edges
    (a 4-neighbour differs by more than 5%) or without depth are left out.
    """
    from st4r_cli.formats.sevenscenes import static_scene_tracks

    gt = dict(clip.gt)
    depth0 = np.where(clip.depth_valid()[0], gt["depth"][0], 0.0)
    height, width = depth0.shape
    keep = query_t == 0
    xy = query_xy[keep]
    col, row = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    ok = np.zeros(len(xy), dtype=bool)
    c, r = np.clip(col, 1, width - 2), np.clip(row, 1, height - 2)
    centre = depth0[r, c]
    neighbours = np.stack([depth0[r - 1, c], depth0[r + 1, c], depth0[r, c - 1], depth0[r, c + 1]])
    smooth = np.all(np.abs(neighbours - centre) <= 0.05 * centre, axis=0)
    ok[inside] = (centre > 0)[inside] & smooth[inside] & (col == c)[inside] & (row == r)[inside]
    K = gt["intrinsics"] if gt["intrinsics"].ndim == 2 else gt["intrinsics"][0]
    depth = np.where(clip.depth_valid(), gt["depth"], 0.0)
    derived = static_scene_tracks(depth, gt["cam_c2w"], K.astype(np.float64), xy[ok])
    for key in ("tracks3d", "tracks2d", "visible", "query_xy", "query_t", "cam_c2w"):
        gt[key] = derived[key]
    gt["dynamic"] = np.zeros(int(ok.sum()), dtype=bool)
    return gt


def dense_gt_at(clip: Clip, query_t: np.ndarray, query_xy: np.ndarray, match_px: float) -> dict[str, np.ndarray]:
    """Sparse ground truth read from the dense frame-0 tracks at the prediction's frame-0 queries.

    Each query takes the track of its nearest pixel centre (exact for queries at pixel centres; queries
    farther than `match_px` from a centre, or on pixels without geometry, are left out). 2D tracks are
    the projections of the 3D tracks with the ground-truth cameras. `query_rows (M,)`: the index, in
    the given queries, of each returned track.
    """
    gt = dict(clip.gt)
    height, width = clip.size_hw
    xy = query_xy[query_t == 0]
    col, row = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row = np.clip(col, 0, width - 1), np.clip(row, 0, height - 1)
    valid0 = gt["valid"][0] if "valid" in gt else gt["visible_dense"][0]
    ok = inside & valid0[row, col] & (np.hypot(xy[:, 0] - col, xy[:, 1] - row) <= match_px)
    col, row = col[ok], row[ok]
    tracks3d = np.transpose(gt["tracks3d_dense"][:, row, col], (1, 0, 2)).astype(np.float64)
    poses = gt["cam_c2w"].astype(np.float64) if "cam_c2w" in gt else np.tile(np.eye(4), (clip.num_frames, 1, 1))
    K = gt["intrinsics"] if gt["intrinsics"].ndim == 2 else gt["intrinsics"][0]
    tracks2d, _ = project_tracks(tracks3d, np.linalg.inv(poses), K)     # NaN where z <= 0
    gt.update(tracks3d=tracks3d, tracks2d=tracks2d, visible=gt["visible_dense"][:, row, col].T,
              query_xy=xy[ok], query_t=np.zeros(int(ok.sum()), dtype=np.int64),
              query_rows=np.flatnonzero(query_t == 0)[ok])
    if "dynamic_mask" in gt:
        gt["dynamic"] = gt["dynamic_mask"][0, row, col]
    return gt


def mean_metrics(results: list[EvalResult]) -> dict[str, float]:
    """Per-key mean over clips (NaN-aware; keys missing in a clip are ignored for it)."""
    keys = sorted({key for result in results for key in result.metrics})
    means = {}
    for key in keys:
        values = np.array([r.metrics[key] for r in results if key in r.metrics], dtype=np.float64)
        finite = values[np.isfinite(values)]
        means[key] = float(finite.mean()) if finite.size else float("nan")
    return means
