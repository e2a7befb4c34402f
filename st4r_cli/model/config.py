"""`ModelConfig`: every constructor argument of the St4R network, as plain data (no eval'd strings).

Presets:
- `st4rtrack`: the official St4RTrack / DUSt3R-512 size (ViT-L encoder, ViT-B decoders, DPT heads);
  its state dict has exactly the keys and shapes of the published checkpoints.
- `st4r-tiny`: our embedded CPU default (a few million parameters, 256x192 input).

This module only imports the standard library, so the CLI can read configs instantly.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


# Bounds of every numeric model_config value: the official ViT-L St4RTrack is 1024 / 24 / 16 (encoder),
# 768 / 12 / 12 (decoder); these allow networks several times its size and nothing absurd.
MODEL_LIMITS: dict[str, tuple[float, float]] = {
    "img_size_hw": (16, 4096), "patch_size": (1, 64), "enc_embed_dim": (8, 4096), "enc_depth": (1, 64),
    "enc_num_heads": (1, 64), "dec_embed_dim": (8, 4096), "dec_depth": (1, 64), "dec_num_heads": (1, 64),
    "mlp_ratio": (0.25, 16), "rope_freq": (1e-3, 1e6), "norm_eps": (0, 1), "dpt_feature_dim": (1, 4096),
    "dpt_last_dim": (1, 4096), "dpt_layer_dims": (1, 4096), "conf_min": (0, 1e6)}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters of `St4rNet` (CroCo/DUSt3R family as used by ST4RTrack).

    img_size_hw: the training / recommended input size (H, W); any multiple of `patch_size` works.
    rope_freq: base frequency of the 2D RoPE (`pos_embed='RoPE100'` -> 100.0).
    depth_mode / conf_mode: DUSt3R post-processing; only ('exp', -inf, inf) and ('exp', 1, inf) are
      supported: xyz = v/|v| * expm1(|v|), conf = 1 + exp(c).
    dpt_feature_dim / dpt_last_dim / dpt_layer_dims: DPT head widths (official: 256, 128,
      (96, 192, 384, 768)); the tiny model shrinks them for CPU speed.
    """

    name: str = "custom"
    img_size_hw: tuple[int, int] = (288, 512)
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    norm_eps: float = 1e-6
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    depth_mode: str = "exp"
    conf_min: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_bounds()
        if self.enc_embed_dim % self.enc_num_heads or self.dec_embed_dim % self.dec_num_heads:
            raise ValueError("embedding dims must be divisible by the number of heads")
        if (self.enc_embed_dim // self.enc_num_heads) % 4 or (self.dec_embed_dim // self.dec_num_heads) % 4:
            raise ValueError("2D RoPE needs a head dim divisible by 4")
        if self.depth_mode != "exp":
            raise ValueError(f"unsupported depth_mode {self.depth_mode!r} (only 'exp')")
        if self.dec_depth < 1:
            raise ValueError("dec_depth must be >= 1")

    def _check_bounds(self) -> None:
        """ValueError for a value outside what any St4R/St4RTrack network uses (a checkpoint's
        model_config is read before anything is allocated: `enc_embed_dim=32768` would ask 13 GB)."""
        for name, (low, high) in MODEL_LIMITS.items():
            values = getattr(self, name)
            for value in values if isinstance(values, tuple) else (values,):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                    raise ValueError(f"{name}={values!r} is outside [{low:g}, {high:g}]")
        if len(self.img_size_hw) != 2 or len(self.dpt_layer_dims) != 4:
            raise ValueError("img_size_hw needs 2 values and dpt_layer_dims 4")

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """Indices into [encoder output, decoder block 1..L] that feed the DPT head (DUSt3R's rule)."""
        depth = self.dec_depth
        return (0, depth * 2 // 4, depth * 3 // 4, depth)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["img_size_hw"] = list(self.img_size_hw)
        out["dpt_layer_dims"] = list(self.dpt_layer_dims)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        kwargs = dict(data)
        for key in ("img_size_hw", "dpt_layer_dims"):
            if key in kwargs:
                if not isinstance(kwargs[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list, got {kwargs[key]!r}")
                kwargs[key] = tuple(int(v) for v in kwargs[key])
        if not isinstance(kwargs.get("extra", {}), dict) or not isinstance(kwargs.get("name", ""), str):
            raise ValueError("name must be a string and extra a mapping")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


ST4RTRACK = ModelConfig(name="st4rtrack")

ST4R_TINY = ModelConfig(
    name="st4r-tiny",
    img_size_hw=(192, 256),
    enc_embed_dim=192,
    enc_depth=6,
    enc_num_heads=3,
    dec_embed_dim=128,
    dec_depth=4,
    dec_num_heads=4,
    dpt_feature_dim=48,
    dpt_last_dim=16,
    dpt_layer_dims=(24, 48, 96, 96),
)

PRESETS: dict[str, ModelConfig] = {c.name: c for c in (ST4RTRACK, ST4R_TINY)}


def preset(name: str) -> ModelConfig:
    """A named preset (`st4rtrack`, `st4r-tiny`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# Official checkpoints: `args.model` is a Python call string such as
# "AsymmetricCroCo3DStereo(pos_embed='RoPE100', img_size=(512, 288), enc_embed_dim=1024, ...)".
# We parse it with `ast` (literals only, never eval) and map the arguments we understand.
# ---------------------------------------------------------------------------------------------

_SUPPORTED_HEADS = {"dpt"}


def parse_official_model_string(text: str) -> dict[str, Any]:
    """Keyword arguments of an official `args.model` string, as Python literals (no eval).

    `inf` / `-inf` names are turned into floats; anything that is not a literal raises ValueError.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse model string: {exc}") from exc
    call = tree.body
    if not isinstance(call, ast.Call):
        raise ValueError("model string is not a constructor call")
    return {kw.arg: _literal(kw.value) for kw in call.keywords if kw.arg is not None}


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
        return float(_literal(node.args[0]))
    return ast.literal_eval(node)


def config_from_official_kwargs(kwargs: dict[str, Any], name: str = "st4rtrack-import") -> ModelConfig:
    """Map AsymmetricCroCo3DStereo constructor arguments to a `ModelConfig`.

    DUSt3R gives img_size as (W, H); we store (H, W).
    """
    for key in ("head_type", "head_type1"):
        if kwargs.get(key, "dpt") not in _SUPPORTED_HEADS:
            raise ValueError(f"unsupported {key}={kwargs[key]!r} (only 'dpt' heads)")
    if kwargs.get("arch_mode", "VanillaDust3r") != "VanillaDust3r":
        raise ValueError(f"unsupported arch_mode={kwargs['arch_mode']!r} (only 'VanillaDust3r', the pair model)")
    if kwargs.get("output_mode", "pts3d") != "pts3d":
        raise ValueError(f"unsupported output_mode={kwargs['output_mode']!r}")
    pos_embed = str(kwargs.get("pos_embed", "RoPE100"))
    if not pos_embed.startswith("RoPE"):
        raise ValueError(f"unsupported pos_embed={pos_embed!r} (only RoPE)")
    depth_mode = kwargs.get("depth_mode", ("exp", -math.inf, math.inf))
    conf_mode = kwargs.get("conf_mode", ("exp", 1, math.inf))
    if depth_mode[0] != "exp" or conf_mode[0] != "exp":
        raise ValueError(f"unsupported depth_mode/conf_mode {depth_mode}/{conf_mode}")
    img_size = kwargs.get("img_size", (512, 288))
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    base = ST4RTRACK
    return ModelConfig(
        name=name,
        img_size_hw=(int(img_size[1]), int(img_size[0])),
        patch_size=int(kwargs.get("patch_size", 16)),
        enc_embed_dim=int(kwargs.get("enc_embed_dim", base.enc_embed_dim)),
        enc_depth=int(kwargs.get("enc_depth", base.enc_depth)),
        enc_num_heads=int(kwargs.get("enc_num_heads", base.enc_num_heads)),
        dec_embed_dim=int(kwargs.get("dec_embed_dim", base.dec_embed_dim)),
        dec_depth=int(kwargs.get("dec_depth", base.dec_depth)),
        dec_num_heads=int(kwargs.get("dec_num_heads", base.dec_num_heads)),
        mlp_ratio=float(kwargs.get("mlp_ratio", 4.0)),
        rope_freq=float(pos_embed[len("RoPE"):]),
        conf_min=float(conf_mode[1]),
    )


def config_from_state_dict_shapes(shapes: dict[str, tuple[int, ...]],
                                  num_heads: tuple[int, int] | None = None,
                                  name: str = "st4rtrack-import") -> ModelConfig:
    """Derive a `ModelConfig` from state-dict key shapes (official or ours).

    Head counts cannot be read from shapes; they default to dim // 64 (the DUSt3R/CroCo rule).
    """
    def depth_of(prefix: str) -> int:
        ids = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)}
        return max(ids) + 1 if ids else 0

    enc_dim = int(shapes["patch_embed.proj.weight"][0])
    patch = int(shapes["patch_embed.proj.weight"][-1])
    dec_dim = int(shapes["decoder_embed.weight"][0])
    mlp_hidden = int(shapes["enc_blocks.0.mlp.fc1.weight"][0])
    head = "downstream_head1.dpt."
    layer_dims = tuple(int(shapes[f"{head}act_postprocess.{i}.0.weight"][0]) for i in range(4))
    feature_dim = int(shapes[f"{head}scratch.layer1_rn.weight"][0])
    last_dim = int(shapes[f"{head}head.2.weight"][0])
    enc_heads, dec_heads = num_heads or (max(1, enc_dim // 64), max(1, dec_dim // 64))
    return ModelConfig(
        name=name,
        patch_size=patch,
        enc_embed_dim=enc_dim,
        enc_depth=depth_of("enc_blocks."),
        enc_num_heads=enc_heads,
        dec_embed_dim=dec_dim,
        dec_depth=depth_of("dec_blocks."),
        dec_num_heads=dec_heads,
        mlp_ratio=mlp_hidden / enc_dim,
        dpt_feature_dim=feature_dim,
        dpt_last_dim=last_dim,
        dpt_layer_dims=layer_dims,  # type: ignore[arg-type]
    )
