"""The ``torch`` worker: the torchvision-structured module from
:func:`hobs_jax.export.to_torch`, run eagerly, under ``torch.compile``, or compiled by
torch-tensorrt (``tensorrt`` on a GPU). NCHW input; ``torch.inference_mode``."""

from __future__ import annotations

import copy

import numpy as np
import torch

from hobs_jax.bench.worker import Backend, Runnable

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _nhwc(y) -> np.ndarray:
    if isinstance(y, (tuple, list)):
        y = y[0]
    y = y.detach().float().cpu().numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


class TorchBackend(Backend):
    framework = "torch"

    def __init__(self):
        super().__init__()
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        self._modules: dict[str, torch.nn.Module] = {}

    def framework_info(self) -> dict:
        info = {"cuda": torch.cuda.is_available(), "threads_used": torch.get_num_threads()}
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
        try:
            import torch_tensorrt

            info["torch_tensorrt"] = torch_tensorrt.__version__
        except Exception:  # not installed or not importable here (no CUDA)
            info["torch_tensorrt"] = None
        return info

    def _module(self, path: str) -> torch.nn.Module:
        if path not in self._modules:
            from hobs_jax import export

            module, variables, _ = self.saved_model(path)
            self._modules[path] = export.to_torch(module, variables)[0].eval()
        return self._modules[path]

    def preload(self, req: dict) -> None:
        self._module(req["model_path"])

    def build(self, req: dict) -> Runnable:
        runtime, device, dtype = req["runtime"], req["device"], _DTYPES[req["dtype"]]
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError(f"torch {torch.__version__} sees no CUDA device")
        dev = torch.device("cuda" if device == "gpu" else "cpu")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        module = copy.deepcopy(self._module(req["model_path"])).to(device=dev, dtype=dtype).eval()
        x = torch.from_numpy(self.inputs(req["inputs"], req["batch"]).transpose(0, 3, 1, 2).copy())
        x = x.to(device=dev, dtype=dtype)
        if runtime == "torch":
            fn = module
        elif runtime == "torch-compile":
            # One compiled graph per configuration (static shapes, like XLA). The
            # previous configuration's graph is dropped first (public reset), so
            # dynamo's per-function recompile limit never turns a later
            # configuration into a silent eager fallback.
            torch.compiler.reset()
            fn = torch.compile(module, dynamic=False)
        elif runtime == "tensorrt":
            if dev.type != "cuda":
                raise ValueError("TensorRT needs a CUDA GPU")
            import torch_tensorrt

            fn = torch_tensorrt.compile(module, ir="dynamo", inputs=[torch_tensorrt.Input(tuple(x.shape), dtype=dtype)],
                                        enabled_precisions={dtype})
        else:
            raise ValueError(f"the torch worker does not run {runtime!r}")
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def run():
            with torch.inference_mode():
                y = fn(x)
            sync()
            return y

        def memory_mb():
            if dev.type != "cuda":
                return None
            return torch.cuda.max_memory_allocated() / 2 ** 20

        return Runnable(run, _nhwc, memory_mb, note=f"{dev.type}" + (f":{torch.cuda.get_device_name(0)}"
                                                                      if dev.type == "cuda" else ""))
