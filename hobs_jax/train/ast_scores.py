"""Per-sample significance scores for Adaptive Sparse Training.

A score is computed in two parts:

* on the device, per example, up to two *components* [B, 2] from the logits z [B, K],
  the labels y [B], the input x [B, H, W, C] and (for the gradient proxy) the norm of the
  head's input h:

  ====================  =================================  ==================================
  score                 component 0                        component 1
  ====================  =================================  ==================================
  ``loss``              CE(z, y)                           -
  ``loss_entropy``      CE(z, y)                           H(softmax(z)) (prediction entropy)
  ``loss_intensity``    CE(z, y)                           mean |x| (input intensity)
  ``loss_grad``         CE(z, y)                           ||softmax(z) - onehot(y)|| * ||h||
  ``entropy``           H(softmax(z)) (needs no label)     -
  ``reducible``         CE(z, y), then minus a reference   -
  ====================  =================================  ==================================

  ``reducible`` is RHO-LOSS's reducible loss (Mindermann et al., ICML 2022): the device
  computes CE as for ``loss``; the selector subtracts a frozen reference model's loss on
  the same example (``train.ast.reference``, ``hobs_jax.train.ast_reference``) and clips
  at 0 before the normalization below.

  The gradient proxy is the exact norm of the last layer's weight gradient: for softmax
  cross entropy with logits z = W h + b, dL/dW = (p - onehot(y)) h^T, a rank-one matrix
  whose Frobenius norm is ||p - onehot(y)|| * ||h||. ``h`` is the input of the model's
  last ``nn.Dense`` whose output is the logits, found with ``flax.linen.intercept_methods``
  (no change to the model); a model without such a head gets ||p - onehot(y)|| alone (the
  norm of dL/dz, which is also the bias gradient's norm).

* on the host, the components are combined into one unit-free score with mean ~1:
  ``s = sum_k w_k c_k / m_k`` where ``m_k`` is the running mean of component k (per class
  with ``class_balanced``) and w = (0.7, 0.3) for two components (the original AST's
  loss/entropy weights) or (1,) for one. Normalizing by the running mean lets one set of
  controller gains work for every score and lets composites add quantities of different
  units (nats, pixels, gradient norms). For loss + entropy this differs from the original,
  which adds raw nats: our weights apply to the normalized terms.

The scorer is the cheap forward: eval mode (BatchNorm running statistics, no dropout),
no gradient, jitted once at a fixed batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hobs_jax.train import mesh as mesh_lib

SCORES = ("loss", "loss_entropy", "loss_intensity", "loss_grad", "entropy", "reducible")
LABEL_FREE = ("entropy",)
WEIGHTS = {"loss": (1.0,), "entropy": (1.0,), "loss_entropy": (0.7, 0.3),
           "loss_intensity": (0.7, 0.3), "loss_grad": (0.7, 0.3), "reducible": (1.0,)}
HEAD_NORM_KEY = "ast_head_input_norm"  # where the wrapped apply puts ||h|| [B]


def needs_labels(score: str) -> bool:
    return score not in LABEL_FREE


def with_head_input_norm(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps ``model.apply`` so that it also reports ||h|| [B], the norm of the input of
    the last ``nn.Dense`` (subclasses included) whose output has the logits' shape.

    The wrapped function returns ``(logits, extras)`` where ``extras`` is the mutated
    collections dict (``{}`` when nothing is mutable) plus ``HEAD_NORM_KEY`` (absent when no
    such layer exists). It calls ``apply_fn`` with the same arguments, so the model is
    unchanged; the interceptor only records what the layer received.
    """

    def wrapped(variables, x, **kwargs):
        calls: list[tuple[jax.Array, tuple[int, ...]]] = []

        def interceptor(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            if (context.method_name == "__call__" and isinstance(context.module, nn.Dense)
                    and args and hasattr(out, "shape")):
                calls.append((args[0], tuple(out.shape)))
            return out

        with nn.intercept_methods(interceptor):
            res = apply_fn(variables, x, **kwargs)
        logits, extras = res if isinstance(res, tuple) else (res, {})
        extras = dict(extras)
        for h, shape in reversed(calls):
            if shape == tuple(logits.shape):
                h = h.reshape(h.shape[0], -1).astype(jnp.float32)
                extras[HEAD_NORM_KEY] = jnp.sqrt(jnp.sum(h * h, axis=-1))
                break
        return logits, extras

    return wrapped


def components(score: str, logits: jax.Array, labels: jax.Array | None, images: jax.Array,
               head_norm: jax.Array | None = None) -> jax.Array:
    """Per-example score components float32 [B, 2] (column 1 is 0 for one-part scores).

    Args:
      score: one of :data:`SCORES`.
      logits: [B, K]; labels: int [B] (unused by label-free scores); images: [B, ...].
      head_norm: ||h|| [B] for ``loss_grad`` (None: ||p - onehot(y)|| alone).
    """
    z = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(z)
    p = jnp.exp(logp)
    entropy = -jnp.sum(p * logp, axis=-1)
    zeros = jnp.zeros_like(entropy)
    if score == "entropy":
        return jnp.stack([entropy, zeros], axis=-1)
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.float32)
    ce = -jnp.sum(onehot * logp, axis=-1)
    if score in ("loss", "reducible"):  # reducible: the reference is subtracted on the host
        aux = zeros
    elif score == "loss_entropy":
        aux = entropy
    elif score == "loss_intensity":
        x = images.reshape(images.shape[0], -1).astype(jnp.float32)
        aux = jnp.mean(jnp.abs(x), axis=-1)
    elif score == "loss_grad":
        aux = jnp.sqrt(jnp.sum((p - onehot) ** 2, axis=-1))
        if head_norm is not None:
            aux = aux * head_norm
    else:
        raise ValueError(f"train.ast.score={score!r}: unknown; use one of {SCORES}")
    return jnp.stack([ce, aux], axis=-1)


