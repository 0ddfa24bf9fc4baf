"""The main job as resumable stages: train -> calibrate -> prune -> fine-tune ->
evaluate -> benchmark -> export, each reading and writing the workdir.

    from hobs_jax.pipeline import run
    summary = run(config, workdir)   # config: configs/<name>.py's get_config()
"""

from hobs_jax.pipeline.config import STAGES, base_config, stages_of, validate
from hobs_jax.pipeline.lock import WorkdirLocked
from hobs_jax.pipeline.runner import run

__all__ = ["STAGES", "WorkdirLocked", "base_config", "run", "stages_of", "validate"]
