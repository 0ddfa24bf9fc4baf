"""Metrics to a JSONL file and TensorBoard (host 0 only), and progress bars.

``workdir/metrics.jsonl`` gets one JSON object per record: {"kind": "train"|"eval"|
"event"|..., "step": int, "time": unix seconds, ...metrics}; it is appended to (a
resumed run continues the same file) and flushed after every record, so it survives a
``kill -9``. TensorBoard scalars go to ``workdir/tensorboard`` as ``kind/name``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm


def is_main_host() -> bool:
    return jax.process_index() == 0


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


class MetricsWriter:
    """Writes metric records on host 0; a no-op elsewhere.

    Args:
      workdir: directory for metrics.jsonl and tensorboard/.
      enabled: default: ``jax.process_index() == 0``.
      tensorboard: also write TensorBoard event files (tensorboardX).
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True):
        self.enabled = is_main_host() if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record; numeric values also go to TensorBoard as ``kind/name``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        if self._file is None:
            raise ValueError(f"metrics writer for {self.path} is closed")
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                v = _plain(v)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str, kind: str | None = None) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` (optionally of one kind), in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def eval_curve(workdir: str, key: str = "top1") -> dict[int, float]:
    """``{step: record[key]}`` of every evaluation a run in ``workdir`` wrote, across its
    resumes: a run stopped after its step-50 evaluation and resumed keeps that point
    (callbacks see only the evaluations of their own call). A step evaluated twice (a
    resume from an earlier checkpoint re-runs it) keeps the later record."""
    return {int(r["step"]): float(r[key]) for r in read_metrics(workdir, "eval") if key in r}


def fit_seconds(workdir: str) -> float:
    """Wall seconds of every :func:`~hobs_jax.train.fit` call that ran in ``workdir``
    (the sum of their ``summary`` records): the training time of a run that was stopped
    and resumed, not just of its last call. A call killed with no chance to write its
    summary (SIGKILL) is not counted."""
    return float(sum(r.get("seconds", 0.0) for r in read_metrics(workdir, "summary")))


LOG_PROGRESS_SECONDS = 60.0  # without a terminal: one progress line per this many seconds at most


class _LogLines:
    """A file for tqdm that turns each refresh of the bar into one ``logging`` line (for
    runs whose stderr goes to a file: nohup, SLURM, a pod's logs), instead of ``\r``
    redraws a log cannot show."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, s: str) -> None:
        line = s.replace("\r", "").strip()
        if line:
            self.logger.info(line)

    def flush(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             initial: int = 0, enabled: bool = True, unit: str = "step") -> tqdm:
    """A tqdm bar (rate and ETA) on host 0. On a terminal it redraws in place; otherwise
    (stderr redirected to a file) it logs one line through ``logging`` at most every
    ``HOBS_JAX_PROGRESS_SECONDS`` seconds (default 60; 0 turns it off), so a long run
    under nohup or a scheduler still shows where it is."""
    if not (enabled and is_main_host()):
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=True, unit=unit)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, dynamic_ncols=True, leave=False)
    every = float(os.environ.get("HOBS_JAX_PROGRESS_SECONDS", LOG_PROGRESS_SECONDS))
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=every <= 0, unit=unit, ascii=True,
                ncols=80, mininterval=max(every, 0.0), maxinterval=max(every, 0.0),
                file=_LogLines(logging.getLogger("hobs_jax.progress")), leave=False)
