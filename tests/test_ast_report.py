"""The AST results page's goals: which scores they are about, and the comparisons."""

from hobs_jax.experiments import ast_report


def _row(mode, score, rate, acc, seed=0, **kw):
    return {"model": "m", "task": "finetune", "mode": mode, "score": score, "target_rate": rate,
            "seed": seed, "acc_top1": acc, "acc_top5": 0.99, "wall_seconds": 10.0 if mode != "full" else 40.0,
            "cpu_seconds": None, "achieved_rate": rate, **kw}


def test_goals_are_about_the_score_swept_over_rates_and_fall_back_to_the_loss_scores():
    rows = [_row("full", None, 1.0, 0.93), _row("random", None, 0.1, 0.929), _row("random", None, 0.2, 0.931),
            _row("ast", "reducible:cb+soft", 0.1, 0.930), _row("ast", "reducible:cb+soft", 0.2, 0.930),
            _row("ast", "loss", 0.1, 0.90)]  # an ablation row: one rate
    rows = ast_report.with_speedups(rows)
    assert ast_report._goal_scores(rows, "finetune") == {"reducible:cb+soft"}
    goals, notes = ast_report._goals(rows)
    assert [g[0].split(":")[0] for g in goals] == ["finetune, AST (reducible", "finetune, AST (reducible"]
    assert "finetune, rate 0.1: AST (reducible:cb+soft) 93.00% beats random 92.90%" in notes
    assert "finetune, rate 0.2: AST (reducible:cb+soft) 93.00% loses to random 93.10%" in notes
    assert not any("AST 90.00%" in n for n in notes)  # the ablation is compared in its own table
    one_rate = [r for r in rows if r["target_rate"] != 0.2]
    assert ast_report._goal_scores(one_rate, "finetune") == {"loss"}  # older pages: unchanged


def test_a_record_from_another_machine_is_refused_before_any_row_is_computed(tmp_path):
    """A row made here could never be tabulated beside rows timed on another CPU (the
    table refuses the mix), so adding one is refused up front instead of after the run."""
    import json

    import pytest

    from hobs_jax.experiments import ast_fmnist

    sched = ast_fmnist.Schedule()
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "page.json").write_text(json.dumps(
        {"rows": [{"schedule_key": sched.key(), "device": "CPU A, AVX-512"}]}))
    store = ast_fmnist.Store(str(tmp_path / "page"), sched, "cmd")
    store.check_device("CPU A, AVX-512", "page")
    with pytest.raises(ValueError, match=r"^--out=page: its record holds rows measured on 'CPU A, AVX-512', not on "
                                         r"this machine \('CPU B, AVX2'\)"):
        store.check_device("CPU B, AVX2", "page")
