"""Query points for the track stage: where (and when) tracks start.

A query is `(t, x, y)`: frame index and pixel position (OpenCV convention, pixel centres at integers)
in the frames being tracked. Modes:

- `grid`: a `grid_size x grid_size` grid on frame 0 (cell centres, so no point sits on the border).
- `grid_every_k`: the same grid on frames 0, k, 2k, ... (points start on every k-th frame).
- `file`: points read from a file: `.npy` `(N, 3)` or `(N, 2)` array, or a text/CSV file with one
  point per line, `t,x,y` or `x,y` (t = 0), comma or whitespace separated, `#` comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from st4r_cli.errors import St4rError

QUERY_MODES = ("grid", "grid_every_k", "file")
MAX_QUERIES = 1_000_000              # points tracked in one video (the tracker's time grows with them)
MAX_QUERY_FILE_BYTES = 64 * 2**20    # a text query file of MAX_QUERIES rows is about 30 MB
BYTES_PER_QUERY_FRAME = 64           # a track's memory per frame: 2D/3D positions, visibility, sigma, copies


def memory_budget_bytes() -> int:
    """What one run's tracks may take: a quarter of this machine's memory."""
    import os

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total) // 4


def check_query_budget(num_queries: int, num_frames: int, what: str) -> None:
    """St4rError when `num_queries` tracks over `num_frames` frames are more than st4r tracks
    (`MAX_QUERIES`) or would take more than a quarter of this machine's memory; the message says how
    much the request would need. Called before any stage runs."""
    from st4r_cli.errors import St4rError

    if num_queries > MAX_QUERIES:
        raise St4rError(f"{what}: {num_queries:,} query points; st4r tracks at most {MAX_QUERIES:,}")
    need = num_queries * max(1, num_frames) * BYTES_PER_QUERY_FRAME
    budget = memory_budget_bytes()
    if need > budget:
        raise St4rError(f"{what}: {num_queries:,} query points over {num_frames:,} frames would need about "
                        f"{need / 2**30:.1f} GiB for their tracks; the limit is {budget / 2**30:.1f} GiB "
                        "(a quarter of this machine's memory): use fewer points or frames")


def grid_points_xy(grid_size: int, size_hw: tuple[int, int]) -> np.ndarray:
    """`(grid_size**2, 2)` float32 (x, y): the centres of a grid_size x grid_size tiling of the image.

    Row-major order (y outer, x inner).
    """
    if grid_size < 1:
        raise St4rError(f"tracks grid size must be >= 1, got {grid_size}")
    height, width = size_hw
    xs = (np.arange(grid_size) + 0.5) * width / grid_size - 0.5
    ys = (np.arange(grid_size) + 0.5) * height / grid_size - 0.5
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32)


def grid_queries(grid_size: int, size_hw: tuple[int, int], frames: list[int] | range) -> np.ndarray:
    """`(len(frames) * grid_size**2, 3)` float32 queries (t, x, y): the grid on each listed frame."""
    xy = grid_points_xy(grid_size, size_hw)
    blocks = [np.concatenate([np.full((len(xy), 1), t, np.float32), xy], axis=1) for t in frames]
    return np.concatenate(blocks, axis=0)


def load_query_file(path: str | Path) -> np.ndarray:
    """Read query points from a file (see module docstring); returns `(N, 3)` float32 (t, x, y)."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise St4rError(f"query file not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            check_npy_rows(path)
            points = np.load(path, allow_pickle=False)
        else:
            if path.stat().st_size > MAX_QUERY_FILE_BYTES:
                raise St4rError(f"query file {path} is {path.stat().st_size / 2**20:.0f} MiB; a text query file "
                                f"holds at most {MAX_QUERIES:,} points ({MAX_QUERY_FILE_BYTES // 2**20} MiB)")
            rows = []
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].replace(",", " ").strip()
                if line:
                    rows.append([float(value) for value in line.split()])
            points = np.array(rows, dtype=np.float64) if rows else np.zeros((0, 3))
    except (OSError, ValueError) as err:
        raise St4rError(f"cannot read query file {path}: {' '.join(str(err).split())}") from None
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise St4rError(f"query file {path} must hold N rows of t,x,y or x,y; got shape {points.shape}")
    if points.shape[1] == 2:
        points = np.concatenate([np.zeros((len(points), 1)), points], axis=1)
    if len(points) == 0:
        raise St4rError(f"query file {path} holds no points")
    if len(points) > MAX_QUERIES:
        raise St4rError(f"query file {path} holds {len(points):,} points; st4r tracks at most {MAX_QUERIES:,}")
    return points.astype(np.float32)


