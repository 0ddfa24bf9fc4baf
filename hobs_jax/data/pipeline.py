"""Deterministic, host-sharded, resumable batch iterators over a :class:`DataSource`.

Why plain numpy and not grain: for in-memory 28x28 images a batch is one fancy-index
gather plus a vectorized augmentation. On Fashion-MNIST (2-core CPU) grain's per-record
``MapDataset`` path was 19-25x slower than this loader, and 4.6-7.5x slower even when it
batched first (``benchmarks/data_pipeline.py``, docs/results/data_pipeline.md).
We keep the three properties that grain would give us:

* determinism: the example order of epoch ``e`` is ``permutation(seed, e)`` and the
  augmentation noise of step ``s`` is drawn from ``(seed, e, s)``, both for the *global*
  batch, so the bytes do not depend on the number of hosts, threads or restarts;
* a checkpointable position: a :class:`LoaderPosition` ``(epoch, step)`` is the whole
  iterator state (stored in training checkpoints as JSON);
* per-host sharding: global batch ``b`` is split into ``process_count`` contiguous slices
  and host ``p`` reads only the records of its slice.

Batches are dicts of numpy arrays: 'image' float32 [b, H, W, C], 'label' int32 [b]
(and 'mask' bool [b] for evaluation), where b = global batch / process_count.
"""

from __future__ import annotations

import collections
import dataclasses
from concurrent import futures
from typing import Iterator

import numpy as np

from hobs_jax.data.registry import DataSource

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class LoaderPosition:
    """Where a :class:`TrainLoader` stands: the next batch is step ``step`` of ``epoch``."""

    epoch: int = 0
    step: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderPosition":
        return cls(epoch=int(d["epoch"]), step=int(d["step"]))


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only for the defaults; the pipeline itself never touches devices
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    return process_index, process_count


