"""Optimizers and learning-rate schedules from the ``train`` config (optax)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax


def make_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup over ``warmup_fraction * total_steps``, then cosine (or constant).

    Returns a function step -> learning rate (scalar).
    """
    warmup = int(c.warmup_fraction * total_steps)
    if c.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(c.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, c.lr, warmup), optax.constant_schedule(c.lr)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=c.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=c.lr * c.end_lr_fraction)


def decay_mask(params: Any) -> Any:
    """True for arrays that get weight decay: rank >= 2 (kernels), not norm scales/biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int,
                   extra: optax.GradientTransformation | None = None
                   ) -> optax.GradientTransformation:
    """The optimizer of ``c.optimizer`` with schedule and weight decay.

    Args:
      c: the ``train`` config.
      total_steps: schedule length.
      extra: an optional transformation applied to the raw gradients first (a
        regularizer from a pruning method, e.g. a group-lasso gradient term).
    Returns:
      SGD: chain(extra, add_decayed_weights(wd, mask), sgd(schedule, momentum, nesterov))
      (weight decay enters the momentum, as in torch.optim.SGD); AdamW: chain(extra,
      adamw(schedule, b1, b2, eps, wd, mask)).
    """
    schedule = make_schedule(c, total_steps)
    mask: Callable | None = None if c.decay_norm_and_bias else decay_mask
    if c.optimizer == "sgd":
        parts = []
        if c.weight_decay > 0:
            parts.append(optax.add_decayed_weights(c.weight_decay, mask))
        parts.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov))
        opt = optax.chain(*parts)
    elif c.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps,
                          weight_decay=c.weight_decay, mask=mask)
    else:
        raise ValueError(f"train.optimizer={c.optimizer!r}: unknown; use 'sgd' or 'adamw'")
    return optax.chain(extra, opt) if extra is not None else opt
