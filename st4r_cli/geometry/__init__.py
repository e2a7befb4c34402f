"""Cameras and geometry: projection, intrinsics from pointmaps, rotations, differentiable PnP.

`camera` (torch: pixel grids, project/unproject, K, Weiszfeld focal, bilinear sampling) and its NumPy
twin `camera_np` (project, unproject, bilinear sampling, in-image, z-buffer test, sigma from confidence),
`chaining` (windows into one world frame: PnP per window, Sim(3) gauges), `motion` (which tracks stand
still), `lie` (so(3)),
`pnp` (weighted robust differentiable PnP), `align` (NumPy Umeyama / Sim(3)), `bundle` (cameras, focal and
inverse depths refined on 2D tracks: incremental, robust Levenberg-Marquardt with a Schur complement).
"""
