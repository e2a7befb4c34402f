"""Bundle-adjustment solvers on the same problem: st4r's sparse Schur LM vs scipy vs pyceres.

    python benchmarks/ba_solvers.py [--frames 50 150] [--pyceres-frames 50] [--out benchmarks/results/ba_solvers.json]

Problem (synthetic, exact ground truth): a camera travelling F frames past a scene, local tracks
seeded every 8 frames plus far points tracked throughout, 0.3 px noise; every camera but frame 0
starts perturbed (0.5 deg, 2 cm), inverse depths +-20%. Unknowns as in `st4r_cli.geometry.bundle`:
per camera a left increment (rotation vector, translation), per track the inverse depth in its query
camera; focal fixed; Cauchy loss at 1 px. Every solver gets the same start and at most `--iters`
iterations, and reports seconds, iterations and the camera-centre error after the best scale.

- `st4r`: `geometry.bundle._Problem.solve` (analytic Jacobians, Schur complement sparse on the point
  side, dense Cholesky of the camera system), 1 torch thread.
- `scipy`: `scipy.optimize.least_squares(method="trf", loss="cauchy", jac_sparsity=..., x_scale="jac",
  tolerances 1e-12)`: finite-difference Jacobians over the sparsity pattern's column groups, LSMR steps
  (no Schur complement); at scipy's default tolerances it stops early, far from the solution. Its
  budget is 4x `--iters` function evaluations.
- `pyceres`: Ceres (SPARSE_SCHUR, 2 threads) with one Python `CostFunction` per observation (the
  PyPI package exposes no compiled reprojection cost; Jacobians by forward differences in Python):
  each residual block costs a Python call per evaluation, so it runs on the smallest problem only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ba_solvers.json"
HW = (120, 160)
FOCAL = 140.0
PP = ((HW[1] - 1) / 2, (HW[0] - 1) / 2)


def scene(num_frames: int) -> tuple[np.ndarray, ...]:
    """(gt w2c (T,4,4), query_t (N,), query_xy (N,2), inv_depth (N,), tracks (N,T,2), visible (N,T)):
    `st4r_cli.synthetic.point_tracks.travelling_camera_tracks`, without the query frames' observations
    (the solvers here build their residuals from `visible` directly)."""
    from st4r_cli.synthetic.point_tracks import travelling_camera_tracks

    w2c, query_t, query_xy, inv_depth, tracks, visible = travelling_camera_tracks(num_frames, hw=HW, focal=FOCAL)
    visible[np.arange(len(query_t)), query_t] = False
    return w2c, query_t, query_xy, inv_depth, tracks, visible


def perturb(w2c, inv_depth, seed: int = 7):
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    out = w2c.copy()
    for t in range(1, len(w2c)):
        noise = np.eye(4)
        noise[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * np.radians(0.5)).as_matrix()
        noise[:3, 3] = rng.normal(size=3) * 0.02
        out[t] = noise @ w2c[t]
    return out, inv_depth * rng.uniform(0.8, 1.2, size=inv_depth.shape)


def centre_error(w2c, gt_w2c) -> float:
    """Mean camera-centre error after the best scale about frame 0."""
    centres = np.linalg.inv(w2c)[:, :3, 3]
    gt = np.linalg.inv(gt_w2c)[:, :3, 3]
    scale = (centres * gt).sum() / (centres * centres).sum()
    return float(np.linalg.norm(scale * centres - gt, axis=1).mean())


def compose(w2c0: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """exp(xi) w2c0 for xi (T, 6) = (rotation vector, translation), as the bundle's update."""
    from scipy.spatial.transform import Rotation

    out = w2c0.copy()
    rot = Rotation.from_rotvec(xi[:, :3]).as_matrix()
    out[:, :3, :3] = rot @ w2c0[:, :3, :3]
    out[:, :3, 3] = np.einsum("tij,tj->ti", rot, w2c0[:, :3, 3]) + xi[:, 3:]
    return out


def residuals(w2c, rho, query_t, query_xy, obs_n, obs_t, obs_xy) -> np.ndarray:
    """(M, 2) reprojection residuals (inverse depth in the query camera)."""
    s = query_t[obs_n]
    ray = np.concatenate([(query_xy[obs_n] - PP) / FOCAL, np.ones((len(obs_n), 1))], 1)
    cam_s = ray / rho[obs_n, None]
    world = np.einsum("mji,mj->mi", w2c[s, :3, :3], cam_s - w2c[s, :3, 3])
    cam_t = np.einsum("mij,mj->mi", w2c[obs_t, :3, :3], world) + w2c[obs_t, :3, 3]
    return FOCAL * cam_t[:, :2] / cam_t[:, 2:3] + PP - obs_xy


def run_st4r(problem, start, iters):
    import torch

    from st4r_cli.geometry.bundle import BundleOptions, _Problem

    torch.set_num_threads(1)
    w2c0, rho0, query_t, query_xy, obs_n, obs_t, obs_xy = start
    prob = _Problem(torch.as_tensor(w2c0), FOCAL, PP, torch.as_tensor(query_t), torch.as_tensor(query_xy),
                    torch.as_tensor(rho0), torch.as_tensor(obs_n), torch.as_tensor(obs_t), torch.as_tensor(obs_xy),
                    {0})
    calls = {"n": 0}
    original = prob._linearise

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    prob._linearise = counted
    begin = time.perf_counter()
    prob.solve(1.0, BundleOptions(iters_per_stage=iters), with_focal=False)
    return prob.w2c.numpy(), time.perf_counter() - begin, calls["n"]


