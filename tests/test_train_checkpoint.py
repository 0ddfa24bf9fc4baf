"""Checkpoints: round trip, keep-K, corrupt-latest fallback, kill -9 resume, SIGTERM."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hobs_jax.train import Checkpointer, TrainState, abstract_like, make_mesh, put_global, read_metrics, state_shardings
from tests._tiny import REPO_ROOT, subprocess_env

STEPS, EVERY = 30, 10


def _state(value: float) -> TrainState:
    tx = optax.sgd(0.1, momentum=0.9)
    v = {"params": {"w": jnp.full((4, 3), value)}, "batch_stats": {"m": jnp.zeros(3)}}
    return TrainState.create(v, tx, seed=0)


def test_round_trip_keep_k_and_corrupt_latest_fallback(tmp_path, caplog):
    mesh = make_mesh()
    shardings = state_shardings(_state(0.0), mesh)
    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step in (0, 5, 10):
        ckpt.save(step, put_global(_state(float(step)), shardings), {"data": {"step": step}})
    ckpt.wait()
    assert ckpt.all_steps() == [5, 10]  # keep=2
    target = abstract_like(_state(0.0), shardings)
    step, state, meta = ckpt.restore(target)
    assert step == 10 and meta == {"data": {"step": 10}}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full((4, 3), 10.0))
    # truncate every file of the newest checkpoint: restore falls back to step 5
    for root, _, files in os.walk(tmp_path / "10"):
        for f in files:
            open(os.path.join(root, f), "wb").close()
    with caplog.at_level(logging.WARNING):
        step, state, _ = ckpt.restore(target)
    assert step == 5 and float(state.params["w"][0, 0]) == 5.0
    assert "checkpoint step 10" in caplog.text and "falling back" in caplog.text
    ckpt.save(10, put_global(_state(11.0), shardings), {"data": {"step": 10}})  # replaced
    assert ckpt.restore(target)[0] == 10
    ckpt.close()


def _job(workdir, *extra):
    return [sys.executable, "-m", "tests.train_job", f"--workdir={workdir}", f"--steps={STEPS}",
            f"--ckpt_every={EVERY}", *extra]


def _params(workdir):
    with np.load(os.path.join(workdir, "params.npz")) as z:
        return {k: z[k] for k in z.files}


def _result(workdir):
    with open(os.path.join(workdir, "result.json")) as f:
        return json.load(f)


def _wait_for_checkpoint(proc, workdir, step, timeout=120):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        assert proc.poll() is None, f"job ended (rc={proc.returncode}) before checkpoint {step}"
        assert time.time() < deadline, f"no checkpoint {step} after {timeout}s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    subprocess.run(_job(workdir), check=True, cwd=REPO_ROOT, env=subprocess_env(),
                   capture_output=True, timeout=300)
    return _params(workdir)


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path, baseline):
    workdir = str(tmp_path)
    cmd = _job(workdir, "--step_sleep=0.05")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(proc, workdir, EVERY)
    time.sleep(0.3)  # let it run a few steps past the checkpoint
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(r["step"] for r in read_metrics(workdir, "train"))
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                   timeout=300)
    resume = read_metrics(workdir, "resume")
    assert len(resume) == 1
    resumed_from = resume[0]["from_step"]
    assert EVERY <= resumed_from < STEPS
    assert 0 <= killed_at - resumed_from <= EVERY  # at most N steps redone
    assert _result(workdir)["steps_run"] == STEPS - resumed_from
    _assert_same_params(_params(workdir), baseline)


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes(tmp_path, baseline):
    workdir = str(tmp_path)
    cmd = _job(workdir, "--step_sleep=0.05")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_checkpoint(proc, workdir, EVERY)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = _result(workdir)
    stopped_at = result["steps"]
    assert result["stopped"] == "preempted" and EVERY <= stopped_at < STEPS
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped_at)))
    assert read_metrics(workdir, "stop")[-1]["reason"] == "preempted"
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                   timeout=300)
    result = _result(workdir)
    assert result["resumed_from"] == stopped_at and result["steps"] == STEPS
    _assert_same_params(_params(workdir), baseline)
