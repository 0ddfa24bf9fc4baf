"""AST on Fashion-MNIST: the activation-rate sweep, the baselines and the scoring ablation.

    python -m hobs_jax.experiments.ast_fmnist --tasks=train --modes=full,ast,random \\
        --rates=0.1,0.2 --seeds=0                              # a first slice
    python -m hobs_jax.experiments.ast_fmnist                 # the whole grid (defaults)
    python -m hobs_jax.experiments.ast_fmnist --report_only   # rebuild the tables/plots from the record

Rows (one training run each; model, task, mode, score, target_rate, seed):

* task ``train``: ResNet-20 trained from scratch; task ``finetune``: the H-OBS-pruned
  ResNet-56 at 3x fewer MACs (``--pruned``, a pipeline ``prune/model`` directory, see
  docs/ast.md for the command) recovered by fine-tuning;
* mode ``full`` (every sample), ``ast`` (PI-controlled selection at ``target_rate``, with
  ``--score`` and the scoring ablation ``--ablation_scores`` at ``--ablation_rate``;
  a score written ``NAME:cb`` runs with ``class_balanced``, ``NAME:soft`` with the
  importance-weighted soft selection ``selection='sample'``, ``NAME:cb+soft`` with both),
  ``random`` (a uniform random subset at the same back-propagation budget) and
  ``infobatch`` (InfoBatch at the same wall time as the AST row of the same task, rate
  and seed: its budget of optimizer steps is AST's wall time over the full run's time per
  step);
* every row: top-1, top-5 and per-class accuracy on the 10,000 test images, wall time of
  the training call (compiles included; the persistent compilation cache is on, so only
  a first run of a shape compiles) and its CPU time (all threads of the process: on a
  machine shared with other jobs the CPU-time ratio estimates the idle machine's
  wall-clock ratio better than noisy wall times do), samples back-propagated and scored,
  the AST record
  (achieved rate, rate-window deviation, threshold range, converged) and the speedup
  against the ``full`` row of the same task and seed.

Finished rows are cached in ``<out's folder>/records/<name>.json`` (keyed by row and schedule) and skipped on a
rerun, so the grid can be run in slices, interrupted and extended. The schedule is scaled
down for a CPU (``--train_examples`` of the 60,000 training images, a few epochs); the
defaults are documented in docs/ast.md. Energy is recorded only where a device reports
power (never estimated); a CPU does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCORES = ("loss", "loss_intensity", "loss_grad", "loss_entropy", "reducible")
# score 'reducible' (RHO-LOSS) needs a reference model per task; only the fine-tuning task
# has one here: the dense ResNet-56 the pruned network was cut from (--reference_model)
REDUCIBLE_TASKS = ("finetune",)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The scaled-down recipe (what the cache key depends on)."""

    train_examples: int = 12000
    train_epochs: float = 4.0
    finetune_epochs: float = 1.0
    batch_size: int = 128
    train_lr: float = 0.1
    finetune_lr: float = 0.01
    warmup_steps: int = 40          # AST warm-up (full batches) of the train task
    finetune_warmup_steps: int = 0  # a pretrained network's scores mean something at once
    score_refresh: float = 0.25     # stale scores, a quarter of each batch re-scored
    kp: float = 0.1
    ki: float = 0.05
    ema: float = 0.3
    data_seed: int = 0
    bn_reestimate: int = 2048       # train.ast.bn_reestimate of the selective rows (0: off)

    def key(self) -> str:
        d = dataclasses.asdict(self)
        if not d["bn_reestimate"]:  # rows made before the option existed had none: same key
            del d["bn_reestimate"]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _cpu() -> str:
    name, flags = platform.processor() or "CPU", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("CPU", ""):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")
    return f"{name}, {os.cpu_count()} cores{', ' + isa if isa else ''}"


def device_name() -> str:
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"{_cpu()} (jax {jax.__version__}, XLA:CPU)"
    return f"{d.device_kind} x{jax.device_count()} (jax {jax.__version__})"


