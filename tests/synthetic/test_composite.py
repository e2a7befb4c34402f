"""The movers benchmark's composites: a card ray-cast into an RGB-D clip has exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from st4r_cli.synthetic.composite import card_points, composite, make_card, support_plane

K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])
H, W, T = 48, 64, 5


def room() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A camera sliding right in front of a wall at z = 4 above a floor at y = 1 (camera-0 frame = world)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    ray_y = (ys - K[1, 2]) / K[1, 1]
    floor_z = np.where(ray_y > 0, 1.0 / np.maximum(ray_y, 1e-9), np.inf)
    depth = np.minimum(4.0, floor_z).astype(np.float32)
    cam_c2w = np.stack([np.eye(4) for _ in range(T)])
    cam_c2w[:, 0, 3] = np.linspace(0, 0.2, T)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    return frames, np.repeat(depth[None], T, 0), cam_c2w


def texture() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.kron(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))


@pytest.mark.parametrize("kind", ["float", "stand", "follow"])
def test_card_pixels_see_the_card_points_they_claim(kind):
    frames, depth, cam_c2w = room()
    card = make_card(kind, texture(), depth[0], cam_c2w, K)
    out = composite(frames, depth, cam_c2w, K, card)
    assert out["mask"].any(axis=(1, 2)).all()                  # in view in every frame
    for t in range(T):
        ys, xs = np.nonzero(out["mask"][t])
        points = card_points(card, out["card_uv"][t, ys, xs].astype(np.float64))[t]    # (M, 3) world
        cam = (points - cam_c2w[t, :3, 3]) @ cam_c2w[t, :3, :3]
        projected = cam[:, :2] / cam[:, 2:] * K[0, 0] + K[:2, 2]
        assert np.abs(projected - np.stack([xs, ys], 1)).max() < 1e-3
        assert np.allclose(out["depth_m"][t, ys, xs], cam[:, 2], atol=1e-4)
        assert (cam[:, 2] < depth[t, ys, xs]).all()            # only where it is in front of the scene
        off = ~out["mask"][t]
        assert np.array_equal(out["frames"][t][off], frames[t][off]) and np.array_equal(out["depth_m"][t][off], depth[t][off])


def test_the_card_moves_and_a_following_card_stays_put_in_the_image():
    frames, depth, cam_c2w = room()
    float_card = make_card("float", texture(), depth[0], cam_c2w, K)
    assert np.linalg.norm(float_card.center[-1] - float_card.center[0]) > 0.3
    follow = composite(frames, depth, cam_c2w, K, make_card("follow", texture(), depth[0], cam_c2w, K))
    centroid = [np.argwhere(m).mean(0) for m in follow["mask"]]
    assert np.abs(centroid[-1] - centroid[0]).max() < 5.0      # px: its 8 cm drift; a still card would move 9 px


def test_standing_card_touches_the_floor():
    frames, depth, cam_c2w = room()
    normal, offset, inliers = support_plane(depth[0], K)
    assert normal == pytest.approx([0, -1, 0], abs=1e-6) and offset == pytest.approx(-1.0, abs=1e-6)
    card = make_card("stand", texture(), depth[0], cam_c2w, K)
    bottom = card_points(card, np.array([[0.0, 1.0], [0.5, 1.0], [1.0, 1.0]]))     # (T, 3, 3) its bottom edge
    assert np.allclose(bottom[..., 1], 1.0, atol=1e-6)                            # y = 1: on the floor
    assert np.linalg.norm(card.center[-1] - card.center[0]) == pytest.approx(0.3, abs=1e-6)
