"""The fault-injection suite: the main job (``python -m hobs_jax.main``) killed with
``kill -9``, stopped with SIGTERM and SIGINT, refused a disk write and raced by a second
run, at points of every stage, then run again until it completes; the final summary must
equal an uninterrupted run's.

Points are chosen with the ``HOBS_JAX_FAULT`` hook (:mod:`hobs_jax.faults`: step
counters and named places, no sleeps). Faults are chained to keep the suite cheap: each
run of a chain is stopped at a later point than the one before and continues from what
it left, so one chain of ~10 processes covers every stage. The config is
``tests/faults_config.py`` (the smallest job with every stage). The suite reports its
tally in pytest's terminal summary ("fault injection: ..."), see tests/conftest.py.

The full sweep (every stage's start/end/recorded point and the inner points, each with
kill -9 and with SIGTERM; ~60 runs, about 10 minutes on the 2-core CPU) runs with
``python -m pytest -m fault_sweep tests/test_faults.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests._tiny import REPO_ROOT, subprocess_env

CONFIG = "tests/faults_config.py"
# Measured on the machine, so they differ run to run: timings, the load in the
# machine record, and which lines were found not faster.
VOLATILE = ("latency", "latency_speedup", "latency_device", "latency_not_faster", "stage_seconds")
STAGES = ("train", "calibrate", "prune", "finetune", "evaluate", "benchmark", "export")
RESUME = "; run the same command again to resume"


def _env(fault: str | None) -> dict:
    env = subprocess_env()
    env.pop("HOBS_JAX_FAULT", None)
    if fault:
        env["HOBS_JAX_FAULT"] = fault
    return env


def _cmd(workdir) -> list[str]:
    return [sys.executable, "-m", "hobs_jax.main", f"--config={CONFIG}", f"--workdir={workdir}"]


def main_job(workdir, fault: str | None = None, *, max_file_size: int | None = None
             ) -> subprocess.CompletedProcess:
    """One run of the main job; ``max_file_size``: an RLIMIT_FSIZE for it, set by a small
    Python launcher that then execs the job (a ``preexec_fn`` would fork this process,
    which JAX's threads make unsafe)."""
    cmd = _cmd(workdir)
    if max_file_size is not None:
        launcher = ("import os, resource, sys; "
                    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_size}, "
                    "resource.getrlimit(resource.RLIMIT_FSIZE)[1])); os.execv(sys.argv[1], sys.argv[1:])")
        cmd = [sys.executable, "-c", launcher] + cmd
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(fault), capture_output=True, text=True,
                          timeout=1800)


def summary(workdir) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        s = json.load(f)
    return {k: v for k, v in s.items() if k not in VOLATILE}


