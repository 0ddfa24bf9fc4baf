"""The ``jax`` worker: XLA configurations (``jax.jit`` of the Flax module, compiled ahead
of time per batch size, dtype and device) and the ``probe`` that every run starts with
(models loaded or materialized, batch sizes checked, Flax reference outputs)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from hobs_jax.bench.worker import Backend, Runnable

# The reference is computed in chunks of this many examples (memory), always float32 on CPU.
REFERENCE_CHUNK = 32


def apply_fn(module):
    """The inference call of a loaded model: ``f(variables, x[B, H, W, C]) -> outputs``
    (``train=False`` where the module's ``__call__`` takes it, as the zoo's do)."""
    import inspect

    try:
        params = inspect.signature(module.__call__).parameters
        takes_train = "train" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_train = True
    if takes_train:
        return lambda v, x: module.apply(v, x, train=False)
    return lambda v, x: module.apply(v, x)


def check_batches(fn, variables, input_shape, batches) -> list[tuple[int, str]]:
    """``[(batch, reason), ...]`` for the batch sizes the model cannot take, found by
    shape evaluation only (nothing is computed). ``input_shape`` is one example's
    ``(H, W, C)``."""
    bad = []
    for b in batches:
        if not isinstance(b, int) or b < 1:
            bad.append((b, "batch sizes must be positive ints"))
            continue
        try:
            jax.eval_shape(fn, variables, jax.ShapeDtypeStruct((b,) + tuple(input_shape), jnp.float32))
        except Exception as e:  # any tracing error means: this batch does not fit the model
            from hobs_jax.bench.worker import one_line

            bad.append((b, one_line(e)))
    return bad


def cast_floats(tree, dtype):
    return jax.tree.map(lambda a: np.asarray(a).astype(dtype) if np.issubdtype(np.asarray(a).dtype, np.floating)
                        else np.asarray(a), tree)


class JaxBackend(Backend):
    framework = "jax"

    def framework_info(self) -> dict:
        devs = {}
        for platform in ("cpu", "gpu"):
            try:
                d = jax.devices(platform)
                devs[platform] = d[0].device_kind if d else None
            except RuntimeError:
                devs[platform] = None
        return {"devices": devs, "backend": jax.default_backend()}

    # -- probe -------------------------------------------------------------------------
    def op_probe(self, model: dict, batches: list[int], inputs: str, reference: str,
                 materialize: str, pool: int) -> dict:
        """Load (saved) or build and save (zoo, random weights) one model; check every
        batch size; write the input pool (``pool`` examples, standard normal, seed 0) and
        Flax's float32 outputs on it (CPU).

        Returns the model's path, input shape, zoo name and widths, MACs and parameters
        per example, and the output shape.
        """
        from hobs_jax import export, macs, models

        if model["zoo"]:
            name = model["zoo"]
            module = models.build(name, widths=model["widths"], num_classes=model["num_classes"],
                                  in_channels=model["in_channels"])
            shape = tuple(model["input_shape"] or models.input_shape(name, 1, in_channels=model["in_channels"])[1:])
            variables = models.random_variables(module, (1,) + shape, seed=model["seed"])
            path = export.save(materialize, module, variables, overwrite=True)
            meta = {"model": name, "widths": models.infer_widths(name, variables)[0]}
        else:
            path = model["path"]
            module, variables, meta = self.saved_model(path)
            shape = model["input_shape"] or meta.get("input_shape")
            if shape is None:
                try:
                    shape = models.input_shape(meta["model"], 1, in_channels=meta.get("in_channels"))[1:]
                except (KeyError, ValueError, TypeError):
                    raise ValueError(f"model {model['label']!r}: {path} records no input shape; "
                                     "give one (input=HxWxC)") from None
            shape = tuple(shape)
        fn = apply_fn(module)
        bad = check_batches(fn, variables, shape, batches)
        if bad:
            b, why = bad[0]
            raise ValueError(f"model {model['label']!r} cannot take batch {b} at input "
                             f"{'x'.join(map(str, shape))}: {why}")
        pool = np.random.default_rng(0).standard_normal((pool,) + shape, dtype=np.float32)
        np.save(inputs, pool)
        cpu = jax.devices("cpu")[0]
        v = jax.device_put(cast_floats(variables, np.float32), cpu)
        f = jax.jit(fn)
        outs = []
        for i in range(0, pool.shape[0], REFERENCE_CHUNK):
            chunk = np.zeros((REFERENCE_CHUNK,) + shape, np.float32)
            part = np.asarray(pool[i:i + REFERENCE_CHUNK], np.float32)
            chunk[:len(part)] = part
            outs.append(np.asarray(f(v, jax.device_put(chunk, cpu)))[:len(part)])
        ref = np.concatenate(outs)
        np.save(reference, ref.astype(np.float32))
        cost = macs.count(module, variables, (1,) + shape)
        widths = meta.get("widths") or getattr(module, "widths", None)
        return {"path": os.path.abspath(path), "input_shape": list(shape), "zoo": meta.get("model"),
                "widths": dict(widths) if widths else None, "macs": int(cost.macs),
                "params": int(cost.params), "output_shape": list(ref.shape[1:])}

    # -- configurations ------------------------------------------------------------------
    def preload(self, req: dict) -> None:
        self.saved_model(req["model_path"])

    def build(self, req: dict) -> Runnable:
        module, variables, _ = self.saved_model(req["model_path"])
        platform = req["device"]
        try:
            device = jax.devices(platform)[0]
        except RuntimeError:
            raise ValueError(f"JAX sees no {platform.upper()} device (backend {jax.default_backend()})") from None
        dtype = jnp.dtype(req["dtype"])
        v = jax.device_put(cast_floats(variables, dtype), device)
        x = jax.device_put(self.inputs(req["inputs"], req["batch"]).astype(dtype), device)
        fn, note = apply_fn(module), f"{device.platform}:{device.device_kind}"
        mode = req.get("fast_depthwise", "auto")
        if mode == "on" or (mode == "auto" and device.platform == "cpu"):
            # Depthwise convs as shifted-slice sums (hobs_jax.models.depthwise): the same
            # network, in the form XLA:CPU runs fast; a model without them is unchanged.
            from hobs_jax.models.depthwise import fast_depthwise

            fn, note = fast_depthwise(fn), note + "; depthwise as shift-add"
        compiled = jax.jit(fn).lower(v, x).compile()

        def run():
            return compiled(v, x).block_until_ready()

        def memory_mb():
            try:
                m = compiled.memory_analysis()
                total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                         - m.alias_size_in_bytes)
                return total / 2 ** 20
            except Exception:  # not every backend reports it
                return None

        return Runnable(run, lambda y: np.asarray(jax.device_get(y)).astype(np.float32), memory_mb,
                        note=note)
