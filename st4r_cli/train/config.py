"""`PretrainConfig`: everything that defines a pretraining run (light import for the CLI)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Fields that may change when a run is resumed (they do not change what was already trained).
RESUMABLE_FIELDS = frozenset({"steps", "max_minutes", "ckpt_every", "log_every", "threads", "device"})


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining run of the St4R network on synthetic clips.

    Data: `num_clips` clips, clip i = preset `presets[i % len(presets)]` with seed `clip_seed0 + i`,
    `num_frames` frames at size `sizes_hw[i % len(sizes_hw)]` (each step draws its batch from the
    clips of one size, `sizes_hw[step % len(sizes_hw)]`), with exact dense tracks from `num_anchors` anchor frames (0 and
    frames spread over the first two thirds). Pairs (a, j): a uniform among the anchors, j uniform in
    [a, min(T-1, a + max_stride(step))]; max_stride grows linearly from `stride_start` to T - 1 over
    the first `curriculum_frac` of the steps (stride curriculum).
    Optimiser: AdamW (no decay on norms/biases), linear warmup for `warmup_steps`, cosine decay to
    `min_lr` at `steps`. Loss: ConfLoss(Regr3D), alpha = `alpha`.
    """

    out_dir: str
    model: str = "st4r-tiny"
    init: str | None = None
    presets: tuple[str, ...] = ("easy", "occlusion", "fast-motion", "static-scene", "mixed")
    num_clips: int = 40
    clip_seed0: int = 1000
    num_frames: int = 24
    num_anchors: int = 3
    sizes_hw: tuple[tuple[int, int], ...] = ((192, 256), (144, 256))
    steps: int = 2000
    batch_size: int = 4
    lr: float = 4e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    alpha: float = 0.2
    stride_start: int = 3
    curriculum_frac: float = 0.5
    flip: bool = True
    seed: int = 0
    ckpt_every: int = 50
    log_every: int = 10
    threads: int = 1
    device: str = "auto"
    cache_dir: str | None = None
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.num_clips < len(self.sizes_hw):
            raise ValueError("need at least one clip per training size")
        if self.num_clips < 1 or self.num_frames < 2 or self.steps < 0 or self.batch_size < 1:
            raise ValueError("num_clips >= 1, num_frames >= 2, steps >= 0 and batch_size >= 1 are required")

    @property
    def clip_cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out_dir) / "clip_cache"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["presets"] = list(self.presets)
        out["sizes_hw"] = [list(s) for s in self.sizes_hw]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        kwargs = dict(data)
        kwargs["presets"] = tuple(kwargs.get("presets", cls.presets))
        if "sizes_hw" in kwargs:
            kwargs["sizes_hw"] = tuple((int(h), int(w)) for h, w in kwargs["sizes_hw"])
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> PretrainConfig:
        return dataclasses.replace(self, **changes)
