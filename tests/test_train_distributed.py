"""Scale-out: 4 CPU devices in one process and 2 processes on localhost reach the same
loss and parameters as one device; distributed.initialize argument handling."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hobs_jax.train import distributed
from tests._tiny import REPO_ROOT, subprocess_env

STEPS = 6


def _run(workdir, *extra, launcher=()):
    cmd = [*launcher, sys.executable, "-m", "tests.train_job", f"--workdir={workdir}",
           f"--steps={STEPS}", "--batch_size=16", "--ckpt_every=3", *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    with open(os.path.join(workdir, "result.json")) as f:
        result = json.load(f)
    with np.load(os.path.join(workdir, "params.npz")) as z:
        params = {k: z[k] for k in z.files}
    return result, params


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return _run(str(tmp_path_factory.mktemp("one_device")))


def _assert_same(run, reference):
    (result, params), (ref_result, ref_params) = run, reference
    np.testing.assert_allclose(result["train_loss"], ref_result["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(result["val_loss"], ref_result["val_loss"], rtol=1e-5)
    assert params.keys() == ref_params.keys()
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_four_cpu_devices_match_one_device(tmp_path, one_device, fsdp):
    run = _run(str(tmp_path), "--num_cpu_devices=4", *(["--fsdp"] if fsdp else []))
    assert run[0]["device_count"] == 4 and run[0]["process_count"] == 1
    _assert_same(run, one_device)


@pytest.mark.slow
@pytest.mark.multihost
def test_two_processes_on_localhost_match_one_process(tmp_path, one_device):
    run = _run(str(tmp_path), launcher=(os.path.join(REPO_ROOT, "launch", "local_multihost.sh"),
                                        "2"))
    assert run[0]["process_count"] == 2 and run[0]["device_count"] == 2
    _assert_same(run, one_device)


def test_initialize_is_a_no_op_for_a_single_process(monkeypatch):
    for k in ("HOBS_COORDINATOR_ADDRESS", "HOBS_NUM_PROCESSES", "HOBS_PROCESS_ID",
              "SLURM_STEP_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    info = distributed.initialize()
    assert (info.process_index, info.process_count, info.how) == (0, 1, "single")


def test_initialize_rejects_partial_or_inconsistent_arguments(monkeypatch):
    with pytest.raises(ValueError, match="num_processes, process_id missing") as e:
        distributed.initialize(coordinator_address="127.0.0.1:1234")
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match=r'process_id=2 not in \[0, num_processes=2\)'):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("HOBS_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r'\(env\): coordinator_address, process_id missing'):
        distributed.initialize()


@pytest.mark.parametrize("env,expected", [
    ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "8"}, "slurm"),
    ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "open_mpi"),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "tpu_pod"),
    ({}, None),
])
def test_cluster_detection_from_the_environment(monkeypatch, env, expected):
    for k in ("SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE",
              "TPU_WORKER_HOSTNAMES", "TPU_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.detected_cluster() == expected
