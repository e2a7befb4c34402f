"""The held-out clip cache of `st4r_cli.train.evaluate` (`--cache-dir`): plain `.npz` arrays, never pickles.

A crafted `.pkl` or `.npz` (object array) in the cache folder must not run code; a damaged cache file is
rendered again; a clip read back equals the rendered one field by field. A scan of the package source
keeps unpickling confined to `st4r_cli/safe_load.py`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import st4r_cli
import st4r_cli.synthetic
from st4r_cli.synthetic import SyntheticClip, render_clip
from st4r_cli.train.evaluate import HELDOUT_SEED0, heldout_clips

PRESETS = ("easy",)
NUM_FRAMES = 3
SIZE_HW = (32, 48)
STEM = f"easy-{HELDOUT_SEED0}-{NUM_FRAMES}-{SIZE_HW[0]}x{SIZE_HW[1]}"  # heldout_clips' cache file name


class ShellPayload:
    """Unpickling it runs `os.system(command)`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _heldout(cache_dir: Path | None) -> list[SyntheticClip]:
    return heldout_clips(PRESETS, 1, NUM_FRAMES, SIZE_HW, cache_dir=cache_dir)


def _fresh() -> SyntheticClip:
    return render_clip("easy", seed=HELDOUT_SEED0, num_frames=NUM_FRAMES, size_hw=SIZE_HW)


def _array_fields(clip: SyntheticClip) -> dict[str, np.ndarray]:
    return {f.name: getattr(clip, f.name) for f in dataclasses.fields(clip)
            if isinstance(getattr(clip, f.name), np.ndarray)}


def assert_clips_equal(got: list[SyntheticClip], want: list[SyntheticClip]) -> None:
    """Same number of clips; every field equal (arrays: same dtype, shape and values; others: same type)."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert type(a) is SyntheticClip
        for f in dataclasses.fields(SyntheticClip):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(y, np.ndarray):
                assert isinstance(x, np.ndarray) and x.dtype == y.dtype, f.name
                assert np.array_equal(x, y), f.name
            else:
                assert type(x) is type(y) and x == y, f.name


def _forbid_render(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("render_clip called although the clip is cached")

    monkeypatch.setattr(st4r_cli.synthetic, "render_clip", fail)


def test_payload_is_live(tmp_path: Path) -> None:
    # the payload below really runs code when unpickled, so the next test means something
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(ShellPayload(f"touch {probe}")))
    assert probe.exists()


def test_crafted_cache_files_do_not_run_code(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    marker = tmp_path / "MARKER"
    payload = ShellPayload(f"touch {marker}")
    (cache / f"{STEM}.pkl").write_bytes(pickle.dumps(payload))
    arrays: dict[str, object] = dict(_array_fields(_fresh()))
    arrays["object_names"] = np.array([payload], dtype=object)  # np.savez pickles object arrays
    arrays["meta"] = np.array(payload, dtype=object)
    np.savez(cache / f"{STEM}.npz", **arrays)

    clips = _heldout(cache)

    assert not marker.exists()
    assert_clips_equal(clips, [_fresh()])


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = _heldout(cache)
    assert sorted(p.name for p in cache.iterdir()) == [f"{STEM}.npz"]
    with np.load(cache / f"{STEM}.npz", allow_pickle=False) as data:  # plain arrays only
        assert all(data[name].dtype != object for name in data.files)
    _forbid_render(monkeypatch)
    second = _heldout(cache)
    assert_clips_equal(first, [_fresh()])
    assert_clips_equal(second, first)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _rewrite(path: Path, change) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    path.unlink()
    np.savez(path, **arrays)


DAMAGE = {
    "truncated": _truncate,
    "not a zip": lambda p: p.write_bytes(b"PK\x03\x04 garbage"),
    "empty": lambda p: p.write_bytes(b""),
    "missing field": lambda p: _rewrite(p, lambda a: a.pop("depth")),
    "extra field": lambda p: _rewrite(p, lambda a: a.update(extra=np.zeros(2))),
    "wrong dtype": lambda p: _rewrite(p, lambda a: a.update(depth=a["depth"].astype(np.float64))),
    "wrong shape": lambda p: _rewrite(p, lambda a: a.update(frames=a["frames"][:, :16])),
    "wrong seed": lambda p: _rewrite(p, lambda a: a.update(seed=np.array(7))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_file_is_rendered_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              damage: str) -> None:
    cache = tmp_path / "cache"
    _heldout(cache)
    DAMAGE[damage](cache / f"{STEM}.npz")
    assert_clips_equal(_heldout(cache), [_fresh()])
    _forbid_render(monkeypatch)  # and the damaged file was replaced by a good one
    assert_clips_equal(_heldout(cache), [_fresh()])


UNPICKLING = re.compile(r"pickle\.loads?\b|Unpickler|allow_pickle\s*=\s*(?!False\b)")


def test_no_unpickling_outside_safe_load() -> None:
    root = Path(st4r_cli.__file__).resolve().parent
    allowed = root / "safe_load.py"
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for path in sorted(root.rglob("*.py")) if path != allowed
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if UNPICKLING.search(line)]
    assert not found, "unpickling outside st4r_cli/safe_load.py:\n" + "\n".join(found)
