"""Evaluation of every model a run trained: NME / FR / AUC per split, results.json / .md."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from fkd import checkpoint, fan_train, metrics, models, sharding
from fkd import input_pipeline as ip

MODEL_ORDER = ('mean_shape', 'teacher_tolerant', 'teacher_tough', 'student_kd', 'student_baseline')
FAN_MODEL_ORDER = ('mean_shape', *fan_train.FAN_STAGES)


def predict_split(predict, variables, split: ip.Split, batch_size: int, size: int,
                  space: str, mesh) -> np.ndarray:
  """Landmarks (M, N, 2) in crop pixels for every image of a split (every process gets all)."""
  batch_size = max(jax.device_count(), batch_size - batch_size % jax.device_count())
  local = batch_size // jax.process_count()
  lo = jax.process_index() * local
  out = []
  for images, n in ip.eval_batches(split, batch_size):
    flat = predict(variables, sharding.shard_batch({'image': images[lo:lo + local]}, mesh)['image'])
    if jax.process_count() > 1:
      flat = multihost_utils.process_allgather(flat, tiled=True)
    out.append(np.asarray(jax.device_get(flat))[:n])
  return ip.from_target(np.concatenate(out), size, space)


def score(pred: np.ndarray, split: ip.Split, config: Any) -> dict[str, float]:
  nme = metrics.nme_per_image(pred, split.landmarks, config.eval.norm)
  return metrics.summarize(nme, config.eval.fr_threshold)


def _model_dirs(config: Any, workdir: str) -> dict[str, str]:
  from fkd import train  # local import: train imports this module

  dirs = {}
  fan = fan_train.is_fan(config)
  for name in (FAN_MODEL_ORDER if fan else MODEL_ORDER)[1:]:
    path = train.teacher_dir(config, workdir, name) if name in train.TEACHERS and not fan else \
        fan_train.teacher_dir(config, workdir) if name == 'teacher' and fan else \
        os.path.join(workdir, name)
    if train.is_finished(path):
      dirs[name] = path
  return dirs


def evaluate_workdir(config: Any, workdir: str, data: ip.Data) -> dict[str, Any]:
  """Scores the mean shape and every finished model of the run on each eval split."""
  mesh = sharding.make_mesh()
  eval_splits = list(config.data.eval_splits)
  results: dict[str, Any] = {
      'dataset': config.data.name, 'norm': config.eval.norm, 'frame': config.eval.frame,
      'fr_threshold': config.eval.fr_threshold, 'image_size': data.image_size, 'models': {}}
  mean_shape = data.splits[config.data.train_split].landmarks.mean(axis=0)
  results['models']['mean_shape'] = {
      s: score(np.broadcast_to(mean_shape, data.splits[s].landmarks.shape), data.splits[s], config)
      for s in eval_splits}
  for name, path in _model_dirs(config, workdir).items():
    variables, meta = checkpoint.load_model(path)
    variables = sharding.replicate(
        {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}, mesh)
    if meta.get('output') == 'heatmaps':  # decoded to crop pixels (method.md §4.6)
      predict = fan_train.make_predict(meta, data.num_landmarks, data.image_size,
                                       config.fan.decode)
    else:
      model = models.get_model(meta['model'], num_outputs=2 * data.num_landmarks,
                               **meta['model_kwargs'])
      predict = jax.jit(lambda v, x, model=model: model.apply(
          v, x.astype(np.float32) / 255.0, train=False)[0])
    results['models'][name] = {
        s: score(predict_split(predict, variables, data.splits[s], config.eval.batch_size,
                               data.image_size, meta['target_space'], mesh), data.splits[s], config)
        for s in eval_splits}
  return results


def markdown_table(results: dict[str, Any]) -> str:
  splits = list(next(iter(results['models'].values())))
  head = ['model'] + [f'{s} NME % / FR % / AUC' for s in splits]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, per_split in results['models'].items():
    cells = [f'{r["nme"]:.2f} / {r["fr"]:.2f} / {r["auc"]:.4f}' for r in per_split.values()]
    lines.append('| ' + ' | '.join([name, *cells]) + ' |')
  return '\n'.join(lines)


def write_results(results: dict[str, Any], workdir: str) -> None:
  """Writes results.json and results.md atomically and prints the table."""
  table = markdown_table(results)
  md = (f'# fkd results: {results["dataset"]}\n\n'
        f'NME normalised {results["norm"]} in the {results["frame"]} frame '
        f'({results["image_size"]} px crops); FR and AUC at {results["fr_threshold"]}.\n\n'
        f'{table}\n')
  for fname, text in (('results.json', json.dumps(results, indent=2)), ('results.md', md)):
    tmp = os.path.join(workdir, fname + '.tmp')
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, os.path.join(workdir, fname))
  print(table, flush=True)
