"""Numerical parity of the registered methods across a refactor: record, then check.

    python benchmarks/methods_parity.py record /tmp/parity_before
    ... refactor ...
    python benchmarks/methods_parity.py check /tmp/parity_before

``record`` prunes every case below to half the MACs with 256 Fashion-MNIST calibration
images (the first 256 of a seeded permutation of the training split, resized to the
case's input) and writes, per (model, method): the PrunePlan JSON, the method's
full-size ``outcome.variables`` and the pruned network's variables (``.npz``, one array
per leaf path). ``check`` reruns the same and compares with a recording: plans must be
bit-identical, every variable leaf equal to float32 rounding (``max |a - b| <= 1e-5 *
max(|a|, 1)``; the largest difference is printed), and the pruned shapes the same. It
exits 1 on the first mismatch of any case (after running them all).

Models: ``resnet20_fmnist`` (the trained checkpoint, 28x28), ``resnet20_tiny`` (the
contract test's ResNet-20 at 16x16, random variables), ``mobilenet_v2_tiny`` (narrow
widths, 32x32, random variables: depthwise pass-through groups). Methods: ``hobs``,
``hobs@uniform``, ``hobs_nohessian``, ``magnitude``, ``magnitude@global``, ``depgraph``
(no sparse phase), ``depgraph@sparse2`` (two deterministic SGD steps of its group-norm
regularizer), ``udfc`` (ResNets only), ``rspar`` (4 episodes, ResNets only). The cases
only use the entry points every version of the library keeps (zoo names, option dicts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

N_CALIB = 256
TARGET = 0.5

# name -> (registered method, its options)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "hobs": ("hobs", dict(progress=False)),
    "hobs@uniform": ("hobs", dict(progress=False, allocation="uniform")),
    "hobs_nohessian": ("hobs_nohessian", {}),
    "magnitude": ("magnitude", {}),
    "magnitude@global": ("magnitude", dict(allocation="global")),
    "depgraph": ("depgraph", dict(sparse_steps=0)),
    "depgraph@sparse2": ("depgraph", dict(sparse_steps=2)),
    "udfc": ("udfc", {}),
    "rspar": ("rspar", dict(episodes=4, warmup=2, reward_images=64, grid=16, rerank=2, progress=False,
                            agent=dict(hidden=16))),
}
RESNET_ONLY = ("udfc", "rspar", "depgraph@sparse2")  # UDFC: ReLU nets; the others: cost, and
# the training callback here passes no dropout RNG (MobileNetV2 has dropout)


def _flat(tree) -> dict[str, np.ndarray]:
    import jax

    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def _images(size: int, channels: int):
    from hobs_jax.data import get_source

    kw: dict[str, Any] = {"resize_to": (size, size)} if size != 28 else {}
    if channels != 1:
        kw["channels"] = channels
    src = get_source("fashion_mnist", augment=False, **kw)
    from hobs_jax.data import sample_indices

    idx = sample_indices(src.size("train"), N_CALIB, 0)  # as the calibrate stage
    x, y = src.batch("train", idx, train=False)
    return np.asarray(x, np.float32), np.asarray(y, np.int32)


def random_variables(model, shape, seed: int = 0) -> dict:
    """Random, non-trivial variables drawn with numpy from ``jax.eval_shape`` (the same
    draws as the tests' zoo variables): kernels ~ N(0, 1/fan_in), scales and running
    variances ~ U(0.5, 1.5), everything else ~ N(0, 0.1)."""
    import jax

    from hobs_jax import models

    abstract = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1,) + tuple(shape[1:])))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            qkv = leaf.ndim == 3 and str(getattr(path[-2], "key", "")) in ("query", "key", "value")
            fan_in = leaf.shape[0] if qkv else int(np.prod(leaf.shape[:-1]))
            a = rng.normal(size=leaf.shape) / np.sqrt(max(fan_in, 1))
        elif name in ("scale", "var"):
            a = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:
            a = 0.1 * rng.normal(size=leaf.shape)
        return np.asarray(a, np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def _cases():
    """name -> (zoo name, variables, input size, in_channels)."""
    import hobs_jax
    from hobs_jax import models

    _, v20, meta = hobs_jax.load("checkpoints/resnet20_fmnist")
    out = {"resnet20_fmnist": (meta["model"], v20, 28, 1)}
    m = models.build("resnet20", num_classes=10, in_channels=1)
    out["resnet20_tiny"] = ("resnet20", random_variables(m, (1, 16, 16, 1), seed=0), 16, 1)
    widths = {k: max(2, v // 4) for k, v in models.default_widths("mobilenet_v2").items()}
    m = models.build("mobilenet_v2", widths=widths, num_classes=10, in_channels=1)
    out["mobilenet_v2_tiny"] = ("mobilenet_v2", random_variables(m, (1, 32, 32, 1), seed=0), 32, 1)
    return out


def run_all(only: str = "", on_result=None) -> dict:
    """{case: {method: (plan json, outcome vars flat, pruned vars flat, seconds)}};
    ``on_result(case, name, result)`` is called as each finishes."""
    from hobs_jax import models
    from hobs_jax.methods import Calibration, make_task, run
    from hobs_jax.methods.training_time import sgd_callback

    out: dict[str, dict[str, tuple]] = {}
    for case, (zoo, variables, size, ch) in _cases().items():
        x, y = _images(size, ch)
        calib = Calibration(x, y)
        widths, nc, ic = models.infer_widths(zoo, variables)
        model = models.build(zoo, widths=widths, num_classes=nc, in_channels=ic)
        out[case] = {}
        for name, (method, opts) in METHODS.items():
            if only and name not in only.split(","):
                continue
            if (name in RESNET_ONLY or method in RESNET_ONLY) and not zoo.startswith("resnet"):
                continue
            t0 = time.perf_counter()
            task = make_task(method, zoo, variables, target=TARGET, calib=calib, options=dict(opts),
                             seed=0, finetune=sgd_callback(model, calib, batch=32))
            r = run(method, task)
            sec = time.perf_counter() - t0
            out[case][name] = (r.outcome.plan.to_json(), _flat(r.outcome.variables), _flat(r.variables), sec)
            if on_result is not None:
                on_result(case, name, out[case][name])
            print(f"{case} {name}: macs {r.macs_ratio:.4f} in {sec:.1f} s", flush=True)
    return out


def record_one(d: str, case: str, name: str, result: tuple) -> None:
    plan, ov, pv, _ = result
    os.makedirs(os.path.join(d, case), exist_ok=True)
    base = os.path.join(d, case, name)
    with open(base + ".plan.json", "w") as f:
        f.write(plan)
    np.savez(base + ".outcome.npz", **ov)
    np.savez(base + ".pruned.npz", **pv)


def _compare(what: str, ref: dict, got: dict) -> tuple[bool, float, str]:
    if set(ref) != set(got):
        return False, np.inf, f"{what}: leaves differ: {sorted(set(ref) ^ set(got))[:3]}"
    worst, where = 0.0, ""
    for k in ref:
        a, b = np.asarray(ref[k]), np.asarray(got[k])
        if a.shape != b.shape:
            return False, np.inf, f"{what}/{k}: shape {a.shape} vs {b.shape}"
        if not a.size:
            continue
        scale = max(float(np.max(np.abs(a))), 1.0)
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale
        if diff > worst:
            worst, where = diff, k
    return worst <= 1e-5, worst, f"{what}: max relative diff {worst:.2e} at {where or '-'}"


def check(d: str, results: dict) -> bool:
    ok = True
    for case, methods in results.items():
        for name, (plan, ov, pv, _) in methods.items():
            base = os.path.join(d, case, name)
            if not os.path.exists(base + ".plan.json"):
                print(f"FAIL {case} {name}: no recording at {base}")
                ok = False
                continue
            with open(base + ".plan.json") as f:
                same_plan = f.read() == plan
            r1 = _compare("outcome", dict(np.load(base + ".outcome.npz")), ov)
            r2 = _compare("pruned", dict(np.load(base + ".pruned.npz")), pv)
            good = same_plan and r1[0] and r2[0]
            ok &= good
            print(f"{'ok  ' if good else 'FAIL'} {case} {name}: plan {'identical' if same_plan else 'DIFFERS'}; "
                  f"{r1[2]}; {r2[2]}", flush=True)
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("record", "check"))
    p.add_argument("dir", help="recording directory")
    p.add_argument("--only", default="", help="comma-separated method names (default: all)")
    a = p.parse_args()
    if a.mode == "record":
        results = run_all(a.only, on_result=lambda c, n, r: record_one(a.dir, c, n, r))
        print(f"recorded {sum(len(m) for m in results.values())} runs in {a.dir}")
        return
    results = run_all(a.only)
    sys.exit(0 if check(a.dir, results) else 1)


if __name__ == "__main__":
    main()
