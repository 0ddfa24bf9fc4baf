"""torchvision ViT attention in the one-``qkv``-Linear layout Torch-Pruning prunes by heads.

Torch-Pruning (1.6.1) sees ``nn.MultiheadAttention`` as one layer whose input and output
are both the residual stream: its ``MultiheadAttentionPruner`` can only cut ``embed_dim``
(so its torchvision ViT example prunes the residual width, rounded to a multiple of the
head count, and every head gets narrower). Whole-head pruning (``num_heads=...``,
``prune_num_heads=True``) works on layers whose output channels *are* the heads: timm's
``Attention`` (one ``qkv`` Linear [3*heads*head_dim, D], then ``proj``), which is what its
``examples/transformers/prune_timm_vit.py`` prunes. torch's packed ``in_proj_weight`` is
already that layout (q rows, then k, then v, each head after head), so
:func:`to_qkv_attention` swaps every attention of a torchvision ``VisionTransformer`` for a
:class:`QKVAttention` holding the same numbers, and :func:`to_head_attention` swaps it back
to :class:`parity.torch_models.HeadAttention` (torch's state-dict keys, any head count),
which ``parity.convert.torch_to_flax`` reads.

Both modules keep the softmax temperature 1/sqrt(``scale_dim``) of the unpruned head dim.
"""

from __future__ import annotations

import torch
from torch import nn

from parity.torch_models import HeadAttention


class QKVAttention(nn.Module):
    """Self-attention as timm writes it: ``qkv`` Linear [3*num_heads*head_dim, D] (q, k, v
    stacked, each head-major), softmax(q k^T / sqrt(scale_dim)) v, ``out_proj`` Linear
    [D, num_heads*head_dim]. Called like ``nn.MultiheadAttention(x, x, x,
    need_weights=False)``; returns ``(out [B, S, D], None)``.

    ``num_heads`` and ``head_dim`` are plain attributes, set again after pruning (as
    Torch-Pruning's ViT examples do) from the pruner's head count.
    """

    num_heads: int
    head_dim: int
    scale_dim: int

    def __init__(self, dim: int, num_heads: int, head_dim: int, scale_dim: int):
        super().__init__()
        self.num_heads, self.head_dim, self.scale_dim = num_heads, head_dim, scale_dim
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.out_proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, query: torch.Tensor, key=None, value=None, need_weights: bool = False):
        b, s, _ = query.shape
        qkv = self.qkv(query).reshape(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, S, head_dim]
        attn = torch.softmax((q * self.scale_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
        # -1, not heads*head_dim from construction: the width after pruning
        o = (attn @ v).transpose(1, 2).reshape(b, s, -1)
        return self.out_proj(o), None


def _copy(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def to_qkv_attention(model: nn.Module) -> list[QKVAttention]:
    """Swap every ``nn.MultiheadAttention`` / ``HeadAttention`` of ``model`` for an equal
    :class:`QKVAttention`, in place; returns the new modules in model order.

    A ``HeadAttention`` whose per-head q/k and v dims differ has no qkv layout and raises
    a one-line ``ValueError`` naming it.
    """
    out = []
    for path, m in list(model.named_modules()):
        if isinstance(m, nn.MultiheadAttention):
            if not m._qkv_same_embed_dim or m.bias_k is not None or m.in_proj_bias is None:
                raise ValueError(f"{path}: only self-attention with packed, biased in_proj converts")
            dim, heads, hd, scale = m.embed_dim, m.num_heads, m.head_dim, m.head_dim
        elif isinstance(m, HeadAttention):
            if m.qk_dim != m.v_dim:
                raise ValueError(f"{path}: qk_dim {m.qk_dim} != v_dim {m.v_dim}, no qkv layout")
            dim, heads, hd, scale = m.in_proj_weight.shape[1], m.heads, m.qk_dim, m.scale_dim
        else:
            continue
        w, b, proj = m.in_proj_weight, m.in_proj_bias, m.out_proj
        assert isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and isinstance(proj, nn.Linear)
        new = QKVAttention(dim, heads, hd, scale).to(w.dtype)
        _copy(new.qkv, w, b)
        _copy(new.out_proj, proj.weight, proj.bias)
        _set(model, path, new.train(m.training))
        out.append(new)
    return out


def to_head_attention(model: nn.Module) -> nn.Module:
    """Swap every :class:`QKVAttention` of ``model`` for an equal ``HeadAttention`` at its
    current (possibly pruned) head count, in place; returns ``model``."""
    for path, m in list(model.named_modules()):
        if not isinstance(m, QKVAttention):
            continue
        h, d = m.num_heads, m.head_dim
        if m.qkv.out_features != 3 * h * d or m.out_proj.in_features != h * d:
            raise ValueError(f"{path}: qkv {m.qkv.out_features} / out_proj {m.out_proj.in_features} features "
                             f"do not match {h} heads x {d}; set num_heads/head_dim after pruning")
        new = HeadAttention(m.qkv.in_features, h, d, d, m.scale_dim).to(m.qkv.weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(m.qkv.weight)
            new.in_proj_bias.copy_(m.qkv.bias)
        _copy(new.out_proj, m.out_proj.weight, m.out_proj.bias)
        _set(model, path, new.train(m.training))
    return model
