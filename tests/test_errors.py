"""Every user mistake ends in one line, written nowhere: the command line's config file,
option and value checks, workdirs that cannot be used, missing datasets, torch files that
are not state_dicts, hobs_jax checkpoints of another model or version, a second run in a
locked workdir, failed writes, NaN statistics; and the stop-signal machinery itself.
The fault-injection suite proper (the main job killed and resumed) is tests/test_faults.py."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from hobs_jax import cli, faults, interrupt
from hobs_jax.errors import WriteError
from hobs_jax.pipeline import base_config, run
from hobs_jax.pipeline.lock import WorkdirLock, WorkdirLocked
from hobs_jax.pipeline.workdir import Workdir, _write_json
from tests._tiny import REPO_ROOT, enable_compile_cache, subprocess_env

enable_compile_cache()


def _tiny(**over):
    c = base_config("resnet20")
    c.data.source, c.data.image_size, c.data.eval_batch_size = "synthetic", 16, 32
    c.train.steps, c.train.epochs, c.train.batch_size = 2, 0.0, 16
    c.train.progress = c.train.tensorboard = False
    c.calibrate.num_images, c.calibrate.batch_size = 32, 16
    c.stages = "train,calibrate,prune"
    for key, value in over.items():
        section, _, leaf = key.rpartition(".")
        (c[section] if section else c)[leaf] = value
    c.lock()
    return c


def _tree(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _one_line_error(fn, *args) -> str:
    with pytest.raises(ValueError) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- the command line ------------------------------------------------------------------

def test_config_files_that_do_not_load(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    raising = tmp_path / "raising.py"
    raising.write_text("import math\nX = math.sqrt(-1)\n")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def get_config(arg=None):\n    return {'a': 1}\n")
    cases = {
        "configs/nope.py": "--config=configs/nope.py: no such file configs/nope.py",
        "configs/quickstrat.py": ("--config=configs/quickstrat.py: no such file configs/quickstrat.py; "
                                  "did you mean configs/quickstart.py?"),
        "configs/quickstart.py:big": ("--config=configs/quickstart.py:big: unknown config variant 'big'; "
                                      "use ':smoke' or nothing"),
        str(bad): f"--config={bad}: {bad} does not load: SyntaxError: invalid syntax (line 1)",
        str(raising): f"--config={raising}: {raising} does not load: ValueError: math domain error "
                      f"({raising} line 2)",
        str(empty): f"--config={empty}: {empty} defines no get_config()",
        str(wrong): f"--config={wrong}: get_config() returned dict, not a ConfigDict",
        "configs": "--config=configs: configs is a directory; give a config file (a .py with get_config)",
    }
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        for spec, message in cases.items():
            assert _one_line_error(cli.load_config, spec) == message, spec
    finally:
        os.chdir(cwd)


def test_unknown_options_and_wrong_types_name_the_option():
    from configs import quickstart

    c = quickstart.get_config("smoke")
    cases = [
        ("prune.mthod", "hobs", "--config.prune.mthod: no such option; did you mean --config.prune.method "
                                "or --config.prune.hobs?"),
        ("target", "0.3", "--config.target: no such option; did you mean --config.prune.target?"),
        ("finetune.kd.temprature", "2", "--config.finetune.kd.temprature: no such option; did you mean "
                                        "--config.finetune.kd.temperature?"),
        ("benchmark.zzz", "1", "--config.benchmark.zzz: no such option; --config.benchmark has "
                               "batch_sizes, clock, iters, rounds, runtimes, threads, warmup"),
        ("train.steps", "1.5", "--config.train.steps=1.5: expected an int"),
        ("prune.target", "half", "--config.prune.target=half: expected a number"),
        ("finetune.progress", "maybe", "--config.finetune.progress=maybe: expected true or false"),
        ("prune.target", None, "--config.prune.target: give a value (--config.prune.target=VALUE)"),
        ("prune.hobs", "3", "--config.prune.hobs=3: expected a section; set its fields, e.g. "
                            "--config.prune.hobs.allocation"),
    ]
    for name, value, message in cases:
        assert _one_line_error(cli.check_override, c, name, value) == message, name
    for name, value in [("prune.target", "0.3"), ("train.steps", "7"), ("finetune.progress", "false"),
                        ("finetune.progress", None), ("prune.method", "magnitude")]:
        cli.check_override(c, name, value)  # valid: no error


def test_argv_checks():
    known = ["config", "workdir", "verbose", "compile_cache", "verbosity"]
    check = lambda *a: cli.check_argv(["main", *a], known=known)
    assert _one_line_error(check, "--workdir=x") == "--config is required (e.g. --config=configs/quickstart.py)"
    assert _one_line_error(check, "--config=configs/quickstart.py") == \
        "--workdir is required (e.g. --workdir=runs/my_run)"
    assert _one_line_error(check, "--config=c.py", "--wrkdir=x") == \
        "unknown option --wrkdir; did you mean --workdir?"
    assert cli.overrides(["--config.a.b=1", "--noconfig.c", "--config.d", "2", "--config.e", "-0.5",
                          "--config.f", "--x"]) == \
        [("a.b", "1"), ("c", "false"), ("d", "2"), ("e", "-0.5"), ("f", None)]
    check("--help")  # help needs nothing else


MAIN_CASES = {
    "missing config file": (["--config=configs/nope.py"], "error: --config=configs/nope.py: no such file "
                                                          "configs/nope.py"),
    "misspelled option": (["--config=configs/quickstart.py:smoke", "--config.prune.mthod=hobs"],
                          "error: --config.prune.mthod: no such option; did you mean --config.prune.method or "
                          "--config.prune.hobs?"),
    "missing dataset": (["--config=configs/quickstart.py:smoke", "--config.data.data_dir={tmp}/no_data"],
                        "error: Fashion-MNIST file {tmp}/no_data/train-images-idx3-ubyte.gz is missing; "
                        "data.data_dir is {tmp}/no_data: point it at the four files, or install it with "
                        "`apt-get install dataset-fashion-mnist` and leave data.data_dir empty"),
}


@pytest.mark.parametrize("case", MAIN_CASES)
def test_main_ends_a_mistake_in_one_line_and_writes_nothing(tmp_path, case):
    args, expected = MAIN_CASES[case]
    workdir = tmp_path / "run"
    args = [a.format(tmp=tmp_path) for a in args]
    out = subprocess.run([sys.executable, "-m", "hobs_jax.main", *args, f"--workdir={workdir}"],
                         cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == expected.format(tmp=tmp_path)  # exactly one line
    assert not workdir.exists()


def test_verbose_brings_the_traceback_back(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hobs_jax.main", "--config=configs/nope.py",
                          f"--workdir={tmp_path}", "--verbose"],
                         cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: --config=configs/nope.py: no such file configs/nope.py"


# --- workdirs and the lock -------------------------------------------------------------

def test_unusable_workdirs(tmp_path):
    c = _tiny()
    afile = tmp_path / "file"
    afile.write_text("x")
    assert _one_line_error(run, c, str(afile / "sub")) == \
        f"workdir {afile}/sub cannot be created: {afile} is a file, not a directory"
    assert _one_line_error(run, c, str(afile)) == f"workdir {afile} exists and is not a directory"
    assert _one_line_error(run, c, "") == "--workdir is empty: give a directory for the run's outputs"
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert _one_line_error(run, c, str(ro / "run")) == \
            f"workdir {ro}/run cannot be created: {ro} is not writable (permission denied)"
    assert sorted(os.listdir(tmp_path)) == sorted(["file"] + (["ro"] if os.geteuid() else []))


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    root = str(tmp_path / "run")
    first = Workdir(root, create=False).open()
    try:
        info = json.loads(open(os.path.join(root, ".lock")).read())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        before = _tree(root)
        message = _one_line_error(run, _tiny(), root)
        assert re.fullmatch(rf"workdir {re.escape(root)} is in use by another run \(pid {os.getpid()} on "
                            rf"host {re.escape(socket.gethostname())}, since [0-9T:-]+\); wait for it to "
                            rf"finish or stop it, or use another --workdir", message), message
        assert _tree(root) == before
    finally:
        first.close()
    assert open(os.path.join(root, ".lock")).read() == ""  # released: the holder record cleared
    again = WorkdirLock(root).acquire()
    again.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """kill -9 of the holder: the kernel drops the flock; nothing to clean up."""
    root = str(tmp_path)
    code = ("import os, signal; from hobs_jax.pipeline.lock import WorkdirLock; "
            f"WorkdirLock({root!r}).acquire(); os.kill(os.getpid(), signal.SIGSTOP)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env())
    try:
        _, status = os.waitpid(holder.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        with pytest.raises(WorkdirLocked, match=rf"in use by another run \(pid {holder.pid} on host"):
            WorkdirLock(root).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    lock = WorkdirLock(root).acquire()
    assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    lock.release()


def test_a_new_workdir_that_fails_its_checks_is_removed_again(tmp_path):
    root = tmp_path / "new"
    wd = Workdir(str(root), create=False).open()
    assert wd.created and wd.lock.created and os.listdir(root) == [".lock"]
    wd.close(remove_if_new=True)
    assert not root.exists()


# --- initial weights, checkpoints, datasets ---------------------------------------------

def _torch_files(tmp_path) -> dict:
    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    data = good.read_bytes()
    files = {
        "truncated.pt": data[: len(data) // 2],
        "random.pt": bytes(np.random.default_rng(0).integers(1, 128, 256, dtype=np.uint8)),
        "empty.pt": b"",
        "pickle.pt": b"\x80\x04\x95" + bytes(20),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    return {n: str(tmp_path / n) for n in list(files) + ["module.pt", "good.pt"]}


def test_torch_files_that_are_not_state_dicts(tmp_path):
    from parity.convert import load_torch_file

    f = _torch_files(tmp_path)
    resave = "re-save the weights with torch.save(model.state_dict(), path)"
    cases = {
        "truncated.pt": "truncated or corrupt zip archive (the end of the archive is missing or damaged); "
                        "copy or save it again",
        "random.pt": f"not a torch.save file (neither a zip archive nor torch's legacy format; starts "
                     f"with bytes {open(f['random.pt'], 'rb').read(4).hex()}); {resave}",
        "empty.pt": "empty file",
        "pickle.pt": f"starts like a Python pickle but is not a torch.save file; {resave}",
        "module.pt": "holds a pickled object that needs torch.nn.modules.linear.Linear to load, not a plain "
                     f"state_dict; weights-only loading refuses it because unpickling it would run code: {resave}",
    }
    for name, message in cases.items():
        got = _one_line_error(load_torch_file, f[name])
        assert got == f"torch file {f[name]}: {message}", name
        assert "weights_only=False" not in got
    assert _one_line_error(load_torch_file, str(tmp_path / "none.pt")) == \
        f"torch file {tmp_path / 'none.pt'}: no such file"
    assert list(load_torch_file(f["good.pt"])) == ["w"]


def test_bad_initial_weights_stop_the_run_before_it_writes(tmp_path):
    f = _torch_files(tmp_path)
    root = tmp_path / "run"
    c = _tiny(**{"init.kind": "torch", "init.path": f["random.pt"]})
    assert _one_line_error(run, c, str(root)).startswith(f"torch file {f['random.pt']}: not a torch.save file")
    assert not root.exists()
    # a hobs_jax checkpoint of another model, into an existing workdir: nothing changes
    root.mkdir()
    (root / "keep.txt").write_text("x")
    before = _tree(root)
    c = _tiny(**{"init.kind": "checkpoint", "init.path": os.path.join(REPO_ROOT, "checkpoints/resnet56_fmnist")})
    assert _one_line_error(run, c, str(root)) == \
        f"init.path={c.init.path!r} holds a 'resnet56', but the config's model is 'resnet20'"
    assert _tree(root) == before and sorted(os.listdir(root)) == ["keep.txt"]


def test_checkpoints_of_another_format_or_version(tmp_path):
    import shutil

    from hobs_jax import export

    src = os.path.join(REPO_ROOT, "checkpoints/resnet20_fmnist")
    newer = tmp_path / "newer"
    shutil.copytree(src, newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps(dict(meta, version=2)))
    assert _one_line_error(export.load, newer) == (
        f"{newer} is a hobs_jax.export checkpoint of format version 2, written by a newer hobs_jax; "
        f"this one reads version 1; upgrade hobs_jax")
    (newer / "meta.json").write_text(json.dumps({"format": "something"}))
    assert _one_line_error(export.load, newer) == \
        f"{newer} is not a hobs_jax.export checkpoint (meta.json has format 'something')"
    assert _one_line_error(export.load, os.path.join(src, "variables")) == (
        f"{src}/variables is not a complete hobs_jax checkpoint (no meta.json); it is an orbax checkpoint "
        f"not written by hobs_jax.export.save")


def test_missing_dataset_in_the_library(tmp_path):
    from hobs_jax.data import DatasetError, get_source

    with pytest.raises(DatasetError) as e:
        get_source("fashion_mnist", data_dir=str(tmp_path))
    assert str(e.value) == (f"Fashion-MNIST file {tmp_path}/train-images-idx3-ubyte.gz is missing; "
                            f"data.data_dir is {tmp_path}: point it at the four files, or install it "
                            f"with `apt-get install dataset-fashion-mnist` and leave data.data_dir empty")


# --- failed writes ---------------------------------------------------------------------

class _FileSizeLimit:
    """Writes past ``limit`` bytes fail with EFBIG (as a full disk fails with ENOSPC);
    Python ignores SIGXFSZ, so they raise instead of killing the process."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


