"""Inference benchmarks: latency, throughput, memory and compile time of zoo and saved
(pruned) models in XLA, ONNX Runtime, torch eager, ``torch.compile`` and TensorRT, each
framework in its own worker process, every runtime's outputs verified against Flax
before anything is timed. ``python -m hobs_jax.bench`` is the command line; docs/bench.md
the manual.

    from hobs_jax.bench import ModelSpec, Options, run_suite
    result = run_suite([ModelSpec.from_zoo("resnet20", input_shape=(28, 28, 1))],
                       ["xla", "onnxruntime"], Options(batch_sizes=(1, 64)), out_dir="runs/b")

This package imports no framework at module level: torch and onnxruntime are imported
only inside their worker processes (``hobs_jax.bench.backend_*``).
"""

from hobs_jax.bench.protocol import Worker, WorkerError
from hobs_jax.bench.report import read_csv, speedups, summary_markdown
from hobs_jax.bench.runtimes import DEVICES, DTYPES, RUNTIMES, TOLERANCE, Runtime, get_runtime
from hobs_jax.bench.spec import ModelSpec, parse_model
from hobs_jax.bench.stats import latency_stats, relative_error
from hobs_jax.bench.suite import COLUMNS, DEFAULT_BATCH_SIZES, SCHEMA, Options, SuiteResult, run_suite

__all__ = ["COLUMNS", "DEFAULT_BATCH_SIZES", "DEVICES", "DTYPES", "ModelSpec", "Options", "RUNTIMES",
           "Runtime", "SCHEMA", "SuiteResult", "TOLERANCE", "Worker", "WorkerError", "get_runtime",
           "latency_stats", "parse_model", "read_csv", "relative_error", "run_suite", "speedups",
           "summary_markdown"]
