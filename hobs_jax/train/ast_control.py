"""The PI controller of Adaptive Sparse Training: it moves the selection threshold so that
a target fraction of the scored samples (the activation rate) is back-propagated.

Plant and units. A candidate batch of B samples gets scores ``s_i`` (normalized to mean
~1, ``hobs_jax.train.ast_scores``); the samples with ``s_i > threshold`` are selected.
How the rate responds to the threshold depends on the shape of the score distribution:
a threshold step that moves the rate by 1 point on heavy-tailed losses moves it by 30
points when the scores bunch up (a nearly trained network, a synthetic task), and no
fixed gains serve both (fixed gains on the raw threshold ran into a period-2
oscillation on our synthetic test task). So the controller does not output the
threshold directly but a *level* ``q = sigmoid(u)``: the threshold is the ``1 - q``
quantile of a reference window of recent scores (the last ``REFERENCE_BATCHES``
candidate batches). Whatever the score distribution, a batch drawn like the reference
then has a rate of about ``q``: the plant is close to the identity, the gains are the
same for every score, model and target, and the batch-to-batch variation of the rate is
kept (a batch with many hard samples trains on more of them: this is threshold
selection, not a per-batch top-k). The integral absorbs what differs between the
reference and the current batches (scores shrink as training goes on).

Control law (positional PI on u = logit(q), bumpless start, anti-windup, clamping):

    ema_t = ema * rate_t + (1 - ema) * ema_{t-1}          (ema = weight of the newest batch)
    e_t   = clip(log(ema_t / target), -error_clip, error_clip)
    I_t   = I_{t-1} + e_t                                    (frozen while saturated, below)
    u_t   = clip(logit(target) - kp * e_t - ki * I_t, logit(target) +- LEVEL_SPAN)
    threshold_t = clip(quantile(reference, 1 - sigmoid(u_t)), THRESHOLD_MIN, THRESHOLD_MAX)

The level is clamped to within ``LEVEL_SPAN`` = 2 logit units of the target (odds off by
at most a factor of 7.4, e.g. a level in [1.5%, 45%] for a 10% target): the reference
window makes the needed level close to the target, and a tight clamp bounds how far
the integral can wind up.

The first controlled batch, whose reference is empty, is cut at its own ``1 - target``
quantile. Anti-windup: when the unclamped output lies beyond a clamp and the error
pushes it further out, the integral stops growing, so a long
saturation (scores that collapse for a while) does not wind up an integral that would
hold the level at the clamp long after the scores recover: while saturating, the
integral is set to the value that puts the output exactly on the clamp (no further), and
it is also bounded by the value that spans the clamp range. The original AST controller adds
``Kp * error + Ki * integral`` to a raw threshold in score units (Kp 0.0015, Ki 0.00005);
in our units those gains mean almost no feedback, and the reference window alone holds
the rate; ``benchmarks/ast_controller.py`` compares them with ours (docs/ast.md).

Everything here is host-side numpy: deterministic, and its state is a few floats plus the
reference window, which go into the training checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Threshold clamp, in units of the normalized score (mean ~1), and the level clamp.
THRESHOLD_MIN = 1e-6
THRESHOLD_MAX = 1e6
LEVEL_SPAN = 2.0
REFERENCE_BATCHES = 8


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """Gains and limits.

    Attributes:
      target: the activation rate to hold, in (0, 1).
      kp, ki: proportional and integral gains (logit of the level per unit of log-rate
        error).
      ema: weight of the newest batch's rate in the EMA, in (0, 1].
      error_clip: |e| bound (log units; 2 = a factor of 7.4 off target).
      anti_windup: conditional integration while saturated and the integral bound (off
        only to show what they prevent).
      level_span: the level clamp, in logit units around logit(target).
    """

    target: float
    kp: float
    ki: float
    ema: float
    error_clip: float = 2.0
    anti_windup: bool = True
    level_span: float = LEVEL_SPAN

    @property
    def u_min(self) -> float:
        return max(logit(self.target) - self.level_span, logit(1e-6))

    @property
    def u_max(self) -> float:
        return min(logit(self.target) + self.level_span, logit(1 - 1e-6)) if self.target < 1 \
            else logit(1 - 1e-6)

    @property
    def integral_max(self) -> float:
        """The integral that moves u across the whole clamp range (inf when ki == 0 or
        without anti-windup)."""
        return (self.u_max - self.u_min) / self.ki if self.ki > 0 and self.anti_windup \
            else math.inf


class ControllerState(NamedTuple):
    """integral: sum of errors; rate_ema; u: logit of the level; updates: batches
    controlled so far."""

    integral: float
    rate_ema: float
    u: float
    updates: int

    @property
    def level(self) -> float:
        """The fraction of the reference window above the threshold."""
        return sigmoid(self.u)

    def to_dict(self) -> dict:
        return dict(self._asdict())

    @classmethod
    def from_dict(cls, d: dict) -> ControllerState:
        return cls(float(d["integral"]), float(d["rate_ema"]), float(d["u"]), int(d["updates"]))


def start(cfg: ControllerConfig) -> ControllerState:
    """Bumpless start: level = target, integral 0, EMA = target."""
    return ControllerState(integral=0.0, rate_ema=float(cfg.target), u=logit(cfg.target),
                           updates=0)


def update(cfg: ControllerConfig, s: ControllerState, rate: float) -> ControllerState:
    """One control step after a batch whose activation rate was ``rate``."""
    ema = cfg.ema * float(rate) + (1.0 - cfg.ema) * s.rate_ema
    e = float(np.clip(math.log(max(ema, 1e-9) / cfg.target), -cfg.error_clip, cfg.error_clip))
    u0 = logit(cfg.target)
    integral = s.integral + e
    u = u0 - cfg.kp * e - cfg.ki * integral
    if cfg.anti_windup and ((u < cfg.u_min and e > 0) or (u > cfg.u_max and e < 0)):
        # Saturating: keep the integral no larger than what puts the output on the clamp.
        edge = cfg.u_min if u < cfg.u_min else cfg.u_max
        integral = (u0 - cfg.kp * e - edge) / cfg.ki if cfg.ki > 0 else s.integral
        u = edge
    integral = float(np.clip(integral, -cfg.integral_max, cfg.integral_max))
    u = float(np.clip(u, cfg.u_min, cfg.u_max))
    return ControllerState(integral, ema, u, s.updates + 1)


class Reference:
    """The last ``batches`` candidate batches' scores; the threshold is their quantile."""

    def __init__(self, batches: int = REFERENCE_BATCHES):
        self.batches = int(batches)
        self.window: list[np.ndarray] = []

    def push(self, scores: np.ndarray) -> None:
        self.window.append(np.asarray(scores, np.float64).copy())
        del self.window[:-self.batches]

    def threshold(self, level: float, fallback: np.ndarray) -> float:
        """The ``1 - level`` quantile of the window (of ``fallback`` while it is empty)."""
        ref = np.concatenate(self.window) if self.window else np.asarray(fallback, np.float64)
        t = float(np.quantile(ref, 1.0 - level))
        return float(np.clip(t, THRESHOLD_MIN, THRESHOLD_MAX))

    def sample_threshold(self, level: float, fallback: np.ndarray, floor: float) -> float:
        """The score tau at which :func:`sample_probabilities` selects a ``level`` fraction of
        the window (of ``fallback`` while it is empty) on average: the soft counterpart of
        :meth:`threshold`, so the controller's plant stays close to the identity.

        The mean probability falls monotonically in tau, from 1 to ``floor``; a level at or
        below the floor gets the largest tau (THRESHOLD_MAX)."""
        ref = np.concatenate(self.window) if self.window else np.asarray(fallback, np.float64)
        if level <= floor:
            return THRESHOLD_MAX
        lo, hi = math.log(THRESHOLD_MIN), math.log(THRESHOLD_MAX)
        for _ in range(60):  # bisection on log tau: 60 halvings of a 28-unit interval
            mid = 0.5 * (lo + hi)
            if sample_probabilities(ref, math.exp(mid), floor).mean() > level:
                lo = mid
            else:
                hi = mid
        return float(math.exp(0.5 * (lo + hi)))

    def to_list(self) -> list[np.ndarray]:
        return list(self.window)

    def load(self, arrays: list[np.ndarray]) -> None:
        self.window = [np.asarray(a, np.float64) for a in arrays][-self.batches:]


