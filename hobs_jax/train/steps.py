"""The jitted train and eval steps (explicit shardings, donated state).

Model contract (the zoo's): ``model.apply(variables, x, train=False) -> logits [B, K]``;
in training ``model.apply(variables, x, train=True, mutable=['batch_stats'],
rngs={'dropout': key}) -> (logits, {'batch_stats': ...})`` (empty for a ViT).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hobs_jax.train import mesh as mesh_lib
from hobs_jax.train.state import TrainState

ApplyFn = Callable[..., Any]


class Teacher(NamedTuple):
    """A frozen teacher for distillation: ``apply_fn(variables, x, train=False) -> logits``."""

    apply_fn: ApplyFn
    variables: Any


def resolve_compute_dtype(mixed_precision: str) -> jnp.dtype:
    """'bf16' -> bfloat16; 'off' -> float32; 'auto' -> bfloat16 on GPU/TPU, float32 on CPU."""
    if mixed_precision == "bf16" or (mixed_precision == "auto"
                                     and jax.default_backend() in ("gpu", "tpu")):
        return jnp.bfloat16
    return jnp.float32


def _cast(tree: Any, dtype) -> Any:
    if dtype == jnp.float32:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, tree)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross entropy [B] with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
    """Per-example T^2 * KL(softmax(t/T) || softmax(s/T)) [B] (Hinton et al., 2015)."""
    t = jax.nn.log_softmax(teacher_logits / temperature)
    s = jax.nn.log_softmax(student_logits / temperature)
    return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def make_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, mesh: Mesh,
                    state_shardings: Any, label_smoothing: float = 0.0,
                    compute_dtype=jnp.float32, teacher: Teacher | None = None,
                    kd_temperature: float = 4.0, kd_alpha: float = 0.9,
                    extra_loss: Callable[[Any], jax.Array] | None = None,
                    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
                    example_fn: Callable[[jax.Array, dict, dict], jax.Array] | None = None
                    ) -> Callable[..., tuple[TrainState, dict]]:
    """Builds ``step(state, batch, teacher_variables) -> (state, metrics)`` under jax.jit.

    Args:
      apply_fn: the student's ``model.apply``.
      tx: optimizer (from :func:`hobs_jax.train.optim.make_optimizer`).
      mesh: the ('data',) mesh; the batch is sharded over it.
      state_shardings: a TrainState of NamedShardings (replicated or FSDP).
      label_smoothing: amount for the CE term.
      compute_dtype: bfloat16 runs the forward/backward in bf16 from float32 master weights.
      teacher: enables distillation; its variables are passed at call time (replicated).
      kd_temperature, kd_alpha: loss = (1 - a) CE + a * T^2 KL.
      extra_loss: optional ``f(params) -> scalar`` added to the loss (a regularizer).
      lr_schedule: if given, metrics include 'lr' = schedule(step) * lr_scale (the
        learning rate this step used).
      example_fn: if given, ``f(logits, batch, extras) -> [B, ...]`` per-example values
        from the training forward, returned (replicated) as metrics['example'];
        ``extras`` is the dict that ``apply_fn`` returned besides the logits (the mutated
        collections). AST sample selection uses it to refresh its stale score table.
    Returns:
      The jitted step. ``batch`` = {'image': [B, H, W, C], 'label': int32 [B]} sharded over
      'data', optionally 'weight' float32 [B] (per-example loss weights: the loss is
      mean(weight * loss_i), e.g. InfoBatch's rescaling); the state argument is donated. A step whose loss or gradients are not finite
      leaves params, batch_stats and optimizer state unchanged and increments
      ``state.nan_skips`` (step still advances). Metrics (replicated scalars): loss, ce,
      accuracy, grad_norm, finite (and lr).
    """

    def loss_fn(params, state: TrainState, batch, teacher_vars, dropout_key):
        variables = {"params": _cast(params, compute_dtype)}
        if jax.tree.leaves(state.batch_stats):
            variables["batch_stats"] = state.batch_stats
        x = batch["image"].astype(compute_dtype)
        logits, mutated = apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": dropout_key})
        logits = logits.astype(jnp.float32)
        weight = batch.get("weight")
        mean = (lambda v: v.mean()) if weight is None else (lambda v: jnp.mean(v * weight))
        ce = mean(cross_entropy(logits, batch["label"], label_smoothing))
        loss = ce
        if teacher is not None:
            t_logits = teacher.apply_fn(_cast(teacher_vars, compute_dtype), x, train=False)
            t_logits = jax.lax.stop_gradient(t_logits.astype(jnp.float32))
            kd = mean(distillation_loss(logits, t_logits, kd_temperature))
            loss = (1.0 - kd_alpha) * ce + kd_alpha * kd
        if extra_loss is not None:
            loss = loss + extra_loss(params)
        new_stats = mutated.get("batch_stats", state.batch_stats)
        example = None
        if example_fn is not None:
            example = jax.lax.stop_gradient(example_fn(logits, batch, mutated))
        return loss, (logits, new_stats, ce, example)

    def step(state: TrainState, batch: dict, teacher_vars: Any):
        dropout_key = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, new_stats, ce, example)), grads = grad_fn(
            state.params, state, batch, teacher_vars, dropout_key)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1, params=keep(new_params, state.params),
            batch_stats=keep(new_stats, state.batch_stats),
            opt_state=keep(new_opt_state, state.opt_state),
            nan_skips=state.nan_skips + (~finite).astype(jnp.int32))
        metrics = {"loss": loss, "ce": ce,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                   "grad_norm": optax.tree.norm(grads), "finite": finite}
        if lr_schedule is not None:
            metrics["lr"] = lr_schedule(state.step) * state.lr_scale
        if example is not None:
            metrics["example"] = example
        return new_state, metrics

    rep = mesh_lib.replicated(mesh)
    data = mesh_lib.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(state_shardings, data, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,))


def make_eval_step(apply_fn: ApplyFn, *, mesh: Mesh, variables_shardings: Any = None,
                   compute_dtype=jnp.float32) -> Callable[[Any, dict], dict]:
    """Builds ``eval_step(variables, batch) -> sums`` under jax.jit.

    ``batch`` = {'image', 'label', 'mask' bool [B]}; padded examples (mask False) count
    nowhere. Returns replicated sums: loss_sum, top1_sum, top5_sum (only when K > 5), count.
    """

    def step(variables, batch):
        logits = apply_fn(_cast(variables, compute_dtype), batch["image"].astype(compute_dtype),
                          train=False).astype(jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        out = {"loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
               "top1_sum": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
               "count": jnp.sum(mask)}
        if logits.shape[-1] > 5:
            _, top5 = jax.lax.top_k(logits, 5)
            out["top5_sum"] = jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask)
        return out

    rep = mesh_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(variables_shardings if variables_shardings is not None
                                       else rep, mesh_lib.batch_sharding(mesh)),
                   out_shardings=rep)
