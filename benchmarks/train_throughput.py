"""Training throughput (images/s) of our jitted train step vs an equivalent PyTorch loop.

Same architecture, batch, input size and optimizer (SGD, momentum 0.9, weight decay
5e-4, cross entropy) in both; the batch is a fixed random array already in memory, so
this measures the training step, not the input pipeline. Each framework runs in its own
subprocess (in one process they disturb each other); the result is a ratio from one
invocation because this machine is shared and noisy.

    PYTHONPATH=. python benchmarks/train_throughput.py                      # tiny CNN
    PYTHONPATH=. python benchmarks/train_throughput.py --model resnet20 --image 32

``--model tiny_cnn`` is defined here in both frameworks. Any other name is looked up in
the model zoo, lazily: ``hobs_jax.models.build(name, num_classes=K)`` for Flax and
``parity.torch_models.build_torch(name, num_classes=K)`` for the torch reference.
Writes docs/results/train_throughput.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _zoo_error(what: str, err: Exception) -> SystemExit:
    return SystemExit(f"--model: {what} is not available ({type(err).__name__}: {err}); "
                      f"use --model tiny_cnn until hobs_jax.models and parity.torch_models exist")


# ----------------------------------------------------------------------------- JAX side


def jax_model(name: str, num_classes: int, width: int):
    if name != "tiny_cnn":
        try:
            from hobs_jax.models import build
        except ImportError as e:
            raise _zoo_error("hobs_jax.models.build", e) from e
        return build(name, num_classes=num_classes)
    import flax.linen as nn
    import jax.numpy as jnp

    class TinyCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for _i, (f, s) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)]):
                x = nn.Conv(f, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = nn.relu(x)
            return nn.Dense(num_classes)(jnp.mean(x, axis=(1, 2)))

    return TinyCNN()


def run_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

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
    model = jax_model(args.model, args.classes, args.width)
    x = np.random.default_rng(0).normal(size=(args.batch, args.image, args.image, 3))
    y = np.random.default_rng(1).integers(0, args.classes, args.batch)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, args.image, args.image, 3)),
                                             train=False))(jax.random.PRNGKey(0))
    c = get_train_config()
    c.lr, c.warmup_fraction, c.schedule, c.weight_decay = 0.01, 0.0, "constant", 5e-4
    c.decay_norm_and_bias = True  # torch.optim.SGD(weight_decay=...) decays everything
    tx = make_optimizer(c, 1000)
    mesh = make_mesh()
    state = TrainState.create(variables, tx, 0)
    shardings = state_shardings(state, mesh)
    state = put_global(state, shardings)
    step = make_train_step(model.apply, tx, mesh=mesh, state_shardings=shardings)
    batch = global_batch({"image": x.astype(np.float32), "label": y.astype(np.int32)}, mesh)
    for _ in range(args.warmup):
        state, m = step(state, batch, {})
    jax.block_until_ready(state)
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            state, m = step(state, batch, {})
        jax.block_until_ready(state)
        rates.append(args.steps * args.batch / (time.perf_counter() - t))
    return {"framework": f"jax {jax.__version__} ({jax.default_backend()})", "rates": rates,
            "final_loss": float(m["loss"])}


# --------------------------------------------------------------------------- torch side


def torch_model(name: str, num_classes: int, width: int):
    import torch.nn as tnn
    if name != "tiny_cnn":
        try:
            from parity.torch_models import build_torch
        except ImportError as e:
            raise _zoo_error("parity.torch_models.build_torch", e) from e
        return build_torch(name, num_classes=num_classes)
    layers, cin = [], 3
    for f, s in [(width, 1), (2 * width, 2), (4 * width, 2)]:
        layers += [tnn.Conv2d(cin, f, 3, s, 1, bias=False), tnn.BatchNorm2d(f, eps=1e-5),
                   tnn.ReLU(inplace=True)]
        cin = f
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                          tnn.Linear(cin, num_classes))


def run_torch(args) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    model = torch_model(args.model, args.classes, args.width).train()
    x = torch.from_numpy(np.random.default_rng(0).normal(
        size=(args.batch, 3, args.image, args.image)).astype(np.float32))
    y = torch.from_numpy(np.random.default_rng(1).integers(0, args.classes, args.batch))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        rates.append(args.steps * args.batch / (time.perf_counter() - t))
    return {"framework": f"torch {torch.__version__} ({args.threads} threads)", "rates": rates,
            "final_loss": float(loss)}


# ------------------------------------------------------------------------------ driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny_cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--width", type=int, default=32, help="tiny_cnn base width")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per process")
    p.add_argument("--rounds", type=int, default=3,
                   help="processes per framework, alternating jax/torch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default="docs/results/train_throughput")
    p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps((run_jax if args.worker == "jax" else run_torch)(args)))
        return

    # Alternate the frameworks over several rounds so that a burst of load from other
    # processes on this shared machine does not land on one framework only.
    results: dict = {}
    for _ in range(args.rounds):
        for worker in ("jax", "torch"):
            proc = subprocess.run([sys.executable, *sys.argv, f"--worker={worker}"],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{worker} worker failed: {proc.stderr.strip().splitlines()[-1]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            entry = results.setdefault(worker, {"framework": run["framework"], "rates": []})
            entry["rates"] += run["rates"]
            entry["final_loss"] = run["final_loss"]
    for entry in results.values():
        entry["images_per_s"] = statistics.median(entry["rates"])
    ratio = results["jax"]["images_per_s"] / results["torch"]["images_per_s"]
    out = {
        "command": ("PYTHONPATH=. python benchmarks/train_throughput.py "
                    + " ".join(sys.argv[1:])).strip(),
        "device": f"{_cpu_name()}, {os.cpu_count()} cores (CPU)",
        "model": args.model, "batch": args.batch, "input": [args.image, args.image, 3],
        "optimizer": "SGD momentum 0.9, weight decay 5e-4", "results": results,
        "jax_over_torch": ratio,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=2)
    lines = [f"# Training throughput: {args.model}, batch {args.batch}, "
             f"{args.image}x{args.image}x3", "",
             f"Command: `{out['command']}`  ", f"Device: {out['device']}  ",
             f"Optimizer: {out['optimizer']}; median over {args.rounds} alternating processes "
             f"per framework x {args.repeats} windows of {args.steps} steps (after "
             f"{args.warmup} warm-up steps); each framework in its own processes.", "",
             "| framework | images/s (median) | windows |", "|---|---|---|"]
    for r in results.values():
        lines.append(f"| {r['framework']} | {r['images_per_s']:.1f} | "
                     f"{', '.join(f'{x:.0f}' for x in r['rates'])} |")
    lines += ["", f"**JAX / PyTorch: {ratio:.2f}x**"]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
