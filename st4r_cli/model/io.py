"""Checkpoint I/O for `St4rNet`.

Formats `load_model` accepts (all local paths):
- st4r safetensors: weights + metadata key `model_config` (the `ModelConfig` as JSON). Tensors may be
  stored in float16; they are cast to float32 on load.
- st4r torch pickle: `{'model_config': dict, 'model': state_dict}`.
- official St4RTrack / DUSt3R pickle: `{'model': state_dict, 'args': Namespace(model="AsymmetricCroCo3DStereo(...)")}`,
  keys maybe prefixed `module.`. The config comes from the state-dict shapes, with head counts and
  image size from `args.model` (parsed with `ast`, never eval'd) when present.

Torch pickles are read with `weights_only=True` (`safe_load.load_torch_checkpoint`): tensors, plain
containers, numbers, strings and `argparse.Namespace` only; a file naming anything else is refused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st4r_cli.errors import St4rError
from st4r_cli.model.config import (ModelConfig, config_from_official_kwargs,
                                   config_from_state_dict_shapes, parse_official_model_string)

if TYPE_CHECKING:
    import torch

    from st4r_cli.model.net import St4rNet

_ALIAS = re.compile(r"(.*\.scratch\.)layer_rn\.([0-3])(\..*)")


def canonical_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DPT alias keys `scratch.layer_rn.{i}.*` (same tensors as `scratch.layer{i+1}_rn.*`)."""
    return {k: v for k, v in state.items() if not _ALIAS.match(k)}


def complete_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add missing alias keys `scratch.layer_rn.{i}.*` from `scratch.layer{i+1}_rn.*`."""
    out = dict(state)
    for key, value in state.items():
        match = re.match(r"(.*\.scratch\.)layer([1-4])_rn(\..*)", key)
        if match:
            alias = f"{match.group(1)}layer_rn.{int(match.group(2)) - 1}{match.group(3)}"
            out.setdefault(alias, value)
    return out


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Remove DDP's `module.` prefix from every key that has it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def save_model(model: St4rNet, path: str | os.PathLike[str], half: bool = False,
               extra_metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as a self-describing checkpoint (atomic: temp file + os.replace).

    `.safetensors`: metadata `model_config` (JSON) [+ extra_metadata]; `half=True` stores float16.
    Anything else: a torch pickle `{'model_config': dict, 'model': state_dict}`.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in canonical_state_dict(model.state_dict()).items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            if half:
                state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            metadata = {"model_config": model.config.to_json(), "format": "st4r"}
            metadata.update(extra_metadata or {})
            save_file(state, str(tmp), metadata=metadata)
        else:
            torch.save({"model_config": model.config.to_dict(), "model": state}, tmp)
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files; weights are meant to be shared
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and float32 state dict (aliases completed) of any supported checkpoint file."""
    import torch

    from st4r_cli.safe_load import load_torch_checkpoint

    path = Path(path)
    if not path.is_file():
        raise St4rError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    ckpt = load_torch_checkpoint(path)  # weights_only=True + argparse.Namespace: never runs code
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise St4rError(f"{path} is not a St4R/St4RTrack checkpoint (no 'model' state dict)")
    state = strip_module_prefix(ckpt["model"])
    state = {str(k): v.float() if v.is_floating_point() else v for k, v in state.items() if torch.is_tensor(v)}
    if "model_config" in ckpt:
        try:
            config = ModelConfig.from_dict(dict(ckpt["model_config"]))
        except (TypeError, ValueError, KeyError) as exc:
            raise St4rError(f"{path}: invalid model_config: {' '.join(str(exc).split())}") from None
    else:
        config = _official_config(state, ckpt.get("args"), path)
    return config, complete_state_dict(state)


