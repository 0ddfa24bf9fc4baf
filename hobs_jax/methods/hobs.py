"""``hobs``: Hessian-based structured Optimal Brain Surgeon for channel groups (H-OBS), its
parts (the ``obs`` scorer and the ``obs`` compensator), and the methods composed of them:
``hobs``, ``hobs_nohessian`` (the ablation without second-order information), ``rspar``
(R-SPAR's allocator between them) and the hybrids ``magnitude_obs`` (magnitude selection,
OBS compensation) and ``magnitude_rspar`` (magnitude selection under R-SPAR's allocation).
The linear algebra is the public OBS engine's (:mod:`hobs_jax.obs`).

H-OBS, in six phases (times reported in ``info['timings']``; phases 1-3 are the ``obs``
scorer, 4 the allocator, 5-6 the ``obs`` compensator):

1. **calibration** - one streamed pass over the calibration images accumulates the
   layer Hessian ``H = (2/n) X^T X`` of every layer that consumes a prunable group
   (:func:`hobs_jax.stats.collect_hessians`).
2. **inverses** - each H is dampened (``damp * mean(diag H)``, dead inputs' diagonal
   set to 1) and inverted by Cholesky, with geometric re-dampening when singular
   (:func:`hobs_jax.obs.robust_inverse`).
3. **selection** - per group, channels are removed greedily (``channels_per_step`` at a
   time): the saliency of channel c sums over every consumer layer l that reads it,
   ``rho_c = 1/2 sum_l sum_j c_lj W_lQj^T [(H_l^-1)_QQ]^-1 W_lQj`` with Q the rows of c in
   l; after each removal every consumer's weights are compensated and its inverse
   Hessian downdated (Schur complement), so later saliencies see earlier removals.
   ``c_lj = gamma_j^2 / (var_j + eps)`` when a BatchNorm normalizes layer l's output j
   (``bn_weighted``): errors are measured where the next layer sees them, which makes
   saliencies of different layers comparable. Producers' slices simply disappear;
   depthwise convs pass channels through (see :mod:`hobs_jax.methods.obs_groups`).
4. **allocation** - ``uniform``: one keep ratio (``allocation.uniform``), the greedy
   path runs to that count. ``global``: the greedy path runs to the floor
   (``min_ratio``); the k-th removed channel of a group gets the *running maximum* of the
   path's marginal losses up to k (a monotone "cost of pruning this group to size - k"),
   normalized per unit of MACs/params one channel of the group costs
   (``allocation.normalize(..., 'cost')``); one threshold over all groups
   (``allocation.global_threshold``) picks the kept counts, each group keeping the
   channels its path removes last.
5. **compensation** - every consumer is refit on its kept rows: ``W'_K = (H_KK)^-1 H_K,: W``
   with the dampened H (= the composed OBS updates of the greedy path), or with the
   undampened H (``refit=True``: plain least squares ``min ||X W - X_K W'||``).

6. **propagation** (``propagate`` sweeps, default 1) - phase 5 fits each consumer to the
   dense network's output *from the dense network's input*, which the pruned network no
   longer provides once upstream layers are cut. In forward order, every conv/dense
   layer is refit from the pruned network's own input (upstream already refit) to the
   dense layer's output: ``W'_K = (P_K^T P_K + lambda)^{-1} P_K^T Y`` (P: the pruned
   network's input, Y = D W the dense layer's output, on ``propagate_images`` calibration
   images; :mod:`hobs_jax.stats.cross`), so errors no longer compound with depth (ablation
   rows ``hobs@propagate=0`` in docs/results/oneshot_fmnist.md). All layers of a sweep are
   refit during ONE forward pass of the pruned network (:mod:`hobs_jax.obs.refit`).

BatchNorm statistics are NOT re-estimated here: ``PruneOutcome.variables`` are
full-size, and re-estimation needs the pruned network, so it is the caller's step, the
same for every method (the pipeline's prune stage does it when ``prune.bn_recalibrate``;
experiments call ``hobs_jax.stats.reestimate_bn`` on ``PruneResult.model/variables``).

References: Hassibi & Stork (NIPS 1993); OBC (Frantar & Alistarh, NeurIPS 2022);
SparseGPT dampening (Frantar & Alistarh, ICML 2023); OSSCAR (Meng et al., 2024);
ZipLM / oBERT structured OBS (Kurtic et al.). Math and conventions: docs/hobs.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import numpy as np

from hobs_jax import obs
from hobs_jax.methods.parts import Scores, Selection
from hobs_jax.methods.registry import register_method, register_part
from hobs_jax.obs import ChannelGroup, SolvedLayers
from hobs_jax.options import Options


@dataclasses.dataclass(frozen=True)
class ObsStatsOptions(Options):
    """The layer statistics every OBS part reads (one set per run, shared).

    damp: relative dampening lambda (H + lambda mean(diag H) I); dtype: Hessian
    accumulation; calib_batch_size: images per calibration step; max_damp_retries:
    re-dampening attempts for singular Hessians; blas_threads: OpenBLAS threads for the
    host linear algebra (0 = library default; 1 is fastest on a shared 2-core machine,
    :func:`hobs_jax.obs.blas_threads`); progress: bars.
    """

    damp: float = 0.01
    dtype: Literal["float32", "float64"] = "float32"
    calib_batch_size: int = 256
    max_damp_retries: int = 6
    blas_threads: int = 1
    progress: bool = True

    def check(self):
        self.require(self.damp >= 0, "damp", "must be >= 0")
        self.require(self.calib_batch_size >= 1, "calib_batch_size", "must be >= 1")
        self.require(self.max_damp_retries >= 0, "max_damp_retries", "must be >= 0")
        self.require(self.blas_threads >= 0, "blas_threads", "must be >= 0 (0: the library's default)")

    @classmethod
    def smoke(cls) -> dict:
        return {"progress": False}

    def stats_key(self) -> tuple:
        """The fields that define the shared statistics (a cache key)."""
        return tuple((k, getattr(self, k)) for k in ObsStatsOptions.keys())


@dataclasses.dataclass(frozen=True)
class ObsScorerOptions(ObsStatsOptions):
    """channels_per_step: channels removed per greedy step; bn_weighted: measure consumer
    errors after their BatchNorm; relative: losses as relative reconstruction errors
    (each consumer divided by its output energy)."""

    channels_per_step: int = 1
    bn_weighted: bool = True
    relative: bool = False

    def check(self):
        super().check()
        self.require(self.channels_per_step >= 1, "channels_per_step", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class ObsCompensatorOptions(ObsStatsOptions):
    """refit: compensate with the undampened H (plain least squares) instead of the
    dampened one (the composed OBS updates); propagate: sweeps of the sequential refit
    (0 = off; :func:`hobs_jax.obs.refit_sequential`); propagate_damp: its relative ridge;
    propagate_images: the calibration images it uses (one forward pass per sweep);
    propagate_min_rows: calibration rows per kept input a layer needs to be refit (a layer
    after a global pooling, such as a squeeze-excitation FC or the classifier, has one row
    per image; with fewer it keeps its OBS compensation; 0 = refit every layer)."""

    refit: bool = False
    propagate: int = 1
    propagate_damp: float = 1e-3
    propagate_images: int = 512
    propagate_min_rows: float = 2.0

    def check(self):
        super().check()
        self.require(self.propagate >= 0, "propagate", "must be >= 0")
        self.require(self.propagate_damp >= 0, "propagate_damp", "must be >= 0")
        self.require(self.propagate_images >= 1, "propagate_images", "must be >= 1")
        self.require(self.propagate_min_rows >= 0, "propagate_min_rows", "must be >= 0")


@dataclasses.dataclass
class ObsState:
    """What the OBS parts of one run share: the calibration images [N, H, W, C], the
    traced layers, the channel groups of the allocation, the flat variables, the layer
    Hessians (phase 1) and their inverses, solved on demand (phase 2)."""

    images: np.ndarray
    infos: Mapping
    groups: Mapping[int, ChannelGroup]
    flat: Mapping
    solved: SolvedLayers


def obs_state(sel: Selection, o: ObsStatsOptions) -> ObsState:
    """The run's :class:`ObsState` for statistics options ``o`` (built once per run)."""
    def build():
        task = sel.task
        images = obs.check_images(task.calib.images, task.input_shape)
        infos, groups = sel.layers()
        need = {}
        for g in groups.values():
            for site in g.sites:
                need[site.layer.path] = True
        with sel.timer("calibration"):
            stats = obs.layer_hessians(task.model, task.variables, images, paths=list(need),
                                       batch_size=int(o.calib_batch_size), dtype=o.dtype, progress=bool(o.progress),
                                       infos=infos)
        flat = obs.flat_variables(task.variables)
        return ObsState(images, infos, groups, flat,
                        SolvedLayers(stats, float(o.damp), max_retries=int(o.max_damp_retries), timer=sel.timer))
    return sel.shared(("obs",) + o.stats_key(), build)


