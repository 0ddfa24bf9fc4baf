"""A JAX function as an ONNX graph: its jaxpr translated equation by equation.

Used by :func:`hobs_jax.export.to_onnx` for every network outside the zoo (and for zoo
models with ``via="jax"``), so any Flax model, linen or NNX, pruned or not, exports
without PyTorch. Why a translator of our own rather than ``jax2onnx``: jax2onnx 0.17.1
converts our test networks correctly (checked against Flax, ~2e-7), but from the local
PyPI mirror under the project's constraints pip resolves an older release (0.13.0)
together with a dozen new packages (orbax-export, equinox, dm-pix, huggingface-hub,
netron, ...) into the shared environment. The primitives a Flax vision model lowers to
are few, and each maps to one or two ONNX operators:

=================================================  ========================================
jaxpr                                              ONNX (opset 17)
=================================================  ========================================
element-wise arithmetic, comparisons, logic,       Add, Sub, Mul, Div, Max, Min, Pow, Neg,
exp/log/tanh/logistic/erf/sqrt/rsqrt/abs/sign,     Exp, Log, Tanh, Sigmoid, Erf, Sqrt,
integer_pow, square, select_n, clamp,              Reciprocal, Abs, Sign, Where, Clip,
convert_element_type                               Equal/Less/..., And/Or/Not, Cast
dot_general                                        Einsum (from its dimension numbers)
conv_general_dilated                               Transpose -> Conv -> Transpose
reduce_sum / max / min / prod, argmax              ReduceSum / ReduceMax / ..., ArgMax
reduce_window_max / reduce_window_sum (pooling)    MaxPool / AveragePool (x window size)
reshape, squeeze, expand_dims, broadcast_in_dim    Reshape, Reshape + Expand
transpose, concatenate, slice, split, pad          Transpose, Concat, Slice, Split, Pad
cumsum, iota                                       CumSum, a constant
jit / pjit / custom_jvp / custom_vjp / checkpoint  their body, inlined
=================================================  ========================================

Anything else raises a one-line ``ValueError`` naming the primitive and the layer. The
network's variables become initializers; the input is the Flax input (NHWC for images)
named ``input``, the output ``logits``, at the traced batch size.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

OPSET = 17
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
         "checkpoint": "jaxpr", "remat": "jaxpr", "remat2": "jaxpr"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
          "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
          "and": "And", "or": "Or", "xor": "Xor", "atan2": None}
UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid", "erf": "Erf",
         "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "floor": "Floor", "ceil": "Ceil", "sin": "Sin",
         "cos": "Cos", "not": "Not", "stop_gradient": "Identity", "copy": "Identity", "copy_p": "Identity",
         "reduce_precision": "Identity", "optimization_barrier": "Identity"}
REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd"}


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Builder:
    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def name(self, hint: str = "t") -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, dtype=None, hint: str = "c") -> str:
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
        from onnx import helper

        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs


def _shape(v) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(v.aval, "shape", ()))


def _dtype(v):
    return np.dtype(v.aval.dtype)


class _Converter:
    def __init__(self):
        self.b = _Builder()

    def fail(self, eqn, why: str = "") -> None:
        where = str(eqn.source_info.name_stack) or "<top>"
        raise ValueError(f"ONNX export: unsupported primitive '{eqn.primitive.name}' at {where}"
                         + (f" ({why})" if why else ""))

    def read(self, env, v) -> str:
        if isinstance(v, jcore.Literal):
            return self.b.const(np.asarray(v.val, dtype=_dtype(v)), hint="lit")
        return env[v]

    def walk(self, jaxpr, ins: Sequence[str], consts: Sequence[str]) -> list[str]:
        env: dict = {}
        for v, n in zip(jaxpr.constvars, consts):
            env[v] = n
        for v, n in zip(jaxpr.invars, ins):
            env[v] = n
        for eqn in jaxpr.eqns:
            names = [self.read(env, v) for v in eqn.invars]
            outs = self.equation(eqn, names)
            for v, n in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = n
        return [self.read(env, v) for v in jaxpr.outvars]

    def equation(self, eqn, x: list[str]) -> list[str]:
        name, p, b = eqn.primitive.name, eqn.params, self.b
        if name in CALLS:
            sub = p.get(CALLS[name])
            if sub is None:
                self.fail(eqn)
            inner, consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
            return self.walk(inner, x, [b.const(np.asarray(c)) for c in consts])
        if name in BINARY and BINARY[name]:
            return b.op(BINARY[name], x)
        if name == "ne":
            return b.op("Not", b.op("Equal", x))
        if name in UNARY:
            return b.op(UNARY[name], x)
        if name == "rsqrt":
            return b.op("Reciprocal", b.op("Sqrt", x))
        if name == "square":
            return b.op("Mul", [x[0], x[0]])
        if name == "log1p":
            return b.op("Log", b.op("Add", [x[0], b.const(1, _dtype(eqn.invars[0]))]))
        if name == "expm1":
            return b.op("Sub", b.op("Exp", x) + [b.const(1, _dtype(eqn.invars[0]))])
        if name == "integer_pow":
            return b.op("Pow", [x[0], b.const(p["y"], _dtype(eqn.invars[0]))])
        if name == "convert_element_type":
            return b.op("Cast", x, to=_onnx_type(p["new_dtype"]))
        if name == "select_n":
            if len(x) != 3:
                self.fail(eqn, "more than two cases")
            pred = x[0] if _dtype(eqn.invars[0]) == np.bool_ else b.op("Cast", [x[0]], to=_onnx_type(np.bool_))[0]
            return b.op("Where", [pred, x[2], x[1]])
        if name == "clamp":
            return b.op("Max", [b.op("Min", [x[1], x[2]])[0], x[0]])
        if name == "dot_general":
            return self.dot(eqn, x)
        if name == "conv_general_dilated":
            return self.conv(eqn, x)
        if name in REDUCE:
            axes = [int(a) for a in p["axes"]]
            if name == "reduce_sum":
                return b.op("ReduceSum", [x[0], b.const(axes, np.int64)], keepdims=0)
            return b.op(REDUCE[name], [x[0]], axes=axes, keepdims=0)
        if name in ("argmax", "argmin"):
            (axis,) = p["axes"]
            out = b.op("ArgMax" if name == "argmax" else "ArgMin", [x[0]], axis=int(axis), keepdims=0)
            return b.op("Cast", out, to=_onnx_type(p["index_dtype"]))
        if name in ("reshape", "squeeze", "expand_dims"):
            if name == "reshape" and p.get("dimensions") is not None:
                self.fail(eqn, "reshape with dimensions")
            return b.op("Reshape", [x[0], b.const(_shape(eqn.outvars[0]), np.int64)])
        if name == "broadcast_in_dim":
            shape, dims = tuple(p["shape"]), tuple(p["broadcast_dimensions"])
            src = _shape(eqn.invars[0])
            mid = [1] * len(shape)
            for d, n in zip(dims, src):
                mid[d] = n
            r = b.op("Reshape", [x[0], b.const(mid, np.int64)])
            return b.op("Expand", r + [b.const(shape, np.int64)])
        if name == "transpose":
            return b.op("Transpose", x, perm=[int(a) for a in p["permutation"]])
        if name == "concatenate":
            return b.op("Concat", x, axis=int(p["dimension"]))
        if name == "slice":
            n = len(p["start_indices"])
            steps = p["strides"] or (1,) * n
            return b.op("Slice", [x[0], b.const(p["start_indices"], np.int64), b.const(p["limit_indices"], np.int64),
                                  b.const(list(range(n)), np.int64), b.const(steps, np.int64)])
        if name == "split":
            return b.op("Split", [x[0], b.const(p["sizes"], np.int64)], n_out=len(p["sizes"]), axis=int(p["axis"]))
        if name == "pad":
            cfg = p["padding_config"]
            if any(i != 0 or lo < 0 or hi < 0 for lo, hi, i in cfg):
                self.fail(eqn, "negative or interior padding")
            pads = [lo for lo, _, _ in cfg] + [hi for _, hi, _ in cfg]
            return b.op("Pad", [x[0], b.const(pads, np.int64), x[1]], mode="constant")
        if name in ("reduce_window_max", "reduce_window_sum"):
            return self.pool(eqn, x)
        if name == "cumsum":
            return b.op("CumSum", [x[0], b.const(int(p["axis"]), np.int64)], reverse=int(bool(p["reverse"])))
        if name == "iota":
            shape, dim = tuple(p["shape"]), int(p["dimension"])
            arr = np.broadcast_to(np.arange(shape[dim]).reshape([-1 if i == dim else 1 for i in range(len(shape))]),
                                  shape).astype(p["dtype"])
            return [b.const(arr)]
        self.fail(eqn)

    def dot(self, eqn, x) -> list[str]:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        ln, rn = len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1]))
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        lhs = [next(letters) for _ in range(ln)]
        rhs = [None] * rn
        for i, j in zip(lc, rc):
            rhs[j] = lhs[i]
        for i, j in zip(lb, rb):
            rhs[j] = lhs[i]
        for j in range(rn):
            if rhs[j] is None:
                rhs[j] = next(letters)
        out = [lhs[i] for i in lb] + [lhs[i] for i in range(ln) if i not in lc and i not in lb] + \
              [rhs[j] for j in range(rn) if j not in rc and j not in rb]
        eq = f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
        y = self.b.op("Einsum", x, equation=eq)
        if _dtype(eqn.outvars[0]) != _dtype(eqn.invars[0]):
            y = self.b.op("Cast", y, to=_onnx_type(_dtype(eqn.outvars[0])))
        return y

    def conv(self, eqn, x) -> list[str]:
        p, b = eqn.params, self.b
        dn = p["dimension_numbers"]
        if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
            self.fail(eqn, "input dilation or batch groups")
        lhs = b.op("Transpose", [x[0]], perm=list(dn.lhs_spec))
        rhs = b.op("Transpose", [x[1]], perm=list(dn.rhs_spec))
        pads = [int(lo) for lo, _ in p["padding"]] + [int(hi) for _, hi in p["padding"]]
        y = b.op("Conv", lhs + rhs, strides=[int(s) for s in p["window_strides"]], pads=pads,
                 dilations=[int(d) for d in p["rhs_dilation"]], group=int(p["feature_group_count"]))
        inv = [0] * len(dn.out_spec)
        for i, d in enumerate(dn.out_spec):
            inv[d] = i
        return b.op("Transpose", y, perm=inv)

    def pool(self, eqn, x) -> list[str]:
        p, b = eqn.params, self.b
        shape = _shape(eqn.invars[0])
        dims, strides, pad = p["window_dimensions"], p["window_strides"], p["padding"]
        if any(d != 1 for d in p["base_dilation"]) or any(d != 1 for d in p["window_dilation"]):
            self.fail(eqn, "dilated pooling")
        win = [i for i in range(len(shape)) if dims[i] != 1 or strides[i] != 1 or tuple(pad[i]) != (0, 0)]
        rest = [i for i in range(len(shape)) if i not in win]
        t = b.op("Transpose", x[:1], perm=rest + win)
        lead = int(np.prod([shape[i] for i in rest])) if rest else 1
        t = b.op("Reshape", t + [b.const([lead, 1] + [shape[i] for i in win], np.int64)])
        kw = dict(kernel_shape=[int(dims[i]) for i in win], strides=[int(strides[i]) for i in win],
                  pads=[int(pad[i][0]) for i in win] + [int(pad[i][1]) for i in win])
        if eqn.primitive.name == "reduce_window_max":
            y = b.op("MaxPool", t, **kw)
        else:
            y = b.op("AveragePool", t, count_include_pad=1, **kw)
            y = b.op("Mul", y + [b.const(float(np.prod([dims[i] for i in win])), _dtype(eqn.invars[0]))])
        out = _shape(eqn.outvars[0])
        y = b.op("Reshape", y + [b.const([out[i] for i in rest] + [out[i] for i in win], np.int64)])
        inv = [0] * len(shape)
        for k, i in enumerate(rest + win):
            inv[i] = k
        return b.op("Transpose", y, perm=inv)


def to_onnx_model(fn: Callable[[Any], Any], input_shape: Sequence[int], dtype=jnp.float32,
                  opset: int = OPSET, name: str = "hobs_jax"):
    """``onnx.ModelProto`` of ``fn(x)`` for ``x`` of ``input_shape``; arrays ``fn`` closes
    over become initializers. One output (the first leaf of ``fn``'s result)."""
    import onnx
    from onnx import helper

    x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    closed = jax.make_jaxpr(fn)(x)
    conv = _Converter()
    consts = [conv.b.const(np.asarray(c), hint="w") for c in closed.consts]
    outs = conv.walk(closed.jaxpr, ["input"], consts)
    out_var = closed.jaxpr.outvars[0]
    conv.b.nodes.append(helper.make_node("Identity", [outs[0]], ["logits"]))
    graph = helper.make_graph(
        conv.b.nodes, name,
        [helper.make_tensor_value_info("input", _onnx_type(dtype), list(input_shape))],
        [helper.make_tensor_value_info("logits", _onnx_type(out_var.aval.dtype), list(_shape(out_var)))],
        conv.b.inits)
    # IR version 8 (ONNX 1.10+): what opset 17 needs, and readable by every onnxruntime
    # since 1.10 (onnx's default is the newest IR, which older runtimes refuse).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hobs_jax",
                              ir_version=8)
    onnx.checker.check_model(model)
    return model
