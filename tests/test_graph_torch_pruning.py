"""Cross-check of the channel graph and surgery against Torch-Pruning 1.6.1 (DepGraph,
Fang et al., CVPR 2023) on the same torchvision architectures and the same weights.

For ResNet-18, ResNet-50, MobileNetV2 and EfficientNet-B0:
  * the same number of prunable groups, with the same sizes and the same parameterized
    modules in each group (TP: ``DependencyGraph().build_dependency`` then
    ``get_all_groups(ignored_layers=[final fc], root_module_types=[Conv2d, Linear])``);
  * removing the same channel indices (``group.prune(idxs)`` in TP, ``apply_plan`` here)
    gives bit-identical state dicts, identical parameter counts and ops
    (``tp.utils.count_ops_and_params``), and float64 outputs that agree to the parity
    standard (max|diff| / max|ref| <= 1e-12). Graph building and pruning run in float32
    (torch's first float64 call per conv shape costs seconds on this CPU); both pruned
    networks are then evaluated in float64 on the same float32-valued weights.

ViT-B/16 (narrow, torchvision's ``VisionTransformer`` class): TP's graph has the
residual stream and one group per MLP; it has no head or head-dim groups, because
``nn.MultiheadAttention`` ties its q/k/v projections and ``out_proj`` to ``embed_dim``,
which in torchvision's ViT *is* the residual width (TP's MHA pruner cuts ``in_proj``
rows and ``out_proj`` in the stream's indices; its ``prune_num_heads`` option removes
heads by cutting that same embedding). Our attention kernels keep heads, q/k dims and v
dims as their own axes, so we have 3 more groups per layer. Those 36 groups are left
out of the comparison; the stream and the 12 MLP groups match, and MLP pruning is
cross-checked like the CNNs. (Pruning the stream is not compared: in TP it also shrinks
every head's dimension, here it does not.)
"""

import jax
import numpy as np
import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from hobs_jax import graph as G
from hobs_jax import macs
from parity.convert import flax_to_state_dict, flax_to_torch, torch_to_flax

SIZE = 32  # any size works for the CNNs (float64 depthwise convs are slow in torch); ViT needs 224


def _torch_model(name):
    torch.manual_seed(0)
    if name == "vit_b_16":
        m = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=12,
                                                 hidden_dim=96, mlp_dim=384, num_classes=10)
    else:
        m = getattr(torchvision.models, name)(weights=None, num_classes=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN statistics, biases and zero-initialized heads
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.uniform_(-0.2, 0.2, generator=g)
        for p in m.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05, generator=g)
    return m.eval()


def _input(name):
    s = 224 if name == "vit_b_16" else SIZE
    return torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, s, s)).astype(np.float32))


def _tp_groups(model, x):
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return dg, list(dg.get_all_groups(ignored_layers=[last], root_module_types=[nn.Conv2d, nn.Linear]))


def _tp_modules(group, names):
    """Named modules with their own parameters in a TP group (ViT's bare class token and
    positional embedding are ``nn.Parameter`` nodes, not modules, and are skipped)."""
    out = set()
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Module) and m in names and list(m.parameters(recurse=False)):
            out.add(names[m])
    return out


def _our_modules(group):
    return {".".join(m.path[:-1]) for m in group.members if m.collection == "params" and len(m.path) > 1}


def _out_axis(module):
    return 3 if isinstance(module, nn.Conv2d) else 1  # HWIO conv kernels, [in, out] dense kernels


