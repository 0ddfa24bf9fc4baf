"""Where H-OBS's sequential refit spends its time (issue 6): the parts of
``hobs_jax.methods.hobs_refit.refit_sequential`` timed one by one on the trained
Fashion-MNIST ResNet-56, 512 images (the ``propagate_images`` default).

    PYTHONPATH=. python benchmarks/hobs_refit_parts.py

Parts, in process CPU seconds (all threads; the CPU is shared, so the load average is
recorded), each run once to compile and then timed on the second run:

* ``dense_forward_jit``: one jitted forward of the dense network over the images;
* ``pruned_forward_eager``: the same network run eagerly (how the refit pass runs it;
  the dense weights stand in for the pruned ones, same shapes);
* ``gram``: ``A = P^T P`` of every conv/dense layer (2-D shift Gram for stride-1 convs,
  :func:`hobs_jax.stats.hessian.layer_gram`), summed over the layers;
* ``rhs_slices``: ``R = P^T Y`` of every layer as the refit computes it (strided-slice
  rows times the output, :func:`hobs_jax.stats.cross.transposed_product`);
* ``rhs_conv_grad``: the same product as XLA's conv weight gradient (the alternative);
* ``plain_gram_stage1``: a plain ``[512*28*28, 144]`` Gram of already-built rows, the
  matmul bound for a stage-1 layer's ``gram``.

Writes docs/results/hobs_refit_parts.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _cpu(fn, *args) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile / warm up
    c = time.process_time()
    jax.block_until_ready(fn(*args))
    return time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/resnet56_fmnist")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--out", default="docs/results/hobs_refit_parts")
    a = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import hobs_jax
    from hobs_jax.data import get_source
    from hobs_jax.stats.cross import shape_key, transposed_product
    from hobs_jax.stats.hessian import layer_gram
    from hobs_jax.stats.layers import capture_inputs, capture_outputs, trace_layers

    load0 = [round(x, 2) for x in os.getloadavg()]
    model, v, meta = hobs_jax.load(a.checkpoint)
    x, _ = get_source("fashion_mnist").batch("train", np.arange(a.images), train=False)
    x = jnp.asarray(np.asarray(x, np.float32))
    infos = {q: i for q, i in trace_layers(model, v, (1,) + x.shape[1:]).items() if i.kind in ("conv", "dense")}
    ins = capture_inputs(model, v, x)
    outs = capture_outputs(model, v, x)[1]
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
    rows = jnp.asarray(np.random.default_rng(0).random((a.images * 28 * 28, 144), np.float32))
    parts["plain_gram_stage1"] = _cpu(jax.jit(lambda r: jnp.einsum("nd,ne->de", r, r, precision="highest")), rows)
    rec = {"model": meta["model"], "checkpoint": a.checkpoint, "images": a.images, "layers": len(infos),
           "shapes": len({shape_key(i) for i in infos.values()}),
           "cpu_s": {k: round(t, 3) for k, t in parts.items()},
           "load_start": load0, "load_end": [round(x, 2) for x in os.getloadavg()],
           "command": "PYTHONPATH=. python benchmarks/hobs_refit_parts.py"}
    print(json.dumps(rec))
    with open(a.out + ".json", "w") as f:
        json.dump(rec, f, indent=1)
    lines = ["# Parts of H-OBS's sequential refit", "",
             f"{rec['model']} ({a.checkpoint}), {a.images} Fashion-MNIST training images, "
             f"{rec['layers']} conv/dense layers of {rec['shapes']} distinct shapes. Process CPU seconds "
             f"(second run, compiled); load average (1 min) {load0[0]} -> {rec['load_end'][0]}.", "",
             "| part | CPU s |", "|---|---|"]
    lines += [f"| {k} | {t:.3f} |" for k, t in rec["cpu_s"].items()]
    lines += ["", "`gram`, `rhs_*`: summed over the layers; `gram_stage1_layer`: one stage-1 3x3 conv's 2-D shift "
              "Gram; `plain_gram_stage1`: a plain Gram of already-built rows of that layer's size.", "",
              f"Command: `{rec['command']}`", ""]
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
