"""Adaptive Sparse Training: choose which samples get a backward pass, and really skip
the others.

``fit`` pulls its batches from a :class:`Selector` when ``train.ast.enabled``. The
selector reads *candidate* batches from the loader, decides per sample whether it is
trained on, queues the chosen samples on the host and hands ``fit`` a batch only when B
of them are queued. The train step therefore always runs on full batches of selected
samples: one compiled shape, no masked work, and a backward pass for exactly the chosen
samples (the public AST code runs the full forward and backward and masks the loss,
which saves nothing; docs/ast.md).

Rules (``train.ast.rule``):

* ``ast``: a cheap forward (eval mode, no gradient, jitted once at batch size B) scores
  every candidate (``hobs_jax.train.ast_scores``); samples whose normalized score is
  above a threshold are selected; a PI controller (``hobs_jax.train.ast_control``) moves
  the threshold to hold the activation rate at ``target_rate``. With ``score_refresh``
  = f in (0, 1), scores are kept per example in a host table (indexed by the example's
  index in the split, ``TrainLoader.global_indices``), every back-propagated sample's
  entry is refreshed for free from its training forward, and the cheap forward runs only
  on the first ceil(f B) samples of each candidate batch (a second fixed shape), plus on
  whole batches whose samples were never scored.
  With ``selection='sample'`` the threshold becomes soft: a sample scoring s is chosen
  with probability p = clip(s / tau, floor, 1) and its loss weighted by target / p
  (importance sampling, ``ast_control.sample_probabilities``); the controller moves tau.
* ``random``: a uniform random ``target_rate`` fraction (the same back-propagation
  budget, no scoring), the baseline AST must beat.
* ``infobatch``: InfoBatch (Qin et al., ICLR 2024): from the stale training losses,
  samples below the mean loss (recomputed at each epoch start) are dropped with
  probability ``infobatch_prune`` and the kept ones get loss weight 1 / (1 - prune);
  the last ``infobatch_anneal`` fraction of the steps trains on everything.

The queue holds (example index, augmentation noise row, loss weight); a batch is
re-read from the source on every host (``TrainLoader.read``), so every host builds the
same global batch whatever the host count, and the whole selector state (controller,
running means, score table, queue, counters) is a small JSON object in the training
checkpoint: a run killed and restarted ends exactly as an uninterrupted one.

Sizes: the run trains ``warmup_steps + ceil((T - warmup_steps) * target_rate)`` steps,
T being the full run's steps, so it sees about the same data when the rate is on target.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hobs_jax.train import ast_control as ctl
from hobs_jax.train import ast_reference, ast_scores
from hobs_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

TRACE_FILE = "ast_trace.csv"
PLOT_FILE = "ast_trace.png"
WINDOW = 50        # candidate batches per rate window (tracking within +-2 points)
TOLERANCE = 0.02   # the rate goal: within 2 points of the target after warm-up
STATE_VERSION = 1


def planned_steps(a: ml_collections.ConfigDict, full_steps: int) -> int:
    """Optimizer steps of a run whose full-data length is ``full_steps`` (see module doc)."""
    if not a.enabled:
        return full_steps
    warm = min(int(a.warmup_steps), full_steps)
    return warm + math.ceil((full_steps - warm) * float(a.target_rate) - 1e-9)


def _enc(x: np.ndarray) -> dict:
    x = np.ascontiguousarray(x)
    return {"dtype": str(x.dtype), "shape": list(x.shape),
            "data": base64.b64encode(zlib.compress(x.tobytes(), 1)).decode("ascii")}


def _dec(d: dict) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(d["data"]))
    return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


class Selector:
    """Builds the training batches of an AST run (see the module docstring).

    Args:
      a: the ``train.ast`` section (validated).
      loader: a :class:`hobs_jax.data.TrainLoader` (``global_indices``, ``global_noise``,
        ``read``, ``position``; its ``source`` gives the class count).
      apply_fn: the model's ``apply``.
      mesh: the training mesh.
      full_steps: the run's length without selection (``total_steps(train, ...)``).
      seed: the run's seed (random draws of the 'random' and 'infobatch' rules).
      compute_dtype: the cheap forward's compute dtype (as training).
      workdir: where ``ast_trace.csv`` and ``ast_trace.png`` go (host 0).
      record: ``record(kind, step, values)`` for events (the loop's metrics writer).
    """

    def __init__(self, a: ml_collections.ConfigDict, loader: Any, apply_fn: Callable[..., Any], *,
                 mesh: Mesh, full_steps: int, seed: int, compute_dtype=None,
                 workdir: str | None = None,
                 record: Callable[[str, int, dict], None] | None = None):
        for name in ("global_indices", "global_noise", "read", "position"):
            if not hasattr(loader, name):
                raise ValueError(f"train.ast.enabled=True needs a loader with .{name}() "
                                 f"(hobs_jax.data.TrainLoader); got {type(loader).__name__}")
        self.a, self.loader, self.mesh = a, loader, mesh
        self.rule, self.score = str(a.rule), str(a.score)
        self.target = float(a.target_rate)
        self.B = int(loader.batch_size)
        self.seed = int(seed)
        self.full_steps = int(full_steps)
        self.warmup = min(int(a.warmup_steps), self.full_steps)
        self.planned = planned_steps(a, self.full_steps)
        self.steps_per_epoch = int(loader.steps_per_epoch)
        self.workdir = workdir
        self.record = record
        self.main_host = jax.process_index() == 0
        source = getattr(loader, "source", None)
        num_classes = int(getattr(source, "num_classes", 1) or 1)
        n = int(loader.num_examples)
        self.use_scorer = self.rule == "ast" and self.target < 1.0
        self.sampling = self.use_scorer and str(a.selection) == "sample"
        self.stale = self.use_scorer and 0.0 < float(a.score_refresh) < 1.0
        self.use_table = self.stale or self.rule == "infobatch"
        unit = math.lcm(mesh.size, jax.process_count())
        refresh = math.ceil(float(a.score_refresh) * self.B)
        self.refresh = min(self.B, max(unit, -(-refresh // unit) * unit))
        import jax.numpy as jnp

        dtype = compute_dtype if compute_dtype is not None else jnp.float32
        self.scorer = (ast_scores.make_scorer(apply_fn, self.score, mesh=mesh, compute_dtype=dtype)
                       if self.use_scorer else None)
        self.normalizer = ast_scores.Normalizer(self.score, num_classes, bool(a.class_balanced))
        # score 'reducible': a frozen reference model's loss per example [n], subtracted
        # from the model's on the host (hobs_jax.train.ast_reference)
        self.reference_losses = (ast_reference.load(str(a.reference), n)
                                 if self.use_scorer and self.score == "reducible" else None)
        self.ctrl_cfg = ctl.ControllerConfig(self.target, float(a.kp), float(a.ki), float(a.ema))
        self.ctrl: ctl.ControllerState | None = None
        self.reference = ctl.Reference()
        self.last_threshold = float("nan")
        self.guard = ctl.PinGuard(self.steps_per_epoch)
        self.fallbacks = 0
        d = loader.source.preprocess.noise_dim if getattr(loader, "augment", False) else 0
        self.q_index = np.zeros(0, np.int64)
        self.q_noise = np.zeros((0, d), np.float64) if d else None
        self.q_weight = np.zeros(0, np.float32)
        self.table = np.full((n, 2), np.nan, np.float32) if self.use_table else None
        self.table_label = np.full(n, -1, np.int32) if self.use_table else None
        self.ib_mean, self.ib_epoch = float("nan"), -1
        self.c = {"candidates": 0, "scored": 0, "selected": 0, "backprop": 0,
                  "post_candidates": 0, "post_selected": 0, "seconds_scoring": 0.0,
                  "seconds_selection": 0.0, "seconds_post": 0.0,
                  "seconds_scoring_first_calls": 0.0}
        self._compiled: set[int] = set()  # scorer batch sizes called in this process
        self.windows: list[float] = []
        self.win = [0, 0]  # selected, candidates of the open window
        self.thr_range = [math.inf, -math.inf]
        self.last_rate = float("nan")
        self.steps = 0
        self.warm_times: list[float] = []  # next_batch entry times during warm-up
        self.warm_step_seconds = float("nan")
        self._pending: list[tuple[np.ndarray, jax.Array]] = []
        self._popped = np.zeros(0, np.int64)
        self._last_out: jax.Array | None = None
        self._trace: list[str] = []
        self._t_enter: float | None = None  # first post-warm-up batch of this process
        self._post_before = 0.0             # post-warm-up seconds of earlier processes

    @property
    def steps_per_data_epoch(self) -> int:
        """Optimizer steps per epoch of candidates at the target rate (evaluation cadence)."""
        return max(1, round(self.steps_per_epoch * self.target))

    def bn_batches(self, images: int):
        """Global image batches [B, H, W, C] for the BN re-estimation that ends a run
        (``train.ast.bn_reestimate``): the first ceil(images / B) batches of the loader's
        epoch 0 (at most one epoch), with their training augmentation. A uniform sample of
        the split, fixed by the loader's seed, whatever the selection trained on, so a
        resumed run re-estimates from the same images."""
        from hobs_jax.data.pipeline import LoaderPosition

        for s in range(min(math.ceil(images / self.B), self.steps_per_epoch)):
            pos = LoaderPosition(epoch=0, step=s)
            local = self.loader.read(self.loader.global_indices(pos), self.loader.global_noise(pos))
            yield mesh_lib.global_batch({"image": local["image"]}, self.mesh)["image"]

    # ---------------------------------------------------------------- train-step hooks
    def train_apply_fn(self, apply_fn: Callable[..., Any]) -> Callable[..., Any]:
        """The apply function the train step should use (reports ||h|| for 'loss_grad')."""
        if self.use_table and self.rule == "ast" and self.score == "loss_grad":
            return ast_scores.with_head_input_norm(apply_fn)
        return apply_fn

    def example_fn(self):
        """The train step's per-example outputs (for the stale table), or None."""
        if not self.use_table:
            return None
        return ast_scores.train_example_fn("loss" if self.rule == "infobatch" else self.score)

    # ----------------------------------------------------------------------- batches
    def next_batch(self, state: Any) -> dict[str, jax.Array]:
        """The next global training batch {'image', 'label', 'weight'} of B selected samples."""
        now = time.perf_counter()
        if self.c["candidates"] < self.warmup:
            self.warm_times.append(now)
        elif self._t_enter is None:
            self._t_enter = now
            if len(self.warm_times) >= 4:  # the first steps include compilation
                self.warm_step_seconds = float(np.median(np.diff(self.warm_times[2:] + [now])))
        # Reading the last steps' per-example outputs waits for the train step: training time.
        t_pending = time.perf_counter()
        self._apply_pending()
        waited = time.perf_counter() - t_pending
        scoring0 = self.c["seconds_scoring"] + self.c["seconds_scoring_first_calls"]
        while len(self.q_index) < self.B:
            waited += self._candidate(state)
        idx, self.q_index = self.q_index[:self.B], self.q_index[self.B:]
        weight, self.q_weight = self.q_weight[:self.B], self.q_weight[self.B:]
        noise = None
        if self.q_noise is not None:
            noise, self.q_noise = self.q_noise[:self.B], self.q_noise[self.B:]
        local = self.loader.read(idx, noise)
        lb = self.B // jax.process_count()
        p = jax.process_index()
        local["weight"] = weight[p * lb:(p + 1) * lb]
        self._popped = idx
        batch = mesh_lib.global_batch(local, self.mesh)
        scoring = (self.c["seconds_scoring"] + self.c["seconds_scoring_first_calls"]) - scoring0
        self.c["seconds_selection"] += max(time.perf_counter() - now - waited - scoring, 0.0)
        return batch

    def after_step(self, step: int, metrics: dict) -> None:
        """Called by ``fit`` after every train step with its (device) metrics."""
        self.steps = int(step)
        self.c["backprop"] += self.B
        self._last_out = metrics.get("loss")
        if "example" in metrics:
            self._pending.append((self._popped, metrics["example"]))
        if self._t_enter is not None:
            self.c["seconds_post"] = time.perf_counter() - self._t_enter + self._post_before

    def _apply_pending(self) -> None:
        """Writes the training forward's per-example scores into the table (in step order)."""
        if not self._pending:  # rules without a score table record nothing
            return
        assert self.table is not None and self.table_label is not None  # pending only with a table
        for idx, values in self._pending:
            v = np.asarray(mesh_lib.host_value(values), np.float32)
            self.table[idx] = v[:, :2]
            self.table_label[idx] = v[:, 2].astype(np.int32)
        self._pending.clear()

    def _wait_for_training(self) -> float:
        """Blocks until the last dispatched train step is done (so that its time is not
        counted as scoring); returns the seconds waited."""
        if self._last_out is None:
            return 0.0
        t = time.perf_counter()
        jax.block_until_ready(self._last_out)
        self._last_out = None
        return time.perf_counter() - t

    def _run_scorer(self, state: Any, local: dict) -> tuple[np.ndarray, np.ndarray, float]:
        """Fresh components [n, 2] and labels [n] of a local batch; (.., .., seconds waited)."""
        assert self.scorer is not None  # only rules that score batches call this
        waited = self._wait_for_training()
        t = time.perf_counter()
        out = self.scorer(state.variables(), mesh_lib.global_batch(local, self.mesh))
        comps = np.asarray(mesh_lib.host_value(out["components"]), np.float64)
        labels = np.asarray(mesh_lib.host_value(out["label"]), np.int64)
        dt = time.perf_counter() - t
        if len(comps) in self._compiled:
            self.c["seconds_scoring"] += dt
        else:  # a batch shape's first call compiles (or loads) the scorer: kept apart
            self._compiled.add(len(comps))
            self.c["seconds_scoring_first_calls"] += dt
        self.c["scored"] += len(comps)
        return comps, labels, waited

    def _candidate(self, state: Any) -> float:
        """Reads, scores and filters one candidate batch; returns seconds spent waiting for
        the previous train step."""
        pos = self.loader.position()
        local = next(self.loader)
        idx = self.loader.global_indices(pos)
        noise = self.loader.global_noise(pos)
        waited = 0.0
        weight = np.ones(self.B, np.float32)
        warm = self.c["candidates"] < self.warmup
        threshold = float("nan")
        if warm or (self.rule != "infobatch" and self.target >= 1.0):
            mask = np.ones(self.B, bool)
        elif self.rule == "random":
            draw = np.random.default_rng([self.seed, pos.epoch, pos.step, 0x7A4]).random(self.B)
            mask = draw < self.target
        elif self.rule == "infobatch":
            mask, weight = self._infobatch(pos, idx)
        else:
            if self.stale:
                comps, labels, waited = self._stale_components(state, local, idx, noise)
            else:
                comps, labels, waited = self._run_scorer(state, local)
                comps = self._reduce(comps, idx)
                self.normalizer.observe(comps, labels)
            scores = self.normalizer.combine(comps, labels)
            if self.ctrl is None:
                self.ctrl = ctl.start(self.ctrl_cfg)
            if self.sampling:
                floor = float(self.a.sample_floor) * self.target
                threshold = self.reference.sample_threshold(self.ctrl.level, scores, floor)
                prob = ctl.sample_probabilities(scores, threshold, floor)
                draw = np.random.default_rng([self.seed, pos.epoch, pos.step, 0x5A3]).random(self.B)
                mask = draw < prob
                weight = (self.target / prob).astype(np.float32)
            else:
                threshold = self.reference.threshold(self.ctrl.level, scores)
                mask = scores > threshold
            self.last_threshold = threshold
            self.reference.push(scores)
            self.ctrl = ctl.update(self.ctrl_cfg, self.ctrl, float(mask.mean()))
            self.thr_range = [min(self.thr_range[0], threshold), max(self.thr_range[1], threshold)]
            self._guard(float(mask.mean()), scores, pos)
        rate = float(mask.mean())
        self.last_rate = rate
        self.q_index = np.concatenate([self.q_index, idx[mask]])
        self.q_weight = np.concatenate([self.q_weight, weight[mask]])
        if self.q_noise is not None:
            self.q_noise = np.concatenate([self.q_noise, noise[mask]])
        self.c["candidates"] += 1
        self.c["selected"] += int(mask.sum())
        if not warm:
            self.c["post_candidates"] += 1
            self.c["post_selected"] += int(mask.sum())
            self.win[0] += int(mask.sum())
            self.win[1] += 1
            if self.win[1] == WINDOW:
                self.windows.append(self.win[0] / (WINDOW * self.B))
                self.win = [0, 0]
        ema = self.ctrl.rate_ema if self.ctrl is not None else float("nan")
        level = self.ctrl.level if self.ctrl is not None else float("nan")
        if self.main_host and self.workdir:
            self._trace.append(f"{self.c['candidates']},{self.steps},{pos.epoch},{pos.step},"
                               f"{int(warm)},{threshold:.6g},{level:.6g},{rate:.6g},{ema:.6g}")
        return waited

    def _stale_components(self, state, local, idx, noise):
        rows_unknown = np.isnan(self.table[idx, 0]) | (self.table_label[idx] < 0)
        if rows_unknown.any():
            comps, labels, waited = self._run_scorer(state, local)  # whole batch, fresh
            self.table[idx] = comps
            self.table_label[idx] = labels
            self.normalizer.observe(self._reduce(comps, idx), labels)
        else:
            r = self.refresh
            sub = self.loader.read(idx[:r], None if noise is None else noise[:r])
            comps, labels, waited = self._run_scorer(state, sub)
            self.table[idx[:r]] = comps
            self.table_label[idx[:r]] = labels
            self.normalizer.observe(self._reduce(comps, idx[:r]), labels)
        return (self._reduce(self.table[idx].astype(np.float64), idx),
                self.table_label[idx].astype(np.int64), waited)

    def _reduce(self, comps: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Score 'reducible': component 0 (the model's loss) minus the reference's loss on
        the same examples, clipped at 0; other scores unchanged. comps [n, 2], idx [n]."""
        if self.reference_losses is None:
            return comps
        out = np.array(comps, np.float64)
        out[:, 0] = ast_reference.reducible(out[:, 0], self.reference_losses[idx])
        return out

    def _infobatch(self, pos, idx) -> tuple[np.ndarray, np.ndarray]:
        a = self.a
        assert self.table is not None  # InfoBatch keeps the loss table
        if pos.epoch != self.ib_epoch:
            seen = self.table[:, 0][np.isfinite(self.table[:, 0])]
            self.ib_mean = float(seen.mean()) if len(seen) else float("nan")
            self.ib_epoch = pos.epoch
        weight = np.ones(self.B, np.float32)
        annealing = self.steps >= (1.0 - float(a.infobatch_anneal)) * self.planned
        if annealing or not math.isfinite(self.ib_mean) or a.infobatch_prune <= 0:
            return np.ones(self.B, bool), weight
        loss = self.table[idx, 0]
        low = np.isfinite(loss) & (loss < self.ib_mean)
        draw = np.random.default_rng([self.seed, pos.epoch, pos.step, 0x1FB]).random(self.B)
        mask = ~(low & (draw < float(a.infobatch_prune)))
        weight[low] = 1.0 / (1.0 - float(a.infobatch_prune))
        return mask, weight

    def _guard(self, rate: float, scores: np.ndarray, pos) -> None:
        event = self.guard.observe(rate)
        if not event:
            return
        if self.fallbacks >= 1:
            raise ValueError(
                f"train.ast.kp/ki=({self.a.kp}, {self.a.ki}): the AST controller diverged again "
                f"(activation rate {event} for a whole epoch of {self.steps_per_epoch} batches "
                f"after a reset); lower the gains or check the scores")
        self.fallbacks += 1
        self.ctrl = ctl.start(self.ctrl_cfg)
        self.reference.load([scores])
        self.guard.reset()
        msg = (f"AST controller diverged (rate {event} for {self.steps_per_epoch} batches); "
               f"reset: level = target, reference = the last batch")
        log.warning(msg)
        if self.record is not None:
            self.record("event", self.steps, {"event": "ast_fallback", "detail": msg,
                                              "data_epoch": pos.epoch})

    # ------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """JSON-able selector state (checkpoint meta)."""
        self._apply_pending()
        d = {"version": STATE_VERSION, "rule": self.rule, "score": self.score,
             "target_rate": self.target,
             "ctrl": None if self.ctrl is None else self.ctrl.to_dict(),
             "reference": [_enc(r) for r in self.reference.to_list()],
             "last_threshold": (None if not math.isfinite(self.last_threshold)
                                else self.last_threshold),
             "guard": [self.guard.zeros, self.guard.ones], "fallbacks": self.fallbacks,
             "normalizer": self.normalizer.to_dict(),
             "queue": {"index": _enc(self.q_index), "weight": _enc(self.q_weight),
                       "noise": None if self.q_noise is None else _enc(self.q_noise)},
             "table": None if self.table is None else _enc(self.table),
             "table_label": None if self.table_label is None else _enc(self.table_label),
             "ib": [None if not math.isfinite(self.ib_mean) else self.ib_mean, self.ib_epoch],
             "counters": dict(self.c), "windows": list(self.windows), "win": list(self.win),
             "thr_range": [v if math.isfinite(v) else None for v in self.thr_range],
             "last_rate": None if not math.isfinite(self.last_rate) else self.last_rate,
             "steps": self.steps,
             "warm_step_seconds": (None if not math.isfinite(self.warm_step_seconds)
                                   else self.warm_step_seconds)}
        self.flush()
        return d

    def load_state_dict(self, d: dict | None) -> None:
        """Restores :meth:`state_dict`'s output (a resumed run)."""
        if d is None:
            raise ValueError("train.ast.enabled=True but the checkpoint being resumed was "
                             "written without AST; use a new workdir")
        if (d["rule"], d["score"], d["target_rate"]) != (self.rule, self.score, self.target):
            raise ValueError(f"train.ast: the checkpoint was written with rule/score/target_rate "
                             f"{d['rule']}/{d['score']}/{d['target_rate']}, the config says "
                             f"{self.rule}/{self.score}/{self.target}; use a new workdir")
        self.ctrl = None if d["ctrl"] is None else ctl.ControllerState.from_dict(d["ctrl"])
        self.reference.load([_dec(r) for r in d["reference"]])
        self.last_threshold = (float("nan") if d["last_threshold"] is None
                               else float(d["last_threshold"]))
        self.guard.zeros, self.guard.ones = d["guard"]
        self.fallbacks = int(d["fallbacks"])
        self.normalizer.load(d["normalizer"])
        self.q_index = _dec(d["queue"]["index"])
        self.q_weight = _dec(d["queue"]["weight"])
        self.q_noise = None if d["queue"]["noise"] is None else _dec(d["queue"]["noise"])
        if self.table is not None:
            self.table, self.table_label = _dec(d["table"]), _dec(d["table_label"])
        self.ib_mean = float("nan") if d["ib"][0] is None else float(d["ib"][0])
        self.ib_epoch = int(d["ib"][1])
        self.c.update(d["counters"])
        self.windows, self.win = list(d["windows"]), list(d["win"])
        self.thr_range = [math.inf if d["thr_range"][0] is None else d["thr_range"][0],
                          -math.inf if d["thr_range"][1] is None else d["thr_range"][1]]
        self.last_rate = float("nan") if d["last_rate"] is None else d["last_rate"]
        self.steps = int(d["steps"])
        self.warm_step_seconds = (float("nan") if d["warm_step_seconds"] is None
                                  else d["warm_step_seconds"])
        self._post_before = float(self.c["seconds_post"])
        self._pending.clear()

    # ----------------------------------------------------------------------- records
    def flush(self) -> None:
        """Appends the buffered per-candidate trace rows to ``workdir/ast_trace.csv``."""
        if not self._trace or not self.workdir:
            return
        path = os.path.join(self.workdir, TRACE_FILE)
        new = not os.path.exists(path)
        with open(path, "a") as f:
            if new:
                f.write("candidate,step,epoch,epoch_step,warmup,threshold,level,rate,rate_ema\n")
            f.write("\n".join(self._trace) + "\n")
        self._trace.clear()

    def achieved_rate(self) -> float:
        n = self.c["post_candidates"] * self.B
        return self.c["post_selected"] / n if n else float("nan")

    def log_record(self) -> dict:
        """The 'ast' metrics record written at every log step."""
        self.flush()
        return {"threshold": self.last_threshold, "level": (self.ctrl.level if self.ctrl
                                                             is not None else float("nan")),
                "rate": self.last_rate,
                "rate_ema": self.ctrl.rate_ema if self.ctrl is not None else float("nan"),
                "achieved_rate": self.achieved_rate(),
                "samples_scored": self.c["scored"], "samples_backpropagated": self.c["backprop"],
                "samples_seen": self.c["candidates"] * self.B,
                "data_epoch": self.c["candidates"] / self.steps_per_epoch,
                "seconds_scoring": self.c["seconds_scoring"],
                "seconds_selection": self.c["seconds_selection"], "queued": len(self.q_index)}

    def summary(self) -> dict:
        """The run's AST record (fit's metrics['ast'], the pipeline's summary.json)."""
        self.flush()
        tracked = self.rule != "infobatch"  # InfoBatch's rate is not held at a target
        after = self.windows[1:] if tracked else []  # the first window is the settling one
        within = [abs(w - self.target) <= TOLERANCE for w in after]
        devs = [abs(w - self.target) for w in self.windows] if tracked else []
        speedup = None
        post = self.c["seconds_post"]
        if math.isfinite(self.warm_step_seconds) and post > 0 and self.c["post_candidates"]:
            speedup = self.c["post_candidates"] * self.warm_step_seconds / post
        a = self.a
        finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731
        return {
            "rule": self.rule, "score": self.score if self.rule == "ast" else None,
            "target_rate": self.target, "kp": float(a.kp), "ki": float(a.ki),
            "ema": float(a.ema), "warmup_steps": self.warmup,
            "class_balanced": bool(a.class_balanced), "score_refresh": float(a.score_refresh),
            "selection": str(a.selection) if self.rule == "ast" else None,
            "reference": str(a.reference) if self.reference_losses is not None else None,
            "achieved_rate": finite(self.achieved_rate()),
            "rate_windows": len(self.windows), "window_batches": WINDOW,
            "max_window_deviation": max(devs) if devs else None,
            "windows_within_2pt": (sum(within) / len(within)) if within else None,
            "converged": bool(within) and all(within) and self.fallbacks == 0
            if self.rule == "ast" and self.target < 1 else None,
            "threshold_min": finite(self.thr_range[0]) if self.ctrl is not None else None,
            "threshold_max": finite(self.thr_range[1]) if self.ctrl is not None else None,
            "samples_seen": self.c["candidates"] * self.B, "samples_scored": self.c["scored"],
            "samples_backpropagated": self.c["backprop"], "samples_selected": self.c["selected"],
            "queued": len(self.q_index),
            "data_epochs": self.c["candidates"] / self.steps_per_epoch,
            "planned_steps": self.planned, "full_steps": self.full_steps,
            "seconds_scoring": self.c["seconds_scoring"],
            "seconds_scoring_first_calls": self.c["seconds_scoring_first_calls"],
            "seconds_selection": self.c["seconds_selection"],
            "speedup_vs_warmup_steps": speedup, "fallbacks": self.fallbacks,
        }

    def finish(self) -> dict:
        """Flushes the trace, draws ``ast_trace.png`` (host 0) and returns :meth:`summary`."""
        s = self.summary()
        if self.main_host and self.workdir and os.path.exists(os.path.join(self.workdir,
                                                                           TRACE_FILE)):
            from hobs_jax.train.ast_plot import plot_trace

            path = os.path.join(self.workdir, PLOT_FILE)
            try:
                plot_trace(os.path.join(self.workdir, TRACE_FILE), path, target=self.target,
                           title=f"{self.rule} {self.score if self.rule == 'ast' else ''} "
                                 f"target {self.target:g}")
                s["trace_png"] = path
            except ImportError as e:  # matplotlib is optional for training
                log.warning("no AST trace plot: %s", e)
        return s
