"""Training engine: config, optimizers, sharded jitted steps, checkpoints, stability,
metrics, the resumable ``fit`` loop and AST sample selection (``train.ast``,
hobs_jax.train.ast). Method-agnostic: a pruning method's regularizer arrives as an optax
transformation (``extra_transform``) or a loss term (``extra_loss``).
"""

from hobs_jax.train.checkpoint import Checkpointer, abstract_like
from hobs_jax.train.config import (
    get_ast_config,
    get_train_config,
    total_steps,
    validate_ast_config,
    validate_train_config,
)
from hobs_jax.train.evaluate import Evaluator, evaluate
from hobs_jax.train.loop import FitResult, fit
from hobs_jax.train.mesh import (
    DATA_AXIS,
    batch_sharding,
    fsdp_spec,
    global_batch,
    host_value,
    make_mesh,
    put_global,
    replicated,
    state_shardings,
)
from hobs_jax.train.metrics import MetricsWriter, eval_curve, fit_seconds, progress, read_metrics
from hobs_jax.train.optim import decay_mask, make_optimizer, make_schedule
from hobs_jax.train.preemption import Preemption
from hobs_jax.train.stability import StabilityConfig, StabilityError, StabilityState, observe, summary
from hobs_jax.train.state import TrainState
from hobs_jax.train.steps import (
    Teacher,
    cross_entropy,
    distillation_loss,
    make_eval_step,
    make_train_step,
    resolve_compute_dtype,
)

__all__ = [
    "get_train_config", "total_steps", "validate_train_config", "get_ast_config",
    "validate_ast_config", "decay_mask",
    "make_optimizer", "make_schedule", "TrainState", "DATA_AXIS", "batch_sharding",
    "fsdp_spec", "global_batch", "host_value", "make_mesh", "put_global", "replicated",
    "state_shardings", "Teacher", "cross_entropy", "distillation_loss", "make_eval_step",
    "make_train_step", "resolve_compute_dtype", "Checkpointer", "abstract_like",
    "StabilityConfig", "StabilityError", "StabilityState", "observe", "summary",
    "MetricsWriter", "eval_curve", "fit_seconds", "progress", "read_metrics", "Preemption", "Evaluator", "evaluate",
    "FitResult", "fit",
]
