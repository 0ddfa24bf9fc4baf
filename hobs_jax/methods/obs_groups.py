"""Which layers read, pass through or write each channel group: the bridge from the
channel graph to the OBS engine's layer-level :class:`~hobs_jax.obs.ChannelGroup`.

For a group g of the channel graph and the traced layers
(:func:`hobs_jax.stats.layers.trace_layers`), every kernel member of g is one of:

* **consumer**: g sits on a *contracted* kernel axis of a channel-mixing layer (a
  conv's input axis 2 with ``feature_group_count == 1``, a Dense/DenseGeneral input
  axis). Removing channel c deletes the rows ``Q_c`` of that layer's [d_in, d_out]
  kernel (its k*k taps for a conv; for ViT's ``out`` kernel [heads, v_dim, D] a head
  is v_dim rows, a value dim is ``heads`` rows). These layers carry the OBS saliency
  and receive the compensation. For a residual stream that is every conv/dense reading
  the stream (each block's first conv, the 1x1 downsample convs, the classifier).
* **pass-through**: a depthwise conv (kernel [k, k, 1, C], g on axis 3). Channel c of
  its output is computed from channel c of its input only, so it cannot compensate for
  a removed channel and is not a consumer; across it, the *consumer* of an expansion
  group (MobileNetV2 / EfficientNet ``hidden``) is the 1x1 projection (and EfficientNet's
  SE ``fc1``), whose inputs are the depthwise outputs, channel for channel. The
  depthwise filter of a removed channel just disappears.
* **producer**: g sits on an output axis (the conv producing the channel, BN/LN
  parameters, biases): these slices disappear, nothing is compensated.

Groups whose channels are normalized over the group (ViT's residual stream under
LayerNorm: ``Group.notes``) are scored with their consumers' Hessians but not
compensated: removing a channel changes the LayerNorm statistics of every other
channel, so the consumers' inputs are not the old inputs minus the removed rows.
A group with no consumer at all (ViT's q/k head dim: read only by the attention
product, no linear layer) is scored by its producers' output energy
``1/2 sum_cols w^T H w`` (the loss of zeroing those output columns).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hobs_jax.graph.groups import Graph, layout_channels
from hobs_jax.obs.layers import ChannelGroup, Site
from hobs_jax.stats.layers import LayerInfo


def axis_channels(graph: Graph, info: LayerInfo, gid: int, axes: tuple[int, ...]) -> np.ndarray:
    """For the kernel of ``info`` flattened row-major over ``axes``: the channel of group
    ``gid`` at each position (-1 where the group is absent)."""
    out = np.full(1, -1, np.int64)
    for a in axes:
        va = graph.axis("params", info.path + ("kernel",), a)
        size = info.kernel_shape[a]
        ch = layout_channels(va.layout, gid) if va is not None else np.full(size, -1)
        out = np.maximum(out[:, None], np.asarray(ch, np.int64)[None, :]).reshape(-1)
    return out


def group_roles(graph: Graph, infos: Mapping[tuple[str, ...], LayerInfo]) -> dict[int, ChannelGroup]:
    """The :class:`~hobs_jax.obs.ChannelGroup` of every prunable group of ``graph``
    (``infos``: :func:`hobs_jax.stats.layers.trace_layers` of the network)."""
    roles = {}
    for g in graph.prunable:
        consumers, producers, passthrough, notes = [], [], [], []
        seen = set()
        for m in g.members:
            if m.collection != "params" or m.path[-1] != "kernel":
                continue
            info = infos.get(tuple(m.path[:-1]))
            if info is None:
                notes.append(f"{m.name} is not a Conv/Dense kernel")
                continue
            key = (info.path, m.axis)
            if key in seen:
                continue
            seen.add(key)
            if info.kind == "depthwise":
                passthrough.append(info.path)
            elif m.axis in info.in_axes:
                if info.kind == "grouped":
                    notes.append(f"grouped conv {info.name} cannot be compensated")
                    continue
                ch = axis_channels(graph, info, g.id, info.in_axes)
                if (ch >= 0).any():
                    consumers.append(Site(info, ch))
            elif m.axis in info.out_axes:
                ch = axis_channels(graph, info, g.id, info.out_axes)
                if (ch >= 0).any() and info.kind != "grouped":
                    producers.append(Site(info, ch))
        compensate = bool(consumers) and g.mask_exact
        if not g.mask_exact:
            notes.append("normalized over the group (LayerNorm): saliency only, no compensation")
        if not consumers:
            notes.append("no channel-mixing consumer: scored by producer output energy")
        # One Site per layer (a layer may list the group on one in-axis only).
        roles[g.id] = ChannelGroup(g.id, g.size, tuple(consumers), tuple(producers),
                                   tuple(dict.fromkeys(passthrough)), compensate, "; ".join(dict.fromkeys(notes)))
    return roles
