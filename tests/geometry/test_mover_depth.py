"""Moving parts' depth from the static world (`geometry.mover_depth`, the fuse stage's step 6) on exact
scenes: a camera over a floor, a figure standing on it, a card floating in front of a wall."""

import numpy as np

from st4r_cli.geometry.camera_np import render_depth, unproject_depth
from st4r_cli.geometry.mover_depth import contact_depths, covered_depth, mover_scales

H, W, F = 96, 128, 100.0
CY = (H - 1) / 2
CAM_HEIGHT = 1.2   # metres above the floor; camera axis horizontal


def _floor_and_wall(wall_z: float = 6.0) -> np.ndarray:
    """(H, W) depth of a horizontal floor CAM_HEIGHT below the camera, and a wall at wall_z above it."""
    rows = np.arange(H, dtype=np.float64)[:, None] * np.ones((1, W))
    with np.errstate(divide="ignore"):
        floor = np.where(rows > CY, CAM_HEIGHT * F / (rows - CY), np.inf)
    return np.minimum(floor, wall_z)


def _standing_figure(depth_z: float, cols: tuple[int, int], height_m: float) -> np.ndarray:
    """(H, W) bool: the pixels of an upright rectangle standing on the floor at depth_z."""
    bottom = int(np.floor(CY + CAM_HEIGHT * F / depth_z))
    top = int(np.ceil(CY + (CAM_HEIGHT - height_m) * F / depth_z))
    mask = np.zeros((H, W), bool)
    mask[top:bottom + 1, cols[0]:cols[1]] = True
    return mask


def test_a_figure_standing_on_the_floor_is_put_at_the_floor_depth_where_it_stands():
    scene = _floor_and_wall()
    figure = _standing_figure(3.0, (50, 70), 1.0)
    static_ok = ~figure
    network = np.where(figure, 6.5, scene)                  # the network put it behind the wall
    parts = mover_scales(figure, network, scene, static_ok, np.full((H, W), np.inf))
    assert len(parts) == 1 and parts[0].kind == "contact"
    fixed = network * np.where(figure, parts[0].scale, 1.0)
    rel = np.abs(fixed[figure] / 3.0 - 1.0)
    assert rel.max() < 0.03                                  # the floor one row below is 1-2% nearer
    assert np.isnan(parts[0].scale[~figure]).all()


def test_contact_is_read_along_the_lowest_band_and_spread_to_the_columns_above_it():
    scene = _floor_and_wall()
    near, far = _standing_figure(3.0, (30, 45), 0.8), _standing_figure(5.0, (45, 60), 0.8)
    part = near | far                                       # one part, its two halves on the floor at 3 and 5 m
    depths = contact_depths(part, scene, ~part)
    assert depths is not None
    assert abs(depths[35] / 3.0 - 1) < 0.03 and abs(depths[55] / 3.0 - 1) < 0.03
    # the far half's lowest pixels are above the near half's bottom band: they take the nearest contact column
    assert np.isnan(depths[:30]).all() and np.isnan(depths[60:]).all()


def test_a_part_on_the_image_border_or_over_unknown_ground_has_no_contact():
    scene = _floor_and_wall()
    border = np.zeros((H, W), bool)
    border[60:, 10:30] = True                               # its bottom edge is the image's
    assert contact_depths(border, scene, ~border) is None
    figure = _standing_figure(3.0, (50, 70), 1.0)
    assert contact_depths(figure, scene, np.zeros((H, W), bool)) is None   # nothing static known below


def test_a_card_with_no_contact_keeps_its_depth():
    wall = np.full((H, W), 5.0)
    card = np.zeros((H, W), bool)
    card[20:50, 40:80] = True
    nothing_below = np.zeros((H, W), bool)                  # the wall is known from other frames only
    covered = np.where(card, 5.0, np.inf)
    for network_z in (2.0, 8.0):                            # in front of the wall, behind it
        parts = mover_scales(card, np.where(card, network_z, wall), wall, nothing_below, covered)
        assert parts[0].kind == "none" and np.allclose(parts[0].scale[card], 1.0)


def test_a_contact_that_puts_the_part_behind_what_it_covers_is_not_taken():
    # a card floating 2 m away above a floor that is 4 m away just below its bottom edge, in front of a
    # wall at 3 m that it covers: standing on that floor would put it behind the wall
    scene = _floor_and_wall(wall_z=3.0)
    scene[60:, :] = 4.0
    card = np.zeros((H, W), bool)
    card[30:60, 50:80] = True
    covered = np.where(card, 3.0, np.inf)
    parts = mover_scales(card, np.where(card, 2.0, scene), scene, ~card, covered)
    assert parts[0].kind == "none" and np.allclose(parts[0].scale[card], 1.0)
    in_front = np.where(card, 5.0, np.inf)                  # the same contact in front of a far wall is taken
    parts = mover_scales(card, np.where(card, 2.0, scene), scene, ~card, in_front)
    assert parts[0].kind == "contact" and np.allclose(2.0 * parts[0].scale[card], 4.0)