def _macs_conv_linear(model, x):
    """Conv/Linear multiply-accumulates by hooks (the torchvision/fvcore convention)."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            total[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += out.numel() // out.shape[0] * m.in_features
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return total[0]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16"])
def test_same_groups_same_pruning_as_torch_pruning(name):
    tm = _torch_model(name)
    x = _input(name)
    model, variables = torch_to_flax(name, tm)
    g = G.build_graph(model, variables)
    dg, tp_groups = _tp_groups(tm, x[:1])
    names = {m: n for n, m in tm.named_modules()}

    attention_axes = ("heads", "head_dim") if name == "vit_b_16" else ()
    ours = [grp for grp in g.prunable if grp.kind not in attention_axes]
    assert len(tp_groups) == len(ours)
    assert sorted(len(grp[0][1]) for grp in tp_groups) == sorted(grp.size for grp in ours)
    if name == "vit_b_16":
        assert len(g.prunable) - len(ours) == 36 and {grp.kind for grp in g.prunable} - {"residual", "channels"} \
            == {"heads", "head_dim"}

    # Match every TP group to ours through its root module's output channels.
    plan_keep, removals = {}, []
    rng = np.random.default_rng(4)
    for tg in tp_groups:
        root = tg[0].dep.target.module
        path = tuple(names[root].split(".")) + ("kernel",)
        va = g.axis("params", path, _out_axis(root))
        assert va is not None and isinstance(va.layout, G.Atom), names[root]
        grp = g.group(va.layout.group)
        assert grp.size == len(tg[0][1])
        if name != "vit_b_16" or grp.kind == "channels":
            assert _tp_modules(tg, names) == _our_modules(grp), names[root]
        if name == "vit_b_16" and grp.kind != "channels":
            continue  # the residual stream: not comparable (see module docstring)
        n = int(rng.integers(max(1, grp.size // 4), grp.size))
        keep = np.sort(rng.choice(grp.size, n, replace=False))
        plan_keep[grp.id] = tuple(int(i) for i in keep)
        removals.append((root, sorted(set(range(grp.size)) - set(keep.tolist()))))

    # Same indices in both frameworks.
    plan = G.make_plan(g, plan_keep)
    pm, pv = G.apply_plan(model, variables, plan, graph=g)
    for root, removed in removals:
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        dg.get_pruning_group(root, fn, removed).prune()

    scale = {"scale_dim": 8} if name == "vit_b_16" else {}
    ours_torch = flax_to_torch(name, pv, **scale)
    sd_tp, sd_ours = tm.state_dict(), flax_to_state_dict(name, pv)
    assert set(sd_tp) == set(sd_ours)
    for key, t in sd_tp.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(sd_ours[key], t), key

    ops_tp, params_tp = tp.utils.count_ops_and_params(tm, x[:1])
    ops_ours, params_ours = tp.utils.count_ops_and_params(ours_torch, x[:1])
    assert params_ours == params_tp
    rep = macs.count(pm, pv, (1,) + tuple(x.shape[2:]) + (3,))
    assert rep.params == params_tp
    if name == "vit_b_16":
        # A narrow ViT exports its attention as parity's HeadAttention, whose functional
        # ops TP's counter does not count as it counts nn.MultiheadAttention's, so the
        # ops differ; MACs are checked against the TP model's weight shapes instead:
        # S tokens through every Linear/projection, 196 patches through conv_proj, and
        # the two attention products S^2 * heads * (qk_dim + v_dim) per layer.
        seq, heads, dim = 197, 12, 8
        want = 196 * tm.conv_proj.weight.numel() + tm.heads.head.weight.numel()
        for blk in tm.encoder.layers:
            want += seq * (blk.self_attention.in_proj_weight.numel() + blk.self_attention.out_proj.weight.numel()
                           + blk.mlp[0].weight.numel() + blk.mlp[3].weight.numel())
            want += seq * seq * heads * 2 * dim
        assert rep.macs == want
    else:
        assert ops_ours == ops_tp
        assert rep.macs == _macs_conv_linear(tm, x)

    # Outputs in float64 (weights are the same float32 values in both).
    ours64 = flax_to_torch(name, jax.tree.map(lambda a: np.asarray(a, np.float64), pv), **scale)
    with torch.no_grad():
        y_tp, y_ours = tm.double()(x.double()), ours64(x.double())
    assert y_ours.dtype == torch.float64
    assert float((y_tp - y_ours).abs().max() / y_tp.abs().max()) <= 1e-12
