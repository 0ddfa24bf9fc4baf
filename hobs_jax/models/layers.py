"""Building blocks shared by the model zoo, numerically matched to torchvision.

Every convolution takes *explicit symmetric* padding ((k - 1) // 2 * dilation per side,
as torchvision's ``Conv2dNormActivation`` does): Flax's ``'SAME'`` pads (0, 1) for an
even-sized window with stride 2 and gives different numbers. BatchNorm converts
torch's ``momentum`` m to Flax's 1 - m and never uses the one-pass ("fast") variance.

Layouts are NHWC for activations and HWIO for convolution kernels. Containers such as
:class:`Sequential` exist only to reproduce torchvision's module paths, so that a Flax
parameter path joined with dots is the torch ``state_dict`` key (``layer1.0.conv1``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hobs_jax.models.sparse import Conv, Dense  # noqa: F401  (Dense: the zoo's dense layer)

Array = jax.Array


def symmetric_padding(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """((p, p), (p, p)) with p = (kernel - 1) // 2 * dilation, torchvision's rule."""
    p = (kernel - 1) // 2 * dilation
    return ((p, p), (p, p))


def conv(features: int, kernel: int = 3, stride: int = 1, groups: int = 1,
         use_bias: bool = False, padding: int | None = None, name: str | None = None) -> Conv:
    """A ``flax.linen.Conv`` with torchvision's explicit symmetric padding.

    Returned directly (not wrapped) so its parameters sit at ``<name>/kernel`` like
    torch's ``<name>.weight``. It is a :class:`hobs_jax.models.sparse.Conv`: a plain
    ``nn.Conv`` unless the model's ``block_ell`` spec names it (1x1 convs only).
    """
    p = (kernel - 1) // 2 if padding is None else padding
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        name=name,
    )


def batch_norm(train: bool, eps: float = 1e-5, torch_momentum: float = 0.1,
               name: str | None = None) -> nn.BatchNorm:
    """BatchNorm over the channel (last) axis; torch momentum m -> Flax momentum 1 - m."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=1.0 - torch_momentum,
        epsilon=eps,
        use_fast_variance=False,
        name=name,
    )


class ConvBNAct(nn.Module):
    """torchvision's ``Conv2dNormActivation``: conv (no bias) -> BN -> activation.

    Parameter paths: ``<name>/0`` (conv) and ``<name>/1`` (BN), as in torch.
    Input [B, H, W, C_in] -> output [B, H/stride, W/stride, features].
    """

    features: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1
    act: Callable[[Array], Array] | None = nn.relu
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = conv(self.features, self.kernel, self.stride, self.groups, name="0")(x)
        x = batch_norm(train, self.bn_eps, name="1")(x)
        return self.act(x) if self.act is not None else x


def relu6(x: Array) -> Array:
    """min(max(x, 0), 6), torch's ReLU6."""
    return jnp.clip(x, 0.0, 6.0)


def gelu_exact(x: Array) -> Array:
    """The exact (erf) GELU that torchvision's ViT uses."""
    return nn.gelu(x, approximate=False)


def global_avg_pool(x: Array) -> Array:
    """[B, H, W, C] -> [B, C], torch's AdaptiveAvgPool2d(1) + flatten."""
    return jnp.mean(x, axis=(1, 2))


def max_pool_3x3_s2(x: Array) -> Array:
    """torchvision ResNet's stem max-pool (k=3, s=2, explicit padding 1, -inf pad)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def stochastic_depth(x: Array, rate: float, deterministic: bool, rng: Callable[[], Array]) -> Array:
    """Row-mode stochastic depth (torchvision.ops.StochasticDepth(p, 'row')).

    Identity in evaluation; in training each example's branch is dropped with
    probability ``rate`` and the survivors are scaled by 1 / (1 - rate).
    """
    if deterministic or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0)


class StochasticDepth(nn.Module):
    """:func:`stochastic_depth` as a parameter-free module, so that code which needs the
    training-mode network without its randomness (BatchNorm statistics: ``hobs_jax.stats.bn.
    apply_batch_norm_mode``) can intercept it like ``flax.linen.Dropout``. ``rng`` is the
    caller's key source (the parent's ``make_rng('dropout')``), so the draws are those of
    the plain function."""

    rate: float

    def __call__(self, x: Array, deterministic: bool, rng: Callable[[], Array]) -> Array:
        return stochastic_depth(x, self.rate, deterministic, rng)


def check_input(x: Array, model: str, in_channels: int, image_size: int | None = None) -> None:
    """One-line errors for a wrong input rank, channel count, spatial size or dtype."""
    if x.ndim != 4:
        raise ValueError(f"{model}: input must be NHWC [B, H, W, C], got rank {x.ndim} shape {tuple(x.shape)}")
    if x.shape[-1] != in_channels:
        raise ValueError(f"{model}: input has {x.shape[-1]} channels (last axis), expected {in_channels}; "
                         f"shape {tuple(x.shape)} (inputs are NHWC)")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{model}: input dtype must be floating, got {x.dtype}")
    if image_size is not None and (x.shape[1], x.shape[2]) != (image_size, image_size):
        raise ValueError(f"{model}: input spatial size {x.shape[1]}x{x.shape[2]}, expected {image_size}x{image_size}")


def check_min_size(x: Array, model: str, min_size: int) -> None:
    """One-line error for an input smaller than ``min_size`` on either side (a small-image
    variant's total stride: below it the last stages would see only padding)."""
    if min(x.shape[1], x.shape[2]) < min_size:
        raise ValueError(f"{model}: input spatial size {x.shape[1]}x{x.shape[2]} is too small, "
                         f"need at least {min_size}x{min_size} (the network's total stride)")


class Sequential(nn.Module):
    """A torch-style ``Sequential`` whose children are named "0", "1", ...

    ``layers`` holds factories ``name -> callable``: each either builds a Flax module
    (created here, so that it is this container's child and its parameters sit at
    ``<container>/<index>/...``) or returns a plain function (activation, dropout in
    eval), which still occupies its index exactly as torch's ``nn.ReLU`` does.
    """

    layers: tuple[Callable[[str], Callable[[Array], Array]], ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, factory in enumerate(self.layers):
            x = factory(str(i))(x)
        return x


def fn_layer(f: Callable[[Array], Array]) -> Callable[[str], Callable[[Array], Array]]:
    """A parameter-free Sequential entry (activation, identity dropout)."""
    return lambda name: f


STAGE_SUFFIX = ":out"


def sow_stage(module: nn.Module, name: str, x: Array) -> None:
    """Record a stage output under ``<name>:out`` in the ``intermediates`` collection
    (the suffix keeps it apart from the submodule that is also called ``name``)."""
    module.sow("intermediates", name + STAGE_SUFFIX, x)


def sowing(module: nn.Module, factory: Callable[[str], Callable[[Array], Array]], name: str
           ) -> Callable[[str], Callable[[Array], Array]]:
    """Wrap a Sequential entry factory so its output is sown as stage ``name``
    (see :func:`sow_stage`); used for torchvision's ``features.<k>`` stages."""
    def wrapped(entry_name: str):
        f = factory(entry_name)

        def run(y: Array) -> Array:
            y = f(y)
            sow_stage(module, name, y)
            return y
        return run
    return wrapped
