"""Content-addressed stage cache.

Every stage artifact is a set of named NumPy arrays stored as `<cache>/<stage>-<key16>.npz` plus a
metadata file `<stage>-<key16>.json` written after it (both atomically). The lookup key is

    key = sha256(stage name, stage version, canonical JSON of the stage config, input digests)

where the input digests are content hashes: of the input file(s) for `decode`, and of upstream
artifacts' arrays (`Artifact.digest`) for later stages. So a second run reuses finished stages, a
changed config recomputes only the stages whose inputs or config changed (and, through the changed
digests, what depends on them), and a run killed at any point resumes: an artifact counts only once its
metadata exists, which is written after the arrays are complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st4r_cli.runs.atomic import atomic_save_npz, atomic_write_text, remove_stale_temps
from st4r_cli.runs.config import config_digest_payload

Arrays = dict[str, Any]  # name -> np.ndarray

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Artifact:
    """A finished stage output.

    stage:   stage name ("decode", "tracks", ...)
    key:     cache key (hash of stage, version, config, input digests)
    digest:  content hash of the arrays; downstream stages pass it in `inputs`
    path:    the `.npz` holding the arrays
    reused:  True if it came from the cache in this process
    seconds: compute time when it was made
    """

    stage: str
    key: str
    digest: str
    path: Path
    reused: bool = False
    seconds: float = 0.0
    _arrays: Arrays | None = field(default=None, repr=False)

    def load(self) -> Arrays:
        """All arrays (loaded once, kept in memory)."""
        if self._arrays is None:
            self._arrays = load_npz(self.path)
        return self._arrays

    def __getitem__(self, name: str) -> Any:
        return self.load()[name]

    def __contains__(self, name: str) -> bool:
        return name in self.load()

    def keys(self) -> list[str]:
        return list(self.load().keys())


def load_npz(path: Path) -> Arrays:
    """Read every array of an `.npz` into memory (no pickles)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the arrays (order independent)."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(memoryview(array).cast("B") if array.size else b"")
    return h.hexdigest()


def digest_path(path: Path) -> str:
    """Content hash of an input: a file's bytes, or a folder's image files (names and bytes).

    St4rError for anything that is neither a regular file nor a folder (a device such as /dev/zero or a
    FIFO would be hashed forever). (Entries of a folder are hashed as they are listed: the resume tests
    block the decode stage on a FIFO named like an image.)
    """
    from st4r_cli.paths import check_input_path

    path = Path(path)
    check_input_path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            h.update(item.name.encode() + b"\0")
            _hash_file_into(h, item)
    else:
        _hash_file_into(h, path)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    _hash_file_into(h, Path(path))
    return h.hexdigest()


def digest_file_or_missing(path: Path) -> str:
    """`digest_path` of a file a stage depends on, or a `missing:<path>` marker when it does not exist
    (the stage itself then reports the missing file)."""
    path = Path(path)
    return digest_path(path) if path.is_file() else f"missing:{path}"


def _hash_file_into(h: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)


