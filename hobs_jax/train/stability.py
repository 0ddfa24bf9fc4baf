"""Training stability monitor: NaN/Inf skips, loss spikes, and a stability score.

The train step itself skips any update whose loss or gradients are not finite (params,
BatchNorm statistics and optimizer state are kept; an optax ``apply_if_finite`` wrapper
could not protect the BatchNorm statistics, which the forward pass updates). This module
is the host side: it sees one (loss, finite) pair per step and decides.

Events:
  * 'nan': the step was not finite (already skipped on device);
  * 'spike': loss > ``spike_factor`` x median of the last ``window`` good losses, and
    log(loss / median) > ``spike_sigmas`` x the window's robust spread of log-losses
    (1.4826 x their median absolute deviation), only once the window is full. The second
    test keeps ordinary minibatch noise from counting as a spike when the loss is low: a
    fine-tuned network's batch losses near 0.07 often reach 3-7x their median (seen in
    DepGraph's sparse phase on ResNet-56, where the first rule alone rolled the run back
    nine times and cut its lr to 1/512). For a steady window (spread 0) it is the first
    rule alone. On a spike the loop rolls back to the last checkpoint, keeps the data
    iterator moving forward (the batches that led to the spike are not replayed) and
    multiplies the learning-rate scale by ``lr_decay`` (0.5: halves it).
After ``max_consecutive_events`` events in a row the run stops with
:class:`StabilityError` instead of looping.

Score (logged and returned by ``fit``)::

  event_free = 1 - (nan_events + spike_events) / steps
  smoothness = exp(-mean_t |log L_t - log L_{t-1}|)     over consecutive good steps
  stability_score = event_free * smoothness            (in [0, 1], 1 = perfectly calm)

smoothness is 1 for a flat curve and 0.5 when the loss changes by a factor of 2 per step
on average; ordinary minibatch noise gives about 0.8-0.95.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any


class StabilityError(RuntimeError):
    """Training produced too many consecutive NaN/spike events."""


@dataclasses.dataclass(frozen=True)
class StabilityConfig:
    spike_factor: float = 3.0
    window: int = 50
    max_consecutive_events: int = 5
    lr_decay: float = 0.5
    spike_sigmas: float = 6.0

    @classmethod
    def from_config(cls, c: Any) -> StabilityConfig:
        return cls(float(c.spike_factor), int(c.window), int(c.max_consecutive_events),
                   float(c.lr_decay), float(c.get("spike_sigmas", cls.spike_sigmas)))


@dataclasses.dataclass(frozen=True)
class StabilityState:
    """Host-side monitor state (JSON-serializable, saved in every checkpoint).

    Attributes:
      window: the last ``window`` good losses (oldest first).
      steps: steps observed.
      nan_events, spike_events: event counts.
      consecutive: events since the last good step.
      lr_scale: current learning-rate multiplier.
      abs_dlog_sum, dlog_count: running sum/count of |log L_t - log L_{t-1}|.
      last_log_loss: log of the last good loss (None before the first).
      last_event: '' or a description of the last event (for the error message).
    """

    window: tuple[float, ...] = ()
    steps: int = 0
    nan_events: int = 0
    spike_events: int = 0
    consecutive: int = 0
    lr_scale: float = 1.0
    abs_dlog_sum: float = 0.0
    dlog_count: int = 0
    last_log_loss: float | None = None
    last_event: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StabilityState:
        d = dict(d)
        d["window"] = tuple(float(x) for x in d["window"])
        return cls(**d)


def observe(state: StabilityState, step: int, loss: float, finite: bool,
            cfg: StabilityConfig) -> tuple[StabilityState, str]:
    """Updates the monitor with one step's loss; returns (state, 'ok'|'nan'|'spike')."""
    steps = state.steps + 1
    if not finite or not math.isfinite(loss):
        return dataclasses.replace(
            state, steps=steps, nan_events=state.nan_events + 1,
            consecutive=state.consecutive + 1,
            last_event=f"non-finite loss/gradients at step {step}"), "nan"
    if len(state.window) >= cfg.window:
        median = statistics.median(state.window)
        if loss > cfg.spike_factor * median and _log_excess(state.window, loss) > cfg.spike_sigmas * _log_spread(
                state.window):
            return dataclasses.replace(
                state, steps=steps, spike_events=state.spike_events + 1,
                consecutive=state.consecutive + 1, lr_scale=state.lr_scale * cfg.lr_decay,
                last_event=(f"loss spike at step {step}: {loss:.4g} > {cfg.spike_factor:g} x "
                            f"median {median:.4g}")), "spike"
    log_loss = math.log(max(loss, 1e-30))
    dsum, dcount = state.abs_dlog_sum, state.dlog_count
    if state.last_log_loss is not None:
        dsum, dcount = dsum + abs(log_loss - state.last_log_loss), dcount + 1
    return dataclasses.replace(
        state, window=(state.window + (float(loss),))[-cfg.window:], steps=steps,
        consecutive=0, abs_dlog_sum=dsum, dlog_count=dcount, last_log_loss=log_loss), "ok"


def _log_spread(window: tuple[float, ...]) -> float:
    """1.4826 x the median absolute deviation of the window's log-losses (a robust
    standard deviation; 0 for a steady window)."""
    logs = [math.log(max(x, 1e-30)) for x in window]
    m = statistics.median(logs)
    return 1.4826 * statistics.median(abs(x - m) for x in logs)


def _log_excess(window: tuple[float, ...], loss: float) -> float:
    """log(loss) minus the median of the window's log-losses."""
    return math.log(max(loss, 1e-30)) - statistics.median(math.log(max(x, 1e-30)) for x in window)


def check(state: StabilityState, cfg: StabilityConfig) -> None:
    """Raises a one-line StabilityError after ``max_consecutive_events`` events in a row."""
    if state.consecutive >= cfg.max_consecutive_events:
        raise StabilityError(
            f"training is unstable: {state.consecutive} consecutive events "
            f"(max_consecutive_events={cfg.max_consecutive_events}), last: {state.last_event}; "
            f"lower train.lr (lr scale is now {state.lr_scale:g}) or check the data")


def summary(state: StabilityState) -> dict[str, float]:
    """event_free, smoothness and stability_score (see the module docstring), plus counts."""
    events = state.nan_events + state.spike_events
    event_free = 1.0 - events / state.steps if state.steps else 1.0
    smoothness = math.exp(-state.abs_dlog_sum / state.dlog_count) if state.dlog_count else 1.0
    return {"event_free": event_free, "smoothness": smoothness,
            "stability_score": event_free * smoothness, "nan_events": state.nan_events,
            "spike_events": state.spike_events, "lr_scale": state.lr_scale}