def sample_probabilities(scores: np.ndarray, tau: float, floor: float) -> np.ndarray:
    """Selection probabilities of soft AST (``train.ast.selection='sample'``):
    p_i = clip(s_i / tau, floor, 1). A sample scoring above tau is always trained on, one
    below it with a probability proportional to its score, and every sample keeps at least
    ``floor``, so the importance weight target / p_i is bounded by target / floor.

    Proportional sampling with 1/p weights is importance sampling of the gradient
    (Katharopoulos & Fleuret, "Not All Samples Are Created Equal", ICML 2018; the
    last-layer gradient norm of ``score='loss_grad'`` is their upper bound): unlike the hard
    threshold, which trains only on the hardest samples (a biased gradient that favours
    persistently misclassified ones), the weighted batch's expected gradient is the full
    data's."""
    s = np.asarray(scores, np.float64)
    return np.clip(s / float(tau), float(floor), 1.0)


class PinGuard:
    """Detects a diverged controller: the rate pinned at 0 or at 1 for ``window`` batches
    in a row (``window`` = one epoch of candidate batches)."""

    def __init__(self, window: int, zeros: int = 0, ones: int = 0):
        self.window, self.zeros, self.ones = int(window), int(zeros), int(ones)

    def observe(self, rate: float) -> str:
        """'' normally; 'pinned at 0' / 'pinned at 1' once a whole window was pinned."""
        self.zeros = self.zeros + 1 if rate <= 0.0 else 0
        self.ones = self.ones + 1 if rate >= 1.0 else 0
        if self.zeros >= self.window:
            return "pinned at 0"
        if self.ones >= self.window:
            return "pinned at 1"
        return ""

    def reset(self) -> None:
        self.zeros = self.ones = 0


