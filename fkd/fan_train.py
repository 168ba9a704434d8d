"""The heatmap pipeline (`config.method='fan'`): MobileFAN / EfficientFAN stages for fkd.train.

Three stages share train.py's machinery (batches, checkpoints, resume, logging, evaluation):

1. `teacher` — the Simple Baselines teacher on Gaussian heatmaps (method.md §5.3, §4.4–4.5);
2. `student_distill` — the student with heatmap MSE + λ_FA·L_FA + λ_FS·L_FS + λ_PS·L_PS (§5.4,
   §6.4); the teacher is restored from its checkpoint and enters the step as a frozen argument
   (running BN statistics, stop-gradient); the teacher's heatmaps enter no loss;
3. `student_baseline` — the same student with the heatmap MSE alone.

This module builds the models, the pure train step and the landmark predictor of a stage;
train.py and evaluate.py dispatch here when `config.method == 'fan'`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from fkd import affinity, checkpoint, heatmaps, models, sharding
from fkd.errors import FkdError

FAN_STAGES = ('teacher', 'student_distill', 'student_baseline')


def is_fan(config: Any) -> bool:
  return config.get('method', 'kd') == 'fan'


def stage_spec(name: str, config: Any):
  from fkd.train import Stage  # local import: train imports this module

  if name == 'teacher':
    return Stage(name, config.teacher, config.teacher_train, 'heatmaps', 'heatmap_mse')
  if name == 'student_distill':
    return Stage(name, config.student, config.train, 'heatmaps', 'fan_distill')
  if name == 'student_baseline':
    return Stage(name, config.student, config.train, 'heatmaps', 'heatmap_mse')
  raise FkdError(f'config.stages: unknown stage {name!r} for method fan; known: '
                 f'{", ".join(FAN_STAGES)}')


def teacher_dir(config: Any, workdir: str) -> str:
  return config.teacher_ckpt or os.path.join(workdir, 'teacher')


def validate(config: Any, workdir: str) -> None:
  """Stage names, loss settings and the teacher checkpoint, before anything is written."""
  for name in config.stages:
    stage_spec(name, config)
  for key in ('sigma', 'lambda_fa', 'lambda_fs', 'lambda_ps'):
    if config.fan[key] < 0 or (key == 'sigma' and config.fan[key] == 0):
      raise FkdError(f'config.fan.{key} must be {"positive" if key == "sigma" else ">= 0"}, got '
                     f'{config.fan[key]}')
  heatmaps.decode(jnp.zeros((1, 3, 3, 1)), config.fan.decode)  # validates the decoder name
  if config.fan.ps_pool not in ('avg', 'max'):
    raise FkdError(f"config.fan.ps_pool must be 'avg' or 'max', got {config.fan.ps_pool!r}")
  for name in (config.teacher.name, config.student.name):
    if not models.is_heatmap_model(name):
      raise FkdError(f'config method fan needs heatmap models, got {name!r}; known: '
                     f'heatmap_net, {", ".join(models.HEATMAP_PRESETS)}')
  if 'student_distill' in config.stages and 'teacher' not in config.stages:
    path = teacher_dir(config, workdir)
    if checkpoint.read_meta(path) is None:
      what = f'config.teacher_ckpt: no checkpoint at {path}' if config.teacher_ckpt else \
          'student_distill needs the teacher: train it first (add it to config.stages) or set ' \
          'config.teacher_ckpt'
      raise FkdError(what)


def _plain(tree: Any) -> Any:
  """ConfigDicts / tuples -> JSON-ready dicts / lists (checkpoint metadata)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  if isinstance(tree, list | tuple):
    return [_plain(v) for v in tree]
  return tree


def build_model(model_config: Any, num_landmarks: int, **extra: Any):
  kwargs = {**_plain(model_config.kwargs), **extra}
  try:
    return models.get_model(model_config.name, num_landmarks=num_landmarks, **kwargs)
  except (KeyError, TypeError, ValueError) as e:
    raise FkdError(f'model {model_config.name!r} with kwargs {kwargs}: {e}') from e


def load_teacher(config: Any, workdir: str, num_landmarks: int, mesh):
  """(frozen variables replicated over the mesh, teacher module, decoder channels)."""
  path = teacher_dir(config, workdir)
  variables, meta = checkpoint.load_model(path)
  if meta['num_landmarks'] != num_landmarks:
    raise FkdError(f'teacher at {path} predicts {meta["num_landmarks"]} landmarks, the data has '
                   f'{num_landmarks}')
  model = models.get_model(meta['model'], num_landmarks=num_landmarks, **meta['model_kwargs'])
  frozen = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return {'teacher': sharding.replicate(frozen, mesh)}, model


