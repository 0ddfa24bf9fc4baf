"""TrainLoader/EvalLoader: determinism, epochs, host sharding, resume, exact-once eval."""

import numpy as np
import pytest

from hobs_jax.data import EvalLoader, LoaderPosition, TrainLoader, get_source

SRC = get_source("synthetic", image_shape=(8, 8, 1), num_classes=4, train_size=100,
                 test_size=50, augment=True)


def loader(seed=0, index=0, count=1, batch=16, prefetch=2):
    return TrainLoader(SRC, "train", batch, seed, process_index=index, process_count=count,
                       prefetch=prefetch)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_are_deterministic_given_the_seed():
    a, b, c = take(loader(0), 3), take(loader(0, prefetch=0), 3), take(loader(1), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert a[0]["image"].shape == (16, 8, 8, 1) and a[0]["label"].dtype == np.int32


def test_epochs_drop_the_remainder_and_reshuffle():
    it = loader(batch=16)
    assert it.steps_per_epoch == 6  # 100 // 16, the last 4 examples dropped
    ids = []
    for _ in range(12):
        next(it)
    assert it.position() == LoaderPosition(epoch=2, step=0)
    perm0 = it._indices(LoaderPosition(0, 0))
    perm1 = it._indices(LoaderPosition(1, 0))
    assert not np.array_equal(perm0, perm1)
    for s in range(6):
        ids.extend(it._indices(LoaderPosition(0, s)).tolist())
    assert len(set(ids)) == 96  # no example twice within an epoch


def test_host_shards_concatenate_to_the_single_host_batch():
    whole = take(loader(count=1), 2)
    parts = [take(loader(index=i, count=2), 2) for i in range(2)]
    for step in range(2):
        for key in ("image", "label"):
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, whole[step][key])
    assert parts[0][0]["image"].shape[0] == 8


def test_resume_from_a_position_gives_the_same_batches():
    it = loader()
    take(it, 5)
    pos = it.position().to_dict()
    expected = take(it, 4)
    resumed = loader()
    resumed.restore(pos)
    for x, y in zip(expected, take(resumed, 4)):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_bad_loader_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="batch_size=15 is not divisible by process_count=2"):
        loader(batch=15, count=2)
    with pytest.raises(ValueError, match=r'batch_size=500 must be in \[1, 100\]'):
        loader(batch=500)
    with pytest.raises(ValueError, match="out of range"):
        loader().restore({"epoch": 0, "step": 99})


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_counts_every_example_exactly_once(hosts):
    seen = []
    for h in range(hosts):
        ev = EvalLoader(SRC, "test", 16, process_index=h, process_count=hosts)
        assert len(ev) == 4  # ceil(50 / 16)
        for b, batch in enumerate(ev):
            assert batch["image"].shape[0] == 16 // hosts
            per = 16 // hosts
            ids = np.arange(b * 16 + h * per, b * 16 + (h + 1) * per)
            seen.extend(ids[batch["mask"]].tolist())
            if batch["mask"].any():
                _, labels = SRC.read("test", ids[batch["mask"]])
                np.testing.assert_array_equal(batch["label"][batch["mask"]], labels)
    assert sorted(seen) == list(range(50))