def run_scipy(problem, start, iters):
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    w2c0, rho0, query_t, query_xy, obs_n, obs_t, obs_xy = start
    frames, points = len(w2c0), len(rho0)
    moving = frames - 1

    def unpack(x):
        xi = np.zeros((frames, 6))
        xi[1:] = x[:6 * moving].reshape(moving, 6)
        return compose(w2c0, xi), x[6 * moving:]

    def fun(x):
        w2c, rho = unpack(x)
        return residuals(w2c, rho, query_t, query_xy, obs_n, obs_t, obs_xy).ravel()

    sparsity = lil_matrix((2 * len(obs_n), 6 * moving + points), dtype=np.int8)
    rows = np.arange(len(obs_n))
    for frames_of_obs in (obs_t, query_t[obs_n]):
        use = frames_of_obs > 0
        for k in range(6):
            for r in (0, 1):
                sparsity[2 * rows[use] + r, 6 * (frames_of_obs[use] - 1) + k] = 1
    for r in (0, 1):
        sparsity[2 * rows + r, 6 * moving + obs_n] = 1
    x0 = np.concatenate([np.zeros(6 * moving), rho0])
    begin = time.perf_counter()
    result = least_squares(fun, x0, jac_sparsity=sparsity.tocsr(), loss="cauchy", f_scale=1.0, method="trf",
                           x_scale="jac", max_nfev=iters, tr_solver="lsmr", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    seconds = time.perf_counter() - begin
    return unpack(result.x)[0], seconds, int(result.nfev)


def run_pyceres(problem, start, iters):
    import pyceres

    w2c0, rho0, query_t, query_xy, obs_n, obs_t, obs_xy = start
    frames = len(w2c0)
    cams = [np.zeros(6) for _ in range(frames)]
    rhos = [np.array([r]) for r in rho0]

    class Reprojection(pyceres.CostFunction):
        def __init__(self, m, n, t):
            super().__init__()
            self.t, self.s = t, int(query_t[n])
            self.ray = np.array([(query_xy[n, 0] - PP[0]) / FOCAL, (query_xy[n, 1] - PP[1]) / FOCAL, 1.0])
            self.obs = obs_xy[m]
            self.set_num_residuals(2)
            self.set_parameter_block_sizes([6, 6, 1])

        def _res(self, xi_t, xi_s, rho):
            pose_t, pose_s = compose(w2c0[[self.t, self.s]], np.stack([xi_t, xi_s]))
            world = pose_s[:3, :3].T @ (self.ray / rho[0] - pose_s[:3, 3])
            cam = pose_t[:3, :3] @ world + pose_t[:3, 3]
            return FOCAL * cam[:2] / cam[2] + np.asarray(PP) - self.obs

        def Evaluate(self, parameters, res, jacobians):  # noqa: N802 (pybind11 override name)
            xi_t, xi_s, rho = parameters[0], parameters[1], parameters[2]
            base = self._res(xi_t, xi_s, rho)
            res[:] = base
            if jacobians is not None:
                eps = 1e-7
                for block, (values, size) in enumerate(((xi_t, 6), (xi_s, 6), (rho, 1))):
                    if jacobians[block] is None:
                        continue
                    jac = np.zeros((2, size))
                    for k in range(size):
                        probe = [np.array(xi_t), np.array(xi_s), np.array(rho)]
                        probe[block][k] += eps
                        jac[:, k] = (self._res(*probe) - base) / eps
                    jacobians[block][:] = jac.ravel()
            return True

    prob = pyceres.Problem()
    loss = pyceres.CauchyLoss(1.0)
    costs = []
    for m, (n, t) in enumerate(zip(obs_n.tolist(), obs_t.tolist())):
        cost = Reprojection(m, n, t)
        costs.append(cost)
        prob.add_residual_block(cost, loss, [cams[t], cams[int(query_t[n])], rhos[n]])
    prob.set_parameter_block_constant(cams[0])
    options = pyceres.SolverOptions()
    options.linear_solver_type = pyceres.LinearSolverType.SPARSE_SCHUR
    options.max_num_iterations = iters
    options.num_threads = 2
    summary = pyceres.SolverSummary()
    begin = time.perf_counter()
    pyceres.solve(options, prob, summary)
    seconds = time.perf_counter() - begin
    return compose(w2c0, np.stack(cams)), seconds, int(summary.num_successful_steps + summary.num_unsuccessful_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[50, 150])
    parser.add_argument("--pyceres-frames", type=int, nargs="*", default=[50])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--pyceres-iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    for frames in args.frames:
        gt_w2c, query_t, query_xy, inv_depth, tracks, visible = scene(frames)
        w2c0, rho0 = perturb(gt_w2c, inv_depth)
        obs_n, obs_t = np.nonzero(visible)
        start = (w2c0, rho0, query_t, query_xy, obs_n, obs_t, tracks[obs_n, obs_t])
        solvers = [("st4r", run_st4r), ("scipy", run_scipy)]
        if frames in args.pyceres_frames:
            solvers.append(("pyceres", run_pyceres))
        for name, solver in solvers:
            budget = {"st4r": args.iters, "scipy": 4 * args.iters, "pyceres": args.pyceres_iters}[name]
            w2c, seconds, iterations = solver(None, start, budget)
            row = {"frames": frames, "tracks": len(query_t), "observations": len(obs_n), "solver": name,
                   "seconds": round(seconds, 2), "iterations_or_evaluations": iterations,
                   "centre_error_start": round(centre_error(w2c0, gt_w2c), 5),
                   "centre_error": round(centre_error(w2c, gt_w2c), 5)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    args.out.write_text(json.dumps({
        "commit": commit, "command": " ".join(["python", "benchmarks/ba_solvers.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {"iters": args.iters, "scipy_max_nfev": 4 * args.iters, "pyceres_iters": args.pyceres_iters, "loss": "cauchy 1 px", "noise_px": 0.3,
                   "machine": "2 CPUs shared with other jobs (times are noisy)"},
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