# -------------------------------------------------------------------------------------
# Closed-loop simulation on a synthetic score stream (gain checks, tuning, tests).

ScoreStream = Callable[[int, np.random.Generator, int], np.ndarray]


def lognormal_stream(sigma: float = 1.0, drift: float = 0.0) -> ScoreStream:
    """Scores ``exp(sigma * N(0, 1) - drift * t)`` (``drift`` > 0: scores shrink as training
    goes on, as losses do; the normalization by the running mean removes a pure scale
    drift, the controller has to follow what is left)."""

    def draw(t: int, rng: np.random.Generator, batch: int) -> np.ndarray:
        return np.exp(sigma * rng.standard_normal(batch) - drift * t)

    return draw


def simulate(cfg: ControllerConfig, stream: ScoreStream, steps: int, batch: int, *,
             seed: int = 0, targets: Callable[[int], float] | None = None,
             mean_ema: float = 0.1) -> dict[str, np.ndarray]:
    """Runs the controller in closed loop on ``stream`` exactly as the selector does (scores
    normalized by their running mean, threshold from the reference window).

    Args:
      cfg: the controller; ``targets(t)`` may change the target over time (step response).
      stream: ``f(t, rng, batch) -> scores [batch]``.
      steps: candidate batches.
      batch: samples per batch.
    Returns:
      {'threshold', 'rate', 'ema', 'target'}: float arrays [steps].
    """
    rng = np.random.default_rng(seed)
    out = {k: np.zeros(steps) for k in ("threshold", "rate", "ema", "target")}
    state, mean, ref = None, None, Reference()
    for t in range(steps):
        target = cfg.target if targets is None else targets(t)
        c = dataclasses.replace(cfg, target=target)
        raw = stream(t, rng, batch)
        mean = raw.mean() if mean is None else mean_ema * raw.mean() + (1 - mean_ema) * mean
        scores = raw / max(mean, 1e-12)
        if state is None:
            state = start(c)
        threshold = ref.threshold(state.level, scores)
        rate = float(np.mean(scores > threshold))
        ref.push(scores)
        out["threshold"][t], out["rate"][t], out["target"][t] = threshold, rate, target
        state = update(c, state, rate)
        out["ema"][t] = state.rate_ema
    return out


def check_gains(cfg: ControllerConfig, batch: int, *, steps: int = 600) -> str:
    """'' if the gains hold the rate on the reference plant (lognormal(1) scores), else why not.

    The run fails when, over its last third, most batches are saturated (rate exactly 0
    or 1: bang-bang or pinned), the rate oscillates (its batch-to-batch spread exceeds
    2.5x the binomial sampling noise ``sqrt(r (1 - r) / B)``, which a well-tuned loop
    stays near: 1.0x for the defaults) or the mean rate is off target by more than 50%
    (relative) and 2 points. Used by the config validation to refuse gains that diverge before any
    compute (the selector also watches the real rate at run time: ``PinGuard``).
    """
    if cfg.target >= 1.0:
        return ""
    sim = simulate(cfg, lognormal_stream(1.0), steps, batch)
    tail = sim["rate"][-steps // 3:]
    saturated = float(np.mean((tail <= 0.0) | (tail >= 1.0)))
    if saturated > 0.5:
        return (f"the rate is pinned at 0 or 1 in {saturated:.0%} of the batches on the "
                f"reference plant (lognormal scores)")
    spread = float(tail.std()) / math.sqrt(cfg.target * (1 - cfg.target) / batch)
    if spread > 2.5:
        return (f"the rate oscillates on the reference plant (lognormal scores): its "
                f"batch-to-batch spread is {spread:.1f}x the sampling noise")
    dev = abs(float(tail.mean()) - cfg.target)
    if dev > max(0.5 * cfg.target, 0.02):
        return (f"the rate settles at {tail.mean():.3f} instead of {cfg.target} on the "
                f"reference plant (lognormal scores)")
    return ""