def test_covered_depth_renders_the_nearest_static_surface_and_fills_the_gaps_between_points():
    k_mat = np.array([[F, 0, (W - 1) / 2], [0, F, CY], [0, 0, 1.0]])
    wall = np.full((H, W), 4.0)
    points = unproject_depth(wall, k_mat)[::2, ::2].reshape(-1, 3)       # every other pixel
    near = unproject_depth(np.full((H, W), 2.0), k_mat)[40:50, 40:50].reshape(-1, 3)
    rendered = covered_depth(np.concatenate([points, near]), np.eye(4), k_mat, (H, W))
    assert np.isfinite(rendered[1:-1, 1:-1]).all()
    assert np.allclose(rendered[45, 45], 2.0) and np.allclose(rendered[10, 10], 4.0)
    assert np.isinf(render_depth(points, np.eye(4), k_mat, (H, W))[1, 1])  # the raw render has the gaps


def test_the_fuse_step_moves_the_parts_points_and_their_tracks_along_their_rays():
    from st4r_cli.geometry.camera_np import project_tracks, surface_depths
    from st4r_cli.stages.fuse import _mover_depths, _scaled_movers

    k_mat = np.array([[F, 0, (W - 1) / 2], [0, F, CY], [0, 0, 1.0]])
    c2w = np.repeat(np.eye(4)[None], 2, 0)
    c2w[1, :3, 3] = [0.3, 0.0, 0.1]                         # the camera moved: each frame in its own camera
    scene = _floor_and_wall()
    figure = _standing_figure(3.0, (50, 70), 1.0)
    network = np.where(figure, 6.5, scene)
    pointmaps = np.stack([unproject_depth(network, k_mat) @ c2w[t, :3, :3].T + c2w[t, :3, 3] for t in range(2)])
    source = np.where(figure, 0, 1).astype(np.uint8)[None].repeat(2, 0)
    dynamic = figure[None].repeat(2, 0)
    moved, new_source, scale_map = _mover_depths(pointmaps, source, scene[None].repeat(2, 0), dynamic, k_mat, c2w)
    w2c = np.linalg.inv(c2w)
    z = surface_depths(moved, w2c)
    assert np.abs(z[:, figure] / 3.0 - 1).max() < 0.03
    assert (new_source[:, figure] == 3).all() and (new_source[:, ~figure] == 1).all()
    np.testing.assert_array_equal(moved[:, ~figure], pointmaps[:, ~figure])
    # a moving track on the figure and a static one on the wall
    tracks3d = np.stack([pointmaps[:, 60, 60], pointmaps[:, 20, 20]])                  # (2, T, 3)
    before_xy, _ = project_tracks(tracks3d, w2c, k_mat)
    after = _scaled_movers(tracks3d, np.array([True, False]), scale_map, None, None, w2c, k_mat, (H, W))
    after_xy, after_z = project_tracks(after, w2c, k_mat)
    np.testing.assert_allclose(after_xy, before_xy, atol=1e-6)                          # same rays
    assert np.abs(after_z[0] / 3.0 - 1).max() < 0.03
    np.testing.assert_array_equal(after[1], tracks3d[1])


def test_a_few_static_specks_under_a_wide_part_are_no_contact():
    scene = _floor_and_wall()
    figure = _standing_figure(3.0, (30, 90), 1.0)
    specks = np.zeros((H, W), bool)
    bottom = np.nonzero(figure)[0].max()
    specks[bottom + 1, [35, 50, 65, 80]] = True             # 4 of the 60 columns see something static below
    assert contact_depths(figure, scene, specks) is None
    specks[bottom + 1, 30:70] = True                        # two thirds of them do
    assert contact_depths(figure, scene, specks) is not None


def test_a_contact_that_changes_the_depth_more_than_threefold_is_not_taken():
    # a raised arm (the network: 2.3 m) over pixels the motion mask missed, triangulated at 0.2 m
    body = np.full((H, W), 0.2)
    arm = np.zeros((H, W), bool)
    arm[20:40, 30:60] = True
    parts = mover_scales(arm, np.where(arm, 2.3, body), body, ~arm, np.full((H, W), np.inf))
    assert parts[0].kind == "none"
    parts = mover_scales(arm, np.where(arm, 0.5, body), body, ~arm, np.full((H, W), np.inf))
    assert parts[0].kind == "contact" and np.allclose(0.5 * parts[0].scale[arm], 0.2)