def test_a_failed_record_write_keeps_the_previous_record(tmp_path):
    path = str(tmp_path / "stage.json")
    _write_json(path, {"v": 1})
    with _FileSizeLimit(256), pytest.raises(WriteError) as e:
        _write_json(path, {"v": list(range(200))})
    assert str(e.value) == f"writing {path} failed (File too large); the previous version is intact"
    assert json.load(open(path)) == {"v": 1} and os.listdir(tmp_path) == ["stage.json"]
    with _FileSizeLimit(256), pytest.raises(WriteError, match="failed \\(File too large\\); nothing was written"):
        _write_json(str(tmp_path / "new.json"), {"v": list(range(200))})


def test_a_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    import jax.numpy as jnp

    from hobs_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=True)
    ckpt.save(1, {"w": jnp.ones(4)}, {"step": 1})
    ckpt.wait()
    big = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((256, 256)), jnp.float32)}
    with _FileSizeLimit(64 << 10), pytest.raises(WriteError) as e:
        ckpt.save(2, big, {"step": 2})
        ckpt.wait()
    assert str(e.value) == (f"saving checkpoint step 2 in {tmp_path} failed (File too large); the previous "
                            f"checkpoint (step 1) is intact")
    ckpt.close()
    again = Checkpointer(str(tmp_path))
    step, state, meta = again.restore({"w": jnp.zeros(4)})
    assert step == 1 and meta == {"step": 1} and float(state["w"][0]) == 1.0
    again.close()


