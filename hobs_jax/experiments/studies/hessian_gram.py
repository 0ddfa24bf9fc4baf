"""How a 3x3 conv's Hessian statistics X^T X are reduced: four implementations timed on the
same inputs, in CPU seconds per batch (process time, all threads, best of ``reps``), with
the wall seconds of each one's first call (XLA compilation) and its largest relative
difference to ``patches``:

  patches   ``lax.conv_general_dilated_patches`` + one Gram product (the original);
  sliced    im2col rows from k*k strided slices, reduced in chunks of images;
  rowshift  the row-shift Gram (a third of the products + border corrections), in chunks;
  shift2d   the 2-D shift Gram (13 [C, C] shift products + border corrections), in chunks:
            what ``hobs_jax.stats.collect_hessians`` uses for stride-1 convs."""

from __future__ import annotations

import time

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "hessian_gram", "benchmarks/hessian_gram.py"
METHODS = ("patches", "sliced", "rowshift", "shift2d")


def measure(batch: int = 256, shapes: str = "28x16,14x32,7x64", reps: int = 5, *, device: str,
            source: str) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hobs_jax.stats.gram import chunk_size, gram_conv, gram_conv_rowshift, gram_conv_shift2d, gram_conv_sliced
    from hobs_jax.stats.layers import LayerInfo, conv_patches

    rows = []
    for spec in shapes.split(","):
        size, c = (int(v) for v in spec.split("x"))
        info = LayerInfo(("conv",), "conv", (3, 3, c, c), (0, 1, 2), (3,), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1))
        x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, c)), jnp.float32)
        # The closures read this iteration's ``info`` and run before the next one.
        fns = {"patches": jax.jit(lambda x: gram_conv(conv_patches(info, x))),  # noqa: B023
               "sliced": jax.jit(lambda x: gram_conv_sliced(info, x)[0]),  # noqa: B023
               "rowshift": jax.jit(lambda x: gram_conv_rowshift(info, x)[0]),  # noqa: B023
               "shift2d": jax.jit(lambda x: gram_conv_shift2d(info, x)[0])}  # noqa: B023
        rec = {"input": f"{size}x{size}x{c}", "batch": batch, "d": 9 * c,
               "chunk_images": chunk_size(batch, size * size * 9 * c),
               "gflop_full_gram": 2 * batch * size * size * (9 * c) ** 2 / 1e9, "device": device, "source": source}
        out = {}
        for name, f in fns.items():
            t = time.perf_counter()
            out[name] = np.asarray(f(x).block_until_ready(), np.float64)
            rec[f"{name}_compile_s"] = time.perf_counter() - t
            best = float("inf")
            for _ in range(reps):
                c0 = time.process_time()
                f(x).block_until_ready()
                best = min(best, time.process_time() - c0)
            rec[f"{name}_cpu_s"] = best
        ref = out["patches"]
        for k in METHODS[1:]:
            rec[f"{k}_rel_diff"] = float(np.abs(out[k] - ref).max() / np.abs(ref).max())
        rows.append(_speedups(rec))
    return rows


def _speedups(rec: dict) -> dict:
    for k in METHODS[1:]:
        rec[f"{k}_x"] = rec["patches_cpu_s"] / rec[f"{k}_cpu_s"]
    return rec


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    key = "hessian_gram@legacy"
    rows = []
    for r in d["rows"]:
        n, h, w, c = r["shape"]
        rec = {"input": f"{h}x{w}x{c}", "batch": n, "d": r["d"], "chunk_images": r.get("chunk_images"),
               "gflop_full_gram": r["gflop_full_gram"], "device": "cpu:AMD EPYC:unrecorded", "source": key,
               **{k: v for k, v in r.items() if k.endswith(("_cpu_s", "_compile_s"))},
               **{f"{k}_rel_diff": v for k, v in r.get("max_rel_diff", {}).items()}}
        rows.append(_speedups(rec))
    return rows, {key: {"command": "python benchmarks/hessian_gram.py --out docs/results/hessian_gram",
                        "machine": d["device"], "note": "benchmarks/hessian_gram.py before the experiments package"}}


def table(rows, sources) -> ResultTable:
    cols = [Column("input", "input"), Column("d", "d", "int"), Column("gflop_full_gram", "full-Gram GFLOP", "float", 1)]
    cols += [Column(f"{k}_cpu_s", f"{k} CPU s", "float", 3) for k in METHODS]
    cols += [Column(f"{k}_x", f"{k} vs patches", "speedup") for k in METHODS[1:]]
    cols += [Column(f"{k}_compile_s", f"{k} first call s", "float", 2) for k in METHODS]
    cols += [Column(f"{k}_rel_diff", f"{k} max rel. diff", "sci", 1) for k in METHODS[1:]]
    t = ResultTable(NAME, "Hessian statistics of a 3x3 conv: four reductions of X^T X", cols, context=("device",),
                    iso_tolerance=None, description=[" ".join(__doc__.split("\n\n")[0].split())])
    t.extend(rows)
    t.add_sources(sources)
    return t
