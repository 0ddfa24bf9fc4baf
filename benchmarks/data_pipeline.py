"""Batches/s of our numpy TrainLoader vs grain MapDataset pipelines on Fashion-MNIST.

Same work in all three: shuffle, 4-pixel pad + random crop + flip, mean/std
normalization, batches of 128 (drop remainder). Grain is measured two ways:
(a) its usual per-record path (``random_map`` per example, then ``batch``) and
(b) ``batch`` first, then one vectorized ``random_map`` per batch.

    PYTHONPATH=. python benchmarks/data_pipeline.py --batches 300

Writes docs/results/data_pipeline.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from hobs_jax.data import TrainLoader, get_source, pad_crop_flip
from hobs_jax.data.fashion_mnist import load_split
from hobs_jax.data.preprocess import FASHION_MNIST_MEAN_STD


def _normalize(x):
    return (x.astype(np.float32) / 255 - FASHION_MNIST_MEAN_STD[0][0]) / FASHION_MNIST_MEAN_STD[1][0]


def _rate(it, batches: int) -> float:
    next(it)  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t)


def ours(batches: int, batch_size: int) -> float:
    loader = TrainLoader(get_source("fashion_mnist"), "train", batch_size, 0, process_index=0,
                         process_count=1, prefetch=0)
    return _rate(loader, batches)


def grain_per_record(batches: int, batch_size: int) -> float:
    import grain
    images, labels = load_split("train")

    def augment(example, rng):
        image, label = example
        u = rng.random((1, 3))
        return _normalize(pad_crop_flip(image[None], u, 4, True)[0]), label

    ds = (grain.MapDataset.source(list(zip(images, labels))).shuffle(seed=0)
          .random_map(augment, seed=0).batch(batch_size, drop_remainder=True))
    return _rate(iter(ds.to_iter_dataset()), batches)


def grain_batched(batches: int, batch_size: int) -> float:
    import grain
    images, labels = load_split("train")

    def augment(batch, rng):
        image, label = batch
        return _normalize(pad_crop_flip(image, rng.random((len(image), 3)), 4, True)), label

    ds = (grain.MapDataset.source(list(zip(images, labels))).shuffle(seed=0)
          .batch(batch_size, drop_remainder=True).random_map(augment, seed=0))
    return _rate(iter(ds.to_iter_dataset()), batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--out", default="docs/results/data_pipeline")
    args = parser.parse_args()
    rates = {name: fn(args.batches, args.batch_size) for name, fn in [
        ("numpy TrainLoader", ours), ("grain per-record", grain_per_record),
        ("grain batched", grain_batched)]}
    base = rates["numpy TrainLoader"]
    result = {
        "command": "PYTHONPATH=. python " + " ".join(sys.argv),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "batch_size": args.batch_size, "batches": args.batches,
        "batches_per_s": rates, "ours_vs": {k: base / v for k, v in rates.items()},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = ["# Input pipeline: numpy TrainLoader vs grain (Fashion-MNIST, CPU)", "",
             f"Command: `{result['command']}`  ", f"Device: {result['device']}", "",
             "| pipeline | batches/s | images/s | ours / this |", "|---|---|---|---|"]
    for k, v in rates.items():
        lines.append(f"| {k} | {v:.1f} | {v * args.batch_size:.0f} | {base / v:.2f}x |")
    with open(args.out + ".md", "w") as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == "__main__":
    main()
