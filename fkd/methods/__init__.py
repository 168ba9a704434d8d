"""Distillation methods as plug-ins of the generic trainer: `config.method` picks one.

Adding a method is one package here (`<name>/`: a `base.Method` subclass, its config recipe and
ablation rows), one line in `REGISTRY` and one config in `configs/`; the trainer, pre-stage,
ablation, evaluation, prediction and export need no change, and name no method
(tests/unit/method_isolation_test.py).
"""

from __future__ import annotations

from typing import Any

from fkd.errors import FkdError
from fkd.methods.base import Frozen, LossFn, Method, Row, Stage, stage_dir
from fkd.methods.fan.method import HeatmapDistillation
from fkd.methods.kd.method import KDLoss
from fkd.methods.output_kd.method import OutputKD

REGISTRY: dict[str, Method] = {
  'kd': KDLoss(),
  'fan': HeatmapDistillation(),
  'output_kd': OutputKD(),
}

__all__ = [
  'REGISTRY',
  'Frozen',
  'LossFn',
  'Method',
  'Row',
  'Stage',
  'get',
  'preferred_stages',
  'stage_dir',
]


def get(config: Any) -> Method:
  """The method of a config (`config.method`)."""
  name = config.get('method')
  if name not in REGISTRY:
    raise FkdError(f'config.method must be one of {sorted(REGISTRY)}, got {name!r}')
  return REGISTRY[name]


def preferred_stages() -> tuple[str, ...]:
  """Every method's stages in the order `fkd.predict` serves them: students, then teachers."""
  names = list(dict.fromkeys(n for m in REGISTRY.values() for n in m.preferred))
  return tuple(sorted(names, key=lambda n: (n.startswith('teacher'), names.index(n))))
