"""Backends of ``bell_matmul`` and their launch configuration.

Concrete backends (what runs):

=================  ==========  ===============================================
name               platform    what
=================  ==========  ===============================================
xla_scatter        any         row form + segment_sum (``xla.scatter_spmm``);
                               CPU default
xla_gather         any         column form through the transposed index
xla_dense          any         densify W, one dense dot (low sparsity)
reference          any         same as xla_dense; the test oracle
pallas_interpret   cpu         Pallas gather kernel, interpreter (tests)
pallas_triton      gpu         Pallas gather kernel, Triton lowering
pallas_mosaic      gpu         Pallas Mosaic GPU wgmma kernel (Hopper, bf16/f16)
pallas_tpu         tpu         Pallas TPU kernel, scalar prefetch (b % 128 == 0)
triton             gpu         jax-triton kernel (needs ``jax_triton``)
=================  ==========  ===============================================

Aliases: ``auto`` (autotune cache, else the platform default), ``xla`` (the
fastest cached XLA form, else ``xla_scatter``), ``pallas`` (the platform's Pallas
kernel).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "KernelConfig",
    "CONCRETE_BACKENDS",
    "BACKENDS",
    "platform",
    "device_kind",
    "available_backends",
    "default_config",
    "backend_config",
]

CONCRETE_BACKENDS = ("xla_scatter", "xla_gather", "xla_dense", "reference",
                     "pallas_interpret", "pallas_triton", "pallas_mosaic",
                     "pallas_tpu", "triton")
BACKENDS = ("auto", "xla", "pallas") + CONCRETE_BACKENDS


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One concrete backend and its tile sizes (hashable: a static argument).

    Attributes:
      backend: one of ``CONCRETE_BACKENDS``.
      block_m: rows of X per program (Pallas / Triton kernels).
      chunk_m: rows per chunk of the XLA forms.
      num_warps, num_stages: Triton launch parameters.
      max_concurrent_steps: Mosaic GPU pipeline depth.
    """

    backend: str
    block_m: int = 64
    chunk_m: int = 128
    num_warps: int = 4
    num_stages: int = 3
    max_concurrent_steps: int = 3

    def __post_init__(self):
        if self.backend not in CONCRETE_BACKENDS:
            raise ValueError(
                f"backend={self.backend!r} is not one of {CONCRETE_BACKENDS}")
        for name in ("block_m", "chunk_m", "num_warps", "num_stages",
                     "max_concurrent_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KernelConfig.{name}={value!r} must be a positive int")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"KernelConfig has no field {sorted(unknown)[0]!r}")
        return cls(**d)


def platform() -> str:
    """``jax.default_backend()``: 'cpu', 'gpu' or 'tpu'."""
    return jax.default_backend()


def device_kind() -> str:
    """``jax.devices()[0].device_kind``, e.g. 'cpu', 'NVIDIA H100 80GB HBM3'."""
    return str(jax.devices()[0].device_kind)


def _is_hopper() -> bool:
    """sm_90 (H100/H200): the Mosaic kernel uses wgmma, which sm_100 does not have."""
    dev = jax.devices()[0]
    cap = getattr(dev, "compute_capability", None)
    try:
        return cap is not None and 9.0 <= float(cap) < 10.0
    except (TypeError, ValueError):
        return False


def _has_jax_triton() -> bool:
    return importlib.util.find_spec("jax_triton") is not None


def available_backends(plat: str, dtype: Any, block: int) -> tuple[str, ...]:
    """Concrete backends that can run on ``plat`` for (dtype, b)."""
    dt = jnp.dtype(dtype)
    out = ["xla_scatter", "xla_gather", "xla_dense", "reference"]
    if plat == "cpu":
        out.append("pallas_interpret")
    elif plat == "gpu":
        if block >= 16 and dt != jnp.float64:
            out.append("pallas_triton")
            if (dt in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
                    and block <= 128 and _is_hopper()):
                out.append("pallas_mosaic")
            if _has_jax_triton():
                out.append("triton")
    elif plat == "tpu":
        if block % 128 == 0 and dt != jnp.float64:
            out.append("pallas_tpu")
    return tuple(out)


def backend_config(plat: str, backend: str) -> KernelConfig:
    """``backend`` with the tile defaults of ``plat``.

    XLA forms chunk M by 128 rows on CPU (cache-sized intermediates) and by 4096
    on accelerators (few, large kernels). GPU tiles are the fastest of the H100
    sweep in docs/block_ell.md (bf16 4096^3, b = 64): Mosaic GPU 256 rows with a
    4-deep pipeline, Triton 128 rows with 8 warps and 3 stages (``select_config``
    drops Mosaic to 128 rows for M < 2048, where 256-row tiles would be mostly
    padding); the TPU kernel 128 rows.
    """
    if backend.startswith("xla_") or backend == "reference":
        return KernelConfig(backend, chunk_m=128 if plat == "cpu" else 4096)
    if backend == "pallas_mosaic":
        return KernelConfig(backend, block_m=256, max_concurrent_steps=4)
    if backend == "pallas_tpu":
        return KernelConfig(backend, block_m=128)
    if backend in ("pallas_triton", "triton") and plat == "gpu":
        return KernelConfig(backend, block_m=128, num_warps=8, num_stages=3)
    return KernelConfig(backend, block_m=64)


def default_config(plat: str, dtype: Any, block: int) -> KernelConfig:
    """Safe default without an autotune cache entry.

    CPU: ``xla_scatter`` (chunk_m=128, the best chunk in our CPU sweep). GPU: the
    Mosaic GPU kernel where it applies, else the Pallas Triton lowering, else XLA.
    TPU: the Pallas TPU kernel for b % 128 == 0, else XLA.
    """
    avail = available_backends(plat, dtype, block)
    for name in {"gpu": ("pallas_mosaic", "pallas_triton"), "tpu": ("pallas_tpu",)}.get(plat, ()):
        if name in avail:
            return backend_config(plat, name)
    return backend_config(plat, "xla_scatter")
