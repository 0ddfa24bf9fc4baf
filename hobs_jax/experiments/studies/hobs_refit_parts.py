"""Where H-OBS's sequential refit (:func:`hobs_jax.obs.refit_sequential`) spends its time:
its parts timed one by one on the trained Fashion-MNIST ResNet-56 over 512 images (the
``propagate_images`` default), in process CPU seconds of a second, compiled run:
``dense_forward_jit`` (one jitted forward), ``pruned_forward_eager`` (the same network
run eagerly, as the refit runs it), ``gram`` (every layer's input Gram, summed),
``rhs_slices`` (every layer's ``P^T Y`` as the refit computes it), ``rhs_conv_grad`` (the
same product as XLA's conv weight gradient, the alternative), ``gram_stage1_layer`` (one
stage-1 3x3 conv's Gram) and ``plain_gram_stage1`` (a plain Gram of already-built rows of
that size: the matmul bound)."""

from __future__ import annotations

import time

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "hobs_refit_parts", "benchmarks/hobs_refit_parts.py"


def _cpu(fn, *args) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile / warm up
    c = time.process_time()
    jax.block_until_ready(fn(*args))
    return time.process_time() - c


def measure(checkpoint: str = "checkpoints/resnet56_fmnist", images: int = 512, *, device: str,
            source: str) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hobs_jax
    from hobs_jax.data import get_source
    from hobs_jax.experiments import machine
    from hobs_jax.stats.cross import shape_key, transposed_product
    from hobs_jax.stats.hessian import layer_gram
    from hobs_jax.stats.layers import capture_inputs, capture_outputs, trace_layers

    load0 = machine.load_1min()
    model, v, meta = hobs_jax.load(checkpoint)
    x, _ = get_source("fashion_mnist").batch("train", np.arange(images), train=False)
    x = jnp.asarray(np.asarray(x, np.float32))
    infos = {q: i for q, i in trace_layers(model, v, (1,) + x.shape[1:]).items() if i.kind in ("conv", "dense")}
    ins, outs = capture_inputs(model, v, x), capture_outputs(model, v, x)[1]
    gram = jax.jit(lambda info, xi: layer_gram(info, xi)[0], static_argnums=0)
    rhs = jax.jit(transposed_product, static_argnums=0)

    def conv_grad(info, xi, y):
        def conv(k):
            return jax.lax.conv_general_dilated(xi, k, info.strides, info.padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.vjp(conv, jnp.zeros(info.kernel_shape, xi.dtype))[1](y)[0]

    grad = jax.jit(conv_grad, static_argnums=0)
    parts = {"dense_forward_jit": _cpu(jax.jit(lambda vv, xx: model.apply(vv, xx, train=False)), v, x),
             "pruned_forward_eager": _cpu(lambda vv, xx: model.apply(vv, xx, train=False), v, x),
             "gram": 0.0, "rhs_slices": 0.0, "rhs_conv_grad": 0.0}
    for q, info in infos.items():
        k = shape_key(info)
        parts["gram"] += _cpu(gram, k, ins[q])
        parts["rhs_slices"] += _cpu(rhs, k, ins[q], outs[q])
        parts["rhs_conv_grad"] += _cpu(grad if info.kind == "conv" else rhs, k, ins[q], outs[q])
    stage1 = ("layer1", "0", "conv1")
    parts["gram_stage1_layer"] = _cpu(gram, shape_key(infos[stage1]), ins[stage1])
    rows_ = jnp.asarray(np.random.default_rng(0).random((images * 28 * 28, 144), np.float32))
    parts["plain_gram_stage1"] = _cpu(jax.jit(lambda r: jnp.einsum("nd,ne->de", r, r, precision="highest")), rows_)
    return _rows(parts, meta["model"], images, len(infos), len({shape_key(i) for i in infos.values()}),
                 [load0, machine.load_1min()], device, source)


def _rows(parts, model, images, layers, shapes, load, device, source) -> list[dict]:
    return [{"part": k, "cpu_s": t, "model": model, "images": images, "layers": layers, "shapes": shapes,
             "load_start": load[0], "load_end": load[1], "device": device, "source": source} for k, t in parts.items()]


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    key = "hobs_refit_parts@legacy"
    return (_rows(d["cpu_s"], d["model"], d["images"], d["layers"], d["shapes"], [d["load_start"][0], d["load_end"][0]],
                  "cpu:AMD EPYC:unrecorded", key),
            {key: {"command": d["command"].replace("", ""),
                   "note": "benchmarks/hobs_refit_parts.py before the experiments package"}})


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "Parts of H-OBS's sequential refit",
                    [Column("part", "part"), Column("cpu_s", "CPU s", "float", 3),
                     Column("load_start", "load start", "float", 2), Column("load_end", "load end", "float", 2)],
                    context=("device",), iso_tolerance=None, description=[" ".join(__doc__.split())])
    t.extend(rows)
    t.add_sources(sources)
    return t
