"""The fuse stage's fill of the multi-view depth holes (`stages.fuse._filled_depth`) on a known plane."""

import numpy as np

from st4r_cli.stages.fuse import _filled_depth


def _plane(h: int = 60, w: int = 80) -> np.ndarray:
    """(1, H, W) depth of a tilted plane: its inverse depth is affine in the pixel coordinates."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return (1.0 / (0.25 + 0.002 * xs + 0.004 * ys))[None]


def test_a_hole_in_a_plane_is_filled_with_the_plane_and_moving_pixels_are_left_alone():
    depth = _plane()
    valid = np.ones_like(depth, bool)
    ys, xs = np.mgrid[0:60, 0:80]
    hole = (ys - 30) ** 2 + (xs - 40) ** 2 <= 8 ** 2
    moving = (ys >= 5) & (ys < 15) & (xs >= 5) & (xs < 15)
    valid[0][hole | moving] = False
    out, source = _filled_depth(np.where(valid, depth, 0.0), valid, moving[None], radius_px=64)
    assert (source[0][valid[0]] == 1).all() and (source[0][hole] == 2).all()
    assert (source[0][moving] == 0).all() and (out[0][moving] == 0).all()
    # the plane's depth within 5% (mean 1.6%; the nearest multi-view pixel's depth is up to 7% off here)
    rel = np.abs(out[0][hole] / depth[0][hole] - 1.0)
    assert rel.max() < 0.05 and rel.mean() < 0.02
    np.testing.assert_array_equal(out[0][valid[0]], depth[0][valid[0]])


def test_a_stray_match_is_dropped_and_paints_nothing():
    depth = _plane()
    valid = np.zeros_like(depth, bool)
    valid[0, 30:, :] = True                      # the lower half has multi-view depth
    noisy = np.where(valid, depth, 0.0)
    valid[0, 5, 40] = True                       # one isolated match far above it, 50x too far
    noisy[0, 5, 40] = 50.0 * depth[0, 5, 40]
    out, source = _filled_depth(noisy, valid, np.zeros_like(valid), radius_px=64)
    assert source[0, 5, 40] == 2                 # not kept as a multi-view pixel, filled like its neighbours
    upper = out[0, :30]
    assert upper.max() < 2.0 * depth[0].max()    # no disc of the stray depth
    assert (source[0] > 0).all()


def test_pixels_beyond_the_radius_keep_the_network():
    depth = _plane()
    valid = np.zeros_like(depth, bool)
    valid[0, :, :10] = True
    out, source = _filled_depth(np.where(valid, depth, 0.0), valid, np.zeros_like(valid), radius_px=20)
    assert (source[0][:, 10:30] == 2).all() and (source[0][:, 30:] == 0).all() and (out[0][:, 30:] == 0).all()
