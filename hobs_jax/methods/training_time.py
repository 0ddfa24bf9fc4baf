"""What the training-time methods (JTP, BilevelPruning, StructAlign) share: the refusal
when no training loop is wired up, their rounds of weight training through the task's
fine-tune callback, and calibration batches for their own updates (agents, generators,
gates), which are optax-trained pytrees outside the network's training engine.

Each round is one call ``task.finetune(variables, steps, extra_loss=...)``: the engine
(:func:`hobs_jax.train.fit` in the pipeline, resumable per call) trains the unpruned
network with the method's loss term and knows nothing else of it; between calls the
method updates its own state on calibration images with the weights frozen. The
pipeline's callback keeps each call's checkpoints apart, so a restarted stage resumes
every finished round from its checkpoint (the methods are deterministic given the seed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from hobs_jax.methods.base import Calibration, PruneTask
from hobs_jax.methods.masks import host_like


def require_training(name: str, task: PruneTask, steps: int) -> None:
    """One-line error when a training-time method cannot train (no callback, no data)."""
    if task.finetune is None:
        raise ValueError(f"{name} is a training-time method: it needs a training loop (task.finetune is None); "
                         f"pass finetune=... (the pipeline's prune stage wires one up)")
    if task.calib is None or len(task.calib.images) == 0:
        raise ValueError(f"{name} is a training-time method: it needs training data for its own updates "
                         f"(task.calib is None)")
    if steps < 1:
        raise ValueError(f"{name}: {steps} training steps: a training-time method needs at least one")


def batches(calib: Calibration, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches of ``min(size, N)`` calibration examples (each pass a new
    permutation from ``seed``)."""
    rng = np.random.default_rng(seed)
    n = len(calib.images)
    size = min(int(size), n)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - size + 1, size):
            idx = np.sort(order[i:i + size])
            yield calib.images[idx], calib.labels[idx]


def split(calib: Calibration, n_eval: int) -> tuple[Calibration, Calibration]:
    """(first part, last ``n_eval`` examples); with fewer than 2 * n_eval examples both
    parts are the whole set (tiny smoke runs)."""
    n = len(calib.images)
    if n < 2 * n_eval:
        return calib, calib
    return (Calibration(calib.images[:-n_eval], calib.labels[:-n_eval]),
            Calibration(calib.images[-n_eval:], calib.labels[-n_eval:]))


class Rounds:
    """Weight training in rounds through ``task.finetune``; counts steps and seconds."""

    def __init__(self, task: PruneTask):
        if task.finetune is None:
            raise ValueError(f"{task.name}: a training-time method needs a training loop (task.finetune is None)")
        self.finetune = task.finetune
        self.task = task
        self.steps = 0
        self.seconds = 0.0

    def train(self, variables, steps: int, extra_loss: Callable | None) -> dict:
        t0 = time.time()
        out = self.finetune(dict(variables), int(steps), extra_loss=extra_loss, extra_transform=None)
        self.steps += int(steps)
        self.seconds += time.time() - t0
        return host_like(out, variables)


def sgd_callback(model, calib: Calibration, *, batch: int, lr: float = 0.01, momentum: float = 0.9) -> Callable:
    """A minimal, deterministic ``task.finetune`` for studies and tests that run a method
    without the pipeline: ``finetune(variables, steps, extra_loss=None, extra_transform=None)``
    takes ``steps`` SGD steps (momentum ``momentum``) of cross-entropy on the calibration
    set, step ``i`` on examples ``[batch * (i % (N // batch)), ...)`` in order, with the
    method's loss term added to the gradient and its gradient transformation (DepGraph's
    sparse phase) chained before SGD. The model's gradient is jitted once per callback;
    the method's term and transformation run eagerly, so a new one costs no compile."""
    import jax
    import jax.numpy as jnp
    import optax

    from hobs_jax.train import cross_entropy

    n_batches = len(calib.images) // int(batch)
    if n_batches < 1:
        raise ValueError(f"sgd_callback: batch {batch} is larger than the {len(calib.images)} calibration examples")

    @jax.jit
    def grads(params, batch_stats, x, y):
        def loss(p):
            logits, state = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                        mutable=["batch_stats"])
            return cross_entropy(logits, y).mean(), state["batch_stats"]
        (_, new_stats), g = jax.value_and_grad(loss, has_aux=True)(params)
        return new_stats, g

    def finetune(variables, steps, extra_loss=None, extra_transform=None):
        params, stats = variables["params"], variables["batch_stats"]
        tx = optax.chain(extra_transform or optax.identity(), optax.sgd(lr, momentum=momentum))
        opt_state = tx.init(params)
        for i in range(int(steps)):
            sl = slice(batch * (i % n_batches), batch * (i % n_batches) + batch)
            stats, g = grads(params, stats, calib.images[sl], calib.labels[sl])
            if extra_loss is not None:
                g = jax.tree.map(jnp.add, g, jax.grad(extra_loss)(params))
            updates, opt_state = tx.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
        return {"params": params, "batch_stats": stats}
    return finetune