def subset_source(n: int, seed: int):
    """Fashion-MNIST whose 'train' split is ``n`` examples (a fixed random subset)."""
    from hobs_jax.data import DataSource, get_source

    src = get_source("fashion_mnist")
    if n >= src.size("train"):
        return src
    keep = np.sort(np.random.default_rng([seed, 0x5B5]).permutation(src.size("train"))[:n])

    def reader(split, indices):
        return src.read(split, keep[indices] if split == "train" else indices)

    return DataSource(f"fashion_mnist[{n}]", src.num_classes,
                      {"train": n, "test": src.size("test")}, reader, src.preprocess)


def evaluate_per_class(model, variables, source, batch: int = 500) -> dict:
    """top-1, top-5 and per-class top-1 on the test split (every image once)."""
    import jax

    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    variables = jax.device_get(variables)
    n = source.size("test")
    correct1, correct5, labels_all = [], [], []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        x, y = source.batch("test", idx, train=False)
        if len(idx) < batch:  # one compiled shape: pad the last batch
            pad = batch - len(idx)
            x = np.concatenate([x, np.repeat(x[:1], pad, 0)])
        logits = np.asarray(apply(variables, x))[:len(idx)]
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1.append(top5[:, 0] == y)
        correct5.append((top5 == y[:, None]).any(axis=1))
        labels_all.append(y)
    c1, c5, y = map(np.concatenate, (correct1, correct5, labels_all))
    return {"acc_top1": float(c1.mean()), "acc_top5": float(c5.mean()),
            "per_class_top1": [float(c1[y == k].mean()) for k in range(int(y.max()) + 1)]}


def _row_id(r: dict) -> tuple:
    return (r["model"], r["task"], r["mode"], r["score"], r["target_rate"], r["seed"])


class Store:
    """The cached rows of ``<out's folder>/records/<name>.json`` (rewritten after every
    finished row); the tables built from them are ``<out>*.{json,md,tex}``."""

    def __init__(self, out: str, schedule: Schedule, command: str):
        from hobs_jax.experiments import studies

        self.path = studies.record_path(os.path.basename(out), os.path.dirname(os.path.abspath(out)))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.schedule, self.command = schedule, command
        self.data: dict[str, Any] = {"rows": []}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.data = json.load(f)

    def rows(self) -> list[dict]:
        return [r for r in self.data["rows"] if r.get("schedule_key") == self.schedule.key()]

    def find(self, **kw) -> dict | None:
        for r in self.rows():
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    def check_device(self, device: str, out: str) -> None:
        """Refuses, before any compute, to add rows of ``device`` to a record whose rows
        (of this schedule) were measured on another machine: its tables never mix devices
        (wall times and speedups are per machine), so a row made here could not be shown."""
        other = sorted({str(r.get("device")) for r in self.rows()} - {device})
        if other:
            raise ValueError(f"--out={out}: its record holds rows measured on {other[0]!r}, not on this "
                             f"machine ({device!r}); a table never mixes devices, so write to another --out")

    def add(self, row: dict) -> None:
        self.data["rows"] = [r for r in self.data["rows"]
                             if not (_row_id(r) == _row_id(row)
                                     and r.get("schedule_key") == row["schedule_key"])]
        self.data["rows"].append(row)
        self.save()

    def save(self) -> None:
        from hobs_jax.experiments.ast_report import with_speedups

        # speedup (vs the full row of the same task, seed and schedule) and delta_top1 are
        # recomputed for every row whenever a row lands
        by_key: dict = {}
        for r in self.data["rows"]:
            by_key.setdefault(r.get("schedule_key"), []).append(r)
        self.data["rows"] = [r for rows in by_key.values() for r in with_speedups(rows)]
        self.data.update({
            "experiment": "ast_fmnist", "schedule": dataclasses.asdict(self.schedule),
            "schedule_key": self.schedule.key(),
            "command": self.command or self.data.get("command", ""),
            "updated": datetime.datetime.now().isoformat(timespec="seconds")})
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def train_config(task: str, mode: str, score: str, rate: float, seed: int, s: Schedule,
                 budget: float | None = None):
    """The ``train`` section of one row."""
    from hobs_jax.train import get_train_config

    c = get_train_config()
    c.optimizer, c.momentum, c.nesterov, c.weight_decay = "sgd", 0.9, True, 5e-4
    c.batch_size, c.seed = s.batch_size, seed
    if task == "train":
        c.lr, c.epochs, c.warmup_fraction = s.train_lr, s.train_epochs, 0.1
    else:
        c.lr, c.epochs, c.warmup_fraction = s.finetune_lr, s.finetune_epochs, 0.0
    c.log_every, c.eval_every = 20, 10 ** 9  # evaluate once, after training, ourselves
    c.checkpoint.every_steps, c.checkpoint.async_save = 0, False
    c.progress, c.tensorboard = False, False
    a = c.ast
    if mode != "full":
        if mode == "infobatch" and budget is None:
            raise ValueError("train_config: mode 'infobatch' needs budget (the AST row's rate)")
        a.enabled, a.rule = True, mode
        a.target_rate = float(budget if budget is not None and mode == "infobatch" else rate)
        name, variants = score_variants(score)
        a.score, a.kp, a.ki, a.ema = name, s.kp, s.ki, s.ema
        a.class_balanced = "cb" in variants
        a.selection = "sample" if "soft" in variants else "threshold"
        a.warmup_steps = s.warmup_steps if task == "train" else s.finetune_warmup_steps
        a.score_refresh = s.score_refresh
        a.bn_reestimate = s.bn_reestimate
    return c


