"""Per-primitive channel rules: how each jaxpr primitive relates its operands' axes to
its results' axes.

A rule receives the operands' axes (one space id, or None for a size-1 axis, per
dimension) and returns the results' axes, uniting spaces that the primitive identifies
index for index. The rules:

====================================  =====================================================
primitive                             rule
====================================  =====================================================
element-wise (add, mul, max, select,  numpy broadcasting: equal-size axes of all operands and
convert_element_type, exp, ...)       the result are one space; size-1 axes broadcast
dot_general                           contracting pairs and batch pairs united; free axes pass
                                      through (Dense, DenseGeneral [D, heads, dim] kernels,
                                      attention einsums: q.k contracts head_dim, heads batch)
conv_general_dilated                  lhs feature = kernel in; kernel out = result feature;
                                      depthwise (in per group 1): in = out (x multiplier);
                                      other group counts: feature = prod(groups, per-group),
                                      the group count itself opaque; spatial axes fresh
reduce_sum/max/min/prod/...           reduced axes dropped (a note if a channel is reduced)
argmax/argmin                         reduced axis opaque (the result indexes it)
reduce_window_*                       window-1 axes pass; windowed axes -> fresh spatial
reshape                               row-major factor alignment (merge = product, split =
                                      product decomposition; boundaries that do not divide
                                      -> opaque)
broadcast_in_dim, squeeze, transpose  axes follow the dimension maps; new axes fresh
concatenate, split, slice, pad        sum decompositions with offsets; equal parts of a split
                                      are tied; fixed cut points and pad pieces -> opaque
dynamic_slice, gather, ...            full-size axes pass; indexed axes opaque
iota, rng                             fresh (iota's counting axis opaque)
====================================  =====================================================

Call-like primitives (jit, custom_jvp_call, custom_vjp_call, checkpoint) are recursed
into by :mod:`hobs_jax.graph.trace`. Anything else is *unsupported*: every operand axis
is tagged opaque with the primitive's name and layer path, so a group it touches is
reported non-prunable, never pruned wrongly.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from hobs_jax.graph.spaces import SpaceTable, Tag

Axes = tuple  # tuple[int | None, ...], one entry per dimension

ELEMENTWISE = frozenset("""
abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp complex conj convert_element_type
copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma igammac imag
integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow
population_count real reduce_precision rem round rsqrt select_n shift_left shift_right_arithmetic
shift_right_logical sign sin sinh sqrt square stop_gradient sub tan tanh xor optimization_barrier
""".split())
REDUCTIONS = frozenset(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                        "reduce_or", "reduce_xor"))
INDEX_REDUCTIONS = frozenset(("argmax", "argmin"))
WINDOWS = frozenset(("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"))
CUMULATIVE = frozenset(("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"))
RANDOM = frozenset(("random_bits", "random_seed", "random_wrap", "random_unwrap", "random_fold_in",
                    "random_split", "threefry2x32", "rng_bit_generator", "rng_uniform"))


class RuleContext:
    """What a rule may use: the space table, the layer path of the equation, helpers."""

    def __init__(self, table: SpaceTable):
        self.table = table
        self.where = ""
        self.primitive = ""
        self.act: list[bool] = []  # per operand: derived from the network input?

    @property
    def site(self) -> str:
        return f"{self.primitive} at {self.where or '<top>'}"

    def fresh(self, size: int, kind: str | None = None, text: str | None = None) -> int | None:
        return self.table.new(size, Tag(kind, text or self.site) if kind else None)

    def union(self, a, b) -> None:
        self.table.union(a, b, self.site)

    def opaque(self, spaces: Sequence[int | None], why: str | None = None) -> None:
        self.table.mix(spaces, why or f"{self.site} is not understood by the tracer")


Rule = Callable[[RuleContext, Any, list], list]
RULES: dict[str, Rule] = {}


def rule(*names: str):
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn
    return register


def _shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def unsupported(ctx: RuleContext, eqn, ins: list) -> list:
    """Opaque everything the primitive touches; results get fresh opaque spaces."""
    why = f"unsupported primitive '{eqn.primitive.name}' at {ctx.where or '<top>'}"
    ctx.opaque([a for axes in ins for a in axes], why)
    return [tuple(ctx.fresh(n, "opaque", why) for n in _shape(v)) for v in eqn.outvars]


def _broadcast(ctx: RuleContext, eqn, ins: list, shape: tuple[int, ...]) -> Axes:
    out = []
    for i, n in enumerate(shape):
        cands = [axes[i] for axes, v in zip(ins, eqn.invars)
                 if len(axes) == len(shape) and axes[i] is not None and _shape(v)[i] == n]
        for c in cands[1:]:
            ctx.union(cands[0], c)
        out.append(cands[0] if cands else ctx.fresh(n))
    return tuple(out)


NONLINEAR = {"logistic": "sigmoid", "tanh": "tanh", "erf": "erf", "erfc": "erf", "exp": "exp", "exp2": "exp",
             "expm1": "exp", "log": "log", "log1p": "log", "integer_pow": "pow", "pow": "pow", "square": "pow",
             "sqrt": "sqrt", "rsqrt": "sqrt", "cbrt": "pow", "abs": "abs", "sign": "sign", "sin": "sin",
             "cos": "sin", "select_n": "select", "round": "round", "floor": "round", "ceil": "round"}


def _constant(v):
    """The scalar value of a literal operand, or None."""
    val = getattr(v, "val", None)
    if val is None or getattr(v.aval, "shape", ()) not in ((), None):
        return None
    try:
        return float(val)
    except (TypeError, ValueError):
        return None


def activation_kind(ctx: RuleContext, eqn) -> str | None:
    """The nonlinearity an element-wise equation applies to the network's activations
    ("relu" for ``max(x, 0)``, "clip" for a max/min with another constant, "sigmoid",
    "erf", "mul" for a product of two activations, ...), None for affine steps (add,
    subtract, scale by a parameter or a constant) and for equations on parameters only."""
    name = eqn.primitive.name
    if not any(ctx.act):
        return None
    if name in ("max", "min"):
        consts = [_constant(v) for v, a in zip(eqn.invars, ctx.act) if not a]
        if not consts or sum(ctx.act) >= 2:
            return name
        return "relu" if name == "max" and consts[0] == 0.0 else "clip"
    if name in ("mul", "div") and sum(ctx.act) >= 2:
        return name
    if name == "clamp":
        return "clip"
    return NONLINEAR.get(name)


@rule(*ELEMENTWISE)
def elementwise(ctx: RuleContext, eqn, ins: list) -> list:
    shape = _shape(eqn.outvars[0])
    if any(len(a) not in (0, len(shape)) for a in ins):
        return unsupported(ctx, eqn, ins)
    out = _broadcast(ctx, eqn, ins, shape)
    kind = activation_kind(ctx, eqn)
    if kind is not None and out:
        ctx.table.tag(out[-1], "act", kind)
    if eqn.primitive.name in ("add", "sub") and sum(ctx.act) >= 2:
        full = [a for a, v, act in zip(ins, eqn.invars, ctx.act) if act and _shape(v) == shape]
        if len(full) >= 2 and len(shape) >= 2:  # a residual join of two feature maps
            ctx.table.tag(out[-1], "role", "residual")
    return [out for _ in eqn.outvars]


@rule("dot_general")
def dot_general(ctx: RuleContext, eqn, ins: list) -> list:
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    for i, j in zip(lc, rc):
        ctx.union(lhs[i], rhs[j])
    for i, j in zip(lb, rb):
        ctx.union(lhs[i], rhs[j])
    lfree = [i for i in range(len(lhs)) if i not in lc and i not in lb]
    rfree = [j for j in range(len(rhs)) if j not in rc and j not in rb]
    if all(ctx.act[:2]):  # activation x activation: attention products
        for i in lb:
            ctx.table.tag(lhs[i], "role", "heads")
        for i in list(lc) + lfree:
            ctx.table.tag(lhs[i], "role", "head_dim")
        for j in rfree:
            ctx.table.tag(rhs[j], "role", "head_dim")
    return [tuple(lhs[i] for i in lb) + tuple(lhs[i] for i in lfree) + tuple(rhs[j] for j in rfree)]


@rule("conv_general_dilated")
def conv(ctx: RuleContext, eqn, ins: list) -> list:
    lhs, rhs = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    oshape = _shape(eqn.outvars[0])
    rshape = _shape(eqn.invars[1])
    out: list = [None] * len(oshape)
    out[os_[0]] = lhs[ls[0]]
    groups = p["feature_group_count"]
    cout, cin_g = rshape[rs[0]], rshape[rs[1]]
    lfeat, rin, rout = lhs[ls[1]], rhs[rs[1]], rhs[rs[0]]
    if p["batch_group_count"] != 1:
        why = f"batch_group_count={p['batch_group_count']} in {ctx.site}"
        ctx.opaque([lfeat, rin, rout], why)
        out[os_[1]] = ctx.fresh(oshape[os_[1]], "opaque", why)
    elif groups == 1:
        ctx.union(lfeat, rin)
        out[os_[1]] = rout
    elif cin_g == 1:  # depthwise: one input channel per group, `cout // groups` outputs each
        mult = cout // groups
        if mult == 1:
            ctx.union(lfeat, rout)
        else:
            g, _ = ctx.table.decompose(rout, "prod", (groups, mult), ctx.site)
            ctx.union(lfeat, g)
        out[os_[1]] = rout
    else:  # grouped: channels within a group prunable uniformly, the group count is not
        g_in, per_in = ctx.table.decompose(lfeat, "prod", (groups, cin_g), ctx.site)
        ctx.union(per_in, rin)
        g_out, _ = ctx.table.decompose(rout, "prod", (groups, cout // groups), ctx.site)
        ctx.union(g_in, g_out)
        ctx.table.tag(g_in, "opaque", f"number of groups (feature_group_count={groups}) of {ctx.site}")
        out[os_[1]] = rout
    for d in range(2, len(oshape)):
        out[os_[d]] = ctx.fresh(oshape[os_[d]], "spatial", f"feature-map axis of {ctx.site}")
        ctx.table.tag(rhs[rs[d]], "spatial", f"kernel window of {ctx.site}")
    return [tuple(out)]


@rule(*REDUCTIONS)
def reduction(ctx: RuleContext, eqn, ins: list) -> list:
    axes = tuple(eqn.params["axes"])
    (x,) = ins
    for a in axes:
        ctx.table.tag(x[a], "note", f"reduced over by {ctx.site}")
    return [tuple(s for i, s in enumerate(x) if i not in axes)]


@rule(*INDEX_REDUCTIONS)
def index_reduction(ctx: RuleContext, eqn, ins: list) -> list:
    axes = tuple(eqn.params["axes"])
    (x,) = ins
    ctx.opaque([x[a] for a in axes], f"{ctx.site} returns indices into this axis")
    return [tuple(s for i, s in enumerate(x) if i not in axes)]


@rule(*WINDOWS)
def reduce_window(ctx: RuleContext, eqn, ins: list) -> list:
    p = eqn.params
    n_op = len(eqn.outvars)
    operands = ins[:n_op]
    shape = _shape(eqn.outvars[0])
    dims = p["window_dimensions"]
    out = []
    for d, n in enumerate(shape):
        identity = (dims[d] == 1 and p["window_strides"][d] == 1 and tuple(p["padding"][d]) == (0, 0)
                    and p["base_dilation"][d] == 1 and p["window_dilation"][d] == 1)
        if identity:
            for o in operands[1:]:
                ctx.union(operands[0][d], o[d])
            out.append(operands[0][d])
        else:
            ctx.opaque([o[d] for o in operands], f"windowed by {ctx.site}")
            out.append(ctx.fresh(n, "spatial", f"window output of {ctx.site}"))
    return [tuple(out) for _ in eqn.outvars]


@rule(*CUMULATIVE)
def cumulative(ctx: RuleContext, eqn, ins: list) -> list:
    (x,) = ins
    a = eqn.params["axis"]
    why = f"{ctx.site} accumulates along this axis"
    ctx.opaque([x[a]], why)
    return [tuple(ctx.fresh(_shape(eqn.outvars[0])[a], "opaque", why) if i == a else s
                  for i, s in enumerate(x))]


@rule("transpose")
def transpose(ctx: RuleContext, eqn, ins: list) -> list:
    return [tuple(ins[0][i] for i in eqn.params["permutation"])]


@rule("squeeze")
def squeeze(ctx: RuleContext, eqn, ins: list) -> list:
    dims = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    return [tuple(s for i, s in enumerate(ins[0]) if i not in dims)]


@rule("expand_dims")
def expand_dims(ctx: RuleContext, eqn, ins: list) -> list:
    shape = _shape(eqn.outvars[0])
    dims = {d % len(shape) for d in eqn.params["dimensions"]}
    it = iter(ins[0])
    return [tuple(None if i in dims else next(it) for i in range(len(shape)))]


@rule("broadcast_in_dim")
def broadcast_in_dim(ctx: RuleContext, eqn, ins: list) -> list:
    shape = tuple(eqn.params["shape"])
    src_shape = _shape(eqn.invars[0])
    out: list = [None] * len(shape)
    mapped = dict(zip(eqn.params["broadcast_dimensions"], range(len(src_shape))))
    for d, n in enumerate(shape):
        if d in mapped and src_shape[mapped[d]] == n:
            out[d] = ins[0][mapped[d]]
        else:
            out[d] = ctx.fresh(n)
    return [tuple(out)]


@rule("reshape")
def reshape(ctx: RuleContext, eqn, ins: list) -> list:
    if eqn.params.get("dimensions") is not None:
        return unsupported(ctx, eqn, ins)
    table = ctx.table
    leaves = [leaf for s in ins[0] for leaf in table.prod_leaves(s)]
    out = []
    for n in _shape(eqn.outvars[0]):
        parts, size = [], 1
        while size < n:
            if not leaves:
                why = f"{ctx.site} cannot be followed"
                ctx.opaque(list(ins[0]), why)
                return [tuple(ctx.fresh(m, "opaque", why) for m in _shape(eqn.outvars[0]))]
            leaf = leaves.pop(0)
            ls = table.size(leaf)
            if size * ls <= n:
                parts.append(leaf)
                size *= ls
                continue
            need = n // size
            if n % size or ls % need:
                why = f"{ctx.site} mixes axes (sizes {_shape(eqn.invars[0])} -> {_shape(eqn.outvars[0])})"
                ctx.opaque(list(ins[0]), why)
                return [tuple(ctx.fresh(m, "opaque", why) for m in _shape(eqn.outvars[0]))]
            head, tail = table.decompose(leaf, "prod", (need, ls // need), ctx.site)
            parts.append(head)
            size *= need
            leaves.insert(0, tail)
        out.append(table.composite("prod", parts, ctx.site))
    return [tuple(out)]


@rule("concatenate")
def concatenate(ctx: RuleContext, eqn, ins: list) -> list:
    d = eqn.params["dimension"]
    shape = _shape(eqn.outvars[0])
    out = []
    for i, n in enumerate(shape):
        if i == d:
            out.append(ctx.table.composite("sum", [a[d] for a in ins], ctx.site))
        else:
            for a in ins[1:]:
                ctx.union(ins[0][i], a[i])
            out.append(ins[0][i])
    return [tuple(out)]


def _take_piece(ctx: RuleContext, space, size: int, start: int, length: int):
    """The space of indices [start, start + length) of ``space`` (a sum piece).

    A piece that is one of ``size // length`` equal parts (``x[..., :n // 2]``) is taken
    from a decomposition into those equal parts, all tied: the code cutting there most
    likely computes the cut from the width, so every part must keep the same channels.
    Any other cut is at an index fixed in the program; its pieces are tagged opaque
    (pruning either side would move the cut)."""
    if start == 0 and length == size:
        return space
    if space is None:
        return None
    if length >= 2 and size % length == 0 and start % length == 0:
        parts = _equal_parts(ctx, space, size // length)
        return parts[start // length]
    sizes = [s for s in (start, length, size - start - length) if s > 0]
    parts = ctx.table.decompose(space, "sum", sizes, ctx.site)
    ctx.opaque(list(parts), f"{ctx.site} cuts this axis at a fixed index ({start}:{start + length} of {size})")
    return parts[1 if start > 0 else 0]


def _equal_parts(ctx: RuleContext, space, k: int) -> tuple:
    """``space`` as a sum of ``k`` equal parts, all united (channel c of every part is one
    channel): how ``jnp.split(x, k)`` / ``chunk`` must be pruned so the parts stay equal."""
    size = ctx.table.size(space)
    parts = ctx.table.decompose(space, "sum", [size // k] * k, ctx.site)
    for p in parts[1:]:
        ctx.union(parts[0], p)
    if parts[0] is not None:
        ctx.table.tag(parts[0], "role", "split")
    return parts


@rule("slice")
def slice_(ctx: RuleContext, eqn, ins: list) -> list:
    p = eqn.params
    shape = _shape(eqn.invars[0])
    strides = p["strides"] or (1,) * len(shape)
    out = []
    for d, n in enumerate(shape):
        lo, hi, st = p["start_indices"][d], p["limit_indices"][d], strides[d]
        if st != 1 and hi - lo > 1:
            why = f"strided {ctx.site}"
            ctx.opaque([ins[0][d]], why)
            out.append(ctx.fresh(_shape(eqn.outvars[0])[d], "opaque", why))
        else:
            out.append(_take_piece(ctx, ins[0][d], n, lo, 1 if st != 1 else hi - lo))
    return [tuple(out)]


@rule("split")
def split(ctx: RuleContext, eqn, ins: list) -> list:
    """``jnp.split(x, k)`` into equal parts ties the parts (see :func:`_equal_parts`);
    a split at explicit, unequal sizes cuts at fixed indices: its parts are opaque."""
    d, sizes = eqn.params["axis"], tuple(eqn.params["sizes"])
    x = ins[0]
    if x[d] is None:
        parts = [None] * len(sizes)
    elif len(set(sizes)) == 1 and sizes[0] >= 2:
        parts = _equal_parts(ctx, x[d], len(sizes))
    else:
        parts = ctx.table.decompose(x[d], "sum", sizes, ctx.site)
        ctx.opaque(list(parts), f"{ctx.site} cuts this axis at fixed sizes {sizes}")
    return [tuple(parts[k] if i == d else s for i, s in enumerate(x)) for k in range(len(sizes))]


@rule("pad")
def pad(ctx: RuleContext, eqn, ins: list) -> list:
    x = ins[0]
    out = []
    for d, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        n = _shape(eqn.invars[0])[d]
        if (lo, hi, interior) == (0, 0, 0):
            out.append(x[d])
        elif lo >= 0 and hi >= 0 and interior == 0:
            why = f"{ctx.site} adds a fixed number of entries to this axis"
            pieces = ([ctx.fresh(lo, "opaque", why)] if lo else []) + [x[d]] + \
                     ([ctx.fresh(hi, "opaque", why)] if hi else [])
            out.append(ctx.table.composite("sum", pieces, ctx.site))
        else:
            why = f"{ctx.site} with negative or interior padding"
            ctx.opaque([x[d]], why)
            out.append(ctx.fresh(n + lo + hi + max(n - 1, 0) * interior, "opaque", why))
    return [tuple(out)]


@rule("dynamic_slice")
def dynamic_slice(ctx: RuleContext, eqn, ins: list) -> list:
    x = ins[0]
    shape = _shape(eqn.invars[0])
    out = []
    for d, (n, m) in enumerate(zip(shape, eqn.params["slice_sizes"])):
        if n == m:
            out.append(x[d])
        else:
            why = f"{ctx.site} indexes this axis at run time"
            ctx.opaque([x[d]], why)
            out.append(ctx.fresh(m, "opaque", why))
    return [tuple(out)]


@rule("dynamic_update_slice")
def dynamic_update_slice(ctx: RuleContext, eqn, ins: list) -> list:
    x, upd = ins[0], ins[1]
    for d, (n, m) in enumerate(zip(_shape(eqn.invars[0]), _shape(eqn.invars[1]))):
        if n == m:
            ctx.union(x[d], upd[d])
        else:
            ctx.opaque([x[d], upd[d]], f"{ctx.site} writes part of this axis")
    return [tuple(x)]


@rule("gather")
def gather(ctx: RuleContext, eqn, ins: list) -> list:
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    x = ins[0]
    shape = _shape(eqn.invars[0])
    indexed = set(dn.start_index_map) | set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    why = f"{ctx.site} indexes this axis at run time"
    passed = []
    for d, n in enumerate(shape):
        if d in indexed or sizes[d] != n:
            ctx.opaque([x[d]], why)
        if d not in set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ())):
            passed.append(x[d] if (d not in indexed and sizes[d] == n) else None)
    oshape = _shape(eqn.outvars[0])
    out = [None] * len(oshape)
    for pos, space in zip(dn.offset_dims, passed):
        out[pos] = space if space is not None else ctx.fresh(oshape[pos], "opaque", why)
    for pos in range(len(oshape)):
        if pos not in dn.offset_dims:
            out[pos] = ctx.fresh(oshape[pos])
    return [tuple(out)]


@rule("iota")
def iota(ctx: RuleContext, eqn, ins: list) -> list:
    shape = _shape(eqn.outvars[0])
    dim = eqn.params["dimension"]
    return [tuple(ctx.fresh(n, "opaque", f"{ctx.site} counts along this axis") if i == dim else ctx.fresh(n)
                  for i, n in enumerate(shape))]


@rule(*RANDOM)
def random(ctx: RuleContext, eqn, ins: list) -> list:
    return [tuple(ctx.fresh(n) for n in _shape(v)) for v in eqn.outvars]


@rule("sort")
def sort(ctx: RuleContext, eqn, ins: list) -> list:
    d = eqn.params["dimension"]
    why = f"{ctx.site} permutes this axis"
    for a in ins[1:]:
        for i in range(len(a)):
            if i != d:
                ctx.union(ins[0][i], a[i])
    ctx.opaque([a[d] for a in ins], why)
    return [tuple(ctx.fresh(_shape(eqn.outvars[0])[d], "opaque", why) if i == d else s
                  for i, s in enumerate(ins[0])) for _ in eqn.outvars]


@rule("rev")
def rev(ctx: RuleContext, eqn, ins: list) -> list:
    dims = set(eqn.params["dimensions"])
    why = f"{ctx.site} reverses this axis"
    ctx.opaque([ins[0][d] for d in dims], why)
    shape = _shape(eqn.outvars[0])
    return [tuple(ctx.fresh(shape[i], "opaque", why) if i in dims else s for i, s in enumerate(ins[0]))]
