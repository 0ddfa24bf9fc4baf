"""The R-SPAR comparison's tables (:mod:`hobs_jax.experiments.studies.rspar_fmnist`) through
:class:`~hobs_jax.experiments.table.ResultTable`, built from its run record without
rerunning anything: ``OUT/NAME.{json,md,tex}`` (allocations at each target: MACs, one-shot
and fine-tuned top-1, search cost; the reward-split figures as notes) and
``OUT/NAME_rerank.{json,md,tex}`` (the re-rank of the search's best allocations).

The run record is ``OUT/records/NAME.json``: ``{"command", "machine", "jax", "propagate",
"rerank", "rerank_metric", "rows"}`` as the study writes it, or the bare list of rows the
study wrote in 2026-11 (its provenance, as those reports recorded it, in :data:`LEGACY`).
The search's best reward per run comes from ``OUT/NAME_curve.json`` (the learning curves the
study saves next to the tables).
"""

from __future__ import annotations

import json
import os
import statistics

from hobs_jax.experiments.table import Column, ResultTable

LEGACY_MACHINE = "AMD EPYC, 2 cores (shared with other jobs; load average recorded per row)"
LEGACY = {
    "rspar_fmnist_v2": {
        "command": ('PYTHONPATH=. python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.5,0.333 --seeds '
                    '0,1,2 --allocations uniform,global,rspar --episodes 80 --warmup 20 --finetune_steps 200 '
                    '--workdir runs/rspar_fmnist_v2 --reuse_from runs/rspar_fmnist'),
        "rerank": 5,
        "preface": ('Earlier run (lbound 0.2, 80 episodes, re-rank of 5), kept because docs/rspar.md cites it. It '
                    'was docs/results/rspar_fmnist.md until the lbound 0.1 / 150-episode / re-rank-10 run replaced '
                    'that file.')},
    "rspar_fmnist_lbound0.1": {
        "command": ('PYTHONPATH=. python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.333,0.5 --seeds '
                    '0,1,2 --allocations uniform,global,rspar --episodes 80 --warmup 20 --lbound 0.1 '
                    '--finetune_steps 0 --workdir runs/rspar_fmnist_v2_lb01 --reuse_from runs/rspar_fmnist_v2 --out '
                    'docs/results/rspar_fmnist_lbound0.1'),
        "rerank": 5,
        "preface": ('')},
    "rspar_fmnist_choice_imitate": {
        "command": ('PYTHONPATH=. python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.333 --seeds 0 '
                    '--allocations rspar --episodes 150 --warmup 20 --lbound 0.1 --rerank 10 --imitate 500 --noise '
                    '0.2 --noise_decay 0.98 --finetune_steps 0 --workdir runs/rspar_fmnist_v3_explore/imitate --out '
                    'runs/rspar_fmnist_v3_explore/imitate/report'),
        "rerank": 10,
        "preface": ('Configuration-choice run (seed 0, 3x, one-shot), made after the v2 and lbound-0.1 results. The '
                    'choice between this and the other candidate (`rspar_fmnist_choice_noimitate.md`) used only the '
                    're-rank table (cross-entropy on the 1,792 Hessian images), not the test accuracy the script '
                    'also prints.')},
    "rspar_fmnist_choice_noimitate": {
        "command": ('PYTHONPATH=. python benchmarks/rspar_fmnist.py --model resnet56 --targets 0.333 --seeds 0 '
                    '--allocations rspar --episodes 150 --warmup 20 --lbound 0.1 --rerank 10 --imitate 0 --noise 0.5'
                    ' --noise_decay 0.95 --finetune_steps 0 --workdir runs/rspar_fmnist_v3_explore/noimitate --out '
                    'runs/rspar_fmnist_v3_explore/noimitate/report'),
        "rerank": 10,
        "preface": ('Configuration-choice run (seed 0, 3x, one-shot), made after the v2 and lbound-0.1 results. The '
                    'choice between this and the other candidate (`rspar_fmnist_choice_imitate.md`) used only the '
                    're-rank table (cross-entropy on the 1,792 Hessian images), not the test accuracy the script '
                    'also prints.')},
}