VARIANTS = ("cb", "soft")


def score_variants(score: str) -> tuple[str, set[str]]:
    """'loss:cb+soft' -> ('loss', {'cb', 'soft'}): ``cb`` = class_balanced, ``soft`` =
    selection 'sample' (importance-weighted soft threshold); one-line ValueError otherwise."""
    name, _, tail = score.partition(":")
    variants = {v for v in tail.split("+") if v}
    if name not in SCORES or variants - set(VARIANTS):
        raise ValueError(f"--score/--ablation_scores: {score!r} is not one of {SCORES} "
                         f"(optionally with ':' and {' / '.join(VARIANTS)}, joined by '+')")
    return name, variants


def reference_file(task: str, s: Schedule, workroot: str, reference_model: str) -> tuple[str, float]:
    """The reference losses of score 'reducible' for ``task``'s training subset: computed
    once from ``reference_model`` (an exported model directory) into ``workroot`` and
    reused by every row, rate and seed of the schedule (RHO-LOSS computes its irreducible
    losses once, too). Returns (path, seconds spent now; 0 when reused)."""
    from hobs_jax import export
    from hobs_jax.train import ast_reference

    if task not in REDUCIBLE_TASKS:
        raise ValueError(f"score 'reducible' has no reference model for task {task!r} "
                         f"(only {', '.join(REDUCIBLE_TASKS)}: the dense network)")
    os.makedirs(workroot, exist_ok=True)
    path = os.path.join(workroot, f"reference_{task}_{s.key()}.npy")
    src = subset_source(s.train_examples, s.data_seed)
    try:  # already computed for this schedule: reuse it without loading the model
        ast_reference.load(path, src.size("train"))
        return path, 0.0
    except ValueError:
        pass
    model, variables, _ = export.load(reference_model)
    seconds = ast_reference.ensure(path, model.apply, variables, src, "train",
                                   log=lambda m: print(m, flush=True))
    return path, seconds


