"""Training throughput (images/s) of the jitted train step vs an equivalent PyTorch loop:
same architecture, batch, input size and optimizer (SGD momentum 0.9, weight decay 5e-4,
cross entropy), the batch a fixed array in memory (the step, not the input pipeline);
each framework in its own processes, alternating over ``rounds`` so that a burst of load
on a shared machine does not land on one framework only; median over every timed window.

``tiny_cnn`` (three conv-BN-ReLU blocks of ``width``, 2x, 4x channels) is defined here in
both frameworks; any other name comes from the zoo (``hobs_jax.models.build``) and its
torch reference (``parity.torch_models.build_torch``). ``fast_depthwise`` (comma-separated
modes of ``train.fast_depthwise``, :mod:`hobs_jax.models.depthwise`) runs the JAX step once
per mode in every round: 'on,off' times the shifted-slice depthwise path against XLA's
grouped convolution in one interleaved run."""

from __future__ import annotations

import statistics
import time
from typing import Any

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "train_throughput", "benchmarks/train_throughput.py"


def channels(name: str) -> int:
    """Input channels: 3 for ``tiny_cnn``, the zoo entry's own otherwise (1 for the
    small-image forms such as ``mobilenet_v2_small``)."""
    if name == "tiny_cnn":
        return 3
    from hobs_jax.models import get_entry

    return get_entry(name).in_channels


def jax_model(name: str, num_classes: int, width: int):
    if name != "tiny_cnn":
        from hobs_jax.models import build

        return build(name, num_classes=num_classes)
    import flax.linen as nn
    import jax.numpy as jnp

    class TinyCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for f, s in [(width, 1), (2 * width, 2), (4 * width, 2)]:
                x = nn.Conv(f, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False)(x)
                x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
            return nn.Dense(num_classes)(jnp.mean(x, axis=(1, 2)))

    return TinyCNN()


def torch_model(name: str, num_classes: int, width: int):
    import torch.nn as tnn

    if name != "tiny_cnn":
        from parity.torch_models import build_torch

        return build_torch(name, num_classes=num_classes)
    layers, cin = [], 3
    for f, s in [(width, 1), (2 * width, 2), (4 * width, 2)]:
        layers += [tnn.Conv2d(cin, f, 3, s, 1, bias=False), tnn.BatchNorm2d(f, eps=1e-5), tnn.ReLU(inplace=True)]
        cin = f
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, num_classes))


def _windows(step, warmup: int, repeats: int, steps: int, batch: int, sync) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps * batch / (time.perf_counter() - t))
    return rates


def depthwise_modes(text: str) -> tuple[str, ...]:
    """``'on,off'`` -> ('on', 'off'); a one-line ValueError for an unknown or repeated mode."""
    from hobs_jax.models.depthwise import MODES

    modes = tuple(m.strip() for m in str(text).split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise ValueError(f"fast_depthwise={text!r}: comma-separated distinct modes among {MODES}")
    return modes


def run_jax(model: str, batch: int, image: int, classes: int, width: int, steps: int, repeats: int,
            warmup: int, fast_depthwise: str = "auto") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hobs_jax.models.depthwise import maybe_fast_depthwise, resolve_mode
    from hobs_jax.train import (
        TrainState,
        get_train_config,
        global_batch,
        make_mesh,
        make_optimizer,
        make_train_step,
        put_global,
        state_shardings,
    )

    net = jax_model(model, classes, width)
    ch = channels(model)
    x = np.random.default_rng(0).normal(size=(batch, image, image, ch)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, classes, batch).astype(np.int32)
    variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, image, image, ch)), train=False))(jax.random.PRNGKey(0))
    c = get_train_config()
    c.lr, c.warmup_fraction, c.schedule, c.weight_decay = 0.01, 0.0, "constant", 5e-4
    c.decay_norm_and_bias = True  # torch.optim.SGD(weight_decay=...) decays everything
    tx = make_optimizer(c, 1000)
    mesh = make_mesh()
    state = TrainState.create(variables, tx, 0)
    shardings = state_shardings(state, mesh)
    box = {"state": put_global(state, shardings)}
    step_fn = make_train_step(maybe_fast_depthwise(net.apply, fast_depthwise), tx, mesh=mesh,
                              state_shardings=shardings)
    data = global_batch({"image": x, "label": y}, mesh)

    def step():
        box["state"], box["m"] = step_fn(box["state"], data, {})

    rates = _windows(step, warmup, repeats, steps, batch, lambda: jax.block_until_ready(box["state"]))
    dw = "shift-add" if resolve_mode(fast_depthwise) else "grouped conv"
    return {"framework": f"jax {jax.__version__} ({jax.default_backend()}, depthwise: {dw})", "rates": rates,
            "final_loss": float(box["m"]["loss"])}


