"""CoTracker3 backend (Karaev et al., 2024): the official model code, official checkpoints.

The code comes from the `cotracker` package (PyPI `autosegmentor==3.0.1`, installed with --no-deps);
the checkpoints are the official plain state dicts:

    weights/scaled_offline.pth   https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth
    weights/scaled_online.pth    https://huggingface.co/facebook/cotracker3/resolve/main/scaled_online.pth

`offline` runs `CoTrackerPredictor` (window 60, the model slides its own windows over long videos);
`online` runs `CoTrackerOnlinePredictor` (window 16) over overlapping chunks of 16 frames advanced by
8, the way CoTracker's `online_demo.py` does. Both resize the video to the model's 384x512 internally
and return tracks in pixels of the input frames. GPU when the device is `cuda`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from st4r_cli.errors import St4rError

if TYPE_CHECKING:
    from st4r_cli.configs import TracksConfig

INSTALL_HINT = "pip install --no-deps autosegmentor==3.0.1"
WEIGHTS = {
    "offline": ("weights/scaled_offline.pth",
                "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth"),
    "online": ("weights/scaled_online.pth",
               "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_online.pth"),
}
OFFLINE_WINDOW = 60
ONLINE_WINDOW = 16
MODEL_HW = (384, 512)   # the resolution CoTracker3 runs at (and its official weights were trained at)


def weights_path(mode: str, given: str = "") -> Path:
    """The checkpoint for `mode`: `given` if set, else the official file name under `weights/`.

    A relative path is looked up in the current directory, then beside the st4r checkout.
    """
    if mode not in WEIGHTS:
        raise St4rError(f"unknown cotracker3 mode '{mode}' (use offline or online)")
    from st4r_cli.paths import resolve_model_path

    return Path(resolve_model_path(given or WEIGHTS[mode][0]))


def require_cotracker3(mode: str, given: str = "") -> Path:
    """Check that the CoTracker code imports and the checkpoint exists; returns the checkpoint path.

    Raises St4rError with one line saying what to install / which file to put where.
    """
    path = weights_path(mode, given)
    try:
        import cotracker.predictor  # noqa: F401
    except ImportError as err:
        raise St4rError(f"the cotracker3 tracker needs the CoTracker code, which does not import "
                        f"({err}): install it with `{INSTALL_HINT}`") from None
    if not path.is_file():
        default_name, url = WEIGHTS[mode]
        raise St4rError(f"the cotracker3 tracker ({mode}) needs its checkpoint at {path}: download "
                        f"{url} and save it as {default_name} (or pass its path)")
    return path


def load_predictor(mode: str, checkpoint: Path, device: str,
                   model_hw: tuple[int, int] = MODEL_HW):  # -> torch.nn.Module
    """The official predictor for `mode`, with weights from `checkpoint`, on `device`.

    `model_hw` is the internal resolution the video is resized to (CoTracker3's own 384x512 by
    default; a smaller one, a multiple of 32, trades accuracy for speed).
    """
    from cotracker.predictor import CoTrackerOnlinePredictor, CoTrackerPredictor

    from st4r_cli.safe_load import load_torch_checkpoint

    # The state dict is read here with weights_only=True (never by CoTracker's own torch.load), then
    # loaded into a predictor built without a checkpoint.
    state = load_torch_checkpoint(checkpoint, f"CoTracker3 {mode} checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise St4rError(f"{checkpoint} is not a CoTracker3 {mode} checkpoint (no state dict)")
    try:
        if mode == "offline":
            predictor = CoTrackerPredictor(checkpoint=None, offline=True, window_len=OFFLINE_WINDOW)
        else:
            predictor = CoTrackerOnlinePredictor(checkpoint=None, window_len=ONLINE_WINDOW)
        predictor.model.load_state_dict(state)
    except (RuntimeError, KeyError, OSError, ValueError, TypeError, AttributeError) as err:
        message = " ".join(str(err).split())[:300]
        raise St4rError(f"{checkpoint} is not a CoTracker3 {mode} checkpoint: {message}") from None
    model_hw = (int(model_hw[0]), int(model_hw[1]))
    if model_hw != tuple(predictor.model.model_resolution):
        if model_hw[0] % 32 or model_hw[1] % 32 or min(model_hw) < 64:
            raise St4rError(f"cotracker3 model resolution {model_hw} must be multiples of 32, >= 64")
        predictor.model.model_resolution = model_hw
        predictor.interp_shape = model_hw
    return predictor.to(device).eval()


def track_points_cotracker3(frames: np.ndarray, queries: np.ndarray, mode: str = "offline",
                            checkpoint: str = "", device: str = "cpu",
                            backward_tracking: bool = False,
                            model_hw: tuple[int, int] = MODEL_HW) -> dict[str, np.ndarray]:
    """Track query points with CoTracker3.

    Args:
        frames: `(T, H, W, 3)` uint8 RGB.
        queries: `(N, 3)` float (t, x, y), pixels of `frames` (pixel centres at integers).
        mode: `offline` or `online`.
        checkpoint: checkpoint path (default: the official file name under weights/).
        device: `cpu` or `cuda`.
        backward_tracking: offline only: also track from each query frame backwards in time.
        model_hw: internal resolution (see `load_predictor`).
    Returns:
        `tracks_xy (N, T, 2)` float32, `visible (N, T)` bool, `confidence (N,)` float32 (fraction of
        the frames after the query where the point is visible; 1 for a query on the last frame).
        Without backward tracking, frames before a point's query repeat the query position and are
        marked not visible.
    """
    import torch

    path = require_cotracker3(mode, checkpoint)
    predictor = load_predictor(mode, path, device, model_hw)
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    video = video.permute(0, 3, 1, 2)[None].float()                  # (1, T, 3, H, W) in [0, 255]
    query_tensor = torch.from_numpy(np.asarray(queries, dtype=np.float32)).to(device)[None]  # (1, N, 3)
    with torch.no_grad():
        if mode == "offline":
            tracks, visible = predictor(video, queries=query_tensor, backward_tracking=backward_tracking)
        else:
            tracks, visible = _run_online(predictor, video, query_tensor)
    tracks_xy = tracks[0].permute(1, 0, 2).float().cpu().numpy()    # (N, T, 2)
    visible_np = visible[0].permute(1, 0).bool().cpu().numpy()        # (N, T)
    return _finish(tracks_xy, visible_np, np.asarray(queries, dtype=np.float32),
                   keep_before_query=backward_tracking and mode == "offline")


def _run_online(predictor, video, queries):  # -> (tracks (1, T, N, 2), visible (1, T, N))
    """Feed the online predictor chunks of `window` frames advanced by `window // 2` frames."""
    num_frames = video.shape[1]
    step = predictor.step
    predictor(video[:, :1], is_first_step=True, queries=queries)      # initialises, tracks nothing
    start = 0
    while True:
        tracks, visible = predictor(video[:, start:start + 2 * step])
        if start + 2 * step >= num_frames:
            break
        start += step
    return tracks[:, :num_frames], visible[:, :num_frames]


def _finish(tracks_xy: np.ndarray, visible: np.ndarray, queries: np.ndarray,
            keep_before_query: bool) -> dict[str, np.ndarray]:
    num_points, num_frames = visible.shape
    query_t = np.round(queries[:, 0]).astype(np.int64)
    frame_index = np.arange(num_frames)[None, :]
    if not keep_before_query:
        before = frame_index < query_t[:, None]
        tracks_xy = np.where(before[..., None], queries[:, None, 1:], tracks_xy)
        visible = visible & ~before
    rows = np.arange(num_points)
    tracks_xy[rows, query_t] = queries[:, 1:]
    visible[rows, query_t] = True
    after = frame_index > query_t[:, None]
    count = after.sum(axis=1)
    confidence = np.where(count > 0, (visible & after).sum(axis=1) / np.maximum(count, 1), 1.0)
    return {"tracks_xy": tracks_xy.astype(np.float32), "visible": visible.astype(bool),
            "confidence": confidence.astype(np.float32)}


# -- the tracker registry's entry points (st4r_cli/backends.py) -------------------------------------
def compute(frames: np.ndarray, queries: np.ndarray, cfg: TracksConfig, device: str = "cpu", seed: int = 0,
            label: str = "tracks") -> dict[str, np.ndarray]:
    """`track_points_cotracker3` with the tracks stage's settings, torch seeded with `seed`."""
    import torch

    from st4r_cli import progress

    torch.manual_seed(seed)
    progress.log(f"tracks: CoTracker3 {cfg.cotracker_mode} on {device}, {len(queries)} points, "
                 f"{len(frames)} frames")
    return track_points_cotracker3(frames, queries, mode=cfg.cotracker_mode, checkpoint=cfg.cotracker_weights,
                                   device=device, backward_tracking=cfg.cotracker_backward,
                                   model_hw=tuple(cfg.cotracker_model_hw))


def check(cfg: TracksConfig) -> None:
    """St4rError unless the CoTracker3 code imports and the checkpoint exists."""
    require_cotracker3(cfg.cotracker_mode, cfg.cotracker_weights)


def input_files(cfg: TracksConfig) -> list[Path]:
    return [weights_path(cfg.cotracker_mode, cfg.cotracker_weights)]


def describe_checkpoint(path: Path) -> str:
    """What `st4r doctor` says of a CoTracker3 checkpoint (loaded on the CPU, as the tracker would)."""
    mode = "online" if "online" in path.name.lower() else "offline"
    model = load_predictor(mode, path, "cpu")
    return f"{mode}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
