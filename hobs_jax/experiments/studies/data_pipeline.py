"""Batches per second of the numpy ``TrainLoader`` vs grain ``MapDataset`` pipelines on
Fashion-MNIST, the same work in all three (shuffle, 4-pixel pad + random crop + flip,
mean/std normalization, batches of 128, drop remainder); grain per record (``random_map``
per example, then ``batch``) and batched (``batch`` first, one vectorized ``random_map``)."""

from __future__ import annotations

import time

import numpy as np

from hobs_jax.experiments.table import Column, ResultTable

NAME, SCRIPT = "data_pipeline", "benchmarks/data_pipeline.py"


def _normalize(x):
    from hobs_jax.data.preprocess import FASHION_MNIST_MEAN_STD

    return (x.astype(np.float32) / 255 - FASHION_MNIST_MEAN_STD[0][0]) / FASHION_MNIST_MEAN_STD[1][0]


def _rate(it, batches: int) -> float:
    next(it)  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t)


def ours(batches: int, batch_size: int) -> float:
    from hobs_jax.data import TrainLoader, get_source

    loader = TrainLoader(get_source("fashion_mnist"), "train", batch_size, 0, process_index=0, process_count=1,
                         prefetch=0)
    return _rate(loader, batches)


def _grain(batched: bool, batches: int, batch_size: int) -> float:
    import grain

    from hobs_jax.data import pad_crop_flip
    from hobs_jax.data.fashion_mnist import load_split

    images, labels = load_split("train")

    def one(example, rng):
        image, label = example
        return _normalize(pad_crop_flip(image[None], rng.random((1, 3)), 4, True)[0]), label

    def many(batch, rng):
        image, label = batch
        return _normalize(pad_crop_flip(image, rng.random((len(image), 3)), 4, True)), label

    ds = grain.MapDataset.source(list(zip(images, labels))).shuffle(seed=0)
    ds = (ds.batch(batch_size, drop_remainder=True).random_map(many, seed=0) if batched
          else ds.random_map(one, seed=0).batch(batch_size, drop_remainder=True))
    return _rate(iter(ds.to_iter_dataset()), batches)


def measure(batches: int = 300, batch_size: int = 128, *, device: str, source: str) -> list[dict]:
    rates = {"numpy TrainLoader": ours(batches, batch_size),
             "grain per-record": _grain(False, batches, batch_size),
             "grain batched": _grain(True, batches, batch_size)}
    return _rows(rates, batches, batch_size, device, source)


def _rows(rates, batches, batch_size, device, source) -> list[dict]:
    base = rates["numpy TrainLoader"]
    return [{"pipeline": k, "batches_per_s": v, "images_per_s": v * batch_size, "ours_over": base / v,
             "batches": batches, "batch_size": batch_size, "device": device, "source": source}
            for k, v in rates.items()]


def from_legacy(d: dict) -> tuple[list[dict], dict]:
    key = "data_pipeline@legacy"
    return (_rows(d["batches_per_s"], d["batches"], d["batch_size"], "cpu:x86_64:unrecorded", key),
            {key: {"command": d["command"].replace("", ""), "machine": d["device"],
                   "note": "benchmarks/data_pipeline.py before the experiments package"}})


def table(rows, sources) -> ResultTable:
    t = ResultTable(NAME, "Input pipeline: numpy TrainLoader vs grain (Fashion-MNIST, CPU)",
                    [Column("pipeline", "pipeline"), Column("batches_per_s", "batches/s", "float", 1),
                     Column("images_per_s", "images/s", "float", 0), Column("ours_over", "ours / this", "speedup")],
                    context=("device",), iso_tolerance=None, description=[" ".join(__doc__.split())])
    t.extend(rows)
    t.add_sources(sources)
    return t
