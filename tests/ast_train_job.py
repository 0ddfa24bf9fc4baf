"""An AST training job for the subprocess resume test (tests/test_train_ast_resume.py).

    PYTHONPATH=. python -m tests.ast_train_job --workdir=/tmp/ast --steps=160
    launch/local_multihost.sh 2 python -m tests.ast_train_job --workdir=/tmp/ast2 --steps=40

Trains the tiny CNN on the synthetic source with ``train.ast`` on (stale score table with
refresh, loss + gradient-norm score: controller, normalizer, reference window, table and
queue all carry state across a restart) and writes ``WORKDIR/params.npz`` and
``WORKDIR/result.json`` (fit's metrics, the AST record included) on host 0.
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
    p.add_argument("--steps", type=int, default=160, help="full-data steps (before selection)")
    p.add_argument("--ckpt_every", type=int, default=8)
    p.add_argument("--step_sleep", type=float, default=0.0, help="seconds slept per step")
    p.add_argument("--num_cpu_devices", type=int, default=0)
    p.add_argument("--selection", default="threshold", help="train.ast.selection")
    p.add_argument("--score", default="loss_grad", help="train.ast.score ('reducible': the "
                   "reference is the initial network's losses, WORKDIR/reference.npy)")
    args = p.parse_args()

    if args.num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    from hobs_jax.train import distributed
    info = distributed.initialize()

    from hobs_jax.data import TrainLoader, get_source
    from hobs_jax.train import fit, get_train_config
    from tests._tiny import TinyCNN, init_tiny

    src = get_source("synthetic", image_shape=(8, 8, 1), num_classes=8, train_size=256,
                     test_size=32, augment=True)
    c = get_train_config()
    c.steps, c.batch_size, c.lr, c.log_every = args.steps, 16, 0.05, 1
    c.checkpoint.every_steps = args.ckpt_every
    c.progress, c.tensorboard = False, False
    c.ast.enabled, c.ast.target_rate, c.ast.warmup_steps = True, 0.25, 4
    c.ast.score, c.ast.score_refresh, c.ast.class_balanced = args.score, 0.5, True
    c.ast.selection = args.selection
    model = TinyCNN(num_classes=8, width=8, dropout=0.1)
    if args.score == "reducible":  # computed once, reused by a rerun (ast_reference.ensure)
        from hobs_jax.train import ast_reference

        os.makedirs(args.workdir, exist_ok=True)
        c.ast.reference = os.path.join(args.workdir, "reference.npy")
        ast_reference.ensure(c.ast.reference, model.apply, init_tiny(model, (8, 8, 1)), src)

    def slow_down(kind, step, record):
        del step, record
        if kind == "train" and args.step_sleep:
            time.sleep(args.step_sleep)

    result = fit(model, init_tiny(model, (8, 8, 1)), TrainLoader(src, "train", 16, seed=1), c,
                 args.workdir, callbacks=[slow_down])
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
