"""R-SPAR + H-OBS vs uniform H-OBS vs global-saliency H-OBS ("w/o RL") on the trained
Fashion-MNIST ResNets, at the same MACs.

For each model x target (kept MACs fraction) x allocation (x seed for R-SPAR):
  1. one H-OBS selection per model (calibration, inverses, greedy paths to 10% per
     group) on the first ``calib_images - reward_images`` calibration images (seed-0
     sample of the train split, no augmentation); the last ``reward_images`` are
     R-SPAR's held-out reward split. The selection serves every row (paths do not depend
     on the target), so all rows prune along the same paths and compensate identically;
     only the kept counts per group differ;
  2. kept counts: ``uniform`` (one ratio), ``global`` (H-OBS's normalized-saliency
     threshold), ``rspar`` (the DDPG search, per seed, then the re-rank of its
     ``--rerank`` best allocations and the uniform and global ones on the Hessian images,
     ``hobs_jax.rspar.rerank``; search and re-rank time recorded, and which candidate won);
  3. ``get_method("hobs").finish`` (compensation) + ``apply_plan`` (a real smaller network), MACs
     checked within 1% of the target, BatchNorm re-estimated on all calibration images
     (the same for every row), test top-1 on the 10,000 test images = ``acc_oneshot``;
  4. the same short fine-tuning for every row (the pipeline's ``finetune`` recipe: SGD
     momentum 0.9, lr 0.01 cosine, wd 5e-4, batch 128, seed 0, augmentation on) for
     ``--finetune_steps``, test top-1 = ``acc_finetuned``.

Finished rows are cached as JSON under ``--workdir`` (an interrupted run continues;
R-SPAR searches resume from their checkpoints). ``--reuse_from DIR`` takes the uniform and
global rows (which do not depend on R-SPAR's options) from another workdir, after
rebuilding each network and checking that its kept counts, MACs and one-shot accuracy
reproduce the cached row. ``--report-only`` rebuilds the outputs from the workdir's rows;
``--render-only`` rebuilds the tables from the stored run record alone.

    python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.5,0.333 \\
        --seeds 0,1,2 --episodes 150 --lbound 0.1 --rerank 10 --workdir runs/rspar_fmnist_v3

writes the run record docs/results/records/rspar_fmnist.json, the tables built from it
through ResultTable (docs/results/rspar_fmnist.{json,md,tex}; another ``--out`` NAME gets
:mod:`~hobs_jax.experiments.studies.rspar_report`'s NAME and NAME_rerank tables),
rspar_fmnist_allocation_<target>.{json,png} and rspar_fmnist_curve.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

from hobs_jax.experiments import machine

TOL = 0.01
SHAPE = (1, 28, 28, 1)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=lambda x: x.item() if hasattr(x, "item") else str(x))
    os.replace(tmp, path)


class Bench:
    def __init__(self, args):
        import hobs_jax
        from hobs_jax.data import get_source
        from hobs_jax.methods import Calibration
        from hobs_jax.pipeline import base_config

        self.args = args
        path = os.path.join(args.checkpoint_dir, f"{args.model}_fmnist")
        if not os.path.exists(path):
            raise SystemExit(f"no checkpoint for {args.model} at {path}")
        self.model, self.variables, _ = hobs_jax.load(path)
        self.source = get_source("fashion_mnist", augment=True)
        from hobs_jax.data import sample_indices

        idx = sample_indices(self.source.size("train"), args.calib_images, 0)  # as the calibrate stage
        x, y = self.source.batch("train", idx, train=False)
        self.calib = Calibration(np.asarray(x, np.float32), np.asarray(y, np.int32))
        n = args.reward_images
        self.hess = Calibration(self.calib.images[:-n], self.calib.labels[:-n])
        self.reward = (self.calib.images[-n:], self.calib.labels[-n:])
        self.recipe = base_config("resnet20").finetune
        self._sel = None

    def selection(self):
        if self._sel is None:
            from hobs_jax.methods import get_method, make_task
            task = make_task("hobs", self.args.model, self.variables, target=0.5, calib=self.hess,
                             options=dict(progress=False, min_ratio=0.1,
                                          propagate=self.args.propagate), input_shape=SHAPE)
            t = time.perf_counter()
            self._sel = get_method("hobs").select(task)
            self.selection_seconds = time.perf_counter() - t
            print(f"H-OBS selection {self.selection_seconds:.1f} s (load {machine.load_1min()})", flush=True)
        return self._sel

    def keep(self, alloc: str, target: float, seed: int, rowdir: str):
        from hobs_jax import allocation
        from hobs_jax.methods import get_method
        from hobs_jax.rspar import MonomialBudget, RsparOptions, search_allocation
        sel = self.selection()
        cost = sel.cost
        if alloc == "uniform":
            return allocation.uniform(cost, target, "macs"), {}
        if alloc == "global":  # H-OBS's own global allocation (its task options: min_ratio 0.1, 'cost')
            return get_method("hobs").allocate(sel.with_task(target=target)).keep, {}
        agent = {k: getattr(self.args, k) for k in ("imitate", "noise", "noise_decay")
                 if getattr(self.args, k) is not None}  # None: the method's default
        if alloc == "rspar-imitate":  # exploration starts around the best reference (agent.imitate)
            agent["imitate"] = 500
        o = RsparOptions.build(dict(episodes=self.args.episodes, warmup=self.args.warmup, lbound=self.args.lbound,
                                    workdir=os.path.join(rowdir, "search"), progress=False, checkpoint_every=20,
                                    rerank=self.args.rerank, rerank_metric=self.args.rerank_metric, agent=agent),
                               where="rspar")
        assert isinstance(o, RsparOptions)  # build() returns its own class (typed as the base)
        t = time.perf_counter()
        keep, info = search_allocation(sel.with_task(target=target), target,
                                       budget=MonomialBudget(cost, "macs"), options=o, seed=seed,
                                       reward_images=self.reward[0], reward_labels=self.reward[1])
        info["rspar"]["search_seconds"] = time.perf_counter() - t
        return keep, info["rspar"]

    def build(self, key: str, target: float, keep):
        """(pruned model, BN-re-estimated variables, MACs ratio, params ratio) of the H-OBS
        network with kept counts ``keep`` (compensated along the shared selection)."""
        from hobs_jax import macs
        from hobs_jax.graph import apply_plan
        from hobs_jax.methods import get_method
        from hobs_jax.stats import reestimate_bn
        sel = self.selection()
        outcome = get_method("hobs").finish(sel.with_task(target=target), np.asarray(keep))
        pruned, pvars = apply_plan(self.args.model, outcome.variables, outcome.plan, graph=sel.task.graph)
        dense = macs.count(self.model, self.variables, SHAPE)
        after = macs.count(pruned, pvars, SHAPE)
        mr, pr = after.macs / dense.macs, after.params / dense.params
        if abs(mr / target - 1) > TOL:
            raise SystemExit(f"{key}: MACs ratio {mr:.4f} misses the target {target} by more than 1%")
        pvars = reestimate_bn(pruned, pvars, (x for x, _ in self.calib.batches(256)))
        return pruned, pvars, mr, pr

    def add_finetuning(self, key: str, rowdir: str, path: str, rec: dict) -> dict:
        """Fine-tune a row cached without fine-tuning: its network is rebuilt from the saved
        kept counts, and must reproduce the cached one-shot accuracy before it is trained."""
        pruned, pvars, mr, _ = self.build(key, rec["target_macs_ratio"], rec["keep"])
        acc1 = self.accuracy(pruned, pvars, f"{key} rebuilt")
        if abs(mr - rec["macs_ratio"]) > 1e-9 or abs(acc1 - rec["acc_oneshot"]) > 0.0015:
            raise SystemExit(f"{key}: the rebuilt network (MACs {mr:.4f}, one-shot {acc1:.4f}) does not "
                             f"reproduce the cached row (MACs {rec['macs_ratio']:.4f}, one-shot "
                             f"{rec['acc_oneshot']:.4f}): delete {rowdir} and rerun")
        t = time.perf_counter()
        ft = self.finetune(pruned, pvars, os.path.join(rowdir, "finetune"))
        rec.update(acc_finetuned=self.accuracy(pruned, ft, f"{key} finetuned"),
                   finetune_steps=self.args.finetune_steps, finetune_seconds=time.perf_counter() - t,
                   acc_oneshot_rebuilt=acc1, finetune_load_avg_at_start=machine.load_1min(),
                   finetune_command=self.args.command)
        _write_json(path, rec)
        print(f"{key}: fine-tuned {rec['acc_finetuned']:.4f} (one-shot {rec['acc_oneshot']:.4f}, rebuilt "
              f"{acc1:.4f}) in {rec['finetune_seconds']:.0f} s (load {machine.load_1min()})", flush=True)
        return rec

    def accuracy(self, model, variables, desc):
        from hobs_jax.data import EvalLoader
        from hobs_jax.train import evaluate
        return float(evaluate(model, variables, EvalLoader(self.source, "test", 500), desc=desc)["top1"])

    def finetune(self, model, variables, workdir):
        from hobs_jax.data import TrainLoader
        from hobs_jax.train import fit
        c = self.recipe.copy_and_resolve_references()
        with c.unlocked():
            c.steps, c.epochs = int(self.args.finetune_steps), 0.0
            c.progress, c.tensorboard = False, False
            c.checkpoint.every_steps = 50
            c.checkpoint.async_save = False
        loader = TrainLoader(self.source, "train", c.batch_size, seed=c.seed)
        return fit(model, variables, loader, c, workdir).completed().variables

    def reuse(self, key: str, alloc: str, target: float, rowdir: str, path: str) -> dict | None:
        """The ``--reuse_from`` copy of a uniform/global row, verified by a rebuild (module
        doc); None when there is nothing to reuse."""
        src = os.path.join(self.args.reuse_from, key, "row.json")
        if not self.args.reuse_from or alloc not in ("uniform", "global") or not os.path.exists(src):
            return None
        rec = json.load(open(src))
        if self.args.finetune_steps and rec.get("finetune_steps") != self.args.finetune_steps \
                and rec.get("acc_finetuned") is not None:
            raise SystemExit(f"{key}: {src} was fine-tuned for {rec.get('finetune_steps')} steps, not "
                             f"{self.args.finetune_steps}")
        keep, _ = self.keep(alloc, target, 0, rowdir)
        if [int(k) for k in keep] != rec["keep"]:
            raise SystemExit(f"{key}: {src} holds other kept counts than this selection gives: not reused")
        pruned, pvars, mr, _ = self.build(key, target, keep)
        acc1 = self.accuracy(pruned, pvars, f"{key} rebuilt")
        if abs(mr - rec["macs_ratio"]) > 1e-9 or abs(acc1 - rec["acc_oneshot"]) > 0.0015:
            raise SystemExit(f"{key}: the rebuilt network (MACs {mr:.4f}, one-shot {acc1:.4f}) does not "
                             f"reproduce {src} (MACs {rec['macs_ratio']:.4f}, one-shot {rec['acc_oneshot']:.4f})")
        os.makedirs(rowdir, exist_ok=True)
        rec.update(reused_from=src, acc_oneshot_rebuilt=acc1, reuse_load_avg=machine.load_1min())
        _write_json(path, rec)
        print(f"{key}: reused {src} (one-shot {rec['acc_oneshot']:.4f}, rebuilt {acc1:.4f})", flush=True)
        return rec

    def row(self, alloc: str, target: float, seed: int) -> dict:
        key = f"{self.args.model}-{alloc}-{target}-s{seed}"
        rowdir = os.path.join(self.args.workdir, key)
        path = os.path.join(rowdir, "row.json")
        if not os.path.exists(path):
            self.reuse(key, alloc, target, rowdir, path)
        if os.path.exists(path):
            rec = json.load(open(path))
            if self.args.finetune_steps and rec.get("acc_finetuned") is None:
                return self.add_finetuning(key, rowdir, path, rec)
            return rec
        os.makedirs(rowdir, exist_ok=True)
        load0 = machine.load_1min()
        keep, info = self.keep(alloc, target, seed, rowdir)
        pruned, pvars, mr, pr = self.build(key, target, keep)
        acc1 = self.accuracy(pruned, pvars, f"{key} one-shot")
        t = time.perf_counter()
        ft = self.finetune(pruned, pvars, os.path.join(rowdir, "finetune")) if self.args.finetune_steps else None
        acc2 = self.accuracy(pruned, ft, f"{key} finetuned") if ft is not None else None
        rec = {"model": self.args.model, "allocation": alloc, "target_macs_ratio": target, "macs_ratio": mr,
               "params_ratio": pr, "seed": seed, "acc_oneshot": acc1, "acc_finetuned": acc2,
               "finetune_steps": self.args.finetune_steps, "finetune_seconds": time.perf_counter() - t,
               "search_seconds": info.get("search_seconds"), "load_avg_at_start": load0,
               "keep": [int(k) for k in keep]}
        if info:
            # Search cost across resumes: precompute + the episodes' own time (a resumed search's
            # wall time covers only its last part).
            info["search_seconds"] = (info["timings"]["precompute"] + info["timings"]["per_episode"] * info["episodes"]
                                      + info["timings"]["rerank"])
            rec["search_seconds"] = info["search_seconds"]
            rec.update(episodes=info["episodes"], seconds_per_episode=info["timings"]["per_episode"],
                       precompute_seconds=info["timings"]["precompute"], reward_best=info["best"],
                       reward_references={k: {kk: v[kk] for kk in ("reward", "loss", "acc")}
                                          for k, v in info["references"].items()},
                       reward_images=info["reward_images"], hessian_images=info["hessian_images"],
                       chosen=info["chosen"], rerank=info["rerank"], rerank_seconds=info["timings"]["rerank"],
                       search_best_keep=info["allocations"]["search_best"])
            _write_json(os.path.join(rowdir, "curve.json"), info["curve"])
        _write_json(path, rec)
        print(f"{key}: macs {mr:.4f} one-shot {acc1:.4f} finetuned {acc2} search {rec['search_seconds']} "
              f"(load {machine.load_1min()})", flush=True)
        return rec


def report(args, rows: list[dict]) -> list[str]:
    """Save the run record (``OUT's folder/records/NAME.json``: command, machine, options and
    rows), the allocation and learning-curve figures, and the tables built from the record
    (:mod:`hobs_jax.experiments.studies.rspar_report`; ``rspar_fmnist`` itself is the
    catalog's 3-seed table, :mod:`hobs_jax.experiments.tables.catalog`)."""
    import jax

    from hobs_jax.experiments import studies
    from hobs_jax.rspar import allocation_record, save_allocation, save_learning_curve

    out = args.out
    folder, name = os.path.dirname(os.path.abspath(out)), os.path.basename(out)
    studies.save_record(name, {"command": args.command, "machine": machine.describe(), "jax": jax.__version__,
                               "propagate": args.propagate, "rerank": args.rerank,
                               "rerank_metric": args.rerank_metric, "device": machine.record()["device"],
                               "rows": rows}, folder)
    curves = {}
    for target in sorted({r["target_macs_ratio"] for r in rows}, reverse=True):
        rs = {r["allocation"] + (f"-s{r['seed']}" if r["allocation"].startswith("rspar") else ""): r
              for r in rows if r["target_macs_ratio"] == target}
        if not rs:
            continue
        first = next((r for k, r in sorted(rs.items()) if k.startswith("rspar-s")), None)
        allocs = {k: rs[k]["keep"] for k in ("uniform", "global") if k in rs}
        if first is not None:
            allocs = {"rspar": first["keep"], **allocs}
        imitate = rs.get("rspar-imitate-s0")
        if imitate is not None:
            allocs["rspar-imitate"] = imitate["keep"]
        sizes, gids = _groups(args)
        save_allocation(f"{out}_allocation_{target}",
                        allocation_record(gids, sizes, allocs, model=args.model, target=target),
                        title=f"{args.model}: keep ratio per group at {target} of the MACs")
        for k, r in sorted(rs.items()):
            cpath = os.path.join(args.workdir, f"{args.model}-{r['allocation']}-{target}-s{r['seed']}", "curve.json")
            if k.startswith("rspar") and os.path.exists(cpath):
                curves[f"{target} {k}"] = json.load(open(cpath))
    if curves:
        save_learning_curve(out + "_curve", curves, title=f"R-SPAR search on {args.model}")
    paths = render(out)  # rspar_fmnist itself: the catalog's 3-seed table of this record
    print("\n".join(paths))
    return paths


def render(out: str) -> list[str]:
    """The tables of ``OUT`` from its stored run record, nothing rerun (module doc)."""
    from hobs_jax.experiments.studies import rspar_report
    from hobs_jax.experiments.tables.catalog import ENTRIES, Run

    folder, name = os.path.dirname(os.path.abspath(out)), os.path.basename(out)
    if name in ENTRIES:
        return ENTRIES[name].make(Run(out=folder, records=os.path.join(folder, "records"), mode="records"))
    return rspar_report.render(out)


# model name -> (group sizes, group ids), read once from its checkpoint
_GROUPS: dict[str, tuple[list, list]] = {}


def _groups(args):
    if args.model not in _GROUPS:
        import hobs_jax
        from hobs_jax.methods import make_task
        model, variables, _ = hobs_jax.load(os.path.join(args.checkpoint_dir, f"{args.model}_fmnist"))
        task = make_task("magnitude", args.model, variables, target=0.5, input_shape=SHAPE)
        _GROUPS[args.model] = (task.cost.sizes.tolist(), list(task.cost.group_ids))
    return _GROUPS[args.model]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--targets", default="0.5,0.333")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--allocations", default="uniform,global,rspar",
                   help="also: rspar-imitate (R-SPAR with agent.imitate=500)")
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--lbound", type=float, default=0.1)
    p.add_argument("--calib_images", type=int, default=2048)
    p.add_argument("--reward_images", type=int, default=256)
    p.add_argument("--finetune_steps", type=int, default=200)
    p.add_argument("--rerank", type=int, default=10,
                   help="re-rank this many of the search's best allocations (plus uniform and global) on the "
                        "Hessian images; 0 = the search's best as is")
    p.add_argument("--rerank_metric", default="loss", choices=("loss", "acc"))
    p.add_argument("--imitate", type=int, default=None,
                   help="agent.imitate: behaviour-cloning steps toward the best allocation so far at the end "
                        "of the warm-up (default: the method's)")
    p.add_argument("--noise", type=float, default=None, help="agent.noise (default: the method's)")
    p.add_argument("--noise_decay", type=float, default=None, help="agent.noise_decay (default: the method's)")
    p.add_argument("--reuse_from", default="",
                   help="workdir whose uniform/global rows are reused after a verified rebuild")
    p.add_argument("--propagate", type=int, default=0,
                   help="H-OBS sequential refit sweeps for every allocation's final network "
                        "(the recorded rows: 0, i.e. per-group compensation only, which is also "
                        "what the R-SPAR reward models)")
    p.add_argument("--checkpoint_dir", default="checkpoints")
    p.add_argument("--workdir", default="runs/rspar_fmnist")
    p.add_argument("--out", default="docs/results/rspar_fmnist")
    p.add_argument("--report-only", action="store_true", help="rebuild the outputs from the workdir's cached rows")
    p.add_argument("--render-only", action="store_true",
                   help="rebuild the tables from the stored run record alone (OUT's folder/records/NAME.json)")
    args = p.parse_args(argv)
    if args.render_only:
        print("\n".join(render(args.out)))
        return
    args.command = "python benchmarks/rspar_fmnist.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    os.makedirs(args.workdir, exist_ok=True)
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    allocs = args.allocations.split(",")
    bench = None if args.report_only else Bench(args)
    rows = []
    for target in targets:
        for alloc in allocs:
            for seed in (seeds if alloc.startswith("rspar") else [0]):
                path = os.path.join(args.workdir, f"{args.model}-{alloc}-{target}-s{seed}", "row.json")
                if args.report_only:
                    if os.path.exists(path):
                        rows.append(json.load(open(path)))
                    continue
                rows.append(bench.row(alloc, target, seed))
                report(args, rows)
    report(args, rows)


if __name__ == "__main__":
    from hobs_jax import cli

    cli.run_job(main)
