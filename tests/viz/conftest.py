"""Fixtures of the viz tests: a synthetic run (see viz_scene.py), Chromium and three.js."""

from __future__ import annotations

import pytest
from viz_scene import synthetic_scene

from st4r_cli.formats.scene import write_scene


@pytest.fixture
def synthetic_run(tmp_path):
    """A run directory holding only scene.npz (what `st4r view` / `export --video` read)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_scene(run_dir / "scene.npz", synthetic_scene())
    return run_dir


@pytest.fixture(scope="session")
def chromium():
    from chromium_cdp import ensure_chromium

    path, reason = ensure_chromium()
    if path is None:
        pytest.skip(reason)
    return path


THREE_VERSION = "0.181.0"          # three.js for the GLB page (npm, fetched at set-up, never committed; = Makefile)
MODEL_VIEWER_VERSION = "4.4.0"     # @google/model-viewer (its dist/model-viewer.min.js bundles three; = Makefile)


def three_dir_candidates():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    return [repo / ".venv" / "web" / "three", Path.home() / ".cache" / "st4r" / "web" / "three"]


@pytest.fixture(scope="session")
def three_dir():
    """The unpacked `three` npm package (build/three.module.js + examples/jsm); fetched with
    `npm pack` when missing (`make browser` does it at set-up)."""
    import shutil
    import subprocess
    import tarfile

    for candidate in three_dir_candidates():
        if (candidate / "build" / "three.module.js").is_file():
            return candidate
    target = three_dir_candidates()[-1]
    if not shutil.which("npm"):
        pytest.skip("three.js is not installed (`make browser`) and npm is not available")
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "pack", f"three@{THREE_VERSION}", "--silent"], cwd=target.parent,
                            capture_output=True, text=True, timeout=300)
    tarball = target.parent / f"three-{THREE_VERSION}.tgz"
    if result.returncode != 0 or not tarball.is_file():
        pytest.skip(f"could not fetch three.js with npm: {result.stderr.strip()[-200:]}")
    with tarfile.open(tarball) as archive:
        archive.extractall(target.parent / "unpack", filter="data")
    shutil.rmtree(target, ignore_errors=True)
    (target.parent / "unpack" / "package").rename(target)
    tarball.unlink()
    return target


@pytest.fixture(scope="session")
def model_viewer_js():
    """`model-viewer.min.js` of the @google/model-viewer npm package (`make browser` fetches it into
    .venv/web; else `npm pack` into ~/.cache/st4r/web)."""
    import shutil
    import subprocess
    import tarfile

    for base in three_dir_candidates():
        candidate = base.parent / "model-viewer.min.js"
        if candidate.is_file():
            return candidate
    target = three_dir_candidates()[-1].parent / "model-viewer.min.js"
    if not shutil.which("npm"):
        pytest.skip("model-viewer is not installed (`make browser`) and npm is not available")
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "pack", f"@google/model-viewer@{MODEL_VIEWER_VERSION}", "--silent"],
                            cwd=target.parent, capture_output=True, text=True, timeout=300)
    tarball = target.parent / f"google-model-viewer-{MODEL_VIEWER_VERSION}.tgz"
    if result.returncode != 0 or not tarball.is_file():
        pytest.skip(f"could not fetch model-viewer with npm: {result.stderr.strip()[-200:]}")
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/dist/model-viewer.min.js")
        target.write_bytes(member.read())
    tarball.unlink()
    return target
