"""A small training job for the subprocess tests (kill -9 resume, SIGTERM, multi-process).

    PYTHONPATH=. python -m tests.train_job --workdir=/tmp/run --steps=30
    launch/local_multihost.sh 2 python -m tests.train_job --workdir=/tmp/mh --steps=8

Trains the tiny CNN on the synthetic source and writes, on host 0,
``WORKDIR/result.json`` (metrics) and ``WORKDIR/params.npz`` (final parameters).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--ckpt_every", type=int, default=10)
    p.add_argument("--step_sleep", type=float, default=0.0, help="seconds slept per step")
    p.add_argument("--num_cpu_devices", type=int, default=0)
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--sync_save", action="store_true")
    args = p.parse_args()

    if args.num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    from hobs_jax.train import distributed
    info = distributed.initialize()

    from hobs_jax.data import EvalLoader, TrainLoader, get_source
    from hobs_jax.train import fit, get_train_config
    from tests._tiny import TinyCNN, init_tiny

    src = get_source("synthetic", image_shape=(16, 16, 1), num_classes=10, train_size=256,
                     test_size=64, augment=True)
    c = get_train_config()
    c.optimizer = args.optimizer
    c.lr = 0.05 if args.optimizer == "sgd" else 3e-3
    c.steps = args.steps
    c.batch_size = args.batch_size
    c.eval_batch_size = args.batch_size
    c.log_every = 1
    c.eval_every = 10 ** 6  # evaluate once, at the end
    c.checkpoint.every_steps = args.ckpt_every
    c.checkpoint.async_save = not args.sync_save
    c.mesh.fsdp = args.fsdp
    c.mesh.fsdp_min_size = 16
    c.progress = False
    c.tensorboard = False
    model = TinyCNN(num_classes=10, width=8, dropout=0.1)
    variables = init_tiny(model, (16, 16, 1))

    def slow_down(kind, step, record):
        del step, record
        if kind == "train" and args.step_sleep:
            time.sleep(args.step_sleep)

    result = fit(model, variables, TrainLoader(src, "train", c.batch_size, seed=1), c,
                 args.workdir, eval_data=EvalLoader(src, "test", c.eval_batch_size),
                 callbacks=[slow_down])
    from jax.experimental import multihost_utils
    params = {"/".join(str(getattr(k, "key", k)) for k in path):
              np.asarray(multihost_utils.process_allgather(x, tiled=True))
              for path, x in jax.tree_util.tree_leaves_with_path(result.variables)}
    if info.process_index == 0:
        np.savez(os.path.join(args.workdir, "params.npz"), **params)
        with open(os.path.join(args.workdir, "result.json"), "w") as f:
            json.dump({**result.metrics, "process_count": info.process_count,
                       "device_count": info.device_count}, f)


if __name__ == "__main__":
    main()
