"""Per-batch Gram matrices X^T X of a layer's input rows (jit-traceable, pure jnp).

A channel-mixing conv's rows X are its im2col patches in the HWIO order (tap row, tap
col, channel). Two ways to reduce them without the one-hot patch convolution:

* :func:`rowshift_parts` / :func:`rowshift_assemble` (row stride 1: every 3x3 'same' conv
  of a ResNet): the patch rows of tap rows a and a' are the same 1 x kw row patches R,
  read (a' - a) input rows apart, so every block (a, a') of X^T X is one block of
  ``main = sum over input rows y of R(y) [R(y), R(y+1), ..., R(y+kh-1)]^T`` ([kw*C,
  kh*kw*C]: a third of the Gram's flops for a 3x3 conv) minus the few border rows that
  tap row a never reads; blocks below the diagonal are transposes. Exact up to float
  rounding (tested against the patch Gram).
* otherwise (strided rows), the full patch rows from strided slices
  (:func:`hobs_jax.stats.layers.conv_slices`) and one product.

On CPU the rows of a batch are built and reduced a few images at a time
(:func:`chunked_sum`: a ``lax.scan`` whose chunk stays in cache), so the patch tensor,
kh*kw times the activations, is never written to memory whole; on accelerators the
batch is one product.

Measured on this 2-core CPU (shared), CPU seconds per 256-image batch of 3x3-conv inputs
at 28x28x16 / 14x14x32 / 7x7x64: ``conv_general_dilated_patches`` + one Gram 0.30 / 0.20
/ 0.13; sliced + chunked 0.13 / 0.11 / 0.10; row-shift + chunked 0.08 / 0.07 / 0.07.
The row-shift products are taken one tap row at a time (``kh`` products of the row
patches against the row patches a rows below) instead of against one concatenated copy of
the ``kh`` shifted patches: measured 10-20% faster per batch, with the same compile time.
Each product is a 2-D dot of the flattened rows (:func:`tn_product`), and correction
products skip the column blocks the assembly never reads; with both, the row-shift Gram
takes 0.062 / 0.056 / 0.048 CPU s (32 / 29 / 24 ms wall) per 256-image batch at the three
shapes above, against 0.080 / 0.060 / 0.058 (59 / 31 / 30 ms wall) with the 4-D einsum
(timed on the otherwise idle CPU, ``jax.jit`` of :func:`gram_conv_rowshift`, 5-10 calls).
(A full 2-D shift correlation, ``sum_q x[q] x[q + delta]^T`` over the 13 shifts of a 3x3
kernel, one product per shift, plus border-row, border-column and corner corrections by
inclusion-exclusion, was tried again: 1.3-1.7x faster per 256-image batch than the
row-shift Gram at 28x28x16 / 14x14x32 / 7x7x64, but 2.5-3.5x slower to compile per
layer (1.7 / 3.2 s vs 0.7 / 0.9 s), which on a 55-layer ResNet-56 calibration step cost
more in the first call than all 2048 images saved; not used.)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from hobs_jax.stats.layers import LayerInfo, conv_output_hw, conv_slices

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
CHUNK_ELEMENTS = 1 << 20  # rows x columns of one chunk of patches on CPU (4 MiB in float32)


def tn_product(a: Array, b: Array) -> Array:
    """[..., d], [..., e] -> [d, e]: sum over the leading axes of a b^T, as one 2-D
    product of the rows flattened (a contiguous copy of each operand first). Measured on
    the 2-core CPU for the row-shift products of a 256-image batch: 1.9x less wall and
    1.3x less CPU time at 28x28x16 than the same ``einsum`` over the 4-D slices (whose
    multi-axis contraction XLA runs as a less parallel product), 1.0-1.15x at 14x14x32
    and 7x7x64."""
    return jnp.dot(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]), precision=_HI)


def gram_rows(rows: Array) -> Array:
    """[n, d] -> [d, d]: sum over rows of x x^T."""
    return jnp.einsum("nd,ne->de", rows, rows, precision=_HI)


def gram_conv(patches: Array) -> Array:
    """[n, C, kk] channel-major patches -> [kk*C, kk*C] Gram in (tap, channel) order."""
    n, c, kk = patches.shape
    g = gram_rows(patches.reshape(n, c * kk))
    return g.reshape(c, kk, c, kk).transpose(1, 0, 3, 2).reshape(kk * c, kk * c)


def gram_depthwise(rows: Array) -> Array:
    """[n, C, kk] per-channel patches -> [C, kk, kk] per-channel Grams."""
    return jnp.einsum("nck,ncl->ckl", rows, rows, precision=_HI)


def chunk_size(n: int, elements_per_example: int, platform: str | None = None) -> int:
    """Examples per chunk for :func:`chunked_sum`: on CPU the largest divisor of ``n`` whose
    chunk holds at most :data:`CHUNK_ELEMENTS` row elements (at least 1); elsewhere ``n``."""
    if (platform or jax.default_backend()) != "cpu":
        return n
    best = 1
    for c in range(1, n + 1):
        if n % c == 0 and c * elements_per_example <= CHUNK_ELEMENTS:
            best = c
    return best


def chunked_sum(fn: Callable, xs: tuple, chunk: int):
    """sum over chunks of ``fn(*chunk_of_xs)``: ``xs`` arrays share a leading axis n (a
    multiple of ``chunk``); ``fn`` returns a pytree of arrays. One call when chunk == n."""
    n = xs[0].shape[0]
    if chunk >= n:
        return fn(*xs)
    if n % chunk:
        raise ValueError(f"chunked_sum: {n} examples do not split into chunks of {chunk}")
    split = tuple(x.reshape((n // chunk, chunk) + x.shape[1:]) for x in xs)
    first = fn(*(x[0] for x in split))

    def body(acc, part):
        return jax.tree.map(jnp.add, acc, fn(*part)), None

    return jax.lax.scan(body, first, tuple(x[1:] for x in split))[0]


def row_shiftable(info) -> bool:
    """Whether :func:`gram_conv_rowshift` applies: a channel-mixing conv with row stride 1,
    no row dilation, no input dilation and non-negative padding."""
    return (info.kind == "conv" and tuple(info.lhs_dilation or (1, 1)) == (1, 1)
            and info.strides[0] == 1 and info.rhs_dilation[0] == 1
            and min(min(p) for p in info.padding) >= 0)


def _row_patches(info, x: Array) -> tuple[Array, int, int, int]:
    """(R, top padding, output height, output width): R [N, H + pt + pb + kh - 1, Wo, kw*C]
    holds, for every padded input row y, the 1 x kw patches of that row at each output
    column (tap column, channel), with kh - 1 extra zero rows at the bottom."""
    kh, kw = info.kernel_shape[:2]
    (pt, pb), (pl, pr) = info.padding
    sw, dw = info.strides[1], info.rhs_dilation[1]
    xp = jnp.pad(x, ((0, 0), (pt, pb + kh - 1), (pl, pr), (0, 0)))
    ho, wo = conv_output_hw(info, x.shape[1:3])
    taps = [xp[:, :, b * dw: b * dw + sw * (wo - 1) + 1: sw] for b in range(kw)]
    return (taps[0] if kw == 1 else jnp.concatenate(taps, axis=-1)), pt, ho, wo


def _excluded_rows(a: int, pt: int, h: int, ho: int) -> list[slice]:
    """The real input rows [pt, pt + h) that tap row ``a`` never reads (it reads padded rows
    [a, a + ho)); at most two ranges."""
    out = []
    if min(a, pt + h) > pt:
        out.append(slice(pt, min(a, pt + h)))
    if pt + h > max(a + ho, pt):
        out.append(slice(max(a + ho, pt), pt + h))
    return out


def rowshift_parts(info, x: Array) -> dict:
    """The per-chunk sums :func:`rowshift_assemble` turns into a conv's Gram (linear in the
    images, so chunks add): ``main`` [kw*C, kh*kw*C] over every real input row, one
    correction per tap row over the rows it never reads, and (bias layers) per-row sums."""
    kh = info.kernel_shape[0]
    r, pt, ho, _ = _row_patches(info, x)
    h = x.shape[1]
    hp = h + sum(info.padding[0])

    d = r.shape[-1]

    def prod(rows: slice, shifts: int) -> Array:
        # [kw*C, kh*kw*C]: row patches against the row patches o = 0..shifts-1 rows below, one
        # product per o (no concatenated copy of the shifted patches is written); the other
        # kh - shifts column blocks, and those whose rows below are all bottom padding, are 0
        lo, hi = rows.start, rows.stop
        blocks = [tn_product(r[:, lo:hi], r[:, lo + o: hi + o]) if o < shifts and lo + o < pt + h
                  else jnp.zeros((d, d), r.dtype) for o in range(kh)]
        return jnp.concatenate(blocks, axis=1)

    out = {"main": prod(slice(pt, pt + h), kh)}
    for a in range(kh):
        for i, rows in enumerate(_excluded_rows(a, pt, h, ho)):
            out[f"fix{a}_{i}"] = prod(rows, kh - a)  # tap row a only pairs with rows a..kh-1
    if info.use_bias:
        out["rowsum"] = r[:, :hp].sum((0, 2))  # [hp, kw*C]
    return out


def rowshift_assemble(info, parts: dict, h: int) -> tuple[Array, Array | None]:
    """(X^T X [kh*kw*C, kh*kw*C] in HWIO row order, X^T 1 or None) from summed
    :func:`rowshift_parts`. Block (a, a') of tap rows, a <= a', is
    ``main[:, (a'-a)]`` minus tap row a's excluded rows; blocks below the diagonal are
    transposes."""
    kh = info.kernel_shape[0]
    pt = info.padding[0][0]
    ho = conv_output_hw(info, (h, 1))[0]
    d = parts["main"].shape[0]
    g = []
    for a in range(kh):
        ga = parts["main"]
        for i, _ in enumerate(_excluded_rows(a, pt, h, ho)):
            ga = ga - parts[f"fix{a}_{i}"]
        g.append(ga)
    blocks = [[g[a][:, (b - a) * d:(b - a + 1) * d] if b >= a else g[b][:, (a - b) * d:(a - b + 1) * d].T
               for b in range(kh)] for a in range(kh)]
    gram = jnp.block(blocks)
    s = None
    if "rowsum" in parts:
        s = jnp.concatenate([parts["rowsum"][a: a + ho].sum(0) for a in range(kh)])
    return gram, s


def gram_conv_rowshift(info: LayerInfo, x: Array) -> tuple[Array, Array | None]:
    """(X^T X, X^T 1 or None) of a :func:`row_shiftable` conv's batch input ``x``
    [N, H, W, C], by the row-shift Gram, chunked on CPU."""
    ho, wo = conv_output_hw(info, x.shape[1:3])
    parts = chunked_sum(lambda xc: rowshift_parts(info, xc), (x,), chunk_size(int(x.shape[0]), ho * wo * info.d_in))
    return rowshift_assemble(info, parts, int(x.shape[1]))


def gram_conv_sliced(info: LayerInfo, x: Array) -> tuple[Array, Array | None]:
    """(X^T X, X^T 1 or None) of a conv's batch input ``x`` from its strided-slice im2col
    rows (:func:`hobs_jax.stats.layers.conv_slices`), chunked on CPU."""
    ho, wo = conv_output_hw(info, x.shape[1:3])

    def part(xc):
        r = conv_slices(info, xc)
        g = tn_product(r, r)
        return (g, r.sum((0, 1, 2))) if info.use_bias else (g, None)

    return chunked_sum(part, (x,), chunk_size(int(x.shape[0]), ho * wo * info.d_in))
