"""The full configuration of a run, saved as `config.yaml` at the top of every run directory.

`RunConfig` is composed of the config sections of `st4r_cli/configs.py` (a leaf module). Composition
is generic (`dataclasses.fields`), so a field added to a stage config is saved, loaded and
overridable (`--set tracks.grid_size=16`) without touching this module.

Only light imports here (stdlib + st4r_cli.configs, st4r_cli.paths).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from st4r_cli.configs import (OPEN, SECTIONS, AdaptConfig, CamerasConfig, DecodeConfig, DepthConfig, FuseConfig,
                              PredictConfig, TracksConfig, VisibilityConfig)
from st4r_cli.errors import St4rError
from st4r_cli.paths import repo_root, resolve_model_path

DEFAULT_MODEL = "weights/st4r-tiny/model.safetensors"
CONFIG_HEADER = "# st4r run configuration"   # the first line of every config.yaml st4r writes

# Section name -> config class, in pipeline order (st4r_cli/configs.py).
STAGE_CONFIGS: dict[str, type] = SECTIONS


@dataclass
class RunConfig:
    """Everything that determines a run's results (saved to `<run>/config.yaml`)."""

    LIMITS: ClassVar[dict[str, tuple]] = {"seed": (0, 2**32 - 1)}   # NumPy seeds are 32-bit

    input: str = ""                   # video file or folder of images (absolute path)
    model: str = DEFAULT_MODEL        # checkpoint (st4r safetensors/torch, or an official St4RTrack .pth)
    device: str = "auto"              # as requested: auto | cpu | cuda
    seed: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tracks: TracksConfig = field(default_factory=TracksConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    visibility: VisibilityConfig = field(default_factory=VisibilityConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a (yaml) dict; missing keys take their defaults, unknown keys are an error."""
        if not isinstance(data, dict):
            raise St4rError("run config must be a mapping of sections (decode:, tracks:, ...)")
        config = cls()
        for key, value in data.items():
            if key in STAGE_CONFIGS:
                setattr(config, key, stage_config_from_dict(STAGE_CONFIGS[key], value or {}, key))
            elif key in _top_level_fields():
                setattr(config, key, check_field_value(cls, key, value, key))
            else:
                raise St4rError(f"unknown run config key '{key}' (known: {', '.join(_all_keys())})")
        return config


def _top_level_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig) if f.name not in STAGE_CONFIGS]


def _all_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def stage_config_from_dict(cls: type, data: dict[str, Any], section: str = "") -> Any:
    """Instantiate a stage config dataclass from a dict, checking field names."""
    if not isinstance(data, dict):
        raise St4rError(f"config section '{section}' must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise St4rError(f"unknown {section or cls.__name__} option(s): {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(names))})")
    return cls(**{k: check_field_value(cls, k, v, f"{section}.{k}" if section else k) for k, v in data.items()})


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass's fields (annotations are strings here)."""
    import typing

    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: check against defaults only
        return {}


def check_field_value(cls: type, name: str, value: Any, where: str) -> Any:
    """`value` checked (and converted where lossless) against the declared type of field `name`.

    int, float, bool, str, `X | None` and `tuple[...]` fields are checked; a float must be finite
    unless the class lists the field in `ALLOW_NONFINITE: ClassVar[tuple[str, ...]]`. A string for a
    float field is parsed as a number (YAML 1.1 reads "1e-4" as a string). St4rError names the
    setting (`where`) and the value:  "decode.end='abc': expected an integer".
    """
    declared = _field_types(cls).get(name)
    if declared is None:
        declared = type(_field_default(cls, name)) if _field_default(cls, name) is not None else Any
    allow_nonfinite = name in getattr(cls, "ALLOW_NONFINITE", ())
    value = _check_type(declared, value, where, allow_nonfinite)
    check_limit(cls, name, value, where)
    return value


def check_limit(cls: type, name: str, value: Any, where: str) -> None:
    """St4rError when `value` (a number, a tuple of numbers or None) is outside the field's bound in
    `cls.LIMITS` (st4r_cli/configs.py): "fuse.pnp_stride=0: must be in [1, 64]"."""
    bound = getattr(cls, "LIMITS", {}).get(name)
    if bound is None or value is None:
        return
    low, high, *flags = bound
    for number in value if isinstance(value, tuple) else (value,):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        too_low = number <= low if OPEN in flags else number < low
        if too_low or number > high:
            interval = f"{'(' if OPEN in flags else '['}{_number(low)}, {_number(high)}]"
            raise St4rError(f"{where}={value!r}: must be in {interval}")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_limits(config: RunConfig) -> None:
    """Every bounded value of a run config checked (St4rError naming the first one out of bounds),
    whichever way it was set (flags and the API set fields directly)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in STAGE_CONFIGS:
            for g in dataclasses.fields(value):
                check_limit(type(value), g.name, getattr(value, g.name), f"{f.name}.{g.name}")
        else:
            check_limit(RunConfig, f.name, value, f.name)


def _check_type(declared: Any, value: Any, where: str, allow_nonfinite: bool = False) -> Any:
    import math
    import types
    import typing

    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _check_type(options[0], value, where, allow_nonfinite)
        return value
    if declared is bool:
        if isinstance(value, bool):
            return value
        raise St4rError(f"{where}={value!r}: expected true or false")
    if declared is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise St4rError(f"{where}={value!r}: expected an integer")
    if declared is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise St4rError(f"{where}={value!r}: expected a number") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise St4rError(f"{where}={value!r}: expected a number")
        number = float(number)
        if not allow_nonfinite and not math.isfinite(number):
            raise St4rError(f"{where}={value!r}: expected a finite number")
        return number
    if declared is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise St4rError(f"{where}={value!r}: expected a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise St4rError(f"{where}={value!r}: expected a list")
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise St4rError(f"{where}={value!r}: expected a list of {len(args)} values")
            return tuple(_check_type(a, v, where, allow_nonfinite) for a, v in zip(args, value))
        if args:
            return tuple(_check_type(args[0], v, where, allow_nonfinite) for v in value)
        return tuple(value)
    return value


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return None


def keyed_fields(config: Any) -> dict[str, Any]:
    """A stage config as a dict for cache keys: every field except those in its `NOT_KEYED`.

    A stage config may declare `NOT_KEYED: ClassVar[tuple[str, ...]] = ("cpu_threads",)` for knobs
    that cannot change its results (threads, batch sizes): they are saved in config.yaml but a
    change to them reuses the cache.
    """
    data = dataclasses.asdict(config)
    for name in getattr(type(config), "NOT_KEYED", ()):
        data.pop(name, None)
    return data


def config_digest_payload(config: Any) -> Any:
    """A JSON-able, canonical form of a config (dataclass, dict or scalar) for hashing."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = keyed_fields(config)
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` overrides (values parsed as YAML scalars/lists, never eval'd).

    Example: `["tracks.grid_size=16", "decode.long_side=384", "seed=3"]`. The value is checked
    against the type of the field's default (int fields accept ints, floats accept numbers, ...).
    """
    import yaml

    for item in overrides:
        if "=" not in item:
            raise St4rError(f"--set expects SECTION.FIELD=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if "." in key:
            section, name = key.split(".", 1)
            if section not in STAGE_CONFIGS:
                raise St4rError(f"--set {item}: unknown section '{section}' "
                                f"(known: {', '.join(STAGE_CONFIGS)})")
            target = getattr(config, section)
        else:
            section, name, target = "", key, config
            if name in STAGE_CONFIGS:
                raise St4rError(f"--set {item}: give a field, e.g. {name}.<field>=VALUE")
        names = [f.name for f in dataclasses.fields(target)]
        if name not in names:
            where = f"'{section}'" if section else "the run config"
            raise St4rError(f"--set {item}: {where} has no option '{name}' (known: {', '.join(names)})")
        if _field_types(type(target)).get(name) is str and raw.strip():
            value = raw.strip()  # a string field takes the text as typed (no YAML number/bool parsing)
        try:
            setattr(target, name, check_field_value(type(target), name, value, key))
        except St4rError as err:
            message = str(err).rsplit(": ", 1)[-1]
            raise St4rError(f"--set {item}: {message}") from None
    return config




def save_config(config: RunConfig, path: Path) -> None:
    """Write `config` as YAML, atomically."""
    import yaml

    from st4r_cli.runs.atomic import atomic_write_text

    text = f"{CONFIG_HEADER} (written before the run starts)\n"
    text += yaml.safe_dump(_plain(config.to_dict()), sort_keys=False)
    atomic_write_text(path, text)


def load_config(path: Path) -> RunConfig:
    """Read a run's `config.yaml` (or any YAML with the same sections)."""
    import yaml

    if Path(path).exists() and not Path(path).is_file():
        raise St4rError(f"config {path} is not a regular file")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise St4rError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        raise St4rError(f"cannot read config {path}: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError:
        raise St4rError(f"cannot read config {path}: not a text (YAML) file") from None
    try:
        return RunConfig.from_dict(upgrade_saved_config(data))
    except St4rError as err:
        raise St4rError(f"config {path}: {err}") from None


def upgrade_saved_config(data: Any) -> Any:
    """A config saved before `cameras.ba_dynamic_rel` became `fuse.dynamic_rel` and `cameras.ba_accept_px`
    was split (it also linked frames, now `cameras.ba_link_px`), in today's fields with the same meaning,
    so earlier runs still export, view and resume. Anything else is returned as it is."""
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), dict):
        return data
    cameras = dict(data["cameras"])
    if "ba_dynamic_rel" not in cameras:
        return data
    fuse = dict(data.get("fuse") or {})
    fuse.setdefault("dynamic_rel", cameras.pop("ba_dynamic_rel"))
    if "ba_accept_px" in cameras:
        cameras.setdefault("ba_link_px", cameras["ba_accept_px"])
    return {**data, "cameras": cameras, "fuse": fuse}


def _plain(value: Any) -> Any:
    """Tuples to lists, so yaml.safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
