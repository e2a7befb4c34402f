"""`st4r view RUN_DIR`: open a finished run in the browser (viser 4D viewer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from st4r_cli.cli.common import QuietOpt, VerboseOpt, set_verbosity
from st4r_cli.errors import St4rError


def command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `st4r adapt` (or a scene.npz file).")],
    port: Annotated[int, typer.Option("--port", help="Port to serve on (the next free one if taken).")] = 8080,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on: an IP address or host name of this machine; 0.0.0.0 (or ::) "
                       "for every interface, reachable from other machines.")] = "127.0.0.1",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """4D viewer: time slider and play, per-frame point cloud (confidence, static/dynamic), camera
    frusta with their images and the camera path, 3D track trails, the input video. Prints the URL;
    Ctrl-C stops it. Only this machine can connect unless --host says otherwise (a warning is printed
    then), and browsers connect only from the viewer's own page: other web sites open in the same
    browser are refused."""
    set_verbosity(quiet, verbose)
    if not 1 <= port <= 65535:
        raise St4rError(f"--port must be in [1, 65535], got {port}")
    from st4r_cli.viz.viewer import check_host  # stdlib only at import time

    host = check_host(host)
    try:
        import viser  # noqa: F401
    except ImportError as err:
        raise St4rError("st4r view needs viser: pip install -e \".[viewer]\"") from err
    from st4r_cli.viz.data import scene_path_of
    from st4r_cli.viz.viewer import serve

    scene_path_of(run_dir)  # a clear error before the server starts
    serve(run_dir, host, port)
