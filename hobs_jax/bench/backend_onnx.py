"""The ``onnxruntime`` worker: an ``InferenceSession`` per configuration on the model's
ONNX file (CPU provider; CUDA provider on a GPU; TensorRT provider for ``tensorrt`` when
torch-tensorrt is not installed). NCHW input as the exporter writes it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from hobs_jax.bench.worker import Backend, Runnable


def _nhwc(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float32)
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


class OrtBackend(Backend):
    framework = "onnxruntime"

    def framework_info(self) -> dict:
        return {"providers": ort.get_available_providers(), "device": ort.get_device()}

    def _providers(self, runtime: str, device: str, dtype: str, shape: tuple[int, ...], name: str | None):
        avail = ort.get_available_providers()
        if runtime == "tensorrt":
            if "TensorrtExecutionProvider" not in avail:
                raise ValueError("this onnxruntime has no TensorrtExecutionProvider "
                                 "(pip install onnxruntime-gpu tensorrt)")
            dims = "x".join(map(str, shape))
            opts = {"device_id": 0, "trt_fp16_enable": dtype == "float16",
                    "trt_profile_min_shapes": f"{name}:{dims}", "trt_profile_max_shapes": f"{name}:{dims}",
                    "trt_profile_opt_shapes": f"{name}:{dims}"}
            return [("TensorrtExecutionProvider", opts), ("CUDAExecutionProvider", {"device_id": 0})]
        if dtype != "float32":
            raise ValueError(f"ONNX Runtime runs the exported float32 graph only, not {dtype}")
        if device == "gpu":
            if "CUDAExecutionProvider" not in avail:
                raise ValueError("this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            return [("CUDAExecutionProvider", {"device_id": 0})]
        return ["CPUExecutionProvider"]

    def build(self, req: dict) -> Runnable:
        path = req["onnx"]
        if not path:
            raise ValueError("no ONNX file for this model")
        x = np.ascontiguousarray(self.inputs(req["inputs"], req["batch"]).transpose(0, 3, 1, 2))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads > 0:
            opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # TensorRT's optimization profile names the input: read the name off the graph.
        in_name = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()[0].name \
            if req["runtime"] == "tensorrt" else None
        sess = ort.InferenceSession(path, opts, providers=self._providers(
            req["runtime"], req["device"], req["dtype"], x.shape, in_name))
        want = {"tensorrt": "TensorrtExecutionProvider", "gpu": "CUDAExecutionProvider"}.get(
            "tensorrt" if req["runtime"] == "tensorrt" else req["device"], "CPUExecutionProvider")
        if sess.get_providers()[0] != want:
            raise ValueError(f"ONNX Runtime fell back to {sess.get_providers()[0]} (asked for {want})")
        in_name = sess.get_inputs()[0].name
        out_name = sess.get_outputs()[0].name
        if req["device"] == "cpu":
            feed = {in_name: x}

            def run():
                return sess.run([out_name], feed)[0]

            return Runnable(run, _nhwc, note=want)
        # On a GPU the input stays on the device and the output is left there, as for XLA.
        binding = sess.io_binding()
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(in_name, x_dev)
        binding.bind_output(out_name, "cuda", 0)

        def run_gpu():
            sess.run_with_iobinding(binding)
            return binding.get_outputs()[0]

        return Runnable(run_gpu, lambda y: _nhwc(y.numpy()), note=want)