def last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def snapshot(root) -> dict:
    """Every file under ``root`` with its size and mtime (to prove nothing was written)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def recorded(workdir, stage) -> bool:
    return os.path.exists(os.path.join(workdir, stage, "stage.json"))


class Tally:
    """What the suite did, reported in the terminal summary."""

    def __init__(self):
        self.faults: dict[str, int] = {}
        self.runs = self.matched = 0

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def report(self, record_property) -> None:
        record_property("fault_injection", json.dumps({"faults": self.faults, "runs": self.runs,
                                                       "matched": self.matched}))


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """The workdir of an uninterrupted run (which also warms the compile cache)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    proc = main_job(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def reference(reference_dir):
    """The uninterrupted run's summary, timings left out."""
    return summary(reference_dir)


_KIND = {"kill": "kill -9", "term": "SIGTERM", "int": "SIGINT", "term2": "SIGTERM x2"}
_CODE = {"kill": -signal.SIGKILL, "term": 143, "int": 130, "term2": 143}


def stopped_by(workdir, fault: str, tally: Tally, check=None) -> subprocess.CompletedProcess:
    """One run stopped by ``fault``: it fired, the exit status is the signal's, a stop
    signal ends in one line; ``check(proc)`` asserts more."""
    action = fault.rpartition("=")[2]
    proc = main_job(workdir, fault)
    tally.runs += 1
    point = fault.rpartition("=")[0].partition("@")[0]
    assert f"fault injected at {point}@" in proc.stderr, (fault, proc.stderr[-2000:])
    assert proc.returncode == _CODE[action], (fault, proc.returncode, proc.stderr[-3000:])
    if action != "kill":
        assert last_line(proc).startswith("error: interrupted by SIG"), (fault, proc.stderr[-2000:])
        assert last_line(proc).endswith(RESUME) and "Traceback" not in proc.stderr
    tally.fault(_KIND[action])
    if check is not None:
        check(proc)
    return proc


def completes_as_reference(workdir, reference, tally: Tally) -> None:
    proc = main_job(workdir)
    tally.runs += 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(workdir) == reference
    tally.matched += 1


def test_faults_at_every_stage_then_the_same_summary(tmp_path, reference, record_property):
    """One chain through every stage: kill -9, SIGTERM, SIGINT and a second SIGTERM at
    points inside and between stages, a second run started while the first holds the
    workdir, a full disk during a checkpoint save; then the run completes with the
    reference's summary."""
    workdir = str(tmp_path / "run")
    tally = Tally()
    tally.runs = tally.matched = 1  # the reference

    def train_not_recorded(proc):
        assert last_line(proc) == ("error: interrupted by SIGTERM during stage train at step 3 of 4 "
                                   "(checkpoint saved)" + RESUME)
        assert not recorded(workdir, "train")
        assert "3" in os.listdir(os.path.join(workdir, "train", "checkpoints"))

    def prune_not_recorded(proc):
        assert last_line(proc) == ("error: interrupted by SIGINT during stage prune while collecting "
                                   "calibration statistics (batch 1 of 2)" + RESUME)
        assert recorded(workdir, "calibrate") and not recorded(workdir, "prune")

    stopped_by(workdir, "train.step@3=kill", tally)  # resumes from step 2
    stopped_by(workdir, "train.step@3=term", tally, train_not_recorded)
    stopped_by(workdir, "checkpoint.save@4=kill", tally)  # the last train checkpoint in flight
    stopped_by(workdir, "hessians.batch@0=int", tally, prune_not_recorded)

    # A second run while the first holds the workdir (frozen by SIGSTOP at fine-tuning
    # step 1): refused at once in one line naming the holder, writing nothing. Then the
    # holder is killed (kill -9) and the next run takes the lock over, no cleanup needed.
    holder = subprocess.Popen(_cmd(workdir), cwd=REPO_ROOT, env=_env("finetune.step@1=stop"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(holder.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        tally.runs += 1
        before = snapshot(workdir)
        second = main_job(workdir)
        tally.runs += 1
        assert second.returncode == 2, second.stderr[-2000:]
        assert re.fullmatch(
            rf"error: workdir {re.escape(workdir)} is in use by another run \(pid {holder.pid} on host "
            rf"{re.escape(socket.gethostname())}, since [0-9T:-]+\); wait for it to finish or stop it, "
            rf"or use another --workdir", second.stderr.strip()), second.stderr
        assert snapshot(workdir) == before
        tally.fault("concurrent run")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL and not recorded(workdir, "finetune")
    tally.fault("kill -9")

    stopped_by(workdir, "finetune.step@3=term", tally)  # saves steps 2 (periodic) and 3

    # A full disk while saving the last fine-tuning checkpoint: with a 64 KiB file-size
    # limit every larger write fails (EFBIG, as ENOSPC would); step 3's checkpoint stays.
    full = main_job(workdir, max_file_size=64 << 10)
    tally.runs += 1
    ckpt_dir = os.path.join(workdir, "finetune", "checkpoints")
    assert full.returncode == 1, full.stderr[-3000:]
    assert last_line(full) == (f"error: saving checkpoint step 4 in {ckpt_dir} failed (File too large); "
                               f"the previous checkpoint (step 3) is intact"), full.stderr[-3000:]
    assert "Traceback" not in full.stderr and not recorded(workdir, "finetune")
    tally.fault("disk full")

    def finished_stage_recorded_then_stop(proc):
        # benchmark has no safe point inside: it finished and was recorded, then the run stopped
        assert last_line(proc) == "error: interrupted by SIGTERM before stage export" + RESUME
        assert recorded(workdir, "benchmark") and not recorded(workdir, "export")

    def second_signal_stops_at_once(proc):
        assert last_line(proc) == ("error: interrupted by SIGTERM during stage export (a second stop "
                                   "signal: stopped at once)" + RESUME)
        assert not recorded(workdir, "export") and not os.path.exists(os.path.join(workdir, "summary.json"))

    stopped_by(workdir, "benchmark.start=term", tally, finished_stage_recorded_then_stop)
    stopped_by(workdir, "export.start=term2", tally, second_signal_stops_at_once)
    completes_as_reference(workdir, reference, tally)
    tally.report(record_property)
    assert sum(tally.faults.values()) == 10 and tally.matched == 2


# Points of each stage in the order a run reaches them (the sweep's plan).
SWEEP_POINTS = {
    "train": ["train.start", "train.step@1", "checkpoint.save@2", "train.step@3", "train.end",
              "train.recorded"],
    "calibrate": ["calibrate.start", "calibrate.end", "calibrate.recorded"],
    "prune": ["prune.start", "hessians.batch@0", "hessians.batch@1", "prune.end", "prune.recorded"],
    "finetune": ["finetune.start", "finetune.step@1", "checkpoint.save@2", "finetune.step@3",
                 "finetune.end", "finetune.recorded"],
    "evaluate": ["evaluate.start", "evaluate.end", "record.write@1", "evaluate.recorded"],
    "benchmark": ["benchmark.start", "benchmark.end", "benchmark.recorded"],
    "export": ["export.start", "export.end", "export.recorded"],
}


def _from_reference(reference_dir, workdir, stage) -> None:
    """``workdir`` = the reference run's workdir without ``stage`` and the stages after it
    (as a run stopped just before ``stage`` leaves it)."""
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(reference_dir, workdir)
    for s in STAGES[STAGES.index(stage):]:
        shutil.rmtree(os.path.join(workdir, s), ignore_errors=True)
    for name in ("summary.json", "report.md"):
        os.remove(os.path.join(workdir, name))


@pytest.mark.fault_sweep
@pytest.mark.parametrize("action", ["kill", "term", "int"])
@pytest.mark.parametrize("stage", STAGES)
def test_fault_sweep(tmp_path, reference, reference_dir, record_property, request, stage, action):
    """Every point of ``stage`` with ``action``, chained: each run is stopped at the next
    point; a point a run no longer reaches (a stop signal lets a stage without safe points
    finish and be recorded) lets that run complete, which must then match the reference,
    and the chain restarts from the reference's workdir before ``stage``. Selected with
    ``-m fault_sweep`` only (about 25 minutes on the 2-core CPU)."""
    if "fault_sweep" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long sweep runs with -m fault_sweep")
    tally = Tally()
    workdir = str(tmp_path / "run")
    _from_reference(reference_dir, workdir, stage)
    for point in SWEEP_POINTS[stage]:
        fault = f"{point}={action}"
        proc = main_job(workdir, fault)
        tally.runs += 1
        if "fault injected" not in proc.stderr:
            assert proc.returncode == 0 and summary(workdir) == reference, (fault, proc.stderr[-3000:])
            tally.matched += 1
            _from_reference(reference_dir, workdir, stage)
            proc = main_job(workdir, fault)
            tally.runs += 1
        assert f"fault injected at {point.partition('@')[0]}@" in proc.stderr, (fault, proc.stderr[-2000:])
        assert proc.returncode == _CODE[action], (fault, proc.returncode, proc.stderr[-3000:])
        if action != "kill":
            assert last_line(proc).startswith("error: interrupted by SIG") and last_line(proc).endswith(RESUME)
        tally.fault(_KIND[action])
    completes_as_reference(workdir, reference, tally)
    tally.report(record_property)


@pytest.mark.slow
@pytest.mark.multihost
def test_multihost_runs_take_the_lock_through_process_0(tmp_path):
    """Two processes on localhost: process 0 holds the workdir lock and the other follows
    its answer. While another run holds the workdir, both stop in one line and write
    nothing; once it is free, the two-process run goes through (process 1 never touches
    the lock: it would find it held by process 0)."""
    from hobs_jax.pipeline.lock import WorkdirLock

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    launcher = [os.path.join(REPO_ROOT, "launch", "local_multihost.sh"), "2"]
    logs = tmp_path / "logs"
    env = dict(_env(None), LOG_DIR=str(logs))
    cmd = launcher + _cmd(workdir) + ["--config.stages=train", "--config.train.steps=2"]
    other = WorkdirLock(workdir).acquire()  # "another run" (this process)
    try:
        before = snapshot(workdir)
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = {i: (logs / f"process_{i}.log").read_text().strip().splitlines()[-1] for i in (0, 1)}
        assert re.fullmatch(rf"error: workdir {re.escape(workdir)} is in use by another run \(pid "
                            rf"{os.getpid()} on host .*", last[0]), last[0]
        assert last[1] == (f"error: workdir {workdir} is in use by another run (process 0 could not take "
                           f"{workdir}/.lock; its error names the holder)"), last[1]
        assert snapshot(workdir) == before
    finally:
        other.release()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, [(logs / f"process_{i}.log").read_text()[-2000:] for i in (0, 1)]
    assert recorded(workdir, "train")