def make_scorer(apply_fn: Callable[..., Any], score: str, *, mesh: Mesh,
                compute_dtype=jnp.float32) -> Callable[[Any, dict], dict]:
    """The cheap forward: ``scorer(variables, batch) -> {'components' [B, 2], 'label' [B]}``
    (replicated, so every host sees the whole global batch's scores).

    ``batch`` = {'image', 'label'} sharded over 'data' (a global batch). Eval mode, no
    gradient; jit compiles it once per batch shape.
    """
    apply = with_head_input_norm(apply_fn) if score == "loss_grad" else apply_fn

    def ast_score(variables, batch):
        if compute_dtype != jnp.float32:
            variables = jax.tree.map(lambda v: v.astype(compute_dtype)
                                     if jnp.issubdtype(v.dtype, jnp.floating) else v, variables)
        x = batch["image"].astype(compute_dtype)
        out = apply(variables, x, train=False)
        logits, extras = out if isinstance(out, tuple) else (out, {})
        comps = components(score, logits, batch["label"], batch["image"],
                           extras.get(HEAD_NORM_KEY))
        return {"components": comps, "label": batch["label"]}

    # The variables keep the shardings they live with (replicated or FSDP) and the batch
    # arrives sharded over 'data' (mesh.global_batch); only the output is pinned.
    return jax.jit(ast_score, out_shardings=mesh_lib.replicated(mesh))


def train_example_fn(score: str) -> Callable[[jax.Array, dict, dict], jax.Array]:
    """``f(logits, batch, extras) -> [B, 3]``: the same components from the training
    forward (train mode) and the label (as float), for ``make_train_step(example_fn=...)``;
    ``extras`` are the wrapped apply's extra outputs (see :func:`with_head_input_norm`)."""

    def fn(logits, batch, extras):
        comps = components(score, logits, batch["label"], batch["image"],
                           extras.get(HEAD_NORM_KEY))
        return jnp.concatenate([comps, batch["label"].astype(jnp.float32)[:, None]], axis=-1)

    return fn


class Normalizer:
    """Running means of the components (per class with ``class_balanced``) and the
    combination into one score with mean ~1.

    Args:
      score: the score name (sets the weights).
      num_classes: classes (rows of the mean table when ``class_balanced``).
      class_balanced: normalize each class by its own means, so that one threshold selects
        about the same fraction of every class.
      momentum: EMA weight of the newest batch's means.
    """

    def __init__(self, score: str, num_classes: int, class_balanced: bool,
                 momentum: float = 0.1):
        self.weights = np.asarray(WEIGHTS[score], np.float64)
        self.k = len(self.weights)
        self.class_balanced = bool(class_balanced)
        self.rows = int(num_classes) if class_balanced else 1
        self.momentum = float(momentum)
        self.means = np.full((self.rows, self.k), np.nan)

    def observe(self, comps: np.ndarray, labels: np.ndarray) -> None:
        """Folds a batch of fresh components [n, 2] (labels [n]) into the running means."""
        comps = np.asarray(comps, np.float64)[:, :self.k]
        if not len(comps):
            return
        batch_mean = comps.mean(axis=0)
        if not self.class_balanced:
            rows = {0: batch_mean}
        else:
            labels = np.asarray(labels)
            rows = {int(c): comps[labels == c].mean(axis=0) for c in np.unique(labels)
                    if 0 <= c < self.rows}
            # classes never seen yet start from the batch mean
            for r in np.where(np.isnan(self.means[:, 0]))[0]:
                if int(r) not in rows:
                    self.means[r] = batch_mean
        for r, m in rows.items():
            old = self.means[r]
            self.means[r] = m if np.isnan(old[0]) else self.momentum * m + (1 - self.momentum) * old

    def combine(self, comps: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Scores [n] (mean ~1) from components [n, 2] and labels [n]."""
        comps = np.asarray(comps, np.float64)[:, :self.k]
        rows = np.asarray(labels) if self.class_balanced else np.zeros(len(comps), np.int64)
        rows = np.clip(rows, 0, self.rows - 1)
        means = np.maximum(self.means[rows], 1e-12)
        return (comps / means) @ self.weights

    def to_dict(self) -> dict:
        return {"means": [[None if np.isnan(v) else float(v) for v in row] for row in self.means]}

    def load(self, d: dict) -> None:
        self.means = np.array([[np.nan if v is None else v for v in row] for row in d["means"]],
                              np.float64).reshape(self.rows, self.k)
