"""The network and the table of the Fashion-MNIST study outside the zoo
(hobs_jax.experiments.studies.anymodel_fmnist, docs/results/anymodel_fmnist.md)."""

import jax
import jax.numpy as jnp
import pytest

from hobs_jax import graph as G
from hobs_jax import macs, methods
from hobs_jax.experiments.studies import anymodel_fmnist as study
from hobs_jax.testing.init import random_linen
from hobs_jax.testing.nets import DenseNetFM

SHAPE = (1, 28, 28, 1)


@pytest.mark.slow
def test_densenet_fm_prunes_to_half_the_macs_as_a_smaller_network():
    """Concatenation growth with literal widths: magnitude to half the MACs gives a network
    of smaller arrays whose MACs meet the target within 1% and whose own __call__ runs."""
    model = DenseNetFM()
    variables = random_linen(model, SHAPE, seed=0)
    dense = G.prunable(model, variables, SHAPE)
    assert macs.count(dense).macs == 8_089_104 and macs.count(dense).params == 85_850
    r = methods.prune("magnitude", model, variables, target=0.5, input_shape=SHAPE)
    assert abs(r.macs_ratio / 0.5 - 1) <= 0.01, r.macs_ratio
    # several producers of one concatenation feed each later conv of a block
    assert sum(len(g.members) > 4 for g in r.task.graph.prunable) >= 3
    small = r.prunable
    assert macs.count(small).params < 0.6 * 85_850
    out = small.module.apply(small.variables, jnp.zeros((2,) + SHAPE[1:]))
    assert out.shape == (2, 10) and bool(jnp.isfinite(out).all())
    assert jax.tree.leaves(small.variables["params"])[0].size <= jax.tree.leaves(variables["params"])[0].size


def _rows(hobs_bn: float, dense: float = 0.9, miss: float = 0.0) -> list[dict]:
    ctx = {"model": "m", "kind": "linen", "kwargs": {}, "dataset": "fashion_mnist", "split": "test",
           "device": "cpu:x:avx2", "source": "s"}
    rows = [dict(ctx, row="dense", macs=100, params=10, macs_ratio=1.0, params_ratio=1.0, top1_oneshot=dense,
                 train_epochs=4.0, train_steps=1872, train_seconds=1500.0, train_images_per_s=160.0)]
    for row, one, bn, ft in (("hobs", 0.5, hobs_bn, 0.88), ("magnitude-global", 0.3, 0.6, 0.86),
                             ("magnitude-uniform", 0.2, 0.7, None)):
        rows.append(dict(ctx, row=row, target=0.5, macs_ratio=0.5 * (1 + (miss if row == "hobs" else 0)),
                         params_ratio=0.5, prune_seconds=1.0, calibration_images=1024, top1_oneshot=one,
                         top1_bn=bn, top1_ft=ft, finetune_epochs=0.25 if ft is not None else None))
    return rows


def test_table_states_the_goals_from_the_rows():
    t = study.table(_rows(hobs_bn=0.8), {"s": {"command": "python benchmarks/anymodel_fmnist.py"}})
    assert [r["row"] for r in t.rows] == ["hobs", "magnitude-global", "magnitude-uniform"]
    goals = {g.text: g.met for g in t.goals}
    assert goals["dense network >= 88% test top-1"] is True
    assert goals["H-OBS keeps more top-1 than the best magnitude row one-shot"] is True
    assert goals["H-OBS keeps more top-1 than the best magnitude row after BN re-estimation"] is True
    md = t.to_markdown()
    assert "| hobs | 0.5000 | 0.5000 | **50.00** | **80.00** | **88.00** | 1 |" in md
    assert "| magnitude-uniform | 0.5000 | 0.5000 | 20.00 | 70.00 | - | 1 |" in md
    assert "1872 steps of 128" in md and "Dense: 90.00% top-1" in md
    assert t.meta["dense"]["top1_oneshot"] == 0.9
    assert "H-OBS one-shot is 40.00 points below the dense network (10.00 after BN re-estimation)." in t.notes
    assert "Fine-tuning gains: hobs +8.00 points, magnitude-global +26.00 points from the re-estimated network." \
        in t.notes
    assert "H-OBS one-shot (50.00%) is below the best other fine-tuned row (magnitude-global 86.00%)." in t.notes


def test_table_reports_a_loss_and_refuses_a_missed_target():
    t = study.table(_rows(hobs_bn=0.65, dense=0.85), {})
    goals = {g.text: g.met for g in t.goals}
    assert goals["dense network >= 88% test top-1"] is False
    assert goals["H-OBS keeps more top-1 than the best magnitude row after BN re-estimation"] is False
    t = study.table(_rows(hobs_bn=0.8, miss=0.02), {})
    assert [r["row"] for r in t.refused] == ["hobs"] and "iso-MACs" in t.refused[0]["refused"]
    assert not any(g.text.startswith("H-OBS") for g in t.goals)  # no H-OBS row to compare


def test_unknown_model_is_refused_in_one_line():
    with pytest.raises(SystemExit, match=r"unknown --model 'nope'; use one of \[.*\] or an import path"):
        study._network("nope", {}, 0)
    with pytest.raises(ValueError, match=r"import path 'hobs_jax.testing.nets:Nope': hobs_jax.testing.nets "
                                         r"has no 'Nope'"):
        study._network("hobs_jax.testing.nets:Nope", {}, 0)