def setup(stage: Any, config: Any, workdir: str, num_landmarks: int, mesh):
  """(student model, frozen teachers, teacher model) of a stage.

  The distillation student gets one adapter per decoder stage, lifting it to the teacher's
  channels (method.md §5.2); the adapters are training-only (`adapt=False` at inference).
  """
  teachers, teacher_model = {}, None
  extra = {}
  if stage.loss == 'fan_distill':
    teachers, teacher_model = load_teacher(config, workdir, num_landmarks, mesh)
    if config.fan.lambda_fa > 0:
      extra['adapter_channels'] = (teacher_model.decoder_channels,) * teacher_model.num_stages
      extra['share_adapter_23'] = bool(config.fan.share_adapter_23)
  return build_model(stage.model_config, num_landmarks, **extra), teachers, teacher_model


def meta_extra(stage: Any, config: Any, model: Any) -> dict[str, Any]:
  """Checkpoint metadata: the model's full kwargs (adapters included), heatmap outputs."""
  kwargs = _plain(stage.model_config.kwargs)
  if model.adapter_channels:
    kwargs.update(adapter_channels=list(model.adapter_channels),
                  share_adapter_23=model.share_adapter_23)
  return {'model_kwargs': kwargs, 'output': 'heatmaps', 'target_space': 'pixel',
          'sigma': config.fan.sigma}


def distill_terms(student: dict[str, jax.Array], teacher: dict[str, jax.Array],
                  fan: Any) -> dict[str, jax.Array]:
  """Unweighted L_FA, L_FS, L_PS summed over the decoder stages `fan.layers` (§5.4, §6.4)."""
  terms = {}
  layers = [f'decoder_{i}' for i in fan.layers]
  if fan.lambda_fa > 0:
    terms['fa'] = sum(affinity.feature_aligned_mse(student[k.replace('decoder', 'adapted')],
                                                   teacher[k]) for k in layers)
  if fan.lambda_fs > 0:
    terms['fs'] = sum(affinity.affinity_mse(student[k], teacher[k]) for k in layers)
  if fan.lambda_ps > 0:
    terms['ps'] = sum(affinity.patch_similarity_mse(student[k], teacher[k], fan.ps_min_scale,
                                                    fan.ps_pool) for k in layers)
  return terms


def make_train_step(model, optimizer, stage: Any, teacher_model, config: Any):
  """A pure step(state, batch, rng, teachers) -> (state, metrics); teachers are frozen inputs."""
  from fkd import train  # local import: train imports this module

  fan = config.fan
  size = config.data.image_size
  weights = {'fa': fan.lambda_fa, 'fs': fan.lambda_fs, 'ps': fan.lambda_ps}
  distill = stage.loss == 'fan_distill'

  def step(state, batch, rng, teachers):
    images = batch['image'].astype(jnp.float32) / 255.0  # mean/std inside the model (§4.2)
    points = batch['landmarks'].astype(jnp.float32)
    del rng  # no dropout in these networks
    t_feats = None
    if distill:
      _, t_feats = teacher_model.apply(teachers['teacher'], images, train=False, adapt=False)
      t_feats = jax.lax.stop_gradient(t_feats)

    def loss_fn(params):
      (pred, feats), mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']}, images, train=True,
          mutable=['batch_stats'], adapt=distill)
      stride = size // pred.shape[1]
      target = heatmaps.targets_for_batch(points, size, stride, fan.sigma, fan.quantize_targets)
      terms = {'heatmap': heatmaps.heatmap_mse(pred, target)}
      loss = terms['heatmap']
      if distill:
        for k, v in distill_terms(feats, t_feats, fan).items():
          terms[k] = v
          loss = loss + weights[k] * v
      return loss, (terms, mutated.get('batch_stats', {}), pred, stride)

    (loss, (terms, batch_stats, pred, stride)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state['params'])
    new_state, metrics = train.apply_update(optimizer, state, grads, batch_stats, loss, terms)
    decoded = heatmaps.decode_to_crop(jax.lax.stop_gradient(pred), stride, fan.decode)
    metrics['mae_px'] = jnp.mean(jnp.abs(decoded - points))
    return new_state, metrics

  return step


def make_predict(meta: dict[str, Any], num_landmarks: int, image_size: int,
                 method: str = 'reference'):
  """A jitted predict(variables, uint8 images) -> (B, 2N) interleaved crop-pixel landmarks."""
  model = models.get_model(meta['model'], num_landmarks=num_landmarks, **meta['model_kwargs'])

  @jax.jit
  def predict(variables, images):
    pred, _ = model.apply(variables, images.astype(jnp.float32) / 255.0, train=False,
                          adapt=False)
    points = heatmaps.decode_to_crop(pred, image_size // pred.shape[1], method)
    return points.reshape(points.shape[0], -1)

  return predict
