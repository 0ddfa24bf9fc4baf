"""The experiments package's rules on fabricated rows (no compute): a table never mixes
splits or devices, iso-MACs misses are refused and listed, tables round-trip through JSON,
a sweep with a bad model, method or target fails in one line before anything runs, and the
stability table reports mean, std and a paired test over seeds."""

import pytest

from hobs_jax.experiments import readme
from hobs_jax.experiments.sweep import Sweep, plan
from hobs_jax.experiments.table import Column, ResultTable
from hobs_jax.experiments.tables import stability

CTX = {"dataset": "fashion_mnist", "split": "test", "device": "cpu:test:avx2"}


def _table():
    return ResultTable("t", "a table", [Column("label", "method"), Column("acc", "top-1", kind="pct")])


@pytest.mark.parametrize("key, value", [("split", "validation"), ("device", "gpu:H100")])
def test_a_table_refuses_rows_of_another_split_or_device(key, value):
    t = _table()
    t.add(dict(CTX, label="a", acc=0.9))
    with pytest.raises(ValueError, match=f"has {key}={value!r} but the table holds"):
        t.add(dict(CTX, label="b", acc=0.8, **{key: value}))


def test_a_row_off_its_macs_target_by_more_than_1_percent_is_refused_and_listed(tmp_path):
    t = _table()
    assert t.add(dict(CTX, label="on", acc=0.9, target=0.5, macs_ratio=0.504))
    assert not t.add(dict(CTX, label="off", acc=0.95, target=0.5, macs_ratio=0.52))
    assert [r["label"] for r in t.rows] == ["on"] and "iso-MACs" in t.refused[0]["refused"]
    t.write(str(tmp_path / "t"))
    back = ResultTable.read(str(tmp_path / "t.json"))
    assert [r["label"] for r in back.rows] == ["on"] and back.refused[0]["label"] == "off"
    md = (tmp_path / "t.md").read_text()
    assert "Refused" in md and "off" in md and (tmp_path / "t.tex").exists()


@pytest.mark.parametrize("kw, why", [(dict(models=("resnet21",)), "resnet21"),
                                     (dict(variants=("hobz",)), "hobz"),
                                     (dict(targets=(1.5,)), "target 1.5")])
def test_a_bad_sweep_fails_in_one_line_before_any_run(tmp_path, kw, why):
    s = dict(name="s", models=("resnet20",), variants=("hobs",), targets=(0.5,), workdir=str(tmp_path))
    s.update(kw)
    with pytest.raises(ValueError, match=why) as e:
        plan(Sweep(**s))
    assert "\n" not in str(e.value) and not any(tmp_path.iterdir())


def test_a_sweep_takes_a_module_of_ones_own_by_import_path(tmp_path):
    (row,) = plan(Sweep("own", models=("hobs_jax.testing.nets:ConvNeXtTiny",), variants=("hobs",),
                        targets=(0.5,), workdir=str(tmp_path)))
    assert row.config.model.import_path == "hobs_jax.testing.nets:ConvNeXtTiny"
    assert row.model == "hobs_jax.testing.nets:ConvNeXtTiny" and ":" not in row.workdir
    (zoo_row,) = plan(Sweep("zoo", models=("resnet20",), variants=("hobs",), targets=(0.5,), workdir=str(tmp_path)))
    assert zoo_row.config.model.import_path == "" and zoo_row.config.model.name == "resnet20"


@pytest.mark.parametrize("model, why", [("hobs_jax.testing.nets:Nope", "has no 'Nope'"),
                                        ("hobs_jax.testing.nets:jnp", "not a class"),
                                        ("collections:OrderedDict", "not a flax.linen or flax.nnx module"),
                                        ("convnext_tinyy", "neither a zoo model")])
def test_a_sweep_model_that_is_neither_zoo_nor_module_fails_in_one_line(tmp_path, model, why):
    with pytest.raises(ValueError, match=why) as e:
        plan(Sweep("s", models=(model,), variants=("hobs",), targets=(0.5,), workdir=str(tmp_path)))
    assert "\n" not in str(e.value) and model in str(e.value)


def test_stability_reports_mean_std_and_a_paired_test_over_seeds():
    rows = [dict(CTX, model="resnet20", target=0.5, label=m, method=m, seed=s, macs_ratio=0.5,
                 acc_oneshot=acc, acc_bn_recalibrated=acc)
            for m, accs in (("hobs", (0.92, 0.93, 0.925)), ("magnitude", (0.85, 0.87, 0.86)))
            for s, acc in enumerate(accs)]
    t = stability.build("stab", "stability", rows)
    by = {r["label"]: r for r in t.rows}
    assert by["hobs"]["n"] == 3 and by["hobs"]["acc_bn_ms"]["mean"] == pytest.approx(0.925)
    assert by["magnitude"]["acc_bn_ms"]["std"] == pytest.approx(0.01)
    (test,) = t.meta["paired_tests"]
    assert (test["a"], test["b"]) == ("hobs", "magnitude") and 0 < test["p"] < 0.05
    line = readme.say_stability(t)
    assert "hobs 92.50% ± 0.50 pts (n=3)" in line and "hobs vs magnitude: p = " in line


def test_measurement_kinds_keep_significant_digits_and_millisecond_precision():
    sig, ms = Column("x", "x", "sig", 3), Column("t", "t", "ms")
    assert [sig.format(v) for v in (0.04341, 4.02, 58.44, 1020.4, None)] == ["0.0434", "4.02", "58.4", "1,020", "-"]
    assert [ms.format(v) for v in (1.3971, 36.64, 1244.06)] == ["1.397", "36.6", "1244.1"]
    with pytest.raises(ValueError, match="kind='sigfig'"):
        Column("x", "x", "sigfig")


def test_ablation_pairs_average_seeds_and_give_the_paired_spread_of_the_gain():
    from hobs_jax.experiments.tables import ablation

    def row(label, seed, acc):
        return dict(CTX, model="resnet20", target=0.5, macs_ratio=0.5, label=label, seed=seed,
                    acc_oneshot=acc, budgets=[])

    rows = [row("with", 0, 0.90), row("with", 1, 0.92), row("without", 0, 0.80), row("without", 1, 0.80),
            row("without", 2, 0.70)]  # seed 2 has no partner: in the mean, not in the paired spread
    t = ablation.build("abl", "ablation", rows, [ablation.Pair("m", "with", "without")])
    (r,) = t.rows
    assert r["n"] == 2 and r["acc_with"] == pytest.approx(0.91) and r["acc_without"] == pytest.approx(0.7667, abs=1e-4)
    assert r["delta_std"] == pytest.approx(2 ** 0.5)  # stdev of +10 and +12 points
    one = ablation.build("abl", "ablation", rows[:1] + rows[2:3], [ablation.Pair("m", "with", "without")])
    assert one.rows[0]["delta_std"] is None  # one seed: no spread
