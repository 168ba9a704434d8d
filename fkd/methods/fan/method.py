"""MobileFAN / EfficientFAN (method.md §4–6): a heatmap teacher, then the distilled student.

Stages:

1. `teacher`: the Simple Baselines teacher on Gaussian heatmaps (§5.3, §4.4–4.5);
2. `student_distill`: the student with heatmap MSE + λ_FA·L_FA + λ_FS·L_FS + λ_PS·L_PS (§5.4,
   §6.4) from the frozen teacher's decoder features; the teacher's heatmaps enter no loss. With
   λ_FA > 0 the student gets one 1x1 adapter per decoder stage, lifting it to the teacher's
   channels (§5.2); adapters run in training only;
3. `student_baseline`: the same student with the heatmap MSE alone.

Unlabelled points (the batch's `pipeline.LABELLED` mask) leave the heatmap MSE
(`heatmaps.heatmap_mse`); the feature terms compare decoder features, which belong to no point,
and stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from fkd import heads, models
from fkd.data import pipeline
from fkd.errors import FkdError
from fkd.heads import heatmaps
from fkd.losses import affinity
from fkd.methods.base import Frozen, LossFn, Method, Row, Stage
from fkd.methods.fan import ablation


def heatmap_head(config: Any) -> heads.HeatmapHead:
  fan = config.fan
  return heads.HeatmapHead(
    config.data.image_size, float(fan.sigma), fan.decode, bool(fan.quantize_targets)
  )


def distill_terms(
  student: Mapping[str, Any], teacher: Mapping[str, Any], fan: Any
) -> dict[str, Any]:
  """Unweighted L_FA, L_FS, L_PS summed over the decoder stages `fan.layers` (§5.4, §6.4)."""
  terms = {}
  layers = [f'decoder_{i}' for i in fan.layers]
  if fan.lambda_fa > 0:
    terms['fa'] = sum(
      affinity.feature_aligned_mse(student[k.replace('decoder', 'adapted')], teacher[k])
      for k in layers
    )
  if fan.lambda_fs > 0:
    terms['fs'] = sum(affinity.affinity_mse(student[k], teacher[k]) for k in layers)
  if fan.lambda_ps > 0:
    terms['ps'] = sum(
      affinity.patch_similarity_mse(student[k], teacher[k], fan.ps_min_scale, fan.ps_pool)
      for k in layers
    )
  return terms


class HeatmapDistillation(Method):
  name = 'fan'
  stages = ('teacher', 'student_distill', 'student_baseline')
  preferred = ('student_distill', 'student_baseline', 'teacher')
  reference_row = ablation.REFERENCE

  def stage(self, name: str, config: Any) -> Stage:
    head = heatmap_head(config)
    if name == 'teacher':
      return Stage(name, 'teacher', config.teacher, config.teacher_train, head, loss='heatmap_mse')
    if name == 'student_distill':
      return Stage(
        name,
        'student',
        config.student,
        config.train,
        head,
        teachers=('teacher',),
        loss='fan_distill',
      )
    if name == 'student_baseline':
      return Stage(name, 'student', config.student, config.train, head, loss='heatmap_mse')
    raise FkdError(
      f'config.stages: unknown stage {name!r} for method fan; known: {", ".join(self.stages)}'
    )

  def validate(self, config: Any) -> None:
    fan = config.fan
    for key in ('sigma', 'lambda_fa', 'lambda_fs', 'lambda_ps'):
      if fan[key] < 0 or (key == 'sigma' and fan[key] == 0):
        raise FkdError(
          f'config.fan.{key} must be {"positive" if key == "sigma" else ">= 0"}, got {fan[key]}'
        )
    if fan.decode not in heatmaps.DECODERS:
      raise FkdError(f'config.fan.decode must be one of {heatmaps.DECODERS}, got {fan.decode!r}')
    if fan.ps_pool not in ('avg', 'max'):
      raise FkdError(f"config.fan.ps_pool must be 'avg' or 'max', got {fan.ps_pool!r}")
    for key in ('teacher', 'student'):
      if not models.is_heatmap_model(config[key].name):
        raise FkdError(
          f'config.{key}.name: method fan needs heatmap models, got '
          f'{config[key].name!r}; known: heatmap_net, '
          f'{", ".join(models.HEATMAP_PRESETS)}'
        )

  def model_kwargs(
    self, stage: Stage, config: Any, teachers: Mapping[str, Frozen]
  ) -> dict[str, Any]:
    if stage.loss != 'fan_distill' or config.fan.lambda_fa <= 0:
      return {}
    teacher = teachers['teacher'].module
    return {
      'adapter_channels': (teacher.decoder_channels,) * teacher.num_stages,
      'share_adapter_23': bool(config.fan.share_adapter_23),
    }

  def train_apply_kwargs(self, stage: Stage, config: Any) -> dict[str, Any]:
    return {'adapt': stage.loss == 'fan_distill'}

  def loss_fn(self, stage: Stage, config: Any) -> LossFn:
    fan = config.fan
    weights = {'fa': fan.lambda_fa, 'fs': fan.lambda_fs, 'ps': fan.lambda_ps}
    distill = stage.loss == 'fan_distill'

    def loss_fn(outputs, features, batch, teachers):
      points = batch['landmarks'].astype(jnp.float32)
      targets = stage.head.targets(points, outputs)
      terms = {'heatmap': heatmaps.heatmap_mse(outputs, targets, batch.get(pipeline.LABELLED))}
      loss = terms['heatmap']
      if distill:
        for k, v in distill_terms(features, teachers['teacher'][1], fan).items():
          terms[k] = v
          loss = loss + weights[k] * v
      return loss, terms

    return loss_fn

  def published_key(self, config: Any) -> str | None:
    """published.json keys the heatmap papers by their student network (MobileFAN,
    EfficientFAN), the `config.student.name` of their recipes."""
    return config.student.name

  def ablation_rows(self, config: Any) -> dict[str, Row]:
    return ablation.rows(config)
