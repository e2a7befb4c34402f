"""Predict stage: the (adapted) network over every window of the video, cached.

Input artifacts: decode (frames), adapt (weight deltas; the pipeline applies them to the checkpoint),
depth (optional: its intrinsics give the focal when `predict.use_depth_intrinsics`); config:
`PredictConfig`. Output arrays (slot k of window w at index w*L + k, in that window's anchor camera):

    window_start  (W,)          int64
    window_frames (W, L)        int64   frame of each slot (-1 pads short windows)
    track_pts     (W*L, H, W, 3) f32    head 1: the anchor's pixels at time j
    track_conf    (W*L, H, W)   f32
    recon_pts     (W*L, H, W, 3) f32    head 2: frame j's own pixels
    recon_conf    (W*L, H, W)   f32
    intrinsics    (3, 3)        f32     from the frame-0 pointmap (Weiszfeld) unless a focal is given

The cameras and fuse stages read these arrays, so a change to their settings never re-runs the network.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING, Any

from st4r_cli.configs import PredictConfig

if TYPE_CHECKING:
    import numpy as np

__all__ = ["PREDICT_VERSION", "PredictConfig", "check_predict_config", "compute_predict"]

PREDICT_VERSION = 1


def check_predict_config(config: PredictConfig) -> None:
    """St4rError for invalid values."""
    from st4r_cli.errors import St4rError

    if config.window < 2:
        raise St4rError("predict.window must be >= 2")
    if not 1 <= config.overlap < config.window:
        raise St4rError("predict.overlap must be >= 1 and smaller than predict.window")
    if config.focal < 0 or config.batch_size < 0 or config.cpu_threads < 0:
        raise St4rError("predict.focal, batch_size and cpu_threads must be >= 0")
    cores = os.cpu_count() or 1
    if config.cpu_threads > cores:   # libgomp aborts the process on absurd thread counts
        raise St4rError(f"predict.cpu_threads={config.cpu_threads}: at most this machine's {cores} CPU cores "
                        "(0: torch's default)")


def compute_predict(model: Any, frames: np.ndarray, config: PredictConfig, device: str,
                    depth: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Predict every pair (anchor, j) of every window with `model` (module doc for the arrays).

    frames (T, H, W, 3) uint8; depth: the depth stage's arrays or None.
    """
    from st4r_cli.model.heap import release_freed_memory
    from st4r_cli.model.windows import torch_threads

    check_predict_config(config)
    with torch_threads(config.cpu_threads, device):
        out = _predict(model, frames, config, device, depth)
    release_freed_memory()   # the batches' activations: not resident in the next stage
    return out


def _predict(model: Any, frames: np.ndarray, config: PredictConfig, device: str,
             depth: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    import numpy as np
    import torch

    from st4r_cli.geometry.camera import intrinsics_from_pointmap
    from st4r_cli.model.inference import frames_to_tensor
    from st4r_cli.model.windows import (PairRunner, batch_size_for, check_frames, given_focal,
                                        predict_window_pairs, window_starts)

    check_frames(model, frames)
    model = model.to(device)
    model.eval()
    num_frames = frames.shape[0]
    starts = window_starts(num_frames, config.window, config.overlap)
    with torch.no_grad():
        runner = PairRunner(model, frames_to_tensor(frames, device), cache_encoder=True)
        out = predict_window_pairs(runner, starts, num_frames, config.window, batch_size_for(config.batch_size, device))
        anchor0 = torch.as_tensor(out["track_pts"][0], device=device)
        k_mat = intrinsics_from_pointmap(anchor0, focal=given_focal(config, depth))
    out["intrinsics"] = k_mat.cpu().numpy().astype(np.float32)
    return out
