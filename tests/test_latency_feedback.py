"""The measured latency loop (hobs_jax.allocation.feedback) on synthetic networks whose
measured time differs from the table's prediction the way real runtimes do."""

import json
import math
import os
import signal

import numpy as np
import pytest

from hobs_jax import interrupt
from hobs_jax.allocation.feedback import Round, meet_measured, next_asked
from hobs_jax.methods.measured import MeasureJournal, journaled


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


class _Plan:
    def __init__(self, widths):
        self.widths = widths

    def to_json(self):
        return json.dumps(self.widths)


class _Outcome:
    def __init__(self, widths):
        self.plan = _Plan(widths)


def _journaled_runtime(fail_at=None, signal_at=None):
    """A network of 64 channels whose allocation at ``asked`` keeps round(64 * asked)
    (the candidate's plan) and whose measured fraction is 0.15 + 0.85 * kept**0.8; the
    timing raises at round ``fail_at`` (a crash mid-timing) or sends this process
    SIGTERM during round ``signal_at``. ``timed`` lists the widths actually timed."""
    timed = []

    def allocate(asked):
        return _Outcome([round(64 * asked)])

    def measure(outcome):
        timed.append(outcome.plan.widths[0])
        if fail_at == len(timed):
            raise RuntimeError("the timing process died")
        if signal_at == len(timed):
            os.kill(os.getpid(), signal.SIGTERM)
        return 0.15 + 0.85 * (outcome.plan.widths[0] / 64) ** 0.8
    return allocate, measure, timed


def _loop(allocate, measure, path, setting=None):
    book = MeasureJournal(str(path), setting or {"runtime": "onnxruntime", "batch": 64})
    return meet_measured(allocate, journaled(measure, book), 0.5, tol=0.005, rounds=5)


@pytest.mark.parametrize("stop", ["sigterm", "crash"])
def test_an_interrupted_measured_loop_resumes_from_its_journal_and_ends_as_an_uninterrupted_one(tmp_path, stop):
    """SIGTERM during round 2: the round's timing finishes, is journaled, and the loop stops
    there (Interrupted); a crash during round 3 loses only that round. The rerun times none
    of the journaled rounds again and returns exactly the uninterrupted run's rounds."""
    allocate, measure, timed = _journaled_runtime()
    ref = _loop(allocate, measure, tmp_path / "ref.json")
    assert len(ref.rounds) >= 3 and len(set(timed)) == len(timed)  # three or more distinct candidates
    path = tmp_path / "journal.json"
    if stop == "sigterm":
        allocate, measure, timed = _journaled_runtime(signal_at=2)
        with interrupt.stop_signals(), pytest.raises(interrupt.Interrupted, match="after round 2 .* resumes"):
            _loop(allocate, measure, path)
        kept = 2
    else:
        allocate, measure, timed = _journaled_runtime(fail_at=3)
        with pytest.raises(RuntimeError, match="died"):
            _loop(allocate, measure, path)
        kept = 2
    assert len(json.loads(path.read_text())["measured"]) == kept
    allocate, measure, timed = _journaled_runtime()
    res = _loop(allocate, measure, path)
    assert res.rounds == ref.rounds and res.best == ref.best  # the same asks, measurements and choice
    assert len(timed) == len(ref.rounds) - kept  # the journaled rounds were replayed, not timed


def test_a_journal_from_other_timing_settings_is_set_aside_not_replayed(tmp_path):
    allocate, measure, timed = _journaled_runtime()
    path = tmp_path / "journal.json"
    first = _loop(allocate, measure, path)
    n = len(timed)
    _loop(allocate, measure, path, setting={"runtime": "xla", "batch": 64})
    assert len(timed) == 2 * n and (tmp_path / "journal.json.stale").exists()
    path.write_text("{not json")  # unreadable: timed again, then rewritten whole
    again = _loop(allocate, measure, path)
    assert len(timed) == 3 * n and again.rounds == first.rounds
    assert len(json.loads(path.read_text())["measured"]) == n


def test_a_candidate_that_misses_the_asked_fraction_of_the_table_is_refused_before_timing():
    """Each round's allocation must keep the fraction it was asked of the table (within the
    allocators' 1%): otherwise the loop would time it and correct an ask that steers nothing."""
    from hobs_jax.methods.measured import check_table_met

    class Table:  # time fraction = mean kept fraction of two 10-channel groups
        def ratio(self, keep):
            return float(np.mean(np.asarray(keep) / 10))

    check_table_met("rspar", Table(), [5, 5], 0.5)
    check_table_met("rspar", Table(), [5, 5], 0.504)
    with pytest.raises(ValueError, match=r"^rspar: its allocation keeps 0.7000 of the latency table where "
                                         r"0.5000 was asked"):
        check_table_met("rspar", Table(), [5, 9], 0.5)
