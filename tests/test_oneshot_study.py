"""The one-shot study's row names and fine-tuning recipes (no pruning, no training)."""

import pytest

from hobs_jax.experiments.studies.oneshot_fmnist import Bench, parse_row
from hobs_jax.experiments.studies.oneshot_report import RESNET_RECIPE, description, recipe_text


def test_row_names_parse_to_methods_allocations_options_and_quanta():
    assert parse_row("tp-l1-global") == {"framework": "torch-pruning", "kind": "l1", "global": True}
    r = parse_row("udfc-uniform@compensate=false")
    assert r["method"] == "udfc" and r["options"] == {"compensate": False, "allocation": "uniform"}
    assert "round_to" not in parse_row("hobs")
    assert parse_row("hobs#8")["round_to"] == 8
    assert parse_row("magnitude-global#16")["options"] == {"allocation": "global"}


@pytest.mark.parametrize("row,match", [
    ("hobs#x", r"'#Q' aligns every kept width to a multiple of Q"),
    ("hobs#0", r"'#Q' aligns"),
    ("tp-l1", r"use tp-CRITERION-local or tp-CRITERION-global"),
    ("hobs@nosuchoption=1", r"has no option 'nosuchoption'"),
    ("hobs-sideways", r"'-sideways' is not an allocation"),
])
def test_bad_row_names_are_one_line_errors(row, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_row(row)
    assert "\n" not in str(e.value)


def test_each_model_fine_tunes_with_its_own_config_recipe():
    resnet = Bench.recipe_of("configs", "resnet56")
    vit = Bench.recipe_of("configs", "vit_tiny_p4")
    assert recipe_text(resnet) == RESNET_RECIPE  # the committed tables' wording
    assert vit.optimizer == "adamw" and recipe_text(vit).startswith("AdamW, lr 0.0001")
    one = description({"resnet56": recipe_text(resnet)})[0]
    assert f"one recipe for every row ({RESNET_RECIPE})" in one
    both = description({"resnet56": recipe_text(resnet), "vit_tiny_p4": recipe_text(vit)})[0]
    assert "resnet56: SGD" in both and "vit_tiny_p4: AdamW" in both


def test_method_training_dir_takes_methods_with_nested_options(tmp_path):
    """R-SPAR's options hold a nested section (its agent): the shared method-training folder
    is still named by a digest of every option but the allocation's."""
    import types

    bench = types.SimpleNamespace(args=types.SimpleNamespace(workdir=str(tmp_path)))
    a = Bench.method_training_dir(bench, "resnet20", parse_row("rspar"))
    b = Bench.method_training_dir(bench, "resnet20", parse_row("depgraph-global"))
    assert a.startswith(str(tmp_path / "method_training" / "resnet20" / "rspar-"))
    assert a != b and Bench.method_training_dir(bench, "resnet20", parse_row("rspar")) == a
