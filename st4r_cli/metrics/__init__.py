"""Pure-NumPy metrics, tapnet style: plain functions of arrays, alignment/scaling as an argument, the
definition in each module's docstring.

- `tapvid2d`: TAP-Vid 2D delta_avg / OA / AJ (`first` and `strided` query modes, 256x256);
- `tapvid3d`: TAPVid-3D APD3D / OA / 3D-AJ (median scaling, depth-adaptive thresholds);
- `worldtrack`: St4RTrack WorldTrack APD / EPE (global, per_traj, sim3 alignment; dynamic subset);
- `depth`: AbsRel, delta<1.25 (median or scale-and-shift alignment);
- `camera`: ATE, RPE translation / rotation as evo computes them.
"""