def _read_safetensors(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001
        raise St4rError(f"cannot read safetensors file {path}: {exc}") from exc
    state = strip_module_prefix(state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if "model_config" in metadata:
        config = parse_model_config_json(metadata["model_config"], path)
    else:
        config = _official_config(state, None, path)
    return config, complete_state_dict(state)


def parse_model_config_json(text: str, path: Path) -> ModelConfig:
    """A safetensors file's `model_config` metadata (JSON) as a checked ModelConfig (St4rError, one line)."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise St4rError(f"{path}: invalid model_config: {' '.join(str(exc).split())}") from None


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The canonical state dict's tensor shapes of `St4rNet(config)`, built on torch's meta device
    (nothing allocated): a checkpoint is compared with them before the real network is built."""
    import torch

    from st4r_cli.model.net import St4rNet

    with torch.device("meta"):
        model = St4rNet(config)
    return {k: tuple(v.shape) for k, v in canonical_state_dict(model.state_dict()).items()}


def check_state_matches(config: ModelConfig, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """St4rError unless the tensors `shapes` (canonical names) are exactly those of `St4rNet(config)`."""
    expected = expected_shapes(config)
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        raise St4rError(f"{path}: state dict does not match the model config "
                        f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                        f"not in the model {extra[:3]}{'...' if len(extra) > 3 else ''})")
    wrong = [k for k in expected if tuple(shapes[k]) != expected[k]]
    if wrong:
        raise St4rError(f"{path}: tensor shapes do not match the model config ({wrong[0]}: "
                        f"{tuple(shapes[wrong[0]])} in the file, {expected[wrong[0]]} expected)")


def _official_config(state: dict[str, torch.Tensor], args: Any, path: Path) -> ModelConfig:
    """Config of an official checkpoint: architecture from shapes, heads/img size from args.model."""
    try:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        config = config_from_state_dict_shapes(shapes, name=f"import:{path.stem}")
    except KeyError as exc:
        raise St4rError(f"{path}: not a St4RTrack/DUSt3R state dict (missing {exc})") from exc
    model_string = getattr(args, "model", None) if args is not None else None
    if isinstance(args, dict):
        model_string = args.get("model")
    if isinstance(model_string, str):
        try:
            from_args = config_from_official_kwargs(parse_official_model_string(model_string), config.name)
        except ValueError as exc:
            raise St4rError(f"{path}: unsupported model in args.model: {exc}") from exc
        config = config.replace(enc_num_heads=from_args.enc_num_heads, dec_num_heads=from_args.dec_num_heads,
                                img_size_hw=from_args.img_size_hw, rope_freq=from_args.rope_freq,
                                conf_min=from_args.conf_min)
    return config


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> St4rNet:
    """Load any supported checkpoint (see module docstring) into an eval-mode float32 `St4rNet`.

    The network is built on torch's meta device and takes the file's tensors as its parameters
    (`assign=True`): one copy of the weights in memory, not a random initialisation plus the file's."""
    import torch

    from st4r_cli.model.net import St4rNet

    config, state = read_checkpoint(path)
    check_state_matches(config, {k: tuple(v.shape) for k, v in canonical_state_dict(state).items()}, Path(path))
    try:
        with torch.device("meta"):
            model = St4rNet(config)   # nothing allocated (shapes checked above)
    except ValueError as exc:
        raise St4rError(f"{path}: invalid model config: {exc}") from exc
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise St4rError(f"{path}: state dict does not match the model config "
                        f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                        f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    try:
        model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise St4rError(f"{path}: tensor shapes do not match the model config: {str(exc).splitlines()[-1]}") from exc
    return model.to(device).eval()


def import_official(src: str | os.PathLike[str], dst: str | os.PathLike[str], half: bool = False) -> Path:
    """Convert an official (or any supported) checkpoint to st4r's self-describing safetensors."""
    if Path(dst).suffix != ".safetensors":
        raise St4rError(f"output must end in .safetensors: {dst}")
    model = load_model(src, "cpu")
    return save_model(model, dst, half=half, extra_metadata={"source": Path(src).name})


def check_checkpoint_file(path: str | os.PathLike[str], option: str = "--model") -> None:
    """Cheap checks that `path` is a checkpoint `load_model` can read, before any stage runs.

    Missing / not a regular file / unreadable / neither safetensors nor a torch checkpoint, or a torch
    checkpoint naming a type the safe loader refuses: St4rError (one line). Reads only the file's
    header or pickle, never the tensors.
    """
    import zipfile

    path = Path(path)
    if not path.exists():
        raise St4rError(f"{option} checkpoint not found: {path}")
    if not path.is_file():
        raise St4rError(f"{option} {path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as err:
        raise St4rError(f"{option} {path} cannot be read: {err.strerror or err}") from None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:  # the header only; no tensor read
                metadata = handle.metadata() or {}
                shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - any header failure is a bad file
            raise St4rError(f"{option} {path} is not a readable safetensors file: "
                            f"{' '.join(str(exc).split())}") from None
        if "model_config" in metadata:
            config = parse_model_config_json(metadata["model_config"], path)
        else:
            try:
                config = config_from_state_dict_shapes(strip_module_prefix(shapes), name=f"import:{path.stem}")
            except (KeyError, ValueError) as exc:
                raise St4rError(f"{path}: not a St4R/St4RTrack state dict (missing {exc})") from None
        check_state_matches(config, canonical_state_dict(strip_module_prefix(shapes)), path)
        return
    if zipfile.is_zipfile(path):
        import torch

        from st4r_cli.safe_load import REFUSED_HINT, torch_allowed_globals

        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - a zip that is no torch checkpoint
            raise St4rError(f"{option} {path} is not a torch checkpoint ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in torch_allowed_globals()}
        refused = sorted(set(found) - allowed)
        if refused:
            raise St4rError(f"{option} {path}: refused to load {', '.join(refused)} ({REFUSED_HINT})")
        return
    if head[:1] == b"\x80":  # a legacy (non-zip) torch pickle: load it with the safe loader
        read_checkpoint(path)
        return
    raise St4rError(f"{option} {path} is not a checkpoint (neither safetensors nor a torch file)")
