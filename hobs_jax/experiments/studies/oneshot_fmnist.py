"""One-shot pruning side by side on the trained Fashion-MNIST ResNets: every method of
ours and Torch-Pruning's own pruners at the same MACs, evaluated by the same code.

For each model x target (kept MACs fraction) x row:
  1. prune the dense checkpoint (ours: ``hobs_jax.methods.prune``; Torch-Pruning: convert
     to PyTorch, prune with TP at a bisected ``pruning_ratio`` so that our MACs count
     lands on the target, convert back; see :mod:`hobs_jax.experiments.studies.oneshot_tp`);
  2. refuse the row when its MACs miss the target by more than 1% (iso-MACs);
  3. test accuracy right after pruning, then after BN re-estimation on the 2048
     calibration images (the pipeline's calibrate stage: seed 0, train split, no
     augmentation; the same images for every row and every method that uses data);
  4. fine-tune from the BN-recalibrated network with one recipe for all rows of a model (the
     ``finetune`` section of ``configs/NAME_fmnist.py``, the recipe the model was made for;
     for the ResNets SGD momentum 0.9, lr 0.01 cosine, wd 5e-4, batch 128, seed 0, KD off,
     augmentation on; for ``vit_tiny_p4`` AdamW lr 1e-4, wd 0.05) for ``--steps`` (default 50, 200 and one epoch;
     one run of the longest length, checkpointed at the shorter ones: a curve along the
     same schedule), test accuracy at each;
  5. CPU latency speedup dense / pruned (jitted, batch 1 and 64, timed alternately).

Rows: ``METHOD`` or ``METHOD-uniform`` / ``METHOD-global`` (our registered methods, with
``options.allocation`` set), and ``tp-CRITERION-local`` / ``tp-CRITERION-global``
(criteria l1, groupnorm, bnscale, taylor; on ``vit_tiny_p4`` Torch-Pruning removes whole
heads and MLP units, and bnscale is refused: no BatchNorm). Finished rows are cached as JSON under
``--workdir`` (an interrupted run continues; fine-tuning itself resumes from its
checkpoints). ``--report-only`` rebuilds the outputs from the cache.

Seeds (``--seeds 0,1,2``): seed s draws the calibration images (``sample_indices(..., s)``;
seed 0 is the calibrate stage's draw), seeds the method (R-SPAR's agent) and offsets the
fine-tuning seed; every row runs once per seed. The main table shows the first seed; with
more than one, ``OUT_seeds.{md,json,tex}`` gives mean and std over seeds per row
(:mod:`hobs_jax.experiments.tables.stability`) with the R-SPAR-vs-global goal per seed.

    python benchmarks/oneshot_fmnist.py --models resnet56,resnet20 \\
        --targets 0.5,0.333 --steps 50,200,epoch --workdir runs/oneshot_fmnist

writes docs/results/oneshot_fmnist.{md,json} and oneshot_fmnist_curve.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from typing import Any

import numpy as np

from hobs_jax.experiments import common
from hobs_jax.experiments.studies.oneshot_cache import cached_rows, restore_rows, row_path

DEFAULT_ROWS = ("magnitude-uniform,magnitude-global,depgraph-uniform,depgraph-global,"
                "udfc-uniform,udfc-global,hobs,hobs_nohessian,tp-l1-local,tp-l1-global,"
                "tp-groupnorm-local,tp-groupnorm-global")
TOL = 0.01
SHAPE = (1, 28, 28, 1)


def parse_row(row: str, overrides: dict | None = None) -> dict:
    """'tp-l1-global' -> a Torch-Pruning row; 'METHOD[-uniform|-global][@KEY=VALUE][#Q]' -> ours
    (allocation and one option set in the row name, e.g. 'udfc-uniform@compensate=false';
    '#Q' allocates kept widths in multiples of Q, the task's ``round_to``, e.g. 'hobs#8');
    ``overrides``: {method: {key: value}} from ``--set``, for every row of that method."""
    if row.startswith("tp-"):
        parts = row.split("-")
        if len(parts) != 3 or parts[2] not in ("local", "global"):
            raise ValueError(f"row {row!r}: use tp-CRITERION-local or tp-CRITERION-global")
        from hobs_jax.experiments.studies.oneshot_tp import KINDS
        if parts[1] not in KINDS:
            raise ValueError(f"row {row!r}: unknown Torch-Pruning criterion; use one of {KINDS}")
        return {"framework": "torch-pruning", "kind": parts[1], "global": parts[2] == "global"}
    from hobs_jax.methods import get_method
    name, hash_, quantum = row.partition("#")
    if hash_ and not (quantum.isdigit() and int(quantum) >= 1):
        raise ValueError(f"row {row!r}: '#Q' aligns every kept width to a multiple of Q, an int >= 1")
    base, at, setting = name.partition("@")
    method, _, alloc = base.partition("-")
    spec = get_method(method)  # one-line error naming the registered methods
    options = dict((overrides or {}).get(method, {}))
    if at:
        key, eq, value = setting.partition("=")
        if not eq:
            raise ValueError(f"row {row!r}: use METHOD[-ALLOCATION]@KEY=VALUE")
        options[key] = _value(value)
    for key in options:
        if key not in spec.default_config():
            raise ValueError(f"row {row!r}: method {method!r} has no option {key!r}")
    if alloc:
        if alloc not in ("uniform", "global") or "allocation" not in spec.default_config():
            raise ValueError(f"row {row!r}: '-{alloc}' is not an allocation of method {method!r}")
        options["allocation"] = alloc
    full = spec.default_config()
    full.update(options)
    resolved = {k: v for k, v in full.to_dict().items() if k != "progress"}
    out: dict[str, Any] = {"framework": "hobs_jax", "method": method, "options": options, "resolved": resolved}
    if hash_:
        out["round_to"] = int(quantum)
    return out


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class Bench:
    """Shared state of one run: data, dense models, caches."""

    def __init__(self, args):
        from hobs_jax.data import get_source
        self.args = args
        self.source = get_source("fashion_mnist", augment=True)
        self._calib: dict = {}
        self._recipes: dict = {}
        self._dense: dict = {}
        self._jit: dict = {}

    def calib(self, seed: int = 0):
        """The calibration set of ``seed``: ``--calib-images`` training images without
        augmentation, drawn as the pipeline's calibrate stage draws them (seed 0: its set)."""
        if seed not in self._calib:
            from hobs_jax.data import sample_indices
            from hobs_jax.methods import Calibration
            idx = sample_indices(self.source.size("train"), self.args.calib_images, seed)
            images, labels = self.source.batch("train", idx, train=False)
            self._calib[seed] = Calibration(np.asarray(images, np.float32), np.asarray(labels, np.int32))
        return self._calib[seed]

    # -- models and evaluation -------------------------------------------------------
    def dense(self, name: str):
        if name not in self._dense:
            import hobs_jax
            # checkpoints/NAME_fmnist (an export directory, as committed) or a pipeline
            # workdir's NAME_fmnist/train/model.
            cands = [os.path.join(self.args.checkpoint_dir, f"{name}_fmnist"),
                     os.path.join(self.args.checkpoint_dir, f"{name}_fmnist", "train", "model")]
            path = next((c for c in cands if os.path.exists(os.path.join(c, "meta.json"))), None)
            if path is None:
                raise SystemExit(f"no checkpoint for {name} at {' or '.join(cands)} (train it "
                                 f"first: python -m hobs_jax.main --config=configs/{name}_fmnist.py ...)")
            model, variables, _ = hobs_jax.load(path)
            self._dense[name] = (model, variables)
        return self._dense[name]

    def accuracy(self, model, variables, desc: str) -> float:
        from hobs_jax.data import EvalLoader
        from hobs_jax.train import evaluate
        loader = EvalLoader(self.source, "test", 500)
        return float(evaluate(model, variables, loader, desc=desc)["top1"])

    def counts(self, model, variables):
        from hobs_jax import macs
        r = macs.count(model, variables, SHAPE)
        return r.macs, r.params

    def recalibrate(self, model, variables, seed: int = 0):
        from hobs_jax.stats import reestimate_bn
        return reestimate_bn(model, variables, (x for x, _ in self.calib(seed).batches(256)))

    def recipe(self, name: str):
        """The fine-tuning recipe of model ``name``: the ``finetune`` section of
        ``--config-dir/NAME_fmnist.py`` when that file exists, else the pipeline's default
        for the model (``base_config(name).finetune``)."""
        if name not in self._recipes:
            self._recipes[name] = self.recipe_of(self.args.config_dir, name)
        return self._recipes[name]

    @staticmethod
    def recipe_of(config_dir: str, name: str):
        path = os.path.join(config_dir, f"{name}_fmnist.py")
        if os.path.exists(path):
            from hobs_jax.experiments.validate import load_config_file
            return load_config_file(path).get_config(None).finetune
        from hobs_jax.pipeline import base_config
        return base_config(name).finetune

    def steps(self, name: str) -> list[int]:
        per_epoch = self.source.size("train") // self.recipe(name).batch_size
        out = sorted({per_epoch if s == "epoch" else int(s) for s in self.args.steps.split(",") if s})
        return [s for s in out if s > 0]

    def recipe_for(self, name: str, steps: int, every: int, seed: int = 0):
        c = self.recipe(name).copy_and_resolve_references()
        with c.unlocked():
            c.seed = int(c.seed) + int(seed)
            c.steps, c.epochs = int(steps), 0.0
            c.progress, c.tensorboard = False, False
            c.checkpoint.every_steps = int(every)
            c.checkpoint.keep = 1000
            c.checkpoint.async_save = False
            c.log_every = 50
        return c

    def train_loader(self, name: str, seed: int = 0):
        from hobs_jax.data import TrainLoader
        c = self.recipe(name)
        return TrainLoader(self.source, "train", c.batch_size, seed=c.seed + seed)

    def finetune_cb(self, name: str, workdir: str, seed: int = 0):
        """The training callback for methods (DepGraph's sparse phase): the dense model,
        the fine-tune recipe, resumable under ``workdir``."""
        def train(variables, steps, extra_loss=None, extra_transform=None):
            from hobs_jax.train import fit
            model, _ = self.dense(name)
            c = self.recipe_for(name, steps, 0, seed)
            return fit(model, variables, self.train_loader(name, seed), c, workdir, extra_loss=extra_loss,
                       extra_transform=extra_transform).completed().variables
        return train

    def method_training_dir(self, name: str, spec: dict, seed: int = 0) -> str:
        """Where a method's training (DepGraph's sparse phase) runs: shared by every row of
        the same model, method, seed and options apart from allocation (the phase does not
        depend on the target or the allocation), so it runs once and later rows resume its end."""
        opts = {k: v for k, v in sorted(spec["options"].items()) if k != "allocation"}
        from hobs_jax.methods import get_method
        full = get_method(spec["method"]).default_config()
        full.update(opts)
        # Nested option sections (R-SPAR's agent) are ConfigDicts: tagged by their dict.
        tag = json.dumps({k: v for k, v in full.items() if k not in ("allocation", "normalize",
                                                                    "min_ratio")}, sort_keys=True,
                         default=lambda o: o.to_dict() if hasattr(o, "to_dict") else repr(o))
        import hashlib
        digest = hashlib.sha256(tag.encode()).hexdigest()[:10]
        return os.path.join(self.args.workdir, "method_training", name, f"{spec['method']}-{digest}"
                            + (f"-seed{seed}" if seed else ""))

    def curve(self, name: str, model, variables, steps: list[int], workdir: str, seed: int = 0) -> dict[int, float]:
        """Fine-tune for max(steps) (one schedule), accuracy at every step in ``steps``."""
        import jax

        from hobs_jax.train import (
            Checkpointer,
            TrainState,
            abstract_like,
            fit,
            make_mesh,
            make_optimizer,
            state_shardings,
        )
        total = max(steps)
        shorter = [s for s in steps if s < total]
        every = math.gcd(*shorter) if shorter else 0
        c = self.recipe_for(name, total, every, seed)
        result = fit(model, variables, self.train_loader(name, seed), c, workdir).completed()
        out = {total: self.accuracy(model, result.variables, f"ft@{total}")}
        if shorter:
            mesh = make_mesh()
            tx = make_optimizer(c, total)
            abstract = jax.eval_shape(lambda: TrainState.create(variables, tx, c.seed))
            target = abstract_like(abstract, state_shardings(abstract, mesh))
            ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1000, async_save=False)
            for s in shorter:
                restored = ckpt.restore(target, step=s)
                assert restored is not None  # a named step restores or raises, never None
                _, state, _ = restored
                out[s] = self.accuracy(model, state.variables(), f"ft@{s}")
            ckpt.close()
        return out

    def latency(self, name: str, model, variables) -> dict[str, float]:
        """Median dense / median pruned time, jitted, per batch size (alternating)."""
        import jax
        import jax.numpy as jnp
        dense, dvars = self.dense(name)
        if name not in self._jit:
            self._jit[name] = jax.jit(dense.apply)
        fd, fp = self._jit[name], jax.jit(model.apply)
        dvars, variables = jax.device_put(dvars), jax.device_put(variables)  # no per-call copies
        out = {}
        for batch, iters in ((1, self.args.latency_iters * 3), (64, self.args.latency_iters)):
            x = jnp.zeros((batch,) + SHAPE[1:], jnp.float32)
            for _ in range(3):
                fd(dvars, x).block_until_ready()
                fp(variables, x).block_until_ready()
            td: list[float] = []
            tp: list[float] = []
            for i in range(iters):
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    f, v, acc = (fd, dvars, td) if which == 0 else (fp, variables, tp)
                    t = time.perf_counter()
                    f(v, x).block_until_ready()
                    acc.append(time.perf_counter() - t)
            out[f"batch{batch}"] = statistics.median(td) / statistics.median(tp)
        return out

    # -- rows -----------------------------------------------------------------------
    def dense_record(self, name: str) -> dict:
        path = os.path.join(self.args.workdir, f"dense_{name}.json")
        if os.path.exists(path):
            return json.load(open(path))
        model, variables = self.dense(name)
        m, p = self.counts(model, variables)
        rec = {"model": name, "acc_dense": self.accuracy(model, variables, f"{name} dense"),
               "macs": m, "params": p}
        common.write_json(path, rec)
        return rec

    def prune(self, name: str, target: float, row: str, spec: dict, seed: int = 0):
        model, variables = self.dense(name)
        calib = self.calib(seed)
        if spec["framework"] == "hobs_jax":
            from hobs_jax.methods import prune
            r = prune(spec["method"], name, variables, target=target, metric="macs",
                      round_to=spec.get("round_to", 1), calib=calib, options=spec["options"], seed=seed,
                      finetune=self.finetune_cb(name, self.method_training_dir(name, spec, seed), seed))
            return r.model, r.variables, {"info": _jsonable(r.outcome.info)}
        from hobs_jax.experiments.studies import oneshot_tp
        return oneshot_tp.prune_in_subprocess(name, variables, target, spec["kind"], spec["global"], SHAPE,
                                              calib.images, calib.labels, TOL)

    def row(self, name: str, target: float, row: str, seed: int = 0) -> dict:
        """One row of one seed: pruned, measured and (if ``--steps``) fine-tuned; cached in
        stages (the BN-re-estimated pruned model is saved, so a later run with ``--steps``
        adds the curve without pruning again)."""
        import hobs_jax
        from hobs_jax import export

        path = row_path(self.args.workdir, name, target, row, seed)
        spec = parse_row(row, self.args.overrides)
        rowdir = os.path.join(os.path.dirname(path), row)
        rec = json.load(open(path)) if os.path.exists(path) else None
        if rec is not None and (rec.get("options") != spec.get("options")
                                or rec.get("resolved_options") != spec.get("resolved")):
            # A method's defaults changed since the row was cached: never reuse it silently.
            raise SystemExit(f"{path} was made with options {rec.get('resolved_options')}, now "
                             f"{spec.get('resolved')}: delete the row or use another --workdir")
        if rec is None:
            dense_rec = self.dense_record(name)
            t0 = time.time()
            try:
                model, variables, extra = self.prune(name, target, row, spec, seed)
            except ValueError as e:
                if spec["framework"] != "hobs_jax":
                    raise
                # A method that cannot handle the architecture says why in one line (UDFC
                # on a network without BN then ReLU); the row is listed as refused.
                rec = {"model": name, "method": row, "framework": spec["framework"], "seed": seed,
                       "target_macs_ratio": target, "options": spec.get("options"),
                       "resolved_options": spec.get("resolved"), "command": self.args.command,
                       "refused": f"the method refused the model: {e}"}
                print(f"REFUSED {name} {target} {row}: {rec['refused']}", flush=True)
                common.write_json(path, rec)
                return rec
            m, p = self.counts(model, variables)
            rec = {"model": name, "method": row, "framework": spec["framework"], "seed": seed,
                   "target_macs_ratio": target, "macs_ratio": m / dense_rec["macs"],
                   "params_ratio": p / dense_rec["params"], "acc_dense": dense_rec["acc_dense"],
                   "options": spec.get("options"), "resolved_options": spec.get("resolved"),
                   "command": self.args.command,
                   "prune_seconds": time.time() - t0, **extra}
            if "round_to" in spec:
                rec["round_to"] = spec["round_to"]
            miss = abs(rec["macs_ratio"] / target - 1)
            if miss > TOL:
                rec["refused"] = (f"kept {rec['macs_ratio']:.4f} of the MACs, target {target}: off "
                                  f"by {miss:.1%} > {TOL:.0%} (iso-MACs rule)")
                print(f"REFUSED {name} {target} {row}: {rec['refused']}", flush=True)
                common.write_json(path, rec)
                return rec
            rec["acc_oneshot"] = self.accuracy(model, variables, f"{row} one-shot")
            variables = self.recalibrate(model, variables, seed)
            rec["acc_bn_recalibrated"] = self.accuracy(model, variables, f"{row} bn")
            rec["latency_speedup"] = self.latency(name, model, variables)
            rec["acc_by_steps"], rec["acc_finetuned"], rec["schedule_steps"] = {}, None, None
            export.save(os.path.join(rowdir, "model"), model, common.host(variables), overwrite=True)
            rec["seconds"] = time.time() - t0
            common.write_json(path, rec)
            print(f"{name} {target} {row} seed {seed}: macs {rec['macs_ratio']:.4f} one-shot "
                  f"{rec['acc_oneshot']:.4f} bn {rec['acc_bn_recalibrated']:.4f} speedup "
                  f"{rec['latency_speedup']} ({rec['seconds']:.0f} s)", flush=True)
        if "refused" in rec:
            return rec
        steps = self.steps(name)
        if steps and rec.get("schedule_steps") != max(steps):
            if rec.get("schedule_steps"):
                if not self.args.refinetune:
                    raise SystemExit(f"{path} was fine-tuned on a {rec['schedule_steps']}-step schedule, "
                                     f"now {max(steps)}: pass --refinetune or use another --workdir")
                import shutil
                print(f"{name} {target} {row}: discarding its {rec['schedule_steps']}-step curve "
                      f"{rec['acc_by_steps']} (--refinetune)", flush=True)
                shutil.rmtree(os.path.join(rowdir, "finetune"), ignore_errors=True)
            t0 = time.time()
            model, variables, _ = hobs_jax.load(os.path.join(rowdir, "model"))
            curve = self.curve(name, model, variables, steps, os.path.join(rowdir, "finetune"), seed)
            per_epoch = self.source.size("train") // self.recipe(name).batch_size
            rec.update(acc_by_steps={str(k): v for k, v in sorted(curve.items())},
                       acc_finetuned=curve.get(per_epoch), schedule_steps=max(steps),
                       finetune_command=self.args.command,
                       finetune_seconds=time.time() - t0)
            common.write_json(path, rec)
            print(f"{name} {target} {row}: fine-tuned {rec['acc_by_steps']} "
                  f"({rec['finetune_seconds']:.0f} s)", flush=True)
        return rec


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet56,resnet20")
    p.add_argument("--targets", default="0.5,0.333", help="kept MACs fractions")
    p.add_argument("--methods", default=DEFAULT_ROWS, help="rows (see module doc)")
    p.add_argument("--config-dir", default="configs",
                   help="where NAME_fmnist.py gives each model's fine-tuning recipe (its finetune section)")
    p.add_argument("--checkpoint-dir", default="checkpoints",
                   help="holds MODEL_fmnist (export dir) or MODEL_fmnist/train/model")
    p.add_argument("--steps", default=None,
                   help="fine-tuning steps to evaluate, 'epoch' = one epoch; '' = none "
                        "(default 50,200,epoch; 20,60 with --quick)")
    p.add_argument("--workdir", default="runs/oneshot_fmnist")
    p.add_argument("--calib-images", type=int, default=2048)
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds; each draws the calibration images, seeds the method and "
                        "offsets fine-tuning (the main table shows the first; OUT_seeds the mean and std)")
    p.add_argument("--latency-iters", type=int, default=20)
    p.add_argument("--quick", action="store_true",
                   help="development run: steps 20,60, 256 calibration images, 5 latency "
                        "iterations; outputs under the workdir unless --out is given")
    p.add_argument("--out", default=None, help="output prefix (default docs/results/oneshot_fmnist)")
    p.add_argument("--title", default=None, help="the table's title (default: the one-shot comparison's)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--restore", action="append", default=[], metavar="RECORD",
                   help="first write the rows of a published run record (docs/results/records/NAME.json) "
                        "into the workdir's cache where missing, so new seeds or rows join a published table "
                        "without recomputing it")
    p.add_argument("--refinetune", action="store_true",
                   help="a row fine-tuned on another schedule is fine-tuned again on this one "
                        "(its old curve and fine-tuning checkpoints are discarded)")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the report's notes (what was not run and why; no results)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option for our rows, e.g. depgraph.sparse_steps=100 (JSON value)")
    p.add_argument("--skip-unavailable", action="store_true",
                   help="skip rows of methods not registered in this checkout (listed as not run)")
    args = p.parse_args(argv)
    args.command = "python benchmarks/oneshot_fmnist.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        args.overrides = common.parse_method_sets(args.set)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.quick:
        args.calib_images, args.latency_iters = 256, 5
    if args.steps is None:
        args.steps = "20,60" if args.quick else "50,200,epoch"
    out = args.out or (os.path.join(args.workdir, "oneshot_fmnist_quick") if args.quick
                       else "docs/results/oneshot_fmnist")
    rows = [r for r in args.methods.split(",") if r]
    models_ = [m for m in args.models.split(",") if m]
    targets = [float(t) for t in args.targets.split(",") if t]
    for t in targets:
        if not 0 < t < 1:
            raise SystemExit(f"--targets: {t} is not a kept fraction in (0, 1)")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: use comma-separated integers >= 0, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: use distinct comma-separated integers >= 0, e.g. 0,1,2")
    for record in args.restore:
        print(f"restored {restore_rows(record, args.workdir)} rows from {record}", flush=True)
    if not args.report_only:
        from hobs_jax.methods import list_methods
        run_rows = []
        for r in rows:
            if (args.skip_unavailable and not r.startswith("tp-")
                    and r.partition("@")[0].partition("-")[0] not in list_methods()):
                print(f"skipping {r}: its method is not registered in this checkout")
                continue
            parse_row(r, args.overrides)  # every bad row name fails before any compute
            run_rows.append(r)
        bench = Bench(args)
        for name in models_:
            for t in targets:
                for seed in seeds:
                    for r in run_rows:
                        bench.row(name, t, r, seed)
    from hobs_jax.experiments.studies.oneshot_report import recipe_text, write_report
    recipes = {name: recipe_text(Bench.recipe_of(args.config_dir, name)) for name in models_}
    write_report(cached_rows(args.workdir), args.workdir, out, args.command, models_, targets, rows,
                 notes=args.note, recipes=recipes, seeds=seeds, **({"title": args.title} if args.title else {}))


if __name__ == "__main__":
    from hobs_jax import cli

    cli.run_job(main)
