"""The `st4r adapt` pipeline: decode -> tracks -> depth -> adapt (TTA) -> chain -> scene.npz.

Every stage goes through the run's cache (`Run.stage`): its key is the hash of its input content
(upstream artifacts' digests, the input file's bytes), its config and its version, so a rerun reuses
finished stages and a config change recomputes only what depends on it.

Each `run_<stage>` takes the run and the artifacts computed so far and returns its Artifact, or None
when the stage is switched off (depth with backend `none`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from st4r_cli import progress
from st4r_cli.errors import St4rError
from st4r_cli.runs import Artifact, Run, RunConfig, digest_file_or_missing, digest_path
from st4r_cli.runs.config import keyed_fields
from st4r_cli.stages.decode import DECODE_VERSION, check_decode_config, decode

STAGES = ("decode", "tracks", "depth", "adapt", "chain")
SCENE_FILE = "scene.npz"


def check_force(force: list[str] | set[str] | tuple[str, ...]) -> None:
    """St4rError for --force values that name no stage."""
    unknown = sorted(set(force) - set(STAGES) - {"all"})
    if unknown:
        raise St4rError(f"--force: unknown stage(s) {', '.join(unknown)} "
                        f"(stages: {', '.join(STAGES)}, or all)")


def check_until(until: str | None) -> None:
    """St4rError unless `until` is None or a stage name."""
    if until is not None and until not in STAGES:
        raise St4rError(f"--until: unknown stage '{until}' (stages: {', '.join(STAGES)})")


def _config_with_seed(config: Any, seed: int) -> dict[str, Any]:
    return {"config": keyed_fields(config), "seed": seed}


def tracks_cache_key(cfg: Any, seed: int, decoded: Artifact) -> tuple[dict[str, Any], list[str]]:
    """(config, inputs) keying the tracks stage: frames, query file and checkpoint contents, config, seed.

    `st4r adapt` and `st4r tracks` share it, so either reuses the other's result.
    """
    from st4r_cli.stages.tracks import input_files

    return _config_with_seed(cfg, seed), [decoded.digest, *map(digest_file_or_missing, input_files(cfg))]


def depth_cache_key(cfg: Any, decoded: Artifact) -> tuple[dict[str, Any], list[str]]:
    """(config, inputs) keying the depth stage: frames, checkpoint contents, config."""
    from st4r_cli.stages.depth import input_files

    return {"config": keyed_fields(cfg)}, [decoded.digest, *map(digest_file_or_missing, input_files(cfg))]


def run_decode(run: Run) -> Artifact:
    """Decode the run's input (video file or image folder) at the processing resolution."""
    source = Path(run.config.input)
    cfg = run.config.decode
    check_decode_config(cfg)
    if not source.exists():
        raise St4rError(f"input not found: {source}")
    return run.stage("decode", DECODE_VERSION, cfg, [digest_path(source)],
                     lambda: decode(source, cfg))


def run_tracks(run: Run, decoded: Artifact, device: str) -> Artifact:
    """2D pseudo-tracks of query points (`stages.tracks.compute_tracks`)."""
    from st4r_cli.stages.tracks import TRACKS_VERSION, compute_tracks

    cfg, seed = run.config.tracks, run.config.seed
    key_config, inputs = tracks_cache_key(cfg, seed, decoded)
    return run.stage("tracks", TRACKS_VERSION, key_config, inputs,
                     lambda: compute_tracks(decoded["frames"], cfg, device, seed))


def run_depth(run: Run, decoded: Artifact, device: str) -> Artifact | None:
    """Per-frame mono-depth (`stages.depth.compute_depth`); skipped with `depth.backend: none`."""
    cfg = run.config.depth
    if getattr(cfg, "backend", None) == "none":
        progress.debug("depth: backend none, skipped")
        return None
    from st4r_cli.stages.depth import DEPTH_VERSION, compute_depth

    key_config, inputs = depth_cache_key(cfg, decoded)
    return run.stage("depth", DEPTH_VERSION, key_config, inputs,
                     lambda: compute_depth(decoded["frames"], cfg, device))


def run_adapt(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact | None:
    """Test-time adaptation (`stages.adapt.run_adapt_stage`, owned by issue 6): adapted weight deltas."""
    from st4r_cli.stages.adapt import run_adapt_stage

    return run_adapt_stage(run, artifacts, device)


def run_chain(run: Run, artifacts: dict[str, Artifact], device: str) -> Artifact | None:
    """Window inference + world-frame chaining (`stages.chain.run_chain_stage`, owned by issue 6).

    Its artifact holds the `scene.npz` arrays; `run_pipeline` publishes them as `<run>/scene.npz`.
    """
    from st4r_cli.stages.chain import run_chain_stage

    return run_chain_stage(run, artifacts, device)


def check_run_config(config: RunConfig) -> None:
    """Every stage's config checks (St4rError), for a command to call before it creates the run dir:
    a bad `--set` value fails at once, not after decoding and tracking (the stages check their own
    config again when they run)."""
    from st4r_cli.stages.adapt import check_adapt_config
    from st4r_cli.stages.chain import check_chain_config
    from st4r_cli.stages.depth import check_depth_config
    from st4r_cli.stages.tracks import check_tracks_config

    check_decode_config(config.decode)
    check_tracks_config(config.tracks)
    check_depth_config(config.depth)
    check_adapt_config(config.adapt)
    check_chain_config(config.chain)


def run_pipeline(run: Run, device: str, until: str | None = None) -> dict[str, Artifact]:
    """Run every stage (or up to and including `until`), publish scene.npz, mark the run complete.

    On any error the run is marked failed/interrupted (never complete) and the error propagates.
    """
    check_until(until)
    stop_after = STAGES.index(until) if until else len(STAGES) - 1
    artifacts: dict[str, Artifact] = {}
    try:
        artifacts["decode"] = run_decode(run)
        steps: list[tuple[str, Callable[[], Artifact | None]]] = [
            ("tracks", lambda: run_tracks(run, artifacts["decode"], device)),
            ("depth", lambda: run_depth(run, artifacts["decode"], device)),
            ("adapt", lambda: run_adapt(run, artifacts, device)),
            ("chain", lambda: run_chain(run, artifacts, device)),
        ]
        for name, step in steps[:stop_after]:
            artifact = step()
            if artifact is not None:
                artifacts[name] = artifact
        if "chain" in artifacts:
            run.publish(SCENE_FILE, artifacts["chain"].load())
    except KeyboardInterrupt:
        run.mark_failed("interrupted by the user", interrupted=True)
        raise
    except St4rError as err:
        run.mark_failed(str(err))
        raise
    except Exception as err:
        run.mark_failed(f"{type(err).__name__}: {err}")
        raise
    run.mark_complete()
    return artifacts
