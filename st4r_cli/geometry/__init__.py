"""Cameras and geometry: projection, intrinsics from pointmaps, rotations, differentiable PnP.

`camera` (pixel grids, project/unproject, K, Weiszfeld focal, bilinear sampling), `lie` (so(3)),
`pnp` (weighted robust differentiable PnP), `align` (NumPy Umeyama / Sim(3)), `bundle` (cameras, focal and
inverse depths refined on 2D tracks: incremental, robust Levenberg-Marquardt with a Schur complement).
"""
