"""Reference losses for AST's reducible-loss score (``train.ast.score='reducible'``).

RHO-LOSS (Mindermann et al., "Prioritized Training on Points that are Learnable, Worth
Learning, and Not Yet Learnt", ICML 2022) selects the samples with the highest
*reducible* loss, L_model(x, y) - L_ref(x, y), where L_ref estimates the loss that no
amount of training on (x, y) removes (their "irreducible loss", from a model trained on
held-out data). A plain loss score picks the samples the model gets wrong, which on a
dataset with ambiguous or mislabeled images (Fashion-MNIST's shirt / T-shirt / pullover)
are largely the ones nothing can learn; subtracting a reference that also gets them
wrong leaves the samples that are learnable and not yet learnt.

The reference is frozen, so its losses are computed once per example (eval mode, no
augmentation) and kept as a float32 vector [n] in the split's index order: one forward
pass over the split, reused by every run, rate and seed that reads the same split. When
fine-tuning a pruned network the dense network it was cut from is a natural reference
(the pipeline's finetune stage uses it when ``finetune.ast.reference`` is empty).

    losses = reference_losses(model.apply, variables, source, 'train')   # [n]
    save('ref.npy', losses)          # train.ast.reference = 'ref.npy'
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hobs_jax.data import DataSource


def reference_losses(apply_fn: Callable[..., Any], variables: Any, source: DataSource,
                     split: str = "train", *, batch_size: int = 500,
                     progress: Callable[[int, int], None] | None = None,
                     process_index: int | None = None, process_count: int | None = None,
                     ) -> np.ndarray:
    """Cross entropy of a frozen model on every example of ``split``: float32 [n].

    Eval mode (BatchNorm running statistics), no augmentation, one compiled batch shape
    (the last batch is padded). With several processes each computes every P-th batch
    and the parts are gathered (``jax.experimental.multihost_utils.process_allgather``),
    so a pod reads the split once in all; every process returns the whole vector.
    ``progress(done, n)`` is called after every batch this process computes.
    """
    import jax

    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    part = partial_losses(apply_fn, variables, source, split, batch_size=batch_size,
                          progress=progress, process_index=p, process_count=count)
    if count == 1:
        return part
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(part), np.float32).sum(axis=0)


def partial_losses(apply_fn: Callable[..., Any], variables: Any, source: DataSource,
                   split: str, *, batch_size: int, process_index: int, process_count: int,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """This process's part of :func:`reference_losses`: float32 [n], the losses of batches
    b with b % process_count == process_index, zeros elsewhere (the parts sum to the whole)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def losses(v, x, y):
        logp = jax.nn.log_softmax(apply_fn(v, x, train=False).astype(jnp.float32))
        return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]

    variables = jax.device_get(variables)
    n = source.size(split)
    batch_size = min(batch_size, n)
    out = np.zeros(n, np.float32)
    for b, start in enumerate(range(0, n, batch_size)):
        if b % process_count != process_index:
            continue
        idx = np.arange(start, min(start + batch_size, n))
        x, y = source.batch(split, idx, train=False)
        pad = batch_size - len(idx)
        if pad:
            x = np.concatenate([x, np.repeat(x[:1], pad, 0)])
            y = np.concatenate([y, np.repeat(y[:1], pad, 0)])
        out[idx] = np.asarray(losses(variables, x, y))[:len(idx)]
        if progress is not None:
            progress(int(idx[-1]) + 1, n)
    return out


def save(path: str, losses: np.ndarray) -> None:
    """Writes ``losses`` [n] to ``path`` (.npy) atomically: a crash leaves no half file."""
    tmp = f"{path}.tmp.npy"
    np.save(tmp, np.asarray(losses, np.float32))
    os.replace(tmp, path)


def load(path: str, n: int) -> np.ndarray:
    """The reference losses of ``path`` for a split of ``n`` examples; one-line ValueError
    when the file is missing, unreadable, of another length or not finite."""
    what = f"train.ast.reference={path!r}"
    if not path:
        raise ValueError("train.ast.score='reducible' needs train.ast.reference: a .npy of "
                         "per-example losses of a reference model "
                         "(hobs_jax.train.ast_reference.reference_losses)")
    if not os.path.isfile(path):
        raise ValueError(f"{what}: no such file")
    try:
        losses = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: not a readable .npy ({e})") from None
    if losses.ndim != 1 or len(losses) != n:
        raise ValueError(f"{what}: holds shape {tuple(losses.shape)}, the training split has "
                         f"{n} examples (computed on another split or subset?)")
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"{what}: holds non-finite losses")
    return losses.astype(np.float32)


def ensure(path: str, apply_fn: Callable[..., Any], variables: Any, source: DataSource,
           split: str = "train", *, log: Callable[[str], None] | None = None) -> float:
    """Computes and saves the reference losses at ``path`` unless a file of the right
    length is there (a resumed run reuses it); returns the seconds spent (0 if reused)."""
    n = source.size(split)
    if os.path.isfile(path):
        try:
            load(path, n)
            return 0.0
        except ValueError:
            pass  # a stale or foreign file: recompute
    t = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if log is not None and (done == total or time.perf_counter() - last[0] > 30):
            last[0] = time.perf_counter()
            log(f"AST reference losses: {done}/{total} examples")

    import jax

    losses = reference_losses(apply_fn, variables, source, split, progress=progress)
    if jax.process_index() == 0:  # the workdir is shared by the processes of a run
        save(path, losses)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("ast_reference.ensure")
    return time.perf_counter() - t


def reducible(losses: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """max(L_model - L_ref, 0) per example: the reducible loss, clipped so that samples the
    model already fits as well as the reference score 0 (the score normalization of
    :class:`hobs_jax.train.ast_scores.Normalizer` divides by a positive running mean)."""
    r = np.asarray(losses, np.float64) - np.asarray(reference, np.float64)
    return np.maximum(r, 0.0)


__all__ = ["reference_losses", "partial_losses", "save", "load", "ensure", "reducible"]
