"""The `st4r` command line: one Typer app, one module per command (`cmd_<name>.py`).

Each `cmd_<name>.py` defines `command(...)` (its docstring is the command's help); `cmd_weights.py`
defines a Typer sub-app `app`. `main()` is the console-script entry point: it turns every user error
(`St4rError`, bad option values, Ctrl-C) into one `error: ...` line on stderr and a non-zero exit.

Only light imports at module level: `st4r --help` must answer instantly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Annotated, Any

import typer

from st4r_cli import __version__, progress
from st4r_cli.cli import (cmd_adapt, cmd_batch, cmd_depth, cmd_doctor, cmd_eval, cmd_export, cmd_pretrain,
                          cmd_synth, cmd_tracks, cmd_view, cmd_weights)
from st4r_cli.errors import St4rError

app = typer.Typer(
    name="st4r",
    help="st4r: monocular video -> 4D (world-frame 3D tracks, dynamic point clouds, intrinsics, "
         "camera poses) with ST4RTrack+ test-time adaptation.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"st4r {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """st4r: monocular video -> 4D with ST4RTrack+ test-time adaptation."""


def _entry(module: ModuleType, name: str) -> Callable[..., Any]:
    """The function a `cmd_<name>` module exposes (`command`, or a function named after it)."""
    entry = getattr(module, "command", None) or getattr(module, name, None)
    if entry is None:
        raise RuntimeError(f"{module.__name__} defines no `command` function")
    return entry


def _register() -> None:
    commands = [("adapt", cmd_adapt), ("batch", cmd_batch), ("export", cmd_export), ("view", cmd_view), ("eval", cmd_eval),
                ("tracks", cmd_tracks), ("depth", cmd_depth), ("synth", cmd_synth),
                ("pretrain", cmd_pretrain), ("doctor", cmd_doctor)]
    for name, module in commands:
        settings = getattr(module, "CONTEXT_SETTINGS", None)
        app.command(name, context_settings=settings)(_entry(module, name))
    app.add_typer(cmd_weights.app, name="weights",
                  help="Manage checkpoints in weights/ (import official St4RTrack checkpoints).")


_register()


INTERRUPTED = "interrupted (finished stages are cached; rerun the same command to resume)"


def _click_exception_type() -> type[BaseException]:
    """click's ClickException, wherever this typer keeps click (vendored or the click package)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    return typer.BadParameter  # pragma: no cover


def _wants_traceback(argv: Sequence[str]) -> bool:
    return progress.is_verbose() or "--verbose" in argv or "-v" in argv


def _fail(message: str, code: int) -> int:
    message = " ".join(str(message).split())  # always exactly one line
    progress.console.file.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (e.g. a job scheduler stopping st4r) like Ctrl-C: the run is marked interrupted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    click_exception = _click_exception_type()
    try:
        with _sigterm_as_interrupt():
            result = app(args=args, prog_name="st4r", standalone_mode=False)
    except St4rError as err:
        return _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        return _fail(INTERRUPTED, 130)
    except typer.Abort:
        return _fail("aborted", 1)
    except click_exception as err:  # bad option value, missing argument, unknown option...
        message = err.format_message()  # type: ignore[attr-defined]
        command = getattr(getattr(err, "ctx", None), "command_path", "st4r")
        return _fail(f"{message} (see `{command} --help`)", getattr(err, "exit_code", 2))
    except Exception as err:  # a bug, not a user error: one line unless --verbose
        if _wants_traceback(args):
            import traceback

            traceback.print_exc()
        return _fail(f"unexpected {type(err).__name__}: {err} (rerun with --verbose for a traceback)", 1)
    if result == 130:  # typer turns Ctrl-C inside a command into Exit(130)
        return _fail(INTERRUPTED, 130)
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point (`st4r`)."""
    sys.exit(run())


if __name__ == "__main__":
    main()
