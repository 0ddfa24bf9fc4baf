"""Equal training budgets (hobs_jax.experiments.equal_budget): the fine-tuning a row gets
is the budget minus its method's own training, and a table refuses rows with different
budgets or too few seeds, in one line."""

import pytest

from hobs_jax.experiments.equal_budget import budget_steps, finetune_steps, summarize


def _row(method="jtp", seed=0, budget=1.0, final=0.9, target=0.5):
    return {"model": "resnet56", "method": method, "target_macs_ratio": target, "seed": seed,
            "budget_epochs": budget, "acc_dense": 0.95, "acc_bn_recalibrated": 0.8, "acc_final": final,
            "macs_ratio": 0.5, "params_ratio": 0.5, "method_training_steps": 470,
            "seconds": {"prune": 1.0, "method_training": 2.0, "finetune": 3.0}}


def test_budget_counts_the_methods_own_training():
    assert budget_steps(1.0) == 468 and budget_steps(2.5) == 1170
    assert finetune_steps(1.0, 0) == 468
    assert finetune_steps(1.0, 470 - 2) == 0
    with pytest.raises(ValueError, match=r"^jtp: its own training \(470 steps\) exceeds the budget of 1 epochs"):
        finetune_steps(1.0, 470, "jtp")
    with pytest.raises(ValueError, match="budget_epochs=0"):
        budget_steps(0)


def test_summary_mean_std_and_refusals():
    rows = [_row(seed=s, final=f) for s, f in ((0, 0.90), (1, 0.92), (2, 0.94))]
    (s,) = summarize(rows)
    assert s["acc_final_mean"] == pytest.approx(0.92) and s["acc_final_std"] == pytest.approx(0.02)
    assert s["seeds"] == [0, 1, 2] and s["seconds_mean"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"different budgets \[1.0, 2.0\]") as e:
        summarize(rows + [_row(method="hobs", budget=2.0)])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^hobs at 0.5: 2 seed\(s\) \[0, 1\]; a table with std needs at least 3"):
        summarize(rows + [_row(method="hobs", seed=0), _row(method="hobs", seed=1)])
