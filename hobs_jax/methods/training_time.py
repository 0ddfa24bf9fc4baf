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
