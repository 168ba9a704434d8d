"""Backbones: registry and helpers.

`get_model('mobilenet_v2', num_outputs=136)`, `get_model('efficientnet_b3', num_outputs=136,
dropout=0.5)`, `get_model('efficientnet', width_coefficient=..., depth_coefficient=...)`.
For `efficientnet_bX` the preset width/depth coefficients and top dropout of
`EFFICIENTNET_PARAMS` are defaults that kwargs override; the preset resolution is not a model
field (KD-Loss feeds its teachers 224×224). `get_model('resnet50', num_outputs=1000)` is
torchvision's ResNet-50; `'resnet'` takes `stage_sizes` and `width` (tiny test models).
Lists in kwargs (as JSON checkpoint meta gives them) become tuples.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax

from fkd.models.efficientnet import EFFICIENTNET_PARAMS, EfficientNet
from fkd.models.fan import PRESETS as HEATMAP_PRESETS
from fkd.models.fan import HeatmapNet
from fkd.models.layers import Conv1x1, DepthwiseConv, PointwiseConv, make_divisible
from fkd.models.mobilenet_v2 import MobileNetV2
from fkd.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet

__all__ = [
    'EFFICIENTNET_PARAMS', 'HEATMAP_PRESETS', 'IMAGENET_MEAN', 'IMAGENET_STD', 'Conv1x1',
    'DepthwiseConv', 'EfficientNet', 'HeatmapNet', 'MobileNetV2', 'PointwiseConv', 'ResNet',
    'count_params', 'get_model', 'is_heatmap_model',
    'make_divisible', 'model_names',
]


def model_names() -> list[str]:
  return (['mobilenet_v2', 'efficientnet'] + [f'efficientnet_{k}' for k in EFFICIENTNET_PARAMS]
          + ['resnet', 'resnet50', 'heatmap_net', *HEATMAP_PRESETS])


def is_heatmap_model(name: str) -> bool:
  """Whether `name` builds a HeatmapNet (heatmap outputs, `num_landmarks` instead of outputs)."""
  return name == 'heatmap_net' or name in HEATMAP_PRESETS


def get_model(name: str, /, **kwargs: Any) -> nn.Module:
  """Builds a model by name; kwargs are module fields (including the Flax `name`)."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # JSON meta
  if name == 'mobilenet_v2':
    return MobileNetV2(**kwargs)
  if name == 'efficientnet':
    return EfficientNet(**kwargs)
  if name.startswith('efficientnet_') and name[len('efficientnet_'):] in EFFICIENTNET_PARAMS:
    width, depth, _, dropout = EFFICIENTNET_PARAMS[name[len('efficientnet_'):]]
    kwargs = {'width_coefficient': width, 'depth_coefficient': depth, 'dropout': dropout,
              **kwargs}
    return EfficientNet(**kwargs)
  if name == 'resnet':
    return ResNet(**kwargs)
  if name == 'resnet50':
    return ResNet(**{'stage_sizes': (3, 4, 6, 3), **kwargs})
  if name == 'heatmap_net':
    return HeatmapNet(**kwargs)
  if name in HEATMAP_PRESETS:
    # Preset fields are defaults; backbone_kwargs merge key by key.
    preset = HEATMAP_PRESETS[name]
    backbone_kwargs = {**preset['backbone_kwargs'], **dict(kwargs.pop('backbone_kwargs', None)
                                                          or {})}
    return HeatmapNet(**{**preset, **kwargs, 'backbone_kwargs': backbone_kwargs})
  raise ValueError(f'Unknown model {name!r}; known: {model_names()}.')


def count_params(variables: Any) -> int:
  """Number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables))
