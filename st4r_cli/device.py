"""Which torch device a run uses (a leaf module: stdlib and st4r_cli.errors; torch only when asked)."""

from __future__ import annotations

from st4r_cli.errors import St4rError


def resolve_device(device: object) -> str:
    """Return the torch device string for a `--device` value: "cpu" or "cuda".

    `auto` means CUDA if a CUDA device works, else CPU; asking for `cuda` on a machine without a
    working CUDA device is a user error.
    """
    name = str(getattr(device, "value", device)).lower()
    if name not in {"auto", "cpu", "cuda"}:
        raise St4rError(f"unknown device '{device}': use auto, cpu or cuda")
    if name == "cpu":
        return "cpu"
    import torch  # heavy: only when a command actually runs

    cuda_ok = torch.cuda.is_available()
    if name == "cuda" and not cuda_ok:
        raise St4rError("--device cuda was requested but no CUDA device is available "
                        "(torch.cuda.is_available() is False); use --device cpu")
    return "cuda" if cuda_ok else "cpu"