def _local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(f"batch_size={global_batch} is not divisible by "
                         f"process_count={process_count}")
    per_host = global_batch // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: int64 [n], a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class TrainLoader:
    """Infinite iterator of shuffled, augmented training batches (drop_remainder).

    Args:
      source: the dataset.
      split: split name, usually 'train'.
      batch_size: the *global* batch size (all hosts together).
      seed: shuffling and augmentation seed.
      augment: apply the source's training augmentation.
      process_index, process_count: host sharding (default: from jax).
      prefetch: batches prepared ahead in background threads (0 = synchronous).
    """

    def __init__(self, source: DataSource, split: str, batch_size: int, seed: int, *,
                 augment: bool = True, process_index: int | None = None,
                 process_count: int | None = None, prefetch: int = 2):
        self.source, self.split, self.batch_size, self.seed = source, split, batch_size, seed
        self.augment = augment
        self.num_examples = source.size(split)
        if batch_size < 1 or batch_size > self.num_examples:
            raise ValueError(f"batch_size={batch_size} must be in [1, {self.num_examples}] "
                             f"(split {split!r} size)")
        self.process_index, self.process_count = _host(process_index, process_count)
        self._slice = _local_slice(batch_size, self.process_index, self.process_count)
        self.steps_per_epoch = self.num_examples // batch_size
        self._position = LoaderPosition()
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._prefetch = prefetch
        self._pool = futures.ThreadPoolExecutor(max(prefetch, 1), thread_name_prefix="loader")
        self._queue: collections.deque = collections.deque()

    @property
    def local_batch_size(self) -> int:
        return self._slice.stop - self._slice.start

    def position(self) -> LoaderPosition:
        """Position of the next batch that ``next()`` returns (checkpoint this)."""
        return self._position

    def restore(self, position: LoaderPosition | dict) -> None:
        """Moves to ``position`` (drops prefetched batches)."""
        if isinstance(position, dict):
            position = LoaderPosition.from_dict(position)
        if not 0 <= position.step < self.steps_per_epoch or position.epoch < 0:
            raise ValueError(f"loader position {position} out of range "
                             f"(steps_per_epoch={self.steps_per_epoch})")
        self._queue.clear()
        self._position = position

    def _advance(self, pos: LoaderPosition) -> LoaderPosition:
        if pos.step + 1 == self.steps_per_epoch:
            return LoaderPosition(pos.epoch + 1, 0)
        return LoaderPosition(pos.epoch, pos.step + 1)

    def global_indices(self, pos: LoaderPosition) -> np.ndarray:
        """Example indices (into the split) of the *global* batch at ``pos``: int64 [B]."""
        cache = self._perm_cache
        if cache is None or cache[0] != pos.epoch:
            cache = (pos.epoch, epoch_permutation(self.seed, pos.epoch, self.num_examples))
            self._perm_cache = cache
        start = pos.step * self.batch_size
        return cache[1][start:start + self.batch_size]

    def _indices(self, pos: LoaderPosition) -> np.ndarray:
        """This host's slice of :meth:`global_indices`."""
        return self.global_indices(pos)[self._slice]

    def global_noise(self, pos: LoaderPosition) -> np.ndarray | None:
        """Augmentation noise of the *global* batch at ``pos``: float64 [B, noise_dim], or
        None without augmentation. Row i belongs to ``global_indices(pos)[i]``."""
        if not self.augment:
            return None
        rng = np.random.default_rng([self.seed, pos.epoch, pos.step, 0xA06])
        return rng.random((self.batch_size, self.source.preprocess.noise_dim))

    def read(self, indices: np.ndarray, noise: np.ndarray | None) -> Batch:
        """This host's slice of a global batch given by example ``indices`` [n] and their
        augmentation ``noise`` rows [n, noise_dim] (as ``global_indices``/``global_noise``
        return them; None without augmentation). ``n`` must be divisible by the process
        count; host p gets rows [p n / P, (p + 1) n / P).

        The same (index, noise row) gives the same bytes as when :meth:`make_batch` read it,
        so a consumer that selects examples from several batches (AST sample selection) can
        re-assemble any of them into a new batch on every host, whatever the host count.
        """
        indices = np.asarray(indices, np.int64)
        part = self._slice if len(indices) == self.batch_size else _local_slice(
            len(indices), self.process_index, self.process_count)
        if self.augment and (noise is None or len(noise) != len(indices)):
            raise ValueError("read: training augmentation needs one noise row per index")
        local_noise = noise[part] if self.augment else None
        images, labels = self.source.batch(self.split, indices[part], train=self.augment,
                                           noise=local_noise)
        return {"image": images, "label": labels}

    def make_batch(self, pos: LoaderPosition) -> Batch:
        """The local batch at ``pos`` (pure: same bytes for the same seed and position)."""
        return self.read(self.global_indices(pos), self.global_noise(pos))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._prefetch == 0:
            batch = self.make_batch(self._position)
        else:
            pos = self._position
            ahead = pos if not self._queue else self._queue[-1][0]
            if self._queue:
                ahead = self._advance(ahead)
            while len(self._queue) <= self._prefetch:
                self._queue.append((ahead, self._pool.submit(self.make_batch, ahead)))
                ahead = self._advance(ahead)
            queued_pos, fut = self._queue.popleft()
            assert queued_pos == pos, (queued_pos, pos)
            batch = fut.result()
        self._position = self._advance(self._position)
        return batch


class EvalLoader:
    """Re-iterable evaluation batches; every example counted exactly once.

    The split is cut into ``ceil(n / batch_size)`` global batches in order; the last one is
    padded (with copies of example 0) and its 'mask' is False on the padding. Host ``p``
    gets its slice of each global batch, so all hosts run the same number of steps.
    """

    def __init__(self, source: DataSource, split: str, batch_size: int, *,
                 process_index: int | None = None, process_count: int | None = None):
        self.source, self.split, self.batch_size = source, split, batch_size
        self.num_examples = source.size(split)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.process_index, self.process_count = _host(process_index, process_count)
        self._slice = _local_slice(batch_size, self.process_index, self.process_count)

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        with futures.ThreadPoolExecutor(1, thread_name_prefix="eval-loader") as pool:
            pending = pool.submit(self._batch, 0) if len(self) else None
            for b in range(len(self)):
                batch = pending.result()
                if b + 1 < len(self):
                    pending = pool.submit(self._batch, b + 1)
                yield batch

    def _batch(self, b: int) -> Batch:
        global_idx = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
        mask = global_idx < self.num_examples
        global_idx = np.where(mask, global_idx, 0)
        idx, mask = global_idx[self._slice], mask[self._slice]
        images, labels = self.source.batch(self.split, idx, train=False)
        return {"image": images, "label": labels, "mask": mask}
