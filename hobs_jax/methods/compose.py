"""A registered method is a named composition of parts (:mod:`hobs_jax.methods.parts`).

:class:`MethodSpec` runs the composition::

    select:   check options and target -> regularizer's training (if any) -> hold out the
              allocator's images -> the compensator's groups -> the allocator's floor ->
              the scorer's Scores                                        (a Selection)
    allocate: the allocator's kept counts                                (an Allocation)
    finish:   plan (top channels by score) -> the compensator's variables (a PruneOutcome)

``prune(task) = finish(select(task), allocate(...))``; one selection serves any number of
allocations (``finish(sel, keep)`` for each), e.g. every target of an experiment.

Options: each part's ``Options`` dataclass; a method's options are the union of its
parts' fields, flat (what the pipeline's ``prune.<method>`` section holds), plus
``allocation`` when the method lets the user choose among several allocators. A key two
parts share (``damp`` for the OBS scorer and compensator, ``progress``) is one option
and must have the same type and default in both.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from hobs_jax import allocation
from hobs_jax.methods.base import Calibration, PruneOutcome, PruneTask
from hobs_jax.methods.parts import Allocation, Selection
from hobs_jax.methods.registry import get_part
from hobs_jax.obs.timing import Timer
from hobs_jax.options import Options, as_dict, to_config

__all__ = ["MethodOptions", "MethodSpec"]


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """A method's validated options, per part (``task.options``).

    Attributes:
      method: the method's name; ``allocation`` the chosen allocator's name.
      regularizer, scorer, compensator: the parts' options (regularizer None if none).
      allocators: every allowed allocator's options by name (``allocator``: the chosen one's).
    Flat keys read through too (``options.damp``), and :meth:`to_dict` gives the flat view.
    """

    method: str
    allocation: str
    regularizer: Options | None
    scorer: Options
    allocators: Mapping[str, Options]
    compensator: Options
    choose_allocation: bool = False

    @property
    def allocator(self) -> Options:
        return self.allocators[self.allocation]

    def _parts(self):
        return [p for p in (self.regularizer, self.scorer, *self.allocators.values(), self.compensator)
                if p is not None]

    def __getattr__(self, key: str):
        if key.startswith("_"):
            raise AttributeError(key)
        for part in self._parts():
            if key in part.keys():
                return getattr(part, key)
        raise AttributeError(f"method {self.method!r} has no option {key!r}")

    def to_dict(self) -> dict:
        """The flat view (the config section): every part's fields (+ ``allocation``)."""
        out = {"allocation": self.allocation} if self.choose_allocation else {}
        for part in self._parts():
            out.update(part.to_dict())
        return out


def _check_target(task: PruneTask) -> None:
    if task.metric not in ("macs", "params", "latency"):
        raise ValueError(f"metric={task.metric!r}: use 'macs', 'params' or 'latency'")
    if task.metric == "latency" and task.latency is None:
        raise ValueError("metric='latency' needs a latency table (make_task(..., latency=table); "
                         "hobs_jax.methods.latency_table.cached_table measures one)")
    t = task.target
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise ValueError(f"target={t!r}: the kept fraction of the {task.metric} must be in (0, 1)")