def test_a_failed_checkpoint_save_ends_the_process_on_its_one_line_error(tmp_path):
    """When one write fails, orbax abandons write coroutines it never started, held by the
    frames of the error's traceback or by reference cycles; freed at interpreter exit, past
    the reach of warning filters, each printed "coroutine ... was never awaited" after the
    error line (a flaky test_faults run). Which fragments are abandoned depends on timing,
    so the job leaves one such coroutine in each place itself."""
    code = f"""
import gc, resource
import numpy as np, jax.numpy as jnp
import flax.linen  # its import keeps cyclic garbage alive into the interpreter's last clean-up
from hobs_jax import cli
from hobs_jax.train.checkpoint import Checkpointer

def job():
    ckpt = Checkpointer({str(tmp_path)!r}, keep=3, async_save=True)
    ckpt.save(1, {{"w": jnp.ones(4)}}, {{"step": 1}})
    ckpt.wait()
    big = {{"w": jnp.asarray(np.random.default_rng(0).standard_normal((256, 256)), jnp.float32)}}
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    def async_serialize_from_host():
        async def write_fragment():
            pass
        return write_fragment()

    class Task:
        pass
    gc.disable()  # no collection before the error line: the cycle lives until exit
    task = Task()
    task.me, task.coro = task, async_serialize_from_host()
    del task
    write_coros = [async_serialize_from_host()]  # held by this frame, in the error's traceback
    ckpt.save(2, big, {{"step": 2}})
    ckpt.wait()

cli.run_job(job)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: saving checkpoint step 2 in {tmp_path} failed (File too large); the previous "
        f"checkpoint (step 1) is intact"), out.stderr[-3000:]
    assert "never awaited" not in out.stderr, out.stderr[-3000:]


# --- NaN statistics --------------------------------------------------------------------

def test_nan_statistics_stop_pruning_with_the_layer_named_before_anything_is_written(tmp_path):
    from hobs_jax import export, models
    from hobs_jax.obs import robust_inverse

    model = models.build("resnet20", num_classes=10, in_channels=1)
    variables = models.random_variables(model, (1, 16, 16, 1), seed=0)
    variables["params"]["layer2"]["0"]["conv1"]["kernel"] = \
        np.full_like(variables["params"]["layer2"]["0"]["conv1"]["kernel"], np.inf)
    export.save(tmp_path / "inf_weights", model, variables)
    c = _tiny(**{"init.kind": "checkpoint", "init.path": str(tmp_path / "inf_weights"),
                 "prune.method": "hobs"})
    with c.unlocked():
        c.prune.hobs.progress = False
    root = tmp_path / "run"
    assert _one_line_error(run, c, str(root)) == (
        "calibration batch 0: the input of layer layer2/0/conv2 has NaN/Inf values (activations overflow "
        "or the weights are not finite)")
    assert (root / "calibrate" / "stage.json").exists()
    assert not (root / "prune").exists()  # no record, plan or model
    h = np.eye(3)
    h[1, 2] = np.nan
    assert _one_line_error(lambda: robust_inverse(h, 0.01, name="layer1/0/conv1")) == \
        "layer1/0/conv1: the Hessian has NaN/Inf entries"


# --- stop signals and the fault hook ----------------------------------------------------

main_thread_only = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                      reason="signal handlers need the main thread")


@main_thread_only
def test_stop_signals_wait_for_a_safe_point_and_a_second_one_stops_at_once():
    previous = signal.getsignal(signal.SIGTERM)
    with interrupt.stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested() and interrupt.received() == signal.SIGTERM
        with pytest.raises(interrupt.Interrupted) as e:
            interrupt.check("at the test's safe point")
        assert e.value.exit_code == 143 and str(e.value) == "interrupted by SIGTERM at the test's safe point"
        with pytest.raises(interrupt.Interrupted, match="a second stop signal"):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10):  # the handler runs at the next bytecode boundaries
                pass
    assert signal.getsignal(signal.SIGTERM) is previous and not interrupt.requested()


@main_thread_only
def test_training_catches_sigint_too():
    from hobs_jax.train import Preemption

    with Preemption() as p:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a flag the loop polls
        assert p.requested()
    assert not interrupt.requested()


def test_fault_specs():
    assert faults.parse("train.step@3=kill, prune.end=term") == \
        {"train.step": [(3, "kill")], "prune.end": [(None, "term")]}
    for bad in ("train.step@x=kill", "prune.end=explode", "=kill"):
        with pytest.raises(ValueError, match=r"HOBS_JAX_FAULT=.*expected <point>\[@<n>\]=<action>"):
            faults.parse(bad)


def test_an_unreadable_record_counts_as_not_finished(tmp_path, caplog):
    wd = Workdir(str(tmp_path))
    wd.finish("train", _tiny(), {"ok": 1}, 1.0)
    assert wd.done("train")["outputs"] == {"ok": 1}
    with open(wd.record_path("train"), "w") as f:
        f.write('{"stage": "tr')
    assert wd.done("train") is None
    assert "stage.json is unreadable" in caplog.text and "stage train runs again" in caplog.text