def stage_key(stage: str, version: int | str, config: Any, inputs: Sequence[str]) -> str:
    """The cache key of a stage run (see module docstring)."""
    payload = {"stage": stage, "version": str(version), "config": config_digest_payload(config),
               "inputs": list(inputs)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class StageCache:
    """The artifact store of one run directory (`<run>/cache/`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _paths(self, stage: str, key: str) -> tuple[Path, Path]:
        stem = f"{stage}-{key[:16]}"
        return self.directory / f"{stem}.npz", self.directory / f"{stem}.json"

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The finished artifact for (stage, key), or None (missing, unfinished or damaged).

        An artifact counts only when its metadata exists and the `.npz`'s bytes still hash to the
        sha256 the metadata recorded (`sha256`; metadata of older versions without it: the arrays are
        loaded and must hash to `digest`). Damage is reported with a one-line warning and the
        artifact is treated as missing, so the stage is recomputed.
        """
        npz_path, meta_path = self._paths(stage, key)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or not npz_path.is_file():
            return None
        damage = self._damage(npz_path, meta)
        if damage:
            from st4r_cli import progress

            if not progress.is_quiet():  # one line, however narrow the terminal (hidden by --quiet)
                progress.console.print(f"[yellow]warning[/yellow]: cached {stage} result {npz_path} is "
                                       f"damaged ({damage}); recomputing it", soft_wrap=True)
            return None
        return Artifact(stage=stage, key=key, digest=meta["digest"], path=npz_path, reused=True,
                        seconds=float(meta.get("seconds", 0.0)), _arrays=meta.pop("_arrays", None))

    @staticmethod
    def _damage(npz_path: Path, meta: dict[str, Any]) -> str | None:
        """Why the artifact's file does not match its metadata, or None when it does."""
        try:
            if npz_path.stat().st_size != meta.get("bytes"):
                return "its size changed"
            if "sha256" in meta:
                return None if sha256_file(npz_path) == meta["sha256"] else "content digest mismatch"
            arrays = load_npz(npz_path)   # metadata without a file digest: check the arrays' digest
        except OSError as err:
            return f"unreadable: {err.strerror or err}"
        except Exception as err:  # noqa: BLE001 - any failure to parse the archive is damage
            return f"unreadable: {type(err).__name__}"
        if digest_arrays(arrays) != meta.get("digest"):
            return "content digest mismatch"
        meta["_arrays"] = arrays
        return None

    def store(self, stage: str, key: str, arrays: Mapping[str, Any], info: dict[str, Any]) -> Artifact:
        """Save arrays (atomically) then their metadata (atomically); returns the artifact."""
        arrays = _check_arrays(stage, arrays)
        self.directory.mkdir(parents=True, exist_ok=True)
        npz_path, meta_path = self._paths(stage, key)
        digest = digest_arrays(arrays)
        try:
            atomic_save_npz(npz_path, arrays)
            meta = {"stage": stage, "key": key, "digest": digest, "bytes": npz_path.stat().st_size,
                    "sha256": sha256_file(npz_path),
                    "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()}, **info}
            atomic_write_text(meta_path, json.dumps(meta, indent=1, default=str))
        except OSError as err:
            from st4r_cli.errors import St4rError

            raise St4rError(f"cannot write the {stage} result to {self.directory}: "
                            f"{err.strerror or err}") from None
        return Artifact(stage=stage, key=key, digest=digest, path=npz_path, reused=False,
                        seconds=float(info.get("seconds", 0.0)), _arrays=dict(arrays))

    def get_or_compute(self, stage: str, version: int | str, config: Any, inputs: Sequence[str],
                       compute: Callable[[], Mapping[str, Any]], force: bool = False) -> Artifact:
        """Return the cached artifact, or run `compute()` and store its arrays."""
        key = stage_key(stage, version, config, inputs)
        if not force:
            found = self.lookup(stage, key)
            if found is not None:
                return found
        remove_stale_temps(self.directory)
        start = time.perf_counter()
        arrays = compute()
        seconds = time.perf_counter() - start
        info = {"version": str(version), "config": config_digest_payload(config),
                "inputs": list(inputs), "seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return self.store(stage, key, arrays, info)


def _check_arrays(stage: str, arrays: Mapping[str, Any]) -> Arrays:
    import numpy as np

    if not isinstance(arrays, Mapping) or not arrays:
        raise TypeError(f"stage '{stage}' must return a non-empty dict of arrays, got {type(arrays)}")
    checked: Arrays = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"stage '{stage}' output '{name}' is not a numeric array")
        checked[str(name)] = array
    return checked


class MemoryCache(StageCache):
    """The stage cache of an in-memory run (`runs.run.MemoryRun`): the same keys as `StageCache`, the
    arrays kept in memory instead of files."""

    def __init__(self) -> None:
        super().__init__(Path("(in memory)"))
        self._artifacts: dict[tuple[str, str], Artifact] = {}

    def lookup(self, stage: str, key: str) -> Artifact | None:
        found = self._artifacts.get((stage, key))
        return dataclasses.replace(found, reused=True) if found is not None else None

    def store(self, stage: str, key: str, arrays: Mapping[str, Any], info: dict[str, Any]) -> Artifact:
        arrays = _check_arrays(stage, arrays)
        artifact = Artifact(stage=stage, key=key, digest=digest_arrays(arrays), path=Path(f"{stage}-{key[:16]}.npz"),
                            seconds=float(info.get("seconds", 0.0)), _arrays=arrays)
        self._artifacts[(stage, key)] = artifact
        return artifact
