"""The measured latency loop (hobs_jax.allocation.feedback) on synthetic networks whose
measured time differs from the table's prediction the way real runtimes do."""

import math

import pytest

from hobs_jax.allocation.feedback import Round, meet_measured, next_asked


def _runtime(offset, power):
    """A 'network' whose measured fraction is offset + (1 - offset) * asked**power: a
    fixed cost the table does not see and a curvature it does not model."""
    calls = []

    def allocate(asked):
        calls.append(asked)
        return {"asked": asked}

    def measure(cand):
        return offset + (1 - offset) * cand["asked"] ** power
    return allocate, measure, calls


@pytest.mark.parametrize("offset,power", [(0.12, 1.0), (0.0, 0.7), (0.2, 0.8)])
def test_the_loop_lands_within_tolerance_where_the_table_alone_misses(offset, power):
    allocate, measure, calls = _runtime(offset, power)
    open_loop = measure(allocate(0.5))
    assert abs(open_loop / 0.5 - 1) > 0.1  # the table alone misses by more than 10%
    res = meet_measured(allocate, measure, 0.5, tol=0.03, rounds=5)
    assert res.met and abs(res.best.measured / 0.5 - 1) <= 0.03
    assert len(res.rounds) <= 5 and res.rounds[0].asked == 0.5
    assert res.candidate == {"asked": res.best.asked}


def test_an_exact_table_needs_one_round_and_the_best_round_is_kept():
    allocate, measure, calls = _runtime(0.0, 1.0)
    res = meet_measured(allocate, measure, 0.4)
    assert len(res.rounds) == 1 and res.met and calls == [0.4]
    # never within tolerance in 2 rounds: the closer of the two is returned
    res = meet_measured(lambda a: a, lambda c: 0.9, 0.5, rounds=2)
    assert not res.met and res.best.measured == 0.9 and len(res.rounds) == 2


def test_unreachable_asks_back_off_toward_the_last_reachable_one():
    def allocate(asked):
        if asked < 0.3:
            raise ValueError("latency target 0.25 is below the floor 0.3\nmore")
        return asked
    # measured = asked + 0.2: the first correction asks 0.5 * 0.5 / 0.7 = 0.357, reachable
    res = meet_measured(allocate, lambda a: a + 0.2 * (1 - a), 0.45, rounds=6, tol=0.02)
    assert res.met
    bad = meet_measured(allocate, lambda a: 2 * a, 0.35, rounds=4)
    assert any(r.error.startswith("latency target") and "\n" not in r.error for r in bad.rounds)
    assert bad.best.measured is not None


def test_secant_slope_is_clipped_and_bad_input_is_one_line():
    rounds = [Round(0.5, 0.60), Round(0.4, 0.599)]  # nearly flat: slope clipped to 0.25
    asked = next_asked(0.5, rounds, 0.02, 1.0)
    assert asked == pytest.approx(0.4 * math.exp(math.log(0.5 / 0.599) / 0.25))
    noisy = [Round(0.5, 0.60), Round(0.4, 0.62)]  # asked less, measured more: noise, not a slope
    assert next_asked(0.5, noisy, 0.02, 1.0) == pytest.approx(0.4 * 0.5 / 0.62)
    with pytest.raises(ValueError, match="kept time fraction"):
        meet_measured(lambda a: a, lambda c: c, 1.5)
    with pytest.raises(ValueError, match="must be > 0"):
        meet_measured(lambda a: a, lambda c: 0.0, 0.5)
    with pytest.raises(ValueError, match="no allocation reached"):
        meet_measured(lambda a: (_ for _ in ()).throw(ValueError("never")), lambda c: c, 0.5, rounds=2)
