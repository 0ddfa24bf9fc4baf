"""Per-batch Gram matrices X^T X of a layer's input rows (jit-traceable, pure jnp).

A channel-mixing conv's rows X are its im2col patches in the HWIO order (tap row, tap
col, channel). Three ways to reduce them without the one-hot patch convolution:

* :func:`shift2d_parts` / :func:`shift2d_assemble` (stride 1, no dilation: every 3x3
  'same' conv of a ResNet): block (t, t') of X^T X, taps t = (a, b) and t' = (a', b'),
  is the 2-D shift correlation ``sum over pixels q of x[q] x[q + (a' - a, b' - b)]^T``
  minus the border rows, columns and corners tap t never reads (inclusion-exclusion);
  blocks below the diagonal are transposes. A 3x3 kernel needs 13 distinct [C, C] shift
  products (kw + (kh - 1)(2 kw - 1)): 13/81 of the full Gram's flops (the row-shift
  Gram: 27/81), taken as one product per row shift (the pixels against their column
  shifts side by side) plus small border products.
* :func:`rowshift_parts` / :func:`rowshift_assemble` (row stride 1, any column stride):
  the patch rows of tap rows a and a' are the same 1 x kw row patches R, read (a' - a)
  input rows apart, so every block (a, a') is one block of ``main = sum over input rows
  y of R(y) [R(y), R(y+1), ..., R(y+kh-1)]^T`` ([kw*C, kh*kw*C]: a third of the Gram's
  flops for a 3x3 conv) minus the few border rows that tap row a never reads.
* otherwise (strided rows), the full patch rows from strided slices
  (:func:`hobs_jax.stats.layers.conv_slices`) and one product.

All are exact up to float rounding (tested against the patch Gram). On CPU the rows of a
batch are built and reduced a few images at a time (:func:`chunked_sum`: a ``lax.scan``
whose chunk stays in cache), so the patch tensor, kh*kw times the activations, is never
written to memory whole; on accelerators the batch is one product.

The 2-D shift is the fastest of the three on CPU (1.7-1.9x the row-shift) but compiles
longer, so :func:`hobs_jax.stats.collect_hessians` jits the reduction per layer *shape*;
the measurements, and the variants tried and not used: docs/results/HISTORY.md.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from hobs_jax.stats.layers import LayerInfo, conv_output_hw, conv_slices

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
CHUNK_ELEMENTS = 1 << 20  # rows x columns of one chunk of patches on CPU (4 MiB in float32)


def tn_product(a: Array, b: Array) -> Array:
    """[..., d], [..., e] -> [d, e]: sum over the leading axes of a b^T, as one 2-D
    product of the rows flattened (a contiguous copy of each operand first): XLA runs an
    ``einsum`` over the 4-D slices as a less parallel product (up to 1.9x slower on CPU;
    docs/results/HISTORY.md)."""
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
    # Zeros, then every chunk in the scan: fn is traced (and compiled) once, not twice as
    # with the first chunk outside the loop; 0 + s == s, so the sums are the same bits.
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *(x[0] for x in split)))

    def body(acc, part):
        return jax.tree.map(jnp.add, acc, fn(*part)), None

    return jax.lax.scan(body, zeros, split)[0]


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


def shift2d_able(info) -> bool:
    """Whether :func:`gram_conv_shift2d` applies: a channel-mixing conv with stride 1, no
    dilation (kernel or input) and non-negative padding in both spatial axes."""
    return (info.kind == "conv" and tuple(info.lhs_dilation or (1, 1)) == (1, 1)
            and tuple(info.strides) == (1, 1) and tuple(info.rhs_dilation) == (1, 1)
            and min(min(p) for p in info.padding) >= 0)


def _unread(k: int, pad: int, size: int, out: int) -> list[tuple[int, int]]:
    """The real input positions [0, size) along one axis that kernel tap ``k`` never
    reads (it reads positions [k - pad, k - pad + out)): at most two ranges."""
    lo, hi = k - pad, k - pad + out
    ranges = []
    if lo > 0:
        ranges.append((0, min(lo, size)))
    if hi < size:
        ranges.append((max(hi, 0), size))
    return ranges


def _shift2d_plan(info, h: int, w: int) -> tuple[dict, dict]:
    """(groups, blocks) of the 2-D shift Gram of a :func:`shift2d_able` conv on [h, w]
    inputs. A term is a region sum ``sum over pixels (u, v) in [u0, u1) x [v0, v1) of
    x[u, v] x[u + dy, v + dx]^T`` (pixels outside the input are zero; rows trimmed so that
    both pixels' rows are real, terms that vanish are dropped). ``groups`` maps a key to
    ``(u0, u1, v0, v1, dy, [dx, ...])``: the terms that share a region and a row shift, one
    product against their column shifts side by side. ``blocks`` maps each tap pair
    (t, t'), t <= t' in HWIO tap order, to its [(sign, group key, index of dx)] terms."""
    kh, kw = info.kernel_shape[:2]
    (pt, _), (pl, _) = info.padding
    ho, wo = conv_output_hw(info, (h, w))
    groups: dict[str, tuple] = {}

    def term(u0, u1, v0, v1, dy, dx):
        u1 = min(u1, h - dy)
        if u0 >= u1 or v1 + dx <= 0 or v0 + dx >= w:
            return None
        key = f"g{u0}_{u1}_{v0}_{v1}_{dy}"
        dxs = groups.setdefault(key, (u0, u1, v0, v1, dy, []))[5]
        if dx not in dxs:
            dxs.append(dx)
        return key, dx

    blocks = {}
    taps = [(a, b) for a in range(kh) for b in range(kw)]
    for t, (a, b) in enumerate(taps):
        rows_out, cols_out = _unread(a, pt, h, ho), _unread(b, pl, w, wo)
        for t2 in range(t, len(taps)):
            dy, dx = taps[t2][0] - a, taps[t2][1] - b
            terms = [(1, term(0, h, 0, w, dy, dx))]
            terms += [(-1, term(r0, r1, 0, w, dy, dx)) for r0, r1 in rows_out]
            terms += [(-1, term(0, h, c0, c1, dy, dx)) for c0, c1 in cols_out]
            terms += [(1, term(r0, r1, c0, c1, dy, dx)) for r0, r1 in rows_out for c0, c1 in cols_out]
            blocks[t, t2] = [(sg, tm) for sg, tm in terms if tm is not None]
    blocks = {k: [(sg, g, groups[g][5].index(dx)) for sg, (g, dx) in v] for k, v in blocks.items()}
    return groups, blocks


def shift2d_parts(info, x: Array) -> dict:
    """The per-chunk sums :func:`shift2d_assemble` turns into a conv's Gram (linear in the
    images, so chunks add): per group of :func:`_shift2d_plan`, the region's pixels
    against their column shifts side by side ([C, len(dx) * C], one product), and (bias
    layers) the per-pixel sums [H, W, C]."""
    kw = info.kernel_shape[1]
    groups, _ = _shift2d_plan(info, int(x.shape[1]), int(x.shape[2]))
    o = kw - 1
    xp = jnp.pad(x, ((0, 0), (0, 0), (o, o), (0, 0)))  # column shifts read zeros outside
    out = {}
    for k, (u0, u1, v0, v1, dy, dxs) in groups.items():
        shifted = [xp[:, u0 + dy:u1 + dy, v0 + o + dx:v1 + o + dx] for dx in dxs]
        out[k] = tn_product(x[:, u0:u1, v0:v1], shifted[0] if len(dxs) == 1 else jnp.concatenate(shifted, -1))
    if info.use_bias:
        out["pixsum"] = x.sum(0)
    return out


def shift2d_assemble(info, parts: dict, h: int, w: int) -> tuple[Array, Array | None]:
    """(X^T X [kh*kw*C, kh*kw*C] in HWIO row order, X^T 1 or None) from summed
    :func:`shift2d_parts`: block (t, t') = the signed sum of its terms; blocks below the
    diagonal are transposes."""
    kh, kw = info.kernel_shape[:2]
    c = info.kernel_shape[2]
    _, blocks = _shift2d_plan(info, h, w)
    dtype = parts[next(k for k in parts if k != "pixsum")].dtype

    def block(t, t2):
        acc = jnp.zeros((c, c), dtype)
        for sg, g, i in blocks[t, t2]:
            part = parts[g][:, i * c:(i + 1) * c]
            acc = acc + part if sg > 0 else acc - part
        return acc

    n = kh * kw
    upper = {(t, t2): block(t, t2) for t in range(n) for t2 in range(t, n)}
    gram = jnp.block([[upper[t, t2] if t2 >= t else upper[t2, t].T for t2 in range(n)] for t in range(n)])
    s = None
    if "pixsum" in parts:
        (pt, _), (pl, _) = info.padding
        ho, wo = conv_output_hw(info, (h, w))
        m = parts["pixsum"]
        s = jnp.concatenate([m[max(a - pt, 0):max(a - pt + ho, 0), max(b - pl, 0):max(b - pl + wo, 0)].sum((0, 1))
                             for a in range(kh) for b in range(kw)])
    return gram, s


def gram_conv_shift2d(info: LayerInfo, x: Array) -> tuple[Array, Array | None]:
    """(X^T X, X^T 1 or None) of a :func:`shift2d_able` conv's batch input ``x``
    [N, H, W, C], by the 2-D shift Gram, chunked on CPU."""
    ho, wo = conv_output_hw(info, x.shape[1:3])
    parts = chunked_sum(lambda xc: shift2d_parts(info, xc), (x,), chunk_size(int(x.shape[0]), ho * wo * info.d_in))
    return shift2d_assemble(info, parts, int(x.shape[1]), int(x.shape[2]))


def gram_conv_sliced(info: LayerInfo, x: Array) -> tuple[Array, Array | None]:
    """(X^T X, X^T 1 or None) of a conv's batch input ``x`` from its strided-slice im2col
    rows (:func:`hobs_jax.stats.layers.conv_slices`), chunked on CPU."""
    ho, wo = conv_output_hw(info, x.shape[1:3])

    def part(xc):
        r = conv_slices(info, xc)
        g = tn_product(r, r)
        return (g, r.sum((0, 1, 2))) if info.use_bias else (g, None)

    return chunked_sum(part, (x,), chunk_size(int(x.shape[0]), ho * wo * info.d_in))