def record(data, name: str) -> dict:
    """The run record as a dict, with the provenance of a legacy (bare list) record filled in."""
    if isinstance(data, dict):
        return data
    if name not in LEGACY:
        raise ValueError(f"records/{name}.json is a bare list of rows with no provenance in rspar_report.LEGACY")
    return {"machine": LEGACY_MACHINE, "jax": "0.10.2", "propagate": 0, "rerank_metric": "loss", **LEGACY[name],
            "rows": data}


def _pm(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def _steps(rows) -> str:
    steps = sorted({int(r["finetune_steps"]) for r in rows if r.get("acc_finetuned") is not None})
    return " / ".join(str(s) for s in steps) or "0"


def tables(data, name: str, curves: dict | None = None) -> list[ResultTable]:
    """The allocations table and the re-rank table of one run record (module doc)."""
    from hobs_jax.experiments.records import LEGACY_DEVICE

    rec = record(data, name)
    rows = rec["rows"]
    for r in rows:  # search cost across resumes (rows cached by older runs held one call's wall time)
        if r.get("seconds_per_episode"):
            r["search_seconds"] = (r["precompute_seconds"] + r["seconds_per_episode"] * r["episodes"]
                                   + r.get("rerank_seconds", 0.0))
    ctx = {"dataset": "fashion_mnist", "split": "test", "device": rec.get("device", LEGACY_DEVICE)}
    key = f"{name}"
    src = {key: {"command": rec["command"], "machine": rec["machine"], "jax": rec.get("jax")}}
    model = rows[0]["model"] if rows else "?"
    desc = [rec["preface"]] if rec.get("preface") else []
    desc += [f"H-OBS sequential refit sweeps: {rec['propagate']} (0 = per-group compensation only, which is what "
             "the R-SPAR reward models; H-OBS with its default refit is in docs/results/oneshot_fmnist.md).",
             "Accuracies: test top-1 (%) on the 10,000 Fashion-MNIST test images; one-shot = after H-OBS "
             f"compensation and BN re-estimation, no training; fine-tuned = after {_steps(rows)} SGD steps (same "
             "recipe for every row; '-' = not fine-tuned). R-SPAR: mean ± std over seeds; uniform and global are "
             "deterministic (one row each)."]
    main = ResultTable(name, f"R-SPAR on Fashion-MNIST {model}", [
        Column("target_text", "target MACs"), Column("allocation", "allocation"), Column("n", "n", "int"),
        Column("macs_ratio", "MACs kept", "ratio", 4), Column("oneshot", "one-shot top-1", "pm"),
        Column("finetuned", "fine-tuned top-1", "pm"),
        Column("search_s", "search s (precompute + episodes + re-rank)", "float", 0),
        Column("spe", "s/episode", "float", 2), Column("episodes", "episodes", "int")], description=desc)
    for target in sorted({r["target_macs_ratio"] for r in rows}, reverse=True):
        for alloc in ("uniform", "global", "rspar", "rspar-imitate"):
            rs = [r for r in rows if r["target_macs_ratio"] == target and r["allocation"] == alloc]
            if not rs:
                continue
            srch = [r["search_seconds"] for r in rs if r.get("seconds_per_episode")]
            spe = [r["seconds_per_episode"] for r in rs if r.get("seconds_per_episode")]
            main.add({**ctx, "source": key, "model": model, "target": target, "target_text": str(target),
                      "allocation": alloc, "label": alloc, "n": len(rs),
                      "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs),
                      "oneshot": _pm([r["acc_oneshot"] for r in rs]),
                      "finetuned": _pm([r["acc_finetuned"] for r in rs]),
                      "search_s": statistics.mean(srch) if srch else None,
                      "spe": statistics.mean(spe) if spe else None, "episodes": rs[0].get("episodes")})
    main.note("Reward-split figures (the search's own objective, CE on the held-out calibration images; higher "
              "reward is better):")
    for r in rows:
        if r["allocation"].startswith("rspar"):
            refs = r.get("reward_references", {})
            curve = (curves or {}).get(f"{r['target_macs_ratio']} {r['allocation']}-s{r['seed']}") or [
                {"reward": float("nan")}]
            main.note(f"{r['allocation']} target {r['target_macs_ratio']} seed {r['seed']}: best reward "
                      f"{max(c['reward'] for c in curve):.4f} among the agent's episodes; overall "
                      f"{r['reward_best']['reward']:.4f} ({r['reward_best']['source']}); uniform "
                      f"{refs.get('uniform', {}).get('reward', float('nan')):.4f}, global "
                      f"{refs.get('global', {}).get('reward', float('nan')):.4f}; load avg {r['load_avg_at_start']}")
    rr = [r for r in rows if r.get("rerank")]
    main.note(f"Re-rank of the search's best allocations: `{name}_rerank.md`." if rr else "No re-rank in this run.")
    for target in sorted({r["target_macs_ratio"] for r in rows}, reverse=True):
        main.note(f"![allocation at {target}]({name}_allocation_{target}.png)")
    main.note(f"![learning curves]({name}_curve.png)")
    main.add_sources(src)

    rt = ResultTable(f"{name}_rerank", f"R-SPAR on Fashion-MNIST {model}: re-rank", [
        Column("target_text", "target"), Column("seed", "seed", "int"), Column("chosen", "chosen"),
        Column("search_reward", "its search reward", "float", 4), Column("its", "its Hessian-split CE / top-1"),
        Column("best", "search's best (CE / top-1 there)"), Column("global", "global (CE / top-1 there)"),
        Column("uniform", "uniform (CE / top-1 there)"), Column("candidates", "candidates", "int"),
        Column("rerank_s", "re-rank s", "float", 0)], iso_tolerance=None, description=[
            f"Re-rank (`--rerank {rec['rerank']}`, metric `{rec['rerank_metric']}`): the search's best distinct "
            "allocations by reward plus the uniform and global ones, evaluated on the "
            f"{rr[0]['rerank']['images'] if rr else '?'} Hessian calibration images (H-OBS never uses their labels; "
            "the search never saw them); the candidate with the best metric there is R-SPAR's allocation. A "
            "reference winning means R-SPAR returns exactly that allocation (a tie with it)."])

    def fmt(c):
        return f"{c['loss']:.4f} / {100 * c['acc']:.2f}" if c else None

    for r in rr:
        cs = {c["name"]: c for c in r["rerank"]["candidates"]}
        ch = cs[r["chosen"]]
        rt.add({**ctx, "source": key, "model": model, "target_text": str(r["target_macs_ratio"]), "seed": r["seed"],
                "chosen": r["chosen"], "search_reward": ch["search_reward"], "its": fmt(ch),
                "best": f"{r['reward_best']['source']}: {fmt(cs.get(r['reward_best']['source'])) or '-'}",
                "global": fmt(cs.get("global")), "uniform": fmt(cs.get("uniform")), "candidates": len(cs),
                "rerank_s": r["rerank_seconds"]})
    rt.add_sources(src)
    return [main, rt] if rr else [main]


def render(out: str) -> list[str]:
    """``OUT.{json,md,tex}`` (and ``OUT_rerank.*``) from ``OUT's folder/records/NAME.json``."""
    folder, name = os.path.dirname(os.path.abspath(out)), os.path.basename(out)
    path = os.path.join(folder, "records", f"{name}.json")
    if not os.path.exists(path):
        raise ValueError(f"no run record at {path}: run benchmarks/rspar_fmnist.py first")
    with open(path) as f:
        data = json.load(f)
    curves = None
    if os.path.exists(out + "_curve.json"):
        with open(out + "_curve.json") as f:
            curves = json.load(f)
    paths = []
    for t in tables(data, name, curves):
        paths += t.write(os.path.join(folder, t.name))
    return paths
