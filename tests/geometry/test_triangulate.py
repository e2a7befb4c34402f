"""Two-view triangulation along reference rays: exact on projected points, epipolar distance of movers."""

import numpy as np
from scipy.spatial.transform import Rotation

from st4r_cli.geometry.triangulate import epipolar_distance, triangulate_on_rays

K = np.array([[200.0, 0.0, 64.0], [0.0, 210.0, 48.0], [0.0, 0.0, 1.0]])


def _project(points_cam: np.ndarray) -> np.ndarray:
    uvw = points_cam @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def _pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec(rng.normal(scale=0.1, size=3)).as_matrix()
    pose[:3, 3] = rng.normal(scale=0.3, size=3)
    return pose


def test_triangulation_recovers_the_depth_of_projected_points():
    rng = np.random.default_rng(0)
    points_i = np.column_stack([rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200), rng.uniform(2, 6, 200)])
    cam_i_to_j = _pose(1)
    points_j = points_i @ cam_i_to_j[:3, :3].T + cam_i_to_j[:3, 3]
    out = triangulate_on_rays(_project(points_i), _project(points_j), K, cam_i_to_j)
    np.testing.assert_allclose(out["depth"], points_i[:, 2], rtol=1e-9)
    np.testing.assert_allclose(out["depth_j"], points_j[:, 2], rtol=1e-9)
    np.testing.assert_allclose(out["epipolar_px"], 0.0, atol=1e-9)
    # parallax: the angle between the two viewing rays at the point
    centre_j = -cam_i_to_j[:3, :3].T @ cam_i_to_j[:3, 3]
    a = points_i / np.linalg.norm(points_i, axis=1, keepdims=True)
    b = (points_i - centre_j) / np.linalg.norm(points_i - centre_j, axis=1, keepdims=True)
    np.testing.assert_allclose(out["parallax_deg"], np.degrees(np.arccos((a * b).sum(1))), atol=1e-6)


def test_a_point_moved_off_its_epipolar_line_is_measured_in_pixels():
    """Camera j translated along x: epipolar lines are rows, so a vertical shift of d px is d px off."""
    cam_i_to_j = np.eye(4)
    cam_i_to_j[0, 3] = -0.2
    points_i = np.array([[0.1, 0.2, 3.0], [-0.3, 0.1, 4.0]])
    xy_j = _project(points_i + cam_i_to_j[:3, 3])
    assert np.allclose(epipolar_distance(_project(points_i), xy_j, K, cam_i_to_j), 0.0, atol=1e-9)
    shifted = xy_j + np.array([[0.0, 3.0], [0.0, -5.0]])
    np.testing.assert_allclose(epipolar_distance(_project(points_i), shifted, K, cam_i_to_j), [3.0, 5.0], atol=1e-9)