def _unreachable_detail(task: PruneTask) -> str:
    fixed = [g for g in task.graph.groups if not g.prunable]
    return ", ".join(f"{g.id} ({g.reason or 'pinned'})" for g in fixed[:4])


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A named composition (module doc); register with
    :func:`hobs_jax.methods.register_method`.

    Attributes:
      name: registry name; ``summary``: one line for listings.
      scorer, compensator, regularizer: part names (regularizer None: no training phase).
      allocators: allocator names the ``allocation`` option may choose (first: default).
      defaults: this method's overrides of the parts' option defaults.
    """

    name: str
    scorer: str
    allocators: tuple[str, ...]
    compensator: str = "none"
    regularizer: str | None = None
    defaults: Mapping = dataclasses.field(default_factory=dict)
    summary: str = ""

    # -- parts and options ------------------------------------------------------------------
    def part(self, kind: str, allocation: str | None = None):
        """The part object of ``kind`` ('allocator': ``allocation`` or the default)."""
        if kind == "allocator":
            return get_part("allocator", allocation or self.allocators[0])
        name = getattr(self, kind)
        return None if name is None else get_part(kind, name)

    def _parts(self) -> list[tuple[str, Any]]:
        out = [("regularizer", self.part("regularizer"))] if self.regularizer else []
        out.append(("scorer", self.part("scorer")))
        out += [("allocator", self.part("allocator", a)) for a in self.allocators]
        out.append(("compensator", self.part("compensator")))
        return out

    @property
    def needs_data(self) -> bool:
        """Whether any part needs calibration images."""
        return any(bool(p.needs_data) for _, p in self._parts())

    @functools.cached_property
    def _fields(self) -> dict[str, tuple[Any, Any]]:
        """{key: (default, type)} over the parts; one-line error on a conflict."""
        out: dict[str, tuple[Any, Any]] = {}
        for kind, part in self._parts():
            hints = typing.get_type_hints(part.Options)
            for key, default in part.Options.defaults().items():
                default = self.defaults.get(key, default)
                if key in out and (out[key][1] != hints[key] or out[key][0] != default):
                    raise ValueError(f"method {self.name!r}: option {key!r} of {kind} {part.name!r} conflicts "
                                     f"with another part's ({out[key][0]!r} vs {default!r})")
                out[key] = (default, hints[key])
        unknown = [k for k in self.defaults if k not in out]
        if unknown:
            raise ValueError(f"method {self.name!r}: default for unknown option {unknown[0]!r}")
        return out

    def default_config(self):
        """The method's options as an ``ml_collections.ConfigDict`` (its config section)."""
        flat = {"allocation": self.allocators[0]} if len(self.allocators) > 1 else {}
        flat.update({k: d for k, (d, _) in self._fields.items()})
        return to_config(flat)

    def smoke_config(self):
        """:meth:`default_config` with every part's ``Options.smoke()`` overrides: the
        cheapest meaningful run (tests, smoke configs)."""
        c = self.default_config()
        for _, part in self._parts():
            for k, v in part.Options.smoke().items():
                if isinstance(v, Mapping):
                    c[k].update(v)
                else:
                    c[k] = v
        return c

    def options(self, values: Mapping | None = None) -> MethodOptions:
        """Validated :class:`MethodOptions` from flat ``values`` (defaults for the rest);
        one-line ``ValueError`` for an unknown key or a bad value."""
        if isinstance(values, MethodOptions):
            if values.method != self.name:
                raise ValueError(f"options of method {values.method!r} given to method {self.name!r}")
            return values
        given = dict(as_dict(values or {}))
        keys = set(self._fields) | ({"allocation"} if len(self.allocators) > 1 else set())
        unknown = [k for k in given if k not in keys]
        if unknown:
            raise ValueError(f"{self.name}: unknown option {unknown[0]!r}; options: {', '.join(sorted(keys))}")
        alloc = given.pop("allocation", self.allocators[0])
        if alloc not in self.allocators:
            raise ValueError(f"{self.name}: allocation={alloc!r}: use one of {self.allocators}")
        merged = {**{k: d for k, (d, _) in self._fields.items()}, **given}

        def build(part):
            return part.Options.build({k: merged[k] for k in part.Options.keys()}, where=self.name)

        reg = self.part("regularizer")
        return MethodOptions(self.name, alloc, build(reg) if reg is not None else None, build(self.part("scorer")),
                             {a: build(self.part("allocator", a)) for a in self.allocators},
                             build(self.part("compensator")), len(self.allocators) > 1)

    # -- running ----------------------------------------------------------------------------
    def check(self, task: PruneTask) -> MethodOptions:
        """Whether the method accepts ``task`` (its model, data, target and options), without
        computing anything: the checks :meth:`select` starts with (the setup validator runs
        them before a long job). Returns the validated options; one-line ``ValueError``
        when a part refuses."""
        opts = self.options(task.options)
        _check_target(task)
        reg, scorer, comp = self.part("regularizer"), self.part("scorer"), self.part("compensator")
        alloc = self.part("allocator", opts.allocation)
        if task.calib is None and self.needs_data:
            raise ValueError(f"{self.name} needs calibration data (task.calib is None)")
        for part, o in ((reg, opts.regularizer), (scorer, opts.scorer), (alloc, opts.allocator),
                        (comp, opts.compensator)):
            if part is not None and hasattr(part, "check"):
                part.check(task, o)
        if getattr(alloc, "needs_grid", False) and not hasattr(comp, "grid"):
            raise ValueError(f"{self.name}: allocator {alloc.name!r} needs per-count compensations, which "
                             f"compensator {comp.name!r} cannot precompute")
        return opts

    # -- running ----------------------------------------------------------------------------
    def select(self, task: PruneTask) -> Selection:
        """Everything before the allocation (module doc): a :class:`Selection` whose
        scores reach the allocator's floor."""
        opts = self.check(task)
        reg, scorer, comp = self.part("regularizer"), self.part("scorer"), self.part("compensator")
        alloc = self.part("allocator", opts.allocation)
        task = dataclasses.replace(task, options=opts)
        trained = None
        if reg is not None and reg.steps(opts.regularizer) > 0:
            if hasattr(reg, "train"):  # it alternates training with its own updates
                trained = reg.train(task, opts.regularizer)
                task = dataclasses.replace(task, variables=trained.variables)
            else:
                task = dataclasses.replace(task, variables=self._train(task, reg, opts.regularizer))
        holdout = None
        n = int(alloc.holdout(task, opts.allocator)) if hasattr(alloc, "holdout") else 0
        if n:
            if task.calib is None:
                raise ValueError(f"{self.name}: allocator {opts.allocation!r} holds out calibration images, "
                                 "and this task has no calibration data")
            images, labels = task.calib.images, task.calib.labels
            holdout = Calibration(images[-n:], labels[-n:])
            task = dataclasses.replace(task, calib=Calibration(images[:-n], labels[:-n]))
        sel = Selection(self, task, opts, holdout, task.cost, Timer())
        sel.trained = trained
        groups = comp.groups(sel, opts.compensator)
        if groups is not None:
            sel.cost = allocation.restrict(task.cost, list(groups))
        try:
            sel.floor = np.asarray(alloc.floor(sel, opts.allocator), np.float64)
        except allocation.Unreachable as e:
            raise ValueError(f"{e}; groups that cannot be pruned: {_unreachable_detail(task)}") from None
        sel.scores = scorer.score(sel, opts.scorer)
        return sel

    @staticmethod
    def _train(task: PruneTask, reg, o) -> dict:
        """The regularizer's training phase through ``task.finetune``: host copies of the
        trained variables with the input's dtypes."""
        if task.finetune is None:
            raise ValueError("a regularizer's training phase needs task.finetune (a fine-tuning function)")
        trained = task.finetune(dict(task.variables), int(reg.steps(o)), extra_loss=reg.loss(task, o),
                                extra_transform=reg.transform(task, o))
        return jax.tree.map(lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype),
                            {k: trained[k] for k in task.variables}, dict(task.variables))

    def allocate(self, sel: Selection) -> Allocation:
        """The allocator's kept counts for ``sel``."""
        alloc = self.part("allocator", sel.options.allocation)
        try:
            out = alloc.allocate(sel, sel.options.allocator)
        except allocation.Unreachable as e:
            raise ValueError(f"{e}; groups that cannot be pruned: {_unreachable_detail(sel.task)}") from None
        return out if isinstance(out, Allocation) else Allocation(np.asarray(out, np.float64))

    def finish(self, sel: Selection, keep, allocated: Allocation | None = None) -> PruneOutcome:
        """The outcome for kept counts ``keep`` [G] (>= ``sel.floor``): the plan keeps each
        group's top channels by score, the compensator gives the variables."""
        task, opts = sel.task, sel.options
        cost = sel.cost
        # set by the scorer, which runs before any allocator or compensator
        assert sel.scores is not None and sel.floor is not None
        keep = np.asarray(keep, np.float64)
        if np.any(keep < sel.floor):
            g = int(np.flatnonzero(keep < sel.floor)[0])
            raise ValueError(f"group {cost.group_ids[g]} keeps {int(keep[g])}, below the floor "
                             f"{int(sel.floor[g])} its removal path reached")
        from hobs_jax.graph import plan_from_scores

        keep_map = {g: int(k) for g, k in zip(cost.group_ids, keep)}
        plan = plan_from_scores(task.graph, sel.scores.channel, keep_map, round_to=task.round_to)
        removed = {}
        for g, size in zip(cost.group_ids, cost.sizes):
            kept = plan.kept(g)
            if kept is not None:
                removed[g] = np.setdiff1d(np.arange(int(size)), np.asarray(kept))
        comp = self.part("compensator")
        variables, comp_info = comp.compensate(sel, plan, removed, opts.compensator)
        info: dict = {"keep": {str(g): k for g, k in keep_map.items()}}
        reg = self.part("regularizer")
        if reg is not None:
            info.update(reg.info(opts.regularizer))
        if sel.trained is not None:
            info.update(sel.trained.info)
        info.update(sel.scores.info)
        info.update(self.part("scorer").report(sel, keep_map, opts.scorer))
        info.update(comp_info)
        if sel.timer.times:
            info["timings"] = sel.timer.rounded()
        artifacts, budget = {}, None
        if allocated is not None:
            if allocated.info:
                info[opts.allocation] = dict(allocated.info)
            artifacts, budget = dict(allocated.artifacts), allocated.budget
        return PruneOutcome(plan, variables, info, artifacts=artifacts, budget=budget)

    def prune(self, task: PruneTask) -> PruneOutcome:
        """Run the composition on ``task`` (module doc)."""
        sel = self.select(task)
        allocated = self.allocate(sel)
        return self.finish(sel, allocated.keep, allocated)
