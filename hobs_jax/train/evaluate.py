"""Evaluation: loss, top-1 and top-5 over an EvalLoader, every example counted once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from hobs_jax.models.depthwise import maybe_fast_depthwise
from hobs_jax.train import mesh as mesh_lib
from hobs_jax.train.metrics import progress
from hobs_jax.train.steps import make_eval_step, resolve_compute_dtype


def place_variables(variables: Any, mesh: Mesh) -> Any:
    """Keeps arrays already sharded on ``mesh``; replicates everything else onto it."""
    rep = mesh_lib.replicated(mesh)

    def one(x):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and (
            x.sharding.mesh == mesh):
            return x
        return mesh_lib.put_global(x, rep)

    return jax.tree.map(one, variables)


class Evaluator:
    """A compiled eval step bound to one model and mesh (reuse it across evaluations).

    Args:
      apply_fn: ``model.apply``.
      mesh: the ('data',) mesh.
      mixed_precision: 'auto' | 'off' | 'bf16' (as the train config).
      fast_depthwise: 'auto' | 'on' | 'off' (as the train config): depthwise convs as
        shifted-slice sums (:mod:`hobs_jax.models.depthwise`); 'auto' = on the CPU.
    """

    def __init__(self, apply_fn: Callable[..., Any], mesh: Mesh, mixed_precision: str = "off", *,
                 fast_depthwise: str = "auto"):
        self.apply_fn, self.mesh = maybe_fast_depthwise(apply_fn, fast_depthwise), mesh
        self.compute_dtype = resolve_compute_dtype(mixed_precision)
        self._steps: dict = {}

    def _step(self, variables):
        shardings = jax.tree.map(lambda x: x.sharding, variables)
        key = jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings))
        if key not in self._steps:
            self._steps[key] = make_eval_step(self.apply_fn, mesh=self.mesh,
                                              variables_shardings=shardings,
                                              compute_dtype=self.compute_dtype)
        return self._steps[key]

    def __call__(self, variables: Any, eval_data: Iterable[dict], *, desc: str = "eval",
                 show_progress: bool = True) -> dict[str, float]:
        """Returns {'loss', 'top1', 'top5' (if > 5 classes), 'count'} over ``eval_data``.

        ``eval_data`` yields this host's batches {'image', 'label', 'mask'} (an EvalLoader).
        """
        variables = place_variables(variables, self.mesh)
        step = self._step(variables)
        totals = None
        total = len(eval_data) if isinstance(eval_data, Sized) else None
        for batch in progress(eval_data, total=total, desc=desc, enabled=show_progress,
                              unit="batch"):
            sums = step(variables, mesh_lib.global_batch(batch, self.mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if totals is None:
            raise ValueError("evaluation data yielded no batches")
        totals = {k: float(mesh_lib.host_value(v)) for k, v in totals.items()}
        count = totals["count"]
        out = {"loss": totals["loss_sum"] / count, "top1": totals["top1_sum"] / count,
               "count": int(count)}
        if "top5_sum" in totals:
            out["top5"] = totals["top5_sum"] / count
        return out


def evaluate(model: Any, variables: Any, eval_data: Iterable[dict], *,
             mesh: Mesh | None = None, mixed_precision: str = "off",
             fast_depthwise: str = "auto", desc: str = "eval") -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy of ``model`` with ``variables`` on ``eval_data``.

    Args:
      model: a Flax module (or anything with ``.apply``) following the zoo contract.
      variables: {'params': ..., 'batch_stats'?: ...}, host or device arrays.
      eval_data: an :class:`hobs_jax.data.EvalLoader` (padded batches with 'mask').
      mesh: default: all devices on a ('data',) mesh.
      mixed_precision: 'auto' | 'off' | 'bf16'.
      fast_depthwise: 'auto' | 'on' | 'off' (depthwise convs as shifted-slice sums,
        :mod:`hobs_jax.models.depthwise`; 'auto' = on the CPU).
    Returns:
      {'loss': mean CE, 'top1': fraction, 'top5': fraction (only if > 5 classes),
       'count': examples counted}.
    """
    mesh = mesh or mesh_lib.make_mesh()
    return Evaluator(model.apply, mesh, mixed_precision, fast_depthwise=fast_depthwise)(
        variables, eval_data, desc=desc)
