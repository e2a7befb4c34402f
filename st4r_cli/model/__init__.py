"""The St4R network (CroCo/DUSt3R family as used by ST4RTrack): configs, checkpoint I/O, inference.

Light imports only here; torch is imported by the submodules:
`st4r_cli.model.net.St4rNet`, `st4r_cli.model.io.load_model/save_model`,
`st4r_cli.model.inference.predict_pairs/forward_pairs`, `st4r_cli.model.config.ModelConfig`.
"""

from __future__ import annotations

from pathlib import Path

#: The embedded default checkpoint shipped with st4r.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "st4r-tiny" / "model.safetensors"


def load_model(path, device="cpu"):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """`st4r_cli.model.io.load_model` (lazy import)."""
    from st4r_cli.model.io import load_model as _load

    return _load(path, device)


def predict_pairs(model, frames_u8, pairs, batch_size=4, device=None, amp=True):  # noqa: ANN001, ANN201
    """`st4r_cli.model.inference.predict_pairs` (lazy import)."""
    from st4r_cli.model.inference import predict_pairs as _predict

    return _predict(model, frames_u8, pairs, batch_size=batch_size, device=device, amp=amp)
