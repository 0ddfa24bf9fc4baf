"""A tiny Flax CNN with BatchNorm and dropout following the zoo's calling contract."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class TinyCNN(nn.Module):
  """conv3x3(w)-BN-ReLU -> conv3x3/2(2w)-BN-ReLU -> global mean -> dropout -> dense.

  Input [B, H, W, C] float; output logits [B, num_classes].
  """

  num_classes: int = 10
  width: int = 8
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, (features, stride) in enumerate([(self.width, 1), (2 * self.width, 2)]):
      x = nn.Conv(features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False,
                  name=f'conv{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name=f'bn{i}')(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='head')(x)


class TinyMLP(nn.Module):
  """No BatchNorm (like a ViT: variables have no 'batch_stats')."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(self.num_classes)(x)


def init_tiny(model: nn.Module, image_shape=(16, 16, 1), seed: int = 0) -> dict:
  """Variables of ``model`` for inputs [1, *image_shape]."""
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape)), train=False)