class ObsScorer:
    """Phases 1-3 (module doc): each group's greedy OBS removal path down to the
    allocator's floor. Plan scores: removal rank; threshold scores: the running maximum
    of the path's marginal losses (+inf for channels it never removes)."""

    name = "obs"
    Options = ObsScorerOptions
    needs_data = True

    def score(self, sel: Selection, o: ObsScorerOptions) -> Scores:
        from hobs_jax.train import progress as bar

        st = obs_state(sel, o)
        n_remove = (sel.cost.sizes - sel.floor).astype(int)
        order, losses, how = {}, {}, {}
        with obs.blas_threads(int(o.blas_threads) or None):
            for i, gid in enumerate(bar(sel.group_ids, desc="H-OBS selection", unit="group",
                                        enabled=bool(o.progress))):
                group = st.groups[gid]
                st.solved.solve([s.layer for s in group.sites])  # inverses first: not counted as selection
                facts = dict(group=gid, size=group.size, removed=int(n_remove[i]), consumers=len(group.consumers),
                             max_d=max((s.layer.d_in for s in group.sites), default=0))
                with sel.timer("selection", **facts):
                    order[gid], losses[gid], how[gid] = obs.select(
                        group, int(n_remove[i]), st.flat, st.solved, per_step=int(o.channels_per_step),
                        bn_weighted=bool(o.bn_weighted), relative=bool(o.relative))
        size = {g: st.groups[g].size for g in sel.group_ids}
        return Scores({g: obs.rank_scores(size[g], order[g]) for g in sel.group_ids},
                      {g: obs.path_scores(size[g], order[g], losses[g]) for g in sel.group_ids},
                      order, losses,
                      {"calibration_images": int(len(st.images)),
                       "saliency": {str(g): how[g] for g in sel.group_ids},
                       "notes": {str(g): st.groups[g].note for g in sel.group_ids if st.groups[g].note}})

    def report(self, sel: Selection, keep: Mapping[int, int], o: ObsScorerOptions) -> dict:
        st = obs_state(sel, o)
        assert sel.scores is not None  # set by the scorer, which runs before any allocator or compensator
        return {"path_loss": {str(g): float(np.sum(sel.scores.losses[g][:int(s) - keep[g]]))
                              for g, s in zip(sel.group_ids, sel.cost.sizes)},
                "damping_raised": dict(st.solved.raised),
                "bn_reestimate": "caller (hobs_jax.stats.reestimate_bn on the pruned network)"}


