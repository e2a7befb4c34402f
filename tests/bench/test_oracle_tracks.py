"""benchmarks/ablation.py --oracle-tracks: the pseudo-tracks replaced by the synthetic ground truth."""

from __future__ import annotations

import numpy as np


def test_oracle_tracks_follow_the_exact_geometry(ablation):
    clip, frames = ablation.synthetic_clip("easy", 3, 6)
    h, w = frames.shape[1:3]
    gx, gy = np.meshgrid(np.arange(8, w, 32), np.arange(8, h, 32))
    query = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32)                  # pixel centres
    num = len(query)
    tracker = {"tracks_xy": np.repeat(query[:, None], 6, axis=1) + 40.0,               # wrong everywhere...
               "visible": np.zeros((num, 6), bool)}
    tracker["tracks_xy"][:, 0] = query                                                  # ...but at the query
    oracle = ablation.oracle_tracks(clip, tracker)
    assert oracle["tracks_xy"].shape == (num, 6, 2) and oracle["visible"].dtype == bool
    # frame 0: each ground-truth point projects back onto its own query pixel, and is visible there
    np.testing.assert_allclose(oracle["tracks_xy"][:, 0], query, atol=1e-3)
    assert oracle["visible"][:, 0].all()
    # later frames: the projection of the exact 3D point with the exact camera (checked independently)
    gt = clip.gt
    w2c = np.linalg.inv(gt["cam_c2w"][5])
    K = gt["intrinsics"] if gt["intrinsics"].ndim == 2 else gt["intrinsics"][0]
    col, row = query[:, 0].astype(int), query[:, 1].astype(int)
    cam = gt["tracks3d_dense"][5, row, col] @ w2c[:3, :3].T + w2c[:3, 3]
    expected = (cam[:, :2] / cam[:, 2:]) * [K[0, 0], K[1, 1]] + K[:2, 2]
    np.testing.assert_allclose(oracle["tracks_xy"][:, 5], expected, atol=1e-3)
    assert not np.allclose(oracle["tracks_xy"][:, 5], tracker["tracks_xy"][:, 5])
    # the tracker's own arrays are left untouched
    assert not tracker["visible"].any()
