"""`st4r doctor`: versions, device, CUDA, optional backends, and whether each file in weights/ loads."""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional
from collections.abc import Callable

import typer

from st4r_cli.cli.common import Device, DeviceOpt, QuietOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError

CORE_PACKAGES = [("torch", "torch"), ("numpy", "numpy"), ("typer", "typer"), ("rich", "rich"),
                 ("av (PyAV)", "av"), ("opencv", "cv2"), ("trimesh", "trimesh"),
                 ("safetensors", "safetensors"), ("pyyaml", "yaml"), ("scipy", "scipy"),
                 ("pillow", "PIL")]
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Check:
    """One line of the report."""

    section: str
    name: str
    ok: bool | None   # True ok, False problem, None informational
    detail: str


def command(
    weights: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--weights", help="Weights folder to check (default: ./weights, else the install's).")] = None,
    device: DeviceOpt = Device.auto,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON on stdout (and nothing else there).")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Check the installation: versions, device, CUDA, optional backends, weights/ files."""
    import contextlib

    set_verbosity(quiet, verbose)
    checks: list[Check] = []
    # with --json, stdout carries the JSON only: anything a loader prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext():
        checks += _package_checks()
        checks += _device_checks(device)
        checks += _backend_checks()
        checks += _weights_checks(weights_dir(weights))
    if json_out:
        _print_json(checks)
    else:
        _print_report(checks, quiet)
    problems = [c for c in checks if c.ok is False]
    if problems:
        raise St4rError(f"{len(problems)} problem(s) found: " + ", ".join(c.name for c in problems),
                        exit_code=1)


def weights_dir(given: Path | None) -> Path:
    """The weights folder: as given, else ./weights, else the one beside the installed package."""
    if given is not None:
        return given
    from st4r_cli.runs.config import repo_root

    local = Path.cwd() / "weights"
    return local if local.is_dir() else repo_root() / "weights"


def _package_checks() -> list[Check]:
    from st4r_cli import __version__

    checks = [Check("versions", "st4r", None, __version__),
              Check("versions", "python", None, f"{platform.python_version()} ({sys.executable})"),
              Check("versions", "platform", None, platform.platform())]
    for label, module_name in CORE_PACKAGES:
        try:
            module = importlib.import_module(module_name)
            version = str(getattr(module, "__version__", "") or _dist_version(label))
            if module_name == "av":
                version += f" (FFmpeg libavcodec {'.'.join(map(str, module.library_versions['libavcodec']))})"
            checks.append(Check("versions", label, True, version))
        except Exception as err:  # noqa: BLE001 - any import failure is reported, not raised
            checks.append(Check("versions", label, False, f"import failed: {_one_line(err)}"))
    return checks


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name.split()[0])
    except metadata.PackageNotFoundError:
        return "?"


def _device_checks(device: Device) -> list[Check]:
    from st4r_cli.cli.common import resolve_device

    checks: list[Check] = []
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return [Check("device", "torch", False, _one_line(err))]
    try:
        chosen = resolve_device(device)
        checks.append(Check("device", f"--device {device.value}", True, f"would use {chosen}"))
    except St4rError as err:
        checks.append(Check("device", f"--device {device.value}", False, str(err)))
    checks.append(Check("device", "cpu threads", None, str(torch.get_num_threads())))
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU build)"
        checks.append(Check("device", "cuda", None, f"not available (torch CUDA: {built})"))
        return checks
    try:
        name = torch.cuda.get_device_name(0)
        a = torch.randn(256, 256, device="cuda")
        error = (a @ a).cpu() - a.cpu() @ a.cpu()
        works = float(error.abs().max()) < 1e-1
        detail = f"{torch.cuda.device_count()} device(s), {name}, CUDA {torch.version.cuda}, " \
                 f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        checks.append(Check("device", "cuda", works, detail + ("" if works else ": wrong matmul result")))
    except Exception as err:  # noqa: BLE001
        checks.append(Check("device", "cuda", False, f"available but failed: {_one_line(err)}"))
    return checks