class ObsCompensator:
    """Phases 5-6 (module doc): every consumer refit on its kept rows, then the
    sequential refit from the pruned network's own inputs (``propagate`` sweeps). Layers
    with fewer than ``propagate_min_rows`` calibration rows per kept input (after a global
    pooling) keep their phase-5 weights; their names are ``info['not_refit']``."""

    name = "obs"
    Options = ObsCompensatorOptions
    needs_data = True

    def groups(self, sel: Selection, o: ObsCompensatorOptions):
        return None

    def compensate(self, sel: Selection, plan, removed: Mapping[int, np.ndarray], o: ObsCompensatorOptions):
        task = sel.task
        st = obs_state(sel, o)
        threads = int(o.blas_threads) or None
        with obs.blas_threads(threads), sel.timer("compensation"):
            variables = obs.compensate_layers(task.variables, st.groups, removed, st.flat, st.solved,
                                              refit=bool(o.refit))
        info: dict = {}
        if int(o.propagate) > 0:
            with obs.blas_threads(threads), sel.timer("propagation"):
                by_layer = obs.removed_rows(st.groups, removed)
                # Every channel-mixing layer, except those reading a group that cannot be
                # compensated (LayerNorm): their rows are just sliced away.
                layers = [i for p, i in st.infos.items()
                          if i.kind in ("conv", "dense") and (p not in by_layer or by_layer[p][2])]
                rem = {p: np.unique(np.concatenate(by_layer[p][1])) for p in by_layer}
                skipped: list = []
                variables = obs.refit_sequential(
                    task.model, task.variables, variables, layers, rem, st.images[:max(1, int(o.propagate_images))],
                    sweeps=int(o.propagate), damp=float(o.propagate_damp), batch_size=int(o.calib_batch_size),
                    min_rows=float(o.propagate_min_rows), skipped=skipped)
            if skipped:  # too few calibration rows for a least-squares refit: OBS compensation kept
                info["not_refit"] = skipped
        return variables, info

    def grid(self, sel: Selection, gid: int, order: np.ndarray, counts: np.ndarray,
             o: ObsCompensatorOptions) -> dict:
        st = obs_state(sel, o)
        return obs.group_grid(st.groups[gid], order, counts, st.flat, st.solved, refit=bool(o.refit))


register_part("scorer", ObsScorer())
register_part("compensator", ObsCompensator())

register_method("hobs", scorer="obs", allocators=("global", "uniform"), compensator="obs",
                defaults=dict(normalize="cost"),
                summary="structured OBS: layer Hessians, greedy channel removal with compensation, "
                        "uniform/global allocation")
register_method("hobs_nohessian", scorer="l2sq", allocators=("global", "uniform"), compensator="none",
                defaults=dict(normalize="cost"),
                summary="H-OBS ablation: group L2^2 saliency (H = I), same allocation, no compensation")
register_method("rspar", scorer="obs", allocators=("rspar",), compensator="obs",
                summary="R-SPAR: DDPG per-group sparsity allocation with H-OBS-compensated rewards, "
                        "pruning by H-OBS")
register_method("magnitude_obs", scorer="l2", allocators=("uniform", "global"), compensator="obs",
                defaults=dict(normalize="mean"),
                summary="hybrid: group L2 selection, H-OBS compensation and refit")
register_method("magnitude_rspar", scorer="l2", allocators=("rspar",), compensator="none",
                defaults=dict(normalize="mean"),
                summary="hybrid: group L2 selection under R-SPAR's learned allocation, no compensation")
