"""Every config section of a run, in one leaf module (stdlib only: no st4r_cli imports).

A run's `config.yaml` has one section per class in `SECTIONS` (pipeline order; `visibility` is shared
by the adapt stage's loss and the fuse stage). Each stage module re-exports its own config class, and
the stage functions take these objects; `st4r_cli.runs.config` composes them into `RunConfig` and
parses `--set SECTION.FIELD=VALUE`.

`LIMITS` bounds every numeric field of a section, `(low, high)` inclusive (`OPEN` as a third item: low
excluded): `st4r_cli.runs.config.check_limits` applies them to every config, however it was made (--set,
a config file, a flag, the API), before any stage runs. A test requires a bound for every int/float field.

`NOT_KEYED` lists the fields of a section that cannot change results (threads): they are saved in
config.yaml but left out of the stage cache keys (`st4r_cli.runs.config.keyed_fields`).
Each field is defined once: a stage that needs another section's knob takes that section as an
argument (and its cache key includes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

OPEN = "open"        # a LIMITS entry (low, high, OPEN) excludes low: the value must be > low
BIG = 1_000_000      # a bound for counts and weights that only excludes the absurd
MAX_FRAMES = 10_000_000
Limits = dict[str, tuple]


@dataclass
class DecodeConfig:
    LIMITS: ClassVar[Limits] = {"long_side": (16, 8192), "multiple": (1, 256), "start": (0, MAX_FRAMES),
                                "end": (1, MAX_FRAMES), "stride": (1, MAX_FRAMES), "max_frames": (2, MAX_FRAMES),
                                "fps": (0, 10_000, OPEN)}

    long_side: int = 256              # processing resolution: long side in pixels (before rounding)
    multiple: int = 16                # H and W rounded to a multiple of this (the model's patch size)
    upscale: bool = False             # enlarge sources smaller than long_side
    start: int = 0                    # first source frame to keep
    end: int | None = None            # stop before this source frame (None: to the end)
    stride: int = 1                   # keep every stride-th frame from `start`
    max_frames: int | None = None     # keep at most this many frames (None: no limit)
    fps: float | None = None          # frame rate of an image folder (videos use their timestamps)


@dataclass
class TracksConfig:
    LIMITS: ClassVar[Limits] = {"grid_size": (1, 1024), "query_every_k": (1, MAX_FRAMES),
                                "camera_every_k": (0, MAX_FRAMES), "camera_grid_size": (2, 1024),
                                "long_side": (0, 8192), "flow_long_side": (16, 4096), "fb_threshold": (0, 1000, OPEN),
                                "reacquire_ncc": (-1, 1), "cotracker_model_hw": (16, 4096)}

    backend: str = "builtin"          # builtin | cotracker3
    query_mode: str = "grid"          # grid | grid_every_k | file
    grid_size: int = 32               # points per side of the query grid
    query_every_k: int = 8            # grid_every_k: a new grid every k frames
    query_file: str = ""              # file: .npy (N,3)/(N,2) or text rows "t,x,y" / "x,y"
    # the camera solver's extra tracks (stage arrays camera_*): a grid re-seeded every k frames, so
    # every part of the video has tracks that start in it (0: none)
    camera_every_k: int = 8
    camera_grid_size: int = 16        # points per side of that grid
    # tracking resolution: the tracker runs on the input decoded a second time at this long side (0: the
    # source's own, capped at 1024 px), never enlarged; at or below the decoded frames' size it tracks the
    # decoded frames. Queries and output tracks stay in decoded-frame pixels (float32, sub-pixel)
    long_side: int = 0
    # builtin tracker (see st4r_cli/tracking/builtin.py)
    flow_long_side: int = 432         # DIS flow raster long side (px, never enlarged)
    dis_preset: str = "ultrafast"     # ultrafast | fast | medium
    occlusion: str = "lk_fb"          # lk_fb | dis_fb | none: the cycle check flagging occlusion
    fb_threshold: float = 3.0         # cycle error (px at a 256 long side) above which a point is occluded
    reacquire: bool = True            # re-find occluded points by their query-frame appearance
    reacquire_ncc: float = 0.7        # re-found patch must correlate with the query patch above this
    lost_motion: str = "velocity"     # velocity | flow: how a lost point moves until re-found
    # cotracker3
    cotracker_mode: str = "offline"   # offline | online
    cotracker_weights: str = ""       # default: weights/scaled_offline.pth or weights/scaled_online.pth
    cotracker_backward: bool = False  # offline: also track backwards from each query frame
    cotracker_model_hw: tuple[int, int] = (384, 512)  # internal resolution (CoTracker3's own)


@dataclass
class DepthConfig:
    LIMITS: ClassVar[Limits] = {"resolution_level": (0, 9), "num_tokens": (0, 100_000), "batch_size": (1, 1024),
                                "mv_offsets": (-1000, 1000), "mv_min_parallax_deg": (0, 90, OPEN),
                                "mv_consistency_rel": (0, 10, OPEN), "mv_max_fb_px": (0, 1000, OPEN),
                                "mv_propagate_reach": (0, 1000)}

    backend: str = "multiview"        # multiview (from the solved cameras) | moge | none
    moge_weights: str = ""            # default: weights/moge-2-vitl-normal/model.pt (MoGe-1 files work too)
    resolution_level: int = 9         # MoGe's 0..9 speed/detail knob
    num_tokens: int = 0               # ViT tokens per frame (0: from resolution_level)
    batch_size: int = 4               # frames per forward pass
    fp16: bool = True                 # half precision on CUDA
    # multiview (st4r_cli/depth/multiview.py)
    mv_offsets: tuple[int, ...] = (-16, -8, -4, 4, 8, 16)  # neighbour frames j = i + o
    mv_min_parallax_deg: float = 1.0  # a frame pair gives depth only above this triangulation angle
    mv_consistency_rel: float = 0.1   # pairs agree within this fraction of the median depth
    mv_max_fb_px: float = 1.0         # forward-backward flow consistency (px)
    mv_propagate_reach: int = 8       # frames t +- this many lend their static points to t's holes (0: off)


@dataclass
class VisibilityConfig:
    """The z-buffer test and the confidence -> pixel sigma map, shared by the TTA loss and fusion."""

    LIMITS: ClassVar[Limits] = {"mask_eps_rel": (0, 10), "sigma_floor_px": (0, 1000, OPEN),
                                "conf_alpha": (0, 100, OPEN)}

    mask_eps_rel: float = 0.05        # z-buffer tolerance relative to the surface depth
    sigma_floor_px: float = 1.0       # sigma = sqrt(floor^2 + (f * conf_alpha * s / (c * z))^2) pixels
    conf_alpha: float = 0.2           # ConfLoss alpha used to turn confidence into sigma


@dataclass
class TTALossConfig:
    """Which TTA loss and its parts (flags switch parts off for ablations): `st4r_cli.losses.tta`."""

    LIMITS: ClassVar[Limits] = {"traj_weight": (0, BIG), "depth_weight": (0, BIG), "align_weight": (0, BIG),
                                "outlier_gate": (0, 1000), "inv_weight_eps": (0, BIG, OPEN), "prior_weight": (0, BIG)}

    loss: str = "robust"              # robust (ST4RTrack+) | baseline (ST4RTrack) | none (adapt: no TTA)
    traj_weight: float = 0.5
    depth_weight: float = 10.0
    align_weight: float = 5.0
    use_mask: bool = True             # robust: z-buffer visibility mask
    use_tracker_visibility: bool = True  # robust: AND the mask with the tracker's visibility
    use_sigma: bool = True            # robust: per-point sigma NLL and weights
    weight_mode: str = "exp"          # robust: exp -> w = exp(-sigma/median sigma); inv -> 1/(sigma^2 + eps)
    calibrate_sigma: bool = True      # robust: sigma's size from the residuals, its shape from the confidence
    outlier_gate: float = 3.0         # robust: mask tracks whose residual exceeds gate x sigma (0: off)
    inv_weight_eps: float = 1.0       # eps of the 1/(sigma^2 + eps) weights, pixels^2
    prior_weight: float = 5.0         # both losses: self-distillation prior towards the pre-TTA network
                                      # (0 disables): without a depth term nothing else pins the geometry
    prior_kind: str = "points"        # points (both heads' pointmaps) | anchor (head 2, and head 1 on the
                                      # (a, a) pair only: motion free) | depth (head-2 z-depth, eq. 9)


@dataclass
class AdaptConfig(TTALossConfig):
    """Test-time adaptation: the loss (inherited fields, `TTALossConfig`) and the optimisation
    (0 means: the device's default, see `stages.adapt.resolve`)."""

    LIMITS: ClassVar[Limits] = {**TTALossConfig.LIMITS, "iters": (0, BIG), "lr": (0, 1), "frames_per_step": (0, 4096),
                                "weight_decay": (0, 10), "grad_clip": (0, BIG), "max_tracks": (1, BIG),
                                "pnp_stride": (1, 64), "prior_stride": (1, 64), "diverge_factor": (1, BIG),
                                "micro_batch": (0, 4096)}
    # memory knobs that give the same numbers (bit for bit on CPU: tests/tta/test_tta_memory.py)
    NOT_KEYED: ClassVar[tuple[str, ...]] = ("checkpointing", "cache_encoder", "snapshots")

    iters: int = 0                    # TTA steps; 0 -> 20 on CPU, 300 on CUDA
    lr: float = 0.0                   # AdamW learning rate; 0 -> 2e-5 on CPU, 5e-5 on CUDA
    frames_per_step: int = 0          # pairs per step incl. (a, a); 0 -> 4 on CPU, 10 on CUDA
    params: str = "decoders+heads"    # decoders+heads | heads | tracking | all
    weight_decay: float = 0.0
    grad_clip: float = 1.0            # max gradient norm (0 disables)
    max_tracks: int = 512             # 2D tracks per step (random subset)
    pnp_stride: int = 4               # the differentiable PnP of each step uses every k-th pixel of head 2
    tta_focal: str = "fixed"          # estimated focal during TTA: fixed (pre-TTA anchor pointmap) |
                                      # per_step (re-fitted to the adapted pointmap at every step)
    tta_cameras: str = "pnp"          # the reprojection loss's cameras: pnp (differentiable PnP on head 2 at
                                      # every step) | solved (the cameras stage's, scaled to the network's
                                      # units at every step, with their K (tta_focal unused); PnP when they
                                      # were not solved or a step's anchor has no solved depth)
    prior_stride: int = 4             # points prior: every k-th pixel in x and y
    diverge_factor: float = 4.0       # a loss above this x its running average triggers a rollback
    # memory (`stages.adapt.resolve_memory`; "auto" depends on the device and the network's size: a
    # "large" network has over 100 M parameters, the official one 571 M, the default tiny one a few M)
    checkpointing: str = "auto"       # on | off | auto (on for a large network or on CUDA): activation
                                      # checkpointing of the encoder / decoder blocks and heads in the TTA
    micro_batch: int = 0              # pairs per forward pass within a step (the loss and its gradient stay
                                      # the whole step's); 0 -> 1 on CPU / 2 on CUDA with checkpointing on,
                                      # else all pairs at once
    amp: str = "auto"                 # bf16 | off | auto (bf16 on CUDA, off on CPU): bfloat16 autocast of the
                                      # encoder and decoders in the TTA, heads and loss in float32
    cache_encoder: str = "auto"       # auto (encoder tokens computed once per frame when the encoder is not
                                      # adapted, reused by every step) | off (recomputed at every forward)
    snapshots: str = "auto"           # memory | disk | auto (disk for a large network on CPU, else memory):
                                      # where the original weights and the rollback state are kept


@dataclass
class PredictConfig:
    """How the network runs over the video (adapt and predict): windows, focal, batches, threads."""

    NOT_KEYED: ClassVar[tuple[str, ...]] = ("cpu_threads",)
    # cpu_threads: also at most the machine's cores (stages.predict.check_predict_config)
    LIMITS: ClassVar[Limits] = {"window": (2, 4096), "overlap": (1, 4095), "focal": (0, BIG),
                                "batch_size": (0, 4096), "cpu_threads": (0, 4096)}

    window: int = 24                  # frames per window
    overlap: int = 4                  # frames shared by consecutive windows (>= 1)
    focal: float = 0.0                # focal in pixels of the decoded frames; 0 -> estimate
    use_depth_intrinsics: bool = True  # use the depth backend's K when it gives one (and focal is 0)
    batch_size: int = 0               # inference pairs per batch; 0 -> 4 on CPU, 16 on CUDA
    cpu_threads: int = 1              # torch threads on CPU for TTA and inference (0: torch's default).
                                      # 1 is 3-5x faster than 2 on a busy 2-core machine (tiny ops
                                      # + thread synchronisation); raise it on an idle many-core CPU


@dataclass
class CamerasConfig:
    """The camera solver: bundle adjustment on the 2D tracks alone, before depth and TTA."""

    LIMITS: ClassVar[Limits] = {"focal_init": (0, BIG), "ba_chunk": (2, 4096), "ba_accept_px": (0, 1000, OPEN),
                                "ba_link_px": (0, 1000, OPEN), "ba_point_max_px": (0, 1000),
                                "ba_min_parallax_deg": (0, 90), "ba_min_parallax_2d_deg": (0, 90),
                                "window_k_sigma": (0, 1000)}

    refine: str = "ba"                # ba (solve the cameras on the 2D tracks) | none (the network's)
    focal_init: float = 0.0           # focal in pixels of the decoded frames; 0 -> predict.focal, else the
                                      # un-adapted network's frame-0 estimate
    ba_chunk: int = 8                 # frames join the bundle adjustment in chunks of this size
    ba_accept_px: float = 4.0         # the solved cameras are kept when the median reprojection is below
    ba_link_px: float = 4.0           # an observation fitted under this many px links its track's frames
                                      # (consecutive frames fewer than 8 fitted tracks link: rejected)
    ba_focal: str = "auto"            # fixed (the start: focal_init / the network's) | refine (with the
                                      # cameras) | auto (both solved; the refined one kept only when it fits
                                      # clearly better within 1.3x of the start: stages.cameras._pick_focal)
    ba_point_max_px: float = 2.0      # static tracks become bundle points below this median residual ...
    ba_min_parallax_deg: float = 6.0  # ... and above this parallax at the bundle's solution ...
    ba_min_parallax_2d_deg: float = 1.0  # ... and this one on the 2D tracks, the best camera rotation taken out
    # movers: a track whose points triangulated from different stretches of the video disagree by more than
    # this many times their noise moves (geometry.window_triangulation; 0: off, the default until it helps
    # more than it costs: stages/cameras.py step 5)
    window_k_sigma: float = 0.0


@dataclass
class FuseConfig:
    """World 3D tracks, 2D tracks and visibility from the windows' predictions and the cameras."""

    LIMITS: ClassVar[Limits] = {"pnp_stride": (1, 64), "sim3_stride": (1, 64), "static_spread_rel": (0, 10, OPEN),
                                "dynamic_rel": (0, 10, OPEN),
                                "fill_radius_px": (0, 4096), "grid_size": (1, 1024), "dense_stride": (1, 1024),
                                "visibility_quantile": (0, 1), "sigma_fill_px": (0, 4096, OPEN)}

    pnp_stride: int = 4               # every k-th pixel of head 2 for each window camera's PnP
    sim3_stride: int = 4              # every k-th pixel of the overlap pointmaps for the windows' Sim(3)
    multiview: bool = True            # static pixels and tracks from the multi-view depth when present
    static_spread_rel: float = 0.05   # a track is static when its lifted points agree within this x depth
    dynamic_rel: float = 0.05         # a network track moving more than this x the scene depth is dynamic
    fill_radius_px: float = 16.0      # non-moving pixels this close to multi-view ones take a fill of their depth
    mover_depth: bool = True          # moving parts at the depth of the static surface they stand on, in front of
                                      # what they cover (stages/fuse.py step 6)

    queries: str = "tracks"           # tracks (the tracks stage's queries) | grid | dense (frame 0)
    grid_size: int = 32               # points per side for queries=grid
    dense_stride: int = 1             # pixel stride for queries=dense
    visibility: str = "tracker"       # tracker (its flags; the z-buffer test for queries it did not
                                      # track: queries=grid|dense) | mask (z-buffer) | both
    visibility_quantile: float = 0.9  # visibility=tracker, queries the tracker did not track: the z-buffer
                                      # tolerance accepts this share of the points the tracker sees (0: off)
    sigma_fill_px: float = 16.0       # sigma of interpolated track positions
    fuse_tracks: bool = True          # 3D tracks follow the 2D tracks where the tracker sees them


# Section name -> config class, in pipeline order (the sections of config.yaml besides the top level).
SECTIONS: dict[str, type] = {
    "decode": DecodeConfig,
    "tracks": TracksConfig,
    "cameras": CamerasConfig,
    "depth": DepthConfig,
    "visibility": VisibilityConfig,
    "adapt": AdaptConfig,
    "predict": PredictConfig,
    "fuse": FuseConfig,
}
