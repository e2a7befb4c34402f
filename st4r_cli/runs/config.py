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
from typing import Any

from st4r_cli.configs import (SECTIONS, AdaptConfig, CamerasConfig, DecodeConfig, DepthConfig, FuseConfig,
                              PredictConfig, TracksConfig, VisibilityConfig)
from st4r_cli.errors import St4rError
from st4r_cli.paths import repo_root, resolve_model_path

DEFAULT_MODEL = "weights/st4r-tiny/model.safetensors"

# Section name -> config class, in pipeline order (st4r_cli/configs.py).
STAGE_CONFIGS: dict[str, type] = SECTIONS


@dataclass
class RunConfig:
    """Everything that determines a run's results (saved to `<run>/config.yaml`)."""

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
                setattr(config, key, value)
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
    return cls(**{k: _tuple_if_default_tuple(cls, k, v) for k, v in data.items()})


def _tuple_if_default_tuple(cls: type, name: str, value: Any) -> Any:
    """YAML has no tuples: give tuple-typed fields their tuple back."""
    default = _field_default(cls, name)
    if isinstance(default, tuple) and isinstance(value, list):
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
        default = _field_default(type(target), name)
        setattr(target, name, _coerce(value, default, item))
    return config


def _coerce(value: Any, default: Any, item: str) -> Any:
    """Check/convert an override value to the type of the field's default."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise St4rError(f"--set {item}: expected true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise St4rError(f"--set {item}: expected an integer")
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise St4rError(f"--set {item}: expected a number")
    if isinstance(default, str):
        return str(value)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def save_config(config: RunConfig, path: Path) -> None:
    """Write `config` as YAML, atomically."""
    import yaml

    from st4r_cli.runs.atomic import atomic_write_text

    text = "# st4r run configuration (written before the run starts)\n"
    text += yaml.safe_dump(_plain(config.to_dict()), sort_keys=False)
    atomic_write_text(path, text)


def load_config(path: Path) -> RunConfig:
    """Read a run's `config.yaml` (or any YAML with the same sections)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise St4rError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        raise St4rError(f"cannot read config {path}: {' '.join(str(err).split())}") from None
    return RunConfig.from_dict(data)


def _plain(value: Any) -> Any:
    """Tuples to lists, so yaml.safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
