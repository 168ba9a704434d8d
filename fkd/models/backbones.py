"""The backbone registry: classification / regression trunks by name (no heatmap networks).

`get_backbone('mobilenet_v2', num_outputs=136)`, `get_backbone('efficientnet_b3', num_outputs=136,
dropout=0.5)`, `get_backbone('efficientnet', width_coefficient=..., depth_coefficient=...)`.
For `efficientnet_bX` the preset width/depth coefficients and top dropout of
`EFFICIENTNET_PARAMS` are defaults that kwargs override; the preset resolution is not a model
field (KD-Loss feeds its teachers 224×224). `get_backbone('resnet50', num_outputs=1000)` is
torchvision's ResNet-50; `'resnet'` takes `stage_sizes` and `width` (tiny test models).
Lists in kwargs (as JSON checkpoint meta gives them) become tuples.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from fkd.models.efficientnet import EFFICIENTNET_PARAMS, EfficientNet
from fkd.models.mobilenet_v2 import MobileNetV2
from fkd.models.resnet import ResNet


def backbone_names() -> list[str]:
  return (
    ['mobilenet_v2', 'efficientnet']
    + [f'efficientnet_{k}' for k in EFFICIENTNET_PARAMS]
    + ['resnet', 'resnet50']
  )


def tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
  """JSON lists (checkpoint meta) -> tuples (hashable Flax module fields)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def get_backbone(name: str, /, **kwargs: Any) -> nn.Module:
  """Builds a backbone by name; kwargs are module fields (including the Flax `name`)."""
  kwargs = tuples(kwargs)
  if name == 'mobilenet_v2':
    return MobileNetV2(**kwargs)
  if name == 'efficientnet':
    return EfficientNet(**kwargs)
  if name.startswith('efficientnet_') and name[len('efficientnet_') :] in EFFICIENTNET_PARAMS:
    width, depth, _, dropout = EFFICIENTNET_PARAMS[name[len('efficientnet_') :]]
    kwargs = {'width_coefficient': width, 'depth_coefficient': depth, 'dropout': dropout, **kwargs}
    return EfficientNet(**kwargs)
  if name == 'resnet':
    return ResNet(**kwargs)
  if name == 'resnet50':
    return ResNet(**{'stage_sizes': (3, 4, 6, 3), **kwargs})
  raise ValueError(f'Unknown backbone {name!r}; known: {backbone_names()}.')
