"""Random Block-ELL matrices for the tests/test_block_ell_*.py files."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from kernels.block_ell import BlockELL

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


def random_bell(k: int, n: int, block: int, keep: int, *, seed: int = 0,
                slots: int | None = None, empty_rows: tuple[int, ...] = (),
                dtype=np.float32) -> BlockELL:
    """Random W [k, n] with ``keep`` blocks per block-row (``empty_rows`` keep none)
    and ``slots`` >= keep slots (extra slots are padding)."""
    rng = np.random.default_rng(seed)
    r_blocks, c_blocks = -(-k // block), -(-n // block)
    mask = np.zeros((r_blocks, c_blocks), bool)
    for r in range(r_blocks):
        if r not in empty_rows:
            mask[r, rng.choice(c_blocks, keep, replace=False)] = True
    dense = rng.standard_normal((r_blocks * block, c_blocks * block))
    dense *= np.kron(mask, np.ones((block, block)))
    return BlockELL.from_dense(dense[:k, :n].astype(dtype), block, mask=mask,
                               slots=keep if slots is None else slots)