def run_torch(model: str, batch: int, image: int, classes: int, width: int, steps: int, repeats: int,
              warmup: int, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    net = torch_model(model, classes, width).train()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, channels(model), image, image))
                         .astype(np.float32))
    y = torch.from_numpy(np.random.default_rng(1).integers(0, classes, batch))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    box = {}

    def step():
        opt.zero_grad(set_to_none=True)
        box["loss"] = loss_fn(net(x), y)
        box["loss"].backward()
        opt.step()

    rates = _windows(step, warmup, repeats, steps, batch, lambda: None)
    return {"framework": f"torch {torch.__version__} ({threads} threads)", "rates": rates,
            "final_loss": float(box["loss"])}


def measure(model: str = "tiny_cnn", batch: int = 64, image: int = 32, classes: int = 10, width: int = 32,
            steps: int = 10, repeats: int = 3, rounds: int = 3, warmup: int = 3, threads: int = 0,
            fast_depthwise: str = "auto", *, device: str, source: str) -> list[dict]:
    import os

    from hobs_jax.experiments.isolate import call

    if not threads:
        cores = os.cpu_count()
        if cores is None:
            raise ValueError("threads=0 means every core, but the OS reports no core count; pass threads")
        threads = cores
    kw: dict[str, Any] = dict(model=model, batch=batch, image=image, classes=classes, width=width, steps=steps,
                              repeats=repeats, warmup=warmup)
    modes = depthwise_modes(fast_depthwise)
    out: dict = {}
    for _ in range(rounds):
        for fw in [f"jax:{m}" for m in modes] + ["torch"]:
            if fw != "torch":
                r = call(f"{__name__}:run_jax", threads=threads, fast_depthwise=fw[4:], **kw)
            else:  # call()'s own `threads` sets the child's environment; run_torch's sets torch's pool
                r = call(f"{__name__}:run_torch", framework="torch", threads=threads, args={"threads": threads}, **kw)
            e = out.setdefault(fw, {"framework": r["framework"], "rates": []})
            e["rates"] += r["rates"]
            e["final_loss"] = r["final_loss"]
    return _rows(out, model, batch, image, device, source)


def _rows(results: dict, model, batch, image, device, source) -> list[dict]:
    med = {k: statistics.median(v["rates"]) for k, v in results.items()}
    return [{"model": model, "batch": batch, "input": f"{image}x{image}x{channels(model)}", "framework": v["framework"],
             "images_per_s": med[k], "windows": ", ".join(f"{x:.0f}" for x in v["rates"]),
             "jax_over_torch": med[k] / med["torch"] if k != "torch" else None, "device": device, "source": source}
            for k, v in results.items()]


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    key = "train_throughput@legacy"
    return (_rows(d["results"], d["model"], d["batch"], d["input"][0], "cpu:AMD EPYC:unrecorded", key),
            {key: {"command": d["command"].replace("", ""), "machine": d["device"],
                   "optimizer": d["optimizer"],
                   "note": "benchmarks/train_throughput.py before the experiments package"}})


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "Training throughput: JAX train step vs PyTorch",
                    [Column("model", "model"), Column("batch", "batch", "int"), Column("input", "input"),
                     Column("framework", "framework"), Column("images_per_s", "images/s (median)", "float", 1),
                     Column("jax_over_torch", "JAX / PyTorch", "speedup"), Column("windows", "windows (images/s)")],
                    context=("device",), iso_tolerance=None, description=[" ".join(__doc__.split())])
    t.extend(rows)
    t.add_sources(sources)
    return t
