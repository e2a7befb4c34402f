"""Run directories, saved run configs and the content-addressed stage cache.

    from st4r_cli.runs import Run, RunConfig, digest_path
    run = Run.create("runs/demo", RunConfig(input=str(video)))
    frames = run.stage("decode", DECODE_VERSION, cfg, [digest_path(video)], lambda: decode(...))
"""

from st4r_cli.runs.cache import (Artifact, StageCache, digest_arrays, digest_file_or_missing, digest_path,
                                 stage_key)
from st4r_cli.runs.config import (DEFAULT_MODEL, STAGE_CONFIGS, RunConfig, apply_overrides,
                                  load_config, save_config)
from st4r_cli.runs.run import Run

__all__ = ["Artifact", "StageCache", "digest_arrays", "digest_file_or_missing", "digest_path", "stage_key",
           "DEFAULT_MODEL", "STAGE_CONFIGS", "RunConfig", "apply_overrides", "load_config", "save_config", "Run"]
