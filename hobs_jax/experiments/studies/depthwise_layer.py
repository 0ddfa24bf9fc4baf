"""One depthwise convolution layer, jitted, in XLA: the grouped convolution
(``lax.conv_general_dilated`` with ``feature_group_count`` = channels) against the same conv
as a sum of shifted slices (:func:`hobs_jax.models.shift_add_depthwise`, the fast path of
``train.fast_depthwise``): forward, gradient w.r.t. the input, w.r.t. the kernel, and both
(the loss is the sum of squared outputs). Inputs NHWC with torchvision's symmetric padding;
median milliseconds over ``repeats`` calls, the two forms interleaved call by call so a
burst of load on a shared machine lands on both; the outputs are checked equal first
(float32, 1e-5 relative).

Output: ``docs/results/depthwise_layer.{json,md,tex}`` and its run record
(``python benchmarks/depthwise_layer.py``)."""

from __future__ import annotations

import statistics
import time

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "depthwise_layer", "benchmarks/depthwise_layer.py"
PARTS = ("forward", "grad input", "grad kernel", "forward+backward")


def cases(text: str) -> list[tuple[int, int, int, int, int]]:
    """``'32x28x28x96:3:1,...'`` -> [(B, H, C, kernel, stride), ...] (square maps); a one-line
    ValueError for anything else."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            shape, k, s = item.split(":")
            b, h, w, c = (int(v) for v in shape.split("x"))
            k, s = int(k), int(s)
        except ValueError:
            raise ValueError(f"case {item!r}: use BxHxWxC:kernel:stride, e.g. 32x28x28x96:3:1") from None
        if h != w or min(b, h, c, k, s) < 1:
            raise ValueError(f"case {item!r}: square positive sizes only")
        out.append((b, h, c, k, s))
    if not out:
        raise ValueError(f"cases={text!r}: no case")
    return out


def measure(case_text: str = "32x28x28x96:3:1,32x28x28x96:3:2,32x14x14x240:5:1", repeats: int = 7, *,
            device: str, source: str) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from hobs_jax.models import shift_add_depthwise

    rows = []
    for b, h, c, k, s in cases(case_text):
        p = (k - 1) // 2
        pad = ((p, p), (p, p))
        x = jax.random.normal(jax.random.key(0), (b, h, h, c))
        w = jax.random.normal(jax.random.key(1), (k, k, 1, c))
        def grouped(x, w, s=s, pad=pad, c=c):
            return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=c)

        def shifted(x, w, s=s, pad=pad):
            return shift_add_depthwise(x, w, s, pad)

        forms = {"grouped conv": grouped, "shift-add": shifted}
        ref, got = (jax.jit(f)(x, w) for f in forms.values())
        err = float(jnp.max(jnp.abs(ref - got)) / jnp.max(jnp.abs(ref)))
        if err > 1e-5:
            raise RuntimeError(f"case {b}x{h}x{h}x{c}:{k}:{s}: shift-add differs from the grouped conv by {err:.2e}")
        times: dict = {}
        fns = {}
        for name, f in forms.items():
            loss = lambda x, w, f=f: jnp.sum(f(x, w) ** 2)
            fns[(name, "forward")] = jax.jit(f)
            fns[(name, "grad input")] = jax.jit(jax.grad(loss, 0))
            fns[(name, "grad kernel")] = jax.jit(jax.grad(loss, 1))
            fns[(name, "forward+backward")] = jax.jit(jax.value_and_grad(loss, (0, 1)))
        for fn in fns.values():
            jax.block_until_ready(fn(x, w))
        for _ in range(repeats):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x, w))
                times.setdefault(key, []).append((time.perf_counter() - t0) * 1e3)
        for part in PARTS:
            g, f = (statistics.median(times[(n, part)]) for n in forms)
            rows.append({"case": f"{b}x{h}x{h}x{c}, {k}x{k}, stride {s}", "part": part, "grouped_ms": g,
                         "shift_add_ms": f, "speedup": g / f, "max_rel_diff": err, "device": device,
                         "source": source})
    return rows


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "Depthwise conv layer in XLA: grouped conv vs shifted-slice sum",
                    [Column("case", "input, kernel, stride"), Column("part", "part"),
                     Column("grouped_ms", "grouped conv ms", "float", 2),
                     Column("shift_add_ms", "shift-add ms", "float", 2),
                     Column("speedup", "grouped / shift-add", "speedup"),
                     Column("max_rel_diff", "forward max rel. diff", "float", 8)],
                    context=("device",), iso_tolerance=None,
                    description=[" ".join(__doc__.split("Output:")[0].split())])
    t.extend(rows)
    t.add_sources(sources)
    return t