def run_row(task: str, mode: str, score: str, rate: float, seed: int, s: Schedule,
            workroot: str, pruned: str, budget: float | None = None,
            reference: str = "") -> dict:
    """Trains and evaluates one row; returns its record (``reference``: the reference
    losses of score 'reducible')."""
    import jax

    from hobs_jax import export, models
    from hobs_jax.data import TrainLoader
    from hobs_jax.train import fit

    src = subset_source(s.train_examples, s.data_seed)
    if task == "train":
        model_name = "resnet20"
        model = models.build(model_name, num_classes=10, in_channels=1)
        variables = models.init(model, jax.random.key(seed), (1, 28, 28, 1))
    else:
        model_name = "resnet56_hobs3x"
        model, variables, _ = export.load(pruned)
    c = train_config(task, mode, score, rate, seed, s, budget)
    if mode == "ast" and score_variants(score)[0] == "reducible":
        c.ast.reference = reference
    wd = os.path.join(workroot, f"{task}_{mode}_{score}_{rate:g}_s{seed}")
    shutil.rmtree(wd, ignore_errors=True)  # a row is timed from scratch, never resumed
    t0, cpu0 = time.time(), time.process_time()
    result = fit(model, variables, TrainLoader(src, "train", s.batch_size, seed=seed), c, wd)
    wall, cpu = time.time() - t0, time.process_time() - cpu0
    m = result.metrics
    if m["stopped"]:  # SIGTERM (fit saved and returned) or early stopping: not a row
        raise SystemExit(f"{wd}: training stopped early ({m['stopped']}); row not recorded")
    acc = evaluate_per_class(model, result.variables, src)
    a = m.get("ast") or {}
    backprop = a.get("samples_backpropagated", m["steps"] * s.batch_size)
    row = {"model": model_name, "task": task, "mode": mode,
           "score": score if mode == "ast" else None, "target_rate": rate, "seed": seed,
           "achieved_rate": a.get("achieved_rate", 1.0), **acc,
           "wall_seconds": wall, "cpu_seconds": cpu, "fit_seconds": m["seconds"],
           "steps": m["steps"],
           "samples_backpropagated": backprop, "samples_scored": a.get("samples_scored", 0),
           "samples_seen": a.get("samples_seen", m["steps"] * s.batch_size),
           "seconds_scoring": a.get("seconds_scoring", 0.0),
           "seconds_selection": a.get("seconds_selection", 0.0),
           "ast": a or None, "energy_joules": None, "device": device_name(),
           "schedule_key": s.key(),
           "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    if mode == "infobatch":
        row["budget"] = budget
    trace = os.path.join(wd, "ast_trace.png")
    if os.path.exists(trace):
        row["trace_png"] = trace
    return row


def plan_rows(args) -> list[tuple[str, str, str, float]]:
    """(task, mode, score, rate) in run order: full first (speedups and InfoBatch budgets
    need it), AST before InfoBatch (its wall time sets InfoBatch's budget)."""
    out = []
    for task in args.tasks:
        if "full" in args.modes:
            out.append((task, "full", "loss", 1.0))
        for rate in args.rates:
            if "ast" in args.modes:
                out.append((task, "ast", args.score, rate))
            if "random" in args.modes:
                out.append((task, "random", "loss", rate))
            if "infobatch" in args.modes:
                out.append((task, "infobatch", "loss", rate))
        if "ast" in args.modes and args.ablation_scores:
            for score in args.ablation_scores:
                if score_variants(score)[0] == "reducible" and task not in REDUCIBLE_TASKS:
                    continue  # no reference model for this task
                if score != args.score or args.ablation_rate not in args.rates:
                    out.append((task, "ast", score, args.ablation_rate))
    return out


def _reference_seconds(store: Store, task: str) -> float | None:
    """The one-time reference computation's seconds recorded by an earlier row of ``task``."""
    for r in store.rows():
        if r["task"] == task and r.get("reference_seconds_once"):
            return float(r["reference_seconds_once"])
    return None


def _without_out(args: list[str]) -> list[str]:
    """The command's arguments without ``--out=X`` / ``--out X`` (a page's sources name the
    grid, not where one copy of it was written)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda t: (lambda v: [t(x) for x in v.split(",") if x])  # noqa: E731
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "ast_fmnist"))
    p.add_argument("--workroot", default=os.path.join(REPO, "runs", "ast_fmnist"))
    p.add_argument("--tasks", type=csv(str), default=["train", "finetune"])
    p.add_argument("--modes", type=csv(str), default=["full", "ast", "random", "infobatch"])
    p.add_argument("--rates", type=csv(float), default=[0.05, 0.1, 0.15, 0.2])
    p.add_argument("--seeds", type=csv(int), default=[0, 1, 2])
    p.add_argument("--score", default="loss")
    p.add_argument("--ablation_scores", type=csv(str), default=list(SCORES) + ["loss:cb"])
    p.add_argument("--ablation_rate", type=float, default=0.1)
    p.add_argument("--pruned", default=os.path.join(REPO, "runs", "r56_hobs3x", "prune", "model"))
    p.add_argument("--reference_model", default=os.path.join(REPO, "checkpoints", "resnet56_fmnist"),
                   help="score 'reducible': the model whose per-example losses are subtracted")
    for f in dataclasses.fields(Schedule):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--compile_cache", default=None)
    args = p.parse_args(argv)
    s = Schedule(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Schedule)})
    for score in [args.score, *args.ablation_scores]:
        score_variants(score)
    if score_variants(args.score)[0] == "reducible" and "ast" in args.modes:
        for task in set(args.tasks) - set(REDUCIBLE_TASKS):
            raise ValueError(f"--score={args.score}: no reference model for task {task!r}; "
                             f"use --tasks={','.join(REDUCIBLE_TASKS)}")
    command = "python -m hobs_jax.experiments.ast_fmnist " + " ".join(_without_out(
        list(argv if argv is not None else sys.argv[1:])))
    store = Store(args.out, s, "" if args.report_only else command.strip())
    from hobs_jax.experiments import ast_report

    if not args.report_only:
        store.check_device(device_name(), args.out)
        from hobs_jax import compile_cache

        compile_cache.enable(compile_cache.default_dir() if args.compile_cache is None
                             else args.compile_cache)
        for bad in set(args.modes) - {"full", "ast", "random", "infobatch"}:
            raise ValueError(f"--modes: unknown mode {bad!r}")
        if "finetune" in args.tasks and not os.path.isdir(args.pruned):
            raise ValueError(f"--pruned={args.pruned}: no pruned model there; make it with the "
                             f"command in docs/ast.md (H-OBS ResNet-56 at 3x)")
        for seed in args.seeds:
            for task, mode, score, rate in plan_rows(args):
                if store.find(task=task, mode=mode, score=score if mode == "ast" else None,
                              target_rate=rate, seed=seed):
                    continue
                budget = None
                if mode == "infobatch":
                    full = store.find(task=task, mode="full", seed=seed)
                    ast = store.find(task=task, mode="ast", score=args.score, target_rate=rate,
                                     seed=seed)
                    if full is None or ast is None:
                        print(f"skip {task} infobatch {rate} seed {seed}: needs the full and "
                              f"the AST row first", flush=True)
                        continue
                    budget = min(1.0, ast["wall_seconds"] / full["wall_seconds"])
                print(f"[{datetime.datetime.now():%H:%M:%S}] {task} {mode} {score} {rate:g} "
                      f"seed {seed}" + (f" budget {budget:.3f}" if budget else ""), flush=True)
                reference, ref_seconds = "", 0.0
                if mode == "ast" and score_variants(score)[0] == "reducible":
                    reference, ref_seconds = reference_file(task, s, args.workroot,
                                                            args.reference_model)
                row = run_row(task, mode, score, rate, seed, s, args.workroot, args.pruned,
                              budget, reference)
                if reference:  # one-time, shared by every reducible row: not in wall_seconds
                    row["reference_seconds_once"] = ref_seconds or _reference_seconds(store, task)
                    row["reference_model"] = os.path.relpath(args.reference_model, REPO)
                row["command"] = command.strip()
                store.add(row)
                print(f"  top-1 {row['acc_top1']:.4f}  wall {row['wall_seconds']:.0f} s  "
                      f"rate {row['achieved_rate']:.3f}  backprop {row['samples_backpropagated']}",
                      flush=True)
                ast_report.write(store.data, args.out, s)
    if store.data["rows"] and not args.report_only:  # --report_only leaves the record as it is
        store.save()
    ast_report.write(store.data, args.out, s)


if __name__ == "__main__":
    main()