def _backend_checks() -> list[Check]:
    """Each registered backend that needs an optional package (`st4r_cli.backends`, its `doctor`)."""
    from st4r_cli import backends

    checks = []
    for backend in (b for kind in backends.KINDS for b in backends.backends(kind) if b.doctor is not None):
        doctor = backend.doctor
        try:
            importlib.import_module(doctor.module)
            checks.append(Check("backends", doctor.package, None, f"imports ({backend.option} available)"))
        except Exception as err:  # noqa: BLE001 - optional: informational only
            checks.append(Check("backends", doctor.package, None,
                                f"not usable ({_one_line(err)}); install: {doctor.install}"))
    return checks


def _weights_checks(folder: Path) -> list[Check]:
    if not folder.is_dir():
        return [Check("weights", str(folder), None, "folder not found")]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        return [Check("weights", str(folder), None, "empty")]
    checks = []
    for path in files:
        name = str(path.relative_to(folder))
        size = f"{path.stat().st_size / 1e6:.1f} MB"
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            checks.append(Check("weights", name, None, f"{size} (not a checkpoint)"))
            continue
        ok, detail = check_checkpoint(path)
        checks.append(Check("weights", name, ok, f"{size}, {detail}"))
    return checks


def check_checkpoint(path: Path) -> tuple[bool, str]:
    """Try the loaders a checkpoint may be for; (loaded?, what it is or why none worked)."""
    errors = []
    for kind, loader in _loaders_for(path):
        try:
            return True, f"loads as {kind}: {loader(path)}"
        except Exception as err:  # noqa: BLE001 - every failure is reported per file
            errors.append(f"{kind}: {_one_line(err, 90)}")
    return False, "does not load (" + "; ".join(errors) + ")"


def _loaders_for(path: Path) -> list[tuple[str, Callable[[Path], str]]]:
    """Loaders to try, most likely first (by file name): the St4R model's and those of the registered
    backends whose checkpoints `st4r doctor` knows (`Doctor.checkpoint`; depth backends, then trackers)."""
    from st4r_cli import backends

    name = path.name.lower()
    known = [b for kind in reversed(backends.KINDS) for b in backends.backends(kind)
             if b.doctor is not None and b.doctor.checkpoint]
    loaders = [(b.doctor.checkpoint, _describer(b)) for b in known]
    named = [i for i, b in enumerate(known) if any(hint in name for hint in b.doctor.checkpoint_hints)]
    if not named:
        return [("St4R model", _load_st4r), *loaders]
    return [loaders[named[0]], ("St4R model", _load_st4r), *(l for i, l in enumerate(loaders) if i != named[0])]


def _describer(backend: Any) -> Callable[[Path], str]:
    """The backend's own checkpoint loader (`describe_checkpoint` of its module), as using it would load."""
    return lambda path: backend.load().describe_checkpoint(path)


def _count(model: Any) -> str:
    params = sum(p.numel() for p in model.parameters())
    return f"{params / 1e6:.1f} M parameters"


def _load_st4r(path: Path) -> str:
    try:
        from st4r_cli.model import load_model
    except ImportError:
        raise RuntimeError("the st4r model code is not in this build") from None
    model = load_model(path, "cpu")
    config = getattr(model, "config", None)
    return f"{getattr(config, 'name', 'model')}, {_count(model)}"


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _print_json(checks: list[Check]) -> None:
    """{"ok": no problem found, "problems": [names], "checks": [{section, name, ok, detail}]} on stdout."""
    import json
    from dataclasses import asdict

    problems = [c.name for c in checks if c.ok is False]
    print(json.dumps({"ok": not problems, "problems": problems, "checks": [asdict(c) for c in checks]}, indent=1),
          flush=True)


def _print_report(checks: list[Check], quiet: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if quiet:
        return
    console = Console()
    table = Table(title="st4r doctor", show_lines=False)
    for column in ("", "check", "result"):
        table.add_column(column)
    section = None
    marks = {True: "[green]ok[/green]", False: "[red]FAIL[/red]", None: "[dim]-[/dim]"}
    for check in checks:
        if check.section != section:
            section = check.section
            table.add_row(f"[bold]{section}[/bold]", "", "")
        table.add_row(marks[check.ok], check.name, check.detail)
    console.print(table)