def check_npy_rows(path: Path) -> None:
    """St4rError unless the `.npy` header describes a numeric (N, 2|3) array of at most MAX_QUERIES
    rows whose data the file really holds; reads the header only (a 248-byte file may claim 1e11 rows)."""
    import math

    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(handle))
        except (ValueError, OSError, SyntaxError) as err:
            raise St4rError(f"query file {path} is not a .npy array: {' '.join(str(err).split())}") from None
        data_bytes = path.stat().st_size - handle.tell()
    if dtype.hasobject or dtype.kind not in "iuf":
        raise St4rError(f"query file {path} holds {dtype} values; expected numbers")
    if len(shape) != 2 or shape[1] not in (2, 3):
        raise St4rError(f"query file {path} must hold N rows of t,x,y or x,y; got shape {shape}")
    if shape[0] > MAX_QUERIES:
        raise St4rError(f"query file {path} holds {shape[0]:,} points; st4r tracks at most {MAX_QUERIES:,}")
    if math.prod(shape) * dtype.itemsize > data_bytes:
        raise St4rError(f"query file {path} is truncated: its header says {shape} {dtype}, the file holds "
                        f"{data_bytes} bytes of data")


def check_queries(queries: np.ndarray, num_frames: int, size_hw: tuple[int, int]) -> np.ndarray:
    """St4rError unless every query lies in the video (frame index and image bounds)."""
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != 3 or not np.isfinite(queries).all():
        raise St4rError("queries must be a finite (N, 3) array of (t, x, y)")
    height, width = size_hw
    t = queries[:, 0]
    bad_t = (t < 0) | (t > num_frames - 1) | (t != np.round(t))
    bad_xy = ((queries[:, 1] < -0.5) | (queries[:, 1] > width - 0.5)
              | (queries[:, 2] < -0.5) | (queries[:, 2] > height - 0.5))
    if bad_t.any():
        i = int(np.flatnonzero(bad_t)[0])
        raise St4rError(f"query {i} has frame {t[i]:g}: must be an integer in [0, {num_frames - 1}]")
    if bad_xy.any():
        i = int(np.flatnonzero(bad_xy)[0])
        raise St4rError(f"query {i} at ({queries[i, 1]:g}, {queries[i, 2]:g}) is outside the "
                        f"{width}x{height} frames")
    return queries


def make_queries(mode: str, num_frames: int, size_hw: tuple[int, int], grid_size: int = 32,
                 every_k: int = 8, query_file: str = "") -> np.ndarray:
    """Queries `(N, 3)` float32 (t, x, y) for a query mode (see module docstring)."""
    if mode == "grid":
        queries = grid_queries(grid_size, size_hw, [0])
    elif mode == "grid_every_k":
        if every_k < 1:
            raise St4rError(f"tracks query_every_k must be >= 1, got {every_k}")
        queries = grid_queries(grid_size, size_hw, range(0, num_frames, every_k))
    elif mode == "file":
        if not query_file:
            raise St4rError("tracks query mode 'file' needs a query file (--queries FILE)")
        queries = load_query_file(query_file)
    else:
        raise St4rError(f"unknown tracks query mode '{mode}' (use {', '.join(QUERY_MODES)})")
    return check_queries(queries, num_frames, size_hw)
