"""AST runs resume exactly (kill -9 mid-run, rerun: same parameters and the same selection
record; controller, reference window, score table and queue live in the checkpoint) and
scale out (4 devices, FSDP, 2 processes select the same samples as one device)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from hobs_jax.train import read_metrics
from hobs_jax.train.ast_plot import read_trace
from tests._tiny import REPO_ROOT, subprocess_env
from tests.test_train_checkpoint import _wait_for_checkpoint

STEPS, EVERY = 160, 8  # 160 full-data steps -> 4 + ceil(156 / 4) = 43 AST steps


def _job(workdir, *extra):
    return [sys.executable, "-m", "tests.ast_train_job", f"--workdir={workdir}",
            f"--steps={STEPS}", f"--ckpt_every={EVERY}", *extra]


def _load(workdir):
    with np.load(os.path.join(workdir, "params.npz")) as z:
        params = {k: z[k] for k in z.files}
    with open(os.path.join(workdir, "result.json")) as f:
        return params, json.load(f)


# The selection record must match exactly; times differ between runs.
SAME = ("achieved_rate", "samples_seen", "samples_scored", "samples_backpropagated",
        "samples_selected", "queued", "threshold_min", "threshold_max", "max_window_deviation",
        "data_epochs", "planned_steps")


def _approx(v, rel):
    return None if v is None else pytest.approx(v, rel=rel)


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["threshold", "sample", "threshold:reducible"])
def test_kill_9_then_rerun_matches_an_uninterrupted_ast_run(tmp_path, selection):
    selection, _, score = selection.partition(":")
    extra = [f"--selection={selection}"] + ([f"--score={score}"] if score else [])
    base = str(tmp_path / "uninterrupted")
    subprocess.run(_job(base, *extra), check=True, cwd=REPO_ROOT, env=subprocess_env(),
                   capture_output=True, timeout=300)
    ref_params, ref = _load(base)
    assert ref["steps"] == 43 and ref["ast"]["planned_steps"] == 43

    workdir = str(tmp_path / "killed")
    cmd = _job(workdir, "--step_sleep=0.05", *extra)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(proc, workdir, 2 * EVERY)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                   timeout=300)
    resumed = read_metrics(workdir, "resume")
    assert len(resumed) == 1 and 2 * EVERY <= resumed[0]["from_step"] < ref["steps"]
    params, out = _load(workdir)
    assert out["resumed_from"] == resumed[0]["from_step"] and out["steps"] == ref["steps"]
    assert params.keys() == ref_params.keys()
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in SAME:
        assert out["ast"][k] == _approx(ref["ast"][k], 1e-9), k
    # the per-batch trace, read back over the restart, is the uninterrupted one
    a, b = read_trace(os.path.join(workdir, "ast_trace.csv")), read_trace(
        os.path.join(base, "ast_trace.csv"))
    for col in ("candidate", "threshold", "rate", "rate_ema"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, err_msg=col)


def _short(workdir, *extra, launcher=()):
    cmd = [*launcher, sys.executable, "-m", "tests.ast_train_job", f"--workdir={workdir}",
           "--steps=40", *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return _load(workdir)


@pytest.mark.slow
@pytest.mark.multihost
def test_four_devices_and_two_processes_select_like_one_device(tmp_path):
    ref_params, ref = _short(str(tmp_path / "one"))
    assert ref["device_count"] == 1 and ref["steps"] == 4 + 9
    runs = {"4 devices": _short(str(tmp_path / "four"), "--num_cpu_devices=4"),
            "2 processes": _short(str(tmp_path / "two"), launcher=(
                os.path.join(REPO_ROOT, "launch", "local_multihost.sh"), "2"))}
    assert runs["4 devices"][1]["device_count"] == 4
    assert runs["2 processes"][1]["process_count"] == 2
    for name, (params, out) in runs.items():
        for k in SAME:
            assert out["ast"][k] == _approx(ref["ast"][k], 1e-6), (name, k)
        for k in params:
            np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name}: {k}")
