"""Models: the registry (`get_model`) over backbones and heatmap networks, and helpers.

`get_model(name, **kwargs)` builds any backbone of `fkd.models.backbones` (regression / trunk
models, `num_outputs=...`) or a heatmap network (`heatmap_net` and the presets of
`fkd.models.heatmap_net.PRESETS`, `num_landmarks=...`). Lists in kwargs (as JSON checkpoint meta
gives
them) become tuples.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax

from fkd.models import batch_norm, fold, layers
from fkd.models.backbones import backbone_names, get_backbone, tuples
from fkd.models.efficientnet import EFFICIENTNET_PARAMS, EfficientNet
from fkd.models.heatmap_net import PRESETS as HEATMAP_PRESETS
from fkd.models.heatmap_net import HeatmapNet
from fkd.models.layers import Conv1x1, DepthwiseConv, PointwiseConv, make_divisible
from fkd.models.mobilenet_v2 import MobileNetV2
from fkd.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet

__all__ = [
  'EFFICIENTNET_PARAMS',
  'HEATMAP_PRESETS',
  'IMAGENET_MEAN',
  'IMAGENET_STD',
  'Conv1x1',
  'DepthwiseConv',
  'EfficientNet',
  'HeatmapNet',
  'MobileNetV2',
  'PointwiseConv',
  'ResNet',
  'batch_norm',
  'count_params',
  'fold',
  'get_model',
  'is_heatmap_model',
  'layers',
  'make_divisible',
  'model_names',
]


def model_names() -> list[str]:
  return [*backbone_names(), 'heatmap_net', *HEATMAP_PRESETS]


def is_heatmap_model(name: str) -> bool:
  """Whether `name` builds a HeatmapNet (heatmap outputs, `num_landmarks` instead of outputs)."""
  return name == 'heatmap_net' or name in HEATMAP_PRESETS


def get_model(name: str, /, **kwargs: Any) -> nn.Module:
  """Builds a model by name; kwargs are module fields (including the Flax `name`)."""
  kwargs = tuples(kwargs)
  if name == 'heatmap_net':
    return HeatmapNet(**kwargs)
  if name in HEATMAP_PRESETS:
    # Preset fields are defaults; backbone_kwargs merge key by key.
    preset = HEATMAP_PRESETS[name]
    backbone_kwargs = {
      **preset['backbone_kwargs'],
      **dict(kwargs.pop('backbone_kwargs', None) or {}),
    }
    return HeatmapNet(**{**preset, **kwargs, 'backbone_kwargs': backbone_kwargs})
  if name in backbone_names():
    return get_backbone(name, **kwargs)
  raise ValueError(f'Unknown model {name!r}; known: {model_names()}.')


def count_params(variables: Any) -> int:
  """Number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables))
