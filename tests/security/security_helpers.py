"""Helpers of the security / integrity tests: real pickle payloads, a micro model, a small clip, a fast
`st4r adapt` command line (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess

import numpy as np


class ShellPayload:
    """Unpickling it runs `os.system(command)` (pickled as the global `posix.system`)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class ExecPayload:
    """Unpickling it runs `builtins.exec(code)`."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        import builtins

        return (builtins.exec, (self.code,))


class SubprocessPayload:
    """Unpickling it runs `subprocess.call(argv)`."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce__(self):
        return (subprocess.call, (self.argv,))


def payloads(marker: Path) -> dict[str, object]:
    """One payload per route to code execution, each creating `marker` if it ever runs."""
    return {"os.system": ShellPayload(f"touch {marker}"),
            "builtins.exec": ExecPayload(f"open({str(marker)!r}, 'w').write('pwned')"),
            "subprocess.call": SubprocessPayload(["touch", str(marker)])}


REFUSED_NAMES = {"os.system": ("posix.system", "os.system"), "builtins.exec": ("builtins.exec",),
                 "subprocess.call": ("subprocess.call", "commands.call")}  # protocol 2 writes Py2 names


def micro_model(seed: int = 0):
    import torch

    from st4r_cli.model.config import ModelConfig
    from st4r_cli.model.net import St4rNet

    config = ModelConfig(name="micro", img_size_hw=(32, 48), enc_embed_dim=32, enc_depth=1, enc_num_heads=2,
                         dec_embed_dim=32, dec_depth=2, dec_num_heads=2, dpt_feature_dim=16, dpt_last_dim=8,
                         dpt_layer_dims=(8, 16, 16, 16))
    torch.manual_seed(seed)
    return St4rNet(config).eval()


def texture_frames(num_frames: int = 8, hw: tuple[int, int] = (32, 48), shift_px: int = 2,
                   seed: int = 0) -> np.ndarray:
    """A random blocky texture panning left by `shift_px` per frame: `(T, H, W, 3) uint8`."""
    rng = np.random.default_rng(seed)
    h, w = hw
    big_w = w + shift_px * num_frames + 4
    coarse = rng.integers(0, 255, size=(h // 4 + 1, big_w // 4 + 1, 3)).astype(np.uint8)
    texture = np.kron(coarse, np.ones((4, 4, 1), np.uint8))[:h, :big_w]
    return np.stack([texture[:, t * shift_px:t * shift_px + w] for t in range(num_frames)])


def adapt_args(clip, run_dir, model, *extra: str) -> list[str]:
    """A fast `st4r adapt` on the micro model (every stage runs, a few seconds on a CPU)."""
    return ["adapt", str(clip), "--out", str(run_dir), "--model", str(model), "--device", "cpu",
            "--long-side", "48", "-q",
            "--set", "tracks.grid_size=6", "--set", "adapt.iters=2", "--set", "adapt.frames_per_step=3",
            "--set", "adapt.pnp_stride=2", "--set", "predict.window=5", "--set", "predict.overlap=2",
            "--set", "tracks.camera_grid_size=4", *extra]
