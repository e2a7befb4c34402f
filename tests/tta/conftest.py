"""A tiny exact clip (a textured plane seen by a panning camera) and a micro St4R network."""

import numpy as np
import pytest


def plane_clip(num_frames: int = 6, hw=(32, 48), shift_px: float = 2.0, grid: int = 6, seed: int = 0):
    """Frames of a random texture translating left by `shift_px` per frame, and its exact 2D tracks.

    Returns frames (T,H,W,3) uint8 and a tracks dict (tracks_xy (N,T,2), visible (N,T), confidence
    (N,), queries (N,3)) for a grid of frame-0 queries (what the tracks stage produces).
    """
    rng = np.random.default_rng(seed)
    h, w = hw
    big_w = w + int(np.ceil(shift_px * num_frames)) + 2
    coarse = rng.integers(0, 255, size=(h // 4 + 1, big_w // 4 + 1, 3)).astype(np.float32)
    texture = np.kron(coarse, np.ones((4, 4, 1)))[:h, :big_w]
    frames = np.stack([texture[:, int(round(t * shift_px)):int(round(t * shift_px)) + w]
                       for t in range(num_frames)]).astype(np.uint8)
    xs = np.linspace(2, w - 3, grid)
    ys = np.linspace(2, h - 3, grid)
    qx, qy = np.meshgrid(xs, ys)
    query_xy = np.stack([qx.ravel(), qy.ravel()], -1).astype(np.float32)
    shifts = np.array([round(t * shift_px) for t in range(num_frames)], dtype=np.float32)
    tracks_xy = query_xy[:, None, :] - np.stack([shifts, np.zeros_like(shifts)], -1)[None]
    visible = (tracks_xy[..., 0] >= 0) & (tracks_xy[..., 0] <= w - 1)
    queries = np.concatenate([np.zeros((len(query_xy), 1), np.float32), query_xy], 1)
    tracks = {"tracks_xy": tracks_xy.astype(np.float32), "visible": visible,
              "confidence": np.ones(len(query_xy), np.float32), "queries": queries}
    return frames, tracks


def micro_model(seed: int = 0):
    import torch

    from st4r_cli.model.config import ModelConfig
    from st4r_cli.model.net import St4rNet

    config = ModelConfig(name="micro", img_size_hw=(32, 48), enc_embed_dim=32, enc_depth=1, enc_num_heads=2,
                         dec_embed_dim=32, dec_depth=2, dec_num_heads=2, dpt_feature_dim=16, dpt_last_dim=8,
                         dpt_layer_dims=(8, 16, 16, 16))
    torch.manual_seed(seed)
    return St4rNet(config)


FOCAL = 40.0
DEPTH = 2.0


def plane_targets(num_frames: int = 6, hw=(32, 48), shift_px: float = 2.0):
    """Exact head outputs for pairs (0, j) of `plane_clip` (plane at DEPTH, focal FOCAL, camera moving
    right by shift_px * DEPTH / FOCAL per frame): head 1 (frame-0 pixels, static) and head 2."""
    import torch

    from st4r_cli.geometry.camera import make_intrinsics, unproject_depth

    k_mat = make_intrinsics(FOCAL, hw)
    plane = unproject_depth(torch.full(hw, DEPTH), k_mat)
    head1 = plane[None].repeat(num_frames, 1, 1, 1)
    offsets = torch.tensor([round(t * shift_px) * DEPTH / FOCAL for t in range(num_frames)])
    head2 = head1.clone()
    head2[..., 0] += offsets[:, None, None]
    return head1, head2


def prefit_model(steps: int = 60, seed: int = 0):
    """The micro network briefly fitted (L1) to the plane clip's exact pointmaps, so its geometry is
    sane (a randomly initialised network outputs one 3D point for every pixel) but not exact."""
    import torch

    from st4r_cli.model.inference import forward_pairs, frames_to_tensor

    frames, _ = plane_clip()
    model = micro_model(seed)
    images = frames_to_tensor(frames)
    head1, head2 = plane_targets()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    anchors, targets = [0] * 6, list(range(6))
    for _ in range(steps):
        opt.zero_grad()
        out = forward_pairs(model, images, anchors, targets)
        loss = (out["track_pts"] - head1).abs().mean() + (out["recon_pts"] - head2).abs().mean()
        loss.backward()
        opt.step()
    return model


_PREFIT: dict = {}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: intra-op threads only cost synchronisation on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_prefit_model():
    """Factory: a fresh copy of the (cached) pre-fitted micro network."""
    import copy

    def make(seed: int = 0):
        if seed not in _PREFIT:
            _PREFIT[seed] = prefit_model(seed=seed)
        return copy.deepcopy(_PREFIT[seed])

    return make


@pytest.fixture
def make_clip():
    """Factory: plane_clip(num_frames, hw, shift_px, grid, seed)."""
    return plane_clip


@pytest.fixture
def make_model():
    """Factory: micro_model(seed)."""
    return micro_model
