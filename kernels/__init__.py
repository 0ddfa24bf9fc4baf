"""Block-ELL sparse format and SpMM kernels (Pallas, jax-triton, XLA fallback). Depends on jax only."""

from kernels.autotune import random_balanced, tune, tune_block_size
from kernels.autotune_cache import cache_path, load_cache, lookup, lookup_block, problem_key, store
from kernels.block_ell import BlockELL, BlockELLMeta, block_mask, check_block_size, column_index, densify
from kernels.config import BACKENDS, CONCRETE_BACKENDS, KernelConfig, available_backends, backend_config, default_config
from kernels.conv import conv_kernel_to_matrix, im2col, matrix_to_conv_kernel
from kernels.cusparse import CuSparseBlockedEll, to_cusparse_blocked_ell
from kernels.ops import bell_matmul, bell_matmul_parts, select_config
from kernels.prune import (
    block_norms,
    check_sparsity,
    keep_per_row,
    padded_blocks,
    prune,
    prune_magnitude,
    select_balanced,
)
from kernels.reference import reference_matmul

__all__ = [
    # format
    "BlockELL",
    "BlockELLMeta",
    "block_mask",
    "check_block_size",
    "column_index",
    "densify",
    "CuSparseBlockedEll",
    "to_cusparse_blocked_ell",
    # matmul
    "bell_matmul",
    "bell_matmul_parts",
    "reference_matmul",
    "select_config",
    "KernelConfig",
    "BACKENDS",
    "CONCRETE_BACKENDS",
    "available_backends",
    "default_config",
    "backend_config",
    # pruning
    "prune",
    "prune_magnitude",
    "block_norms",
    "padded_blocks",
    "select_balanced",
    "keep_per_row",
    "check_sparsity",
    # convolutions
    "conv_kernel_to_matrix",
    "matrix_to_conv_kernel",
    "im2col",
    # autotuning
    "tune",
    "tune_block_size",
    "lookup",
    "lookup_block",
    "store",
    "load_cache",
    "cache_path",
    "problem_key",
    "random_balanced",
]
