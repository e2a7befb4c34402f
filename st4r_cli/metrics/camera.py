"""Camera trajectory metrics as evo computes them (pure NumPy), with the settings of St4RTrack's
`vo_eval` (Sim(3) alignment with scale correction before both APE and RPE, delta = 1 frame).

- Alignment: Umeyama Sim(3) of the predicted camera centres onto the ground-truth centres; the predicted
  poses are then mapped by it (rotations by R, centres by s R c + t), as evo's `align(correct_scale=True)`.
- ATE (evo APE, translation part): RMSE over frames of |c_pred_i - c_gt_i| after alignment.
- RPE (evo RPE, delta = 1 frame): for consecutive frames, E_i = (Q_i^-1 Q_{i+1})^-1 (P_i^-1 P_{i+1})
  with Q ground truth and P the aligned prediction (camera-to-world); `rpe_trans` = RMSE of |t(E_i)|,
  `rpe_rot` = RMSE of the rotation angle of E_i in degrees.
"""

from __future__ import annotations

import numpy as np

from st4r_cli.geometry.align import apply_sim3_to_poses, umeyama


def align_trajectory(pred_c2w: np.ndarray, gt_c2w: np.ndarray, with_scale: bool = True) -> tuple[np.ndarray, float]:
    """Predicted poses `(T, 4, 4)` aligned to the ground truth by Umeyama on camera centres.

    Returns the aligned poses and the scale. With fewer than 3 frames (or collinear centres the SVD
    cannot orient) the alignment degenerates gracefully: 1-2 frames use translation (and scale) only.
    """
    pred_c2w = np.asarray(pred_c2w, dtype=np.float64)
    gt_c2w = np.asarray(gt_c2w, dtype=np.float64)
    if len(pred_c2w) < 3:
        offset = gt_c2w[:, :3, 3].mean(axis=0) - pred_c2w[:, :3, 3].mean(axis=0)
        return apply_sim3_to_poses(pred_c2w, 1.0, np.eye(3), offset), 1.0
    scale, rotation, translation = umeyama(pred_c2w[:, :3, 3], gt_c2w[:, :3, 3], with_scale=with_scale)
    return apply_sim3_to_poses(pred_c2w, scale, rotation, translation), scale


def rotation_angle_deg(rotations: np.ndarray) -> np.ndarray:
    """Angle (degrees) of rotation matrices `(..., 3, 3)`, robust near 0 and 180 degrees."""
    rotations = np.asarray(rotations, dtype=np.float64)
    cos = (np.trace(rotations, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack([rotations[..., 2, 1] - rotations[..., 1, 2], rotations[..., 0, 2] - rotations[..., 2, 0],
                     rotations[..., 1, 0] - rotations[..., 0, 1]], axis=-1)
    sin = np.linalg.norm(skew, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def relative_pose_errors(pred_c2w: np.ndarray, gt_c2w: np.ndarray, delta: int = 1) -> np.ndarray:
    """evo's RPE matrices `(T - delta, 4, 4)`: E_i = (Q_i^-1 Q_{i+d})^-1 (P_i^-1 P_{i+d})."""
    pred_c2w = np.asarray(pred_c2w, dtype=np.float64)
    gt_c2w = np.asarray(gt_c2w, dtype=np.float64)
    gt_rel = np.linalg.inv(gt_c2w[:-delta]) @ gt_c2w[delta:]
    pred_rel = np.linalg.inv(pred_c2w[:-delta]) @ pred_c2w[delta:]
    return np.linalg.inv(gt_rel) @ pred_rel


def camera_metrics(pred_c2w: np.ndarray, gt_c2w: np.ndarray, align: bool = True,
                   with_scale: bool = True, delta: int = 1) -> dict[str, float]:
    """ATE, RPE translation and RPE rotation (degrees) of a predicted trajectory.

    Args:
        pred_c2w: `(T, 4, 4)` predicted camera-to-world poses (any world frame and scale).
        gt_c2w: `(T, 4, 4)` ground truth.
        align: align with Umeyama first (Sim(3) if `with_scale`, else SE(3)).
        delta: RPE frame offset.
    Returns:
        `ate`, `rpe_trans`, `rpe_rot` (RMSEs) and `align_scale`.
    """
    pred_c2w = np.asarray(pred_c2w, dtype=np.float64)
    gt_c2w = np.asarray(gt_c2w, dtype=np.float64)
    if pred_c2w.shape != gt_c2w.shape or pred_c2w.shape[1:] != (4, 4):
        raise ValueError(f"pose arrays must both be (T, 4, 4); got {pred_c2w.shape} and {gt_c2w.shape}")
    scale = 1.0
    if align:
        pred_c2w, scale = align_trajectory(pred_c2w, gt_c2w, with_scale)
    position_error = np.linalg.norm(pred_c2w[:, :3, 3] - gt_c2w[:, :3, 3], axis=1)
    out = {"ate": float(np.sqrt(np.mean(position_error ** 2))), "align_scale": float(scale)}
    if len(gt_c2w) > delta:
        errors = relative_pose_errors(pred_c2w, gt_c2w, delta)
        out["rpe_trans"] = float(np.sqrt(np.mean(np.sum(errors[:, :3, 3] ** 2, axis=1))))
        out["rpe_rot"] = float(np.sqrt(np.mean(rotation_angle_deg(errors[:, :3, :3]) ** 2)))
    else:
        out["rpe_trans"] = out["rpe_rot"] = float("nan")
    return out
