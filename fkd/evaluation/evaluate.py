"""Evaluation of every model a run trained: NME / FR / AUC per split, beside the published numbers.

`python -m fkd.evaluate --config=configs/kd.py[:ARG] --workdir=DIR` (the same config as training)
scores the mean shape and every finished stage of DIR on each eval split and writes

- `DIR/results.json`: `{"dataset", "method", "published", "models": {NAME: {SPLIT: {"nme", "fr",
  "auc", "auc_kd", "count"}}}, "nme_per_image": {NAME: {SPLIT: [...]}}, ...}` (NME and FR in %,
  AUC in 0..1; `method` the config's, `published` its table in published.json or null);
- `DIR/results.md`: one table per split, ours beside the published / author-noted numbers of
  `fkd/evaluation/published.json` for the same dataset, split and model, from the table of the
  method that trained the run (`Method.published_key`; none when it has no table);
- `DIR/ced.png`: the cumulative error distribution of every model, one panel per split;
- `DIR/worst.png`: the best and worst faces of the student on the test split, ground truth and
  prediction overlaid;
- `DIR/<stage>/events.out.tfevents.*` + `eval.jsonl`: `eval/<split>/nme|fr|auc|auc_kd` at the
  stage's final step, for TensorBoard beside the training curves.

`fkd.training.trainer.run` calls `evaluate_workdir` and `write_results` at the end of training, so
a run
writes all four files; this module's CLI re-evaluates an existing workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from fkd import inference, methods, models
from fkd.data import pipeline as ip
from fkd.errors import FkdError
from fkd.evaluation import metrics
from fkd.infra import checkpoint, config_check, files, metric_writer, sharding
from fkd.infra import workdir as workdir_lib
from fkd.models import native

OVERLAY_COUNT = 5  # faces per row of worst.png


def predict_split(
  predict, variables, split: ip.Split, batch_size: int, mesh, desc: str | None = None
) -> np.ndarray:
  """Landmarks (M, N, 2) in crop pixels for every image of a split (every process gets all)."""
  batch_size = max(jax.device_count(), batch_size - batch_size % jax.device_count())
  local = batch_size // jax.process_count()
  lo = jax.process_index() * local
  out = []
  batches = metric_writer.progress(
    ip.eval_batches(split, batch_size),
    total=math.ceil(len(split) / batch_size),
    desc=desc,
    unit='batch',
    enabled=jax.process_index() == 0,
  )
  for images, n in batches:
    flat = predict(
      variables, sharding.shard_batch({'image': images[lo : lo + local]}, mesh)['image']
    )
    if jax.process_count() > 1:
      flat = multihost_utils.process_allgather(flat, tiled=True)
    out.append(np.asarray(jax.device_get(flat))[:n])
  return np.concatenate(out)


def _mean_shape(train: ip.Split) -> np.ndarray:
  """Mean training shape over every shard; the same whichever processes hold the shards."""
  per_shard = train.landmarks.reshape(len(train.shards), -1, *train.landmarks.shape[1:])
  sums = per_shard.astype(np.float64).sum(axis=1).astype(np.float32)  # JAX gathers float32
  if jax.process_count() > 1:
    sums = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, *sums.shape[1:])
  return (sums.astype(np.float64).sum(axis=0) / (len(sums) * per_shard.shape[1])).astype(np.float32)


def model_dirs(config: Any, workdir: str) -> dict[str, str]:
  """Stage name -> directory of every finished stage of a run, in the method's order (teachers
  may live elsewhere: `config.<stage>_ckpt`)."""
  dirs = {}
  for name in methods.get(config).stages:
    path = methods.stage_dir(config, workdir, name)
    if inference.is_finished(path):
      dirs[name] = path
  return dirs


def best_dir(stage_dir: str) -> str:
  """Where a stage keeps its best checkpoint by validation NME (`config.keep_best`)."""
  return os.path.join(stage_dir, 'best')


def model_dir(config: Any, workdir: str, name: str) -> tuple[str, str | None]:
  """(checkpoint directory, what it is) of stage `name` as evaluation and later stages use it: its
  best checkpoint with `config.keep_best` when one was kept, else its last one (then the second
  item is None unless `keep_best` asked for the best)."""
  path = methods.stage_dir(config, workdir, name)
  if not config.get('keep_best', False):
    return path, None
  best = best_dir(path)
  meta = checkpoint.read_meta(best) if os.path.isdir(best) else None
  if meta is None:
    return path, f'the last checkpoint of {path} (config.keep_best: no best checkpoint kept)'
  b = meta.get('best', {})
  return best, (
    f'the best checkpoint of {path} (step {b.get("step")}, validation NME '
    f'{b.get("val_nme", float("nan")):.4g} %; config.keep_best)'
  )


# Keys of a checkpoint meta's `program` (`fkd.training.trainer.program`) that make two trainings
# different float32 programs.
PROGRAM_KEYS = (
  'backend',
  'devices',
  'compute_dtype',
  'native_kernels',
  'depthwise',
  'batch_norm',
  'deconv',
  'teacher_chunk',
)


def program_differences(programs: dict[str, dict[str, Any]]) -> list[str]:
  """'key: model=value, model=value' for every `PROGRAM_KEYS` key on which the recorded programs
  of the models differ (a key a model's program lacks or leaves None is not compared)."""
  out = []
  for key in PROGRAM_KEYS:
    values = {m: p.get(key) for m, p in programs.items() if p.get(key) is not None}
    if len(set(map(str, values.values()))) > 1:
      out.append(f'{key}: ' + ', '.join(f'{m}={v}' for m, v in values.items()))
  return out


def write_validation(record: dict[str, Any], workdir: str) -> None:
  """`workdir/validation.json`: the faces scored while stages train (`config.eval_every_steps`)."""
  os.makedirs(workdir, exist_ok=True)
  files.atomic_write(os.path.join(workdir, 'validation.json'), json.dumps(record, indent=1) + '\n')


def _overlay_split(splits: list[str]) -> str:
  """The split of worst.png: 'test' or 300W's 'full' when evaluated, else the first."""
  return next((s for s in ('test', 'full') if s in splits), splits[0])


def scored_faces(data: ip.Data, splits: Sequence[str], norm: Any) -> ip.Data:
  """`data` with the faces that have no NME normaliser (an unlabelled normalising point,
  `metrics.unscorable`) left out of the eval `splits`, with a one-line note per split naming them.

  Why not another normaliser for them: the box diagonal spans several inter-ocular distances, so
  their NME would be on another scale than the split's and bend its mean, FR and AUC silently.
  """
  out = dict(data.splits)
  for s in splits:
    split = data.splits[s]
    bad = metrics.unscorable(split.landmarks, norm, split.labelled)
    if not bad.any():
      continue
    names = [split.names[i] for i in np.flatnonzero(bad)]
    shown = ', '.join(names[:3]) + (f' and {len(names) - 3} more' if len(names) > 3 else '')
    print(
      f'fkd: note: {s}: {len(names)} face(s) left out of the metrics, a point of the NME '
      f'normaliser {norm} is unlabelled: {shown}',
      flush=True,
    )
    if bad.all():
      raise FkdError(
        f'eval split {s!r}: every face has an unlabelled point of the NME normaliser {norm}; '
        'nothing to score (label those points, or pick another config.eval.norm)'
      )
    out[s] = ip.take(split, np.flatnonzero(~bad))
  return dataclasses.replace(data, splits=out)


def evaluate_workdir(config: Any, workdir: str, data: ip.Data) -> dict[str, Any]:
  """Scores the mean shape and every finished model of the run on each eval split.

  Returns the results.json record. It also holds `'_overlay'` (not written to JSON): the test
  images, ground truth and predictions of the best and worst faces of the preferred model, which
  `write_results` draws into worst.png.
  """
  mesh = sharding.make_mesh()
  eval_splits = list(data.eval_splits)  # the requested splits that were built
  data = scored_faces(data, eval_splits, config.eval.norm)
  threshold = config.eval.fr_threshold
  results: dict[str, Any] = {
    'dataset': config.data.name,
    'method': config.method,
    'published': published_key(config),
    'norm': config.eval.norm,
    'frame': config.eval.frame,
    'fr_threshold': threshold,
    'image_size': data.image_size,
    'models': {},
    'steps': {},
    'compute_dtype': {},  # per model: the dtype it computed in (`config.compute_dtype`)
    'nme_per_image': {},
  }
  if data.dropped:  # eval splits a partial build left out, with the reason
    results['dropped_splits'] = dict(data.dropped)
  preds: dict[str, dict[str, np.ndarray]] = {}

  def add(name: str, split: str, pred: np.ndarray) -> None:
    gt = data.splits[split]
    nme = metrics.nme_per_image(pred, gt.landmarks, config.eval.norm, gt.labelled)
    results['models'].setdefault(name, {})[split] = metrics.summarize(nme, threshold)
    results['nme_per_image'].setdefault(name, {})[split] = [round(float(v), 6) for v in nme]
    preds.setdefault(name, {})[split] = pred

  mean_shape = _mean_shape(data.splits[config.data.train_split])
  for s in eval_splits:
    add('mean_shape', s, np.broadcast_to(mean_shape, data.splits[s].landmarks.shape))
  programs: dict[str, dict[str, Any]] = {}
  for name, last in model_dirs(config, workdir).items():
    path, which = model_dir(config, workdir, name)
    if which:
      print(f'[eval] {name}: {which}', flush=True)
    predictor = inference.Predictor(path)
    if predictor.meta.get('program'):
      programs[name] = predictor.meta['program']
    results.setdefault('checkpoints', {})[name] = {
      'which': 'best' if path != last else 'last',
      'step': predictor.step,
    }
    if predictor.num_landmarks != data.num_landmarks or predictor.image_size != data.image_size:
      raise FkdError(
        f'{path} predicts {predictor.num_landmarks} landmarks on '
        f'{predictor.image_size}² crops; the evaluation data has '
        f'{data.num_landmarks} on {data.image_size}² (config.data)'
      )
    results['steps'][name] = int(predictor.meta.get('total_steps', 0))
    results['compute_dtype'][name] = predictor.meta.get('compute_dtype', 'float32')
    variables = sharding.replicate(predictor.variables, mesh)
    predict = jax.jit(predictor.landmarks)
    for s in eval_splits:
      add(
        name,
        s,
        predict_split(
          predict, variables, data.splits[s], config.eval.batch_size, mesh, f'eval {name}/{s}'
        ),
      )

  if programs:
    results['programs'] = programs
    if differ := program_differences(programs):
      print(
        'fkd: warning: the models compared were trained by different programs ('
        + '; '.join(differ)
        + "): their NMEs differ by that too (results.json 'programs')",
        flush=True,
      )
  shown = next((m for m in methods.preferred_stages() if m in preds), None)
  if shown is not None:
    split = _overlay_split(eval_splits)
    nme = np.asarray(results['nme_per_image'][shown][split])
    results['_overlay'] = overlay_record(shown, split, data.splits[split], preds[shown][split], nme)
  return results


def overlay_record(
  model: str, split: str, sp: ip.Split, pred: np.ndarray, nme: np.ndarray
) -> dict[str, Any]:
  """What worst.png draws: the `OVERLAY_COUNT` best and worst faces of `sp`, with their mask
  ('labelled') when the split has unlabelled points (stand-in positions, not drawn)."""
  best, worst = metrics.ranked(nme, OVERLAY_COUNT)
  sel = np.concatenate([best, worst])
  out = {
    'model': model,
    'split': split,
    'rows': {'best': len(best), 'worst': len(worst)},
    'images': sp.images[sel],
    'gt': sp.landmarks[sel],
    'pred': pred[sel],
    'nme': nme[sel],
    'names': [sp.names[i] for i in sel],
  }
  if sp.labelled is not None:
    out['labelled'] = sp.labelled[sel]
  return out


# ---------------------------------------------------------------------------------------------
# Published numbers.


@functools.cache
def published() -> dict[str, Any]:
  """fkd/evaluation/published.json: the papers' and authors' numbers, each with its source."""
  return json.loads((importlib.resources.files('fkd.evaluation') / 'published.json').read_text())


def published_key(config: Any) -> str | None:
  """The published.json table of the config's method (None when the method or its variant has
  none)."""
  key = methods.get(config).published_key(config)
  return key if key in published()['methods'] else None


def published_rows(
  dataset: str, split: str, model: str, method: str | None
) -> list[dict[str, Any]]:
  """Published records of table `method` (a published.json key; None: none) for a TFDS dataset
  name ('ibug_300w', 'wflw/...'), split and model."""
  if method not in published()['methods']:
    return []
  base = dataset.split('/')[0].split(':')[0]
  return [
    r
    for r in published()['methods'][method]['results']
    if r['dataset'] == base and r['split'] == split and r['model'] == model
  ]


def _fmt_published(rows: list[dict[str, Any]], norm: str, frame: str, refs: dict[str, int]) -> str:
  cells = []
  for r in rows:
    values = [f'{r["nme"]:.2f}']
    if 'fr' in r:
      values.append(f'{r["fr"]:.2f}')
      if 'auc_kd' in r:
        values.append(f'{r["auc_kd"]:.4f}')
    mark = '' if (r['norm'], r['frame']) == (norm, frame) else ' †'
    ref = refs.setdefault(r['source'], len(refs) + 1)
    cells.append(f'{" / ".join(values)} ({r["label"]} [{ref}]){mark}')
  return '; '.join(cells) if cells else '—'


# ---------------------------------------------------------------------------------------------
# results.md


def markdown_table(results: dict[str, Any]) -> str:
  """One table per split: our NME / FR / AUC / AUC_KD beside the published numbers of the
  run's method (`results['published']`; a record without it shows none)."""
  key = results.get('published')
  splits = list(next(iter(results['models'].values())))
  refs: dict[str, int] = {}
  other_protocol = False
  parts = []
  for split in splits:
    count = next(iter(results['models'].values()))[split].get('count')
    lines = [
      f'### {split}' + (f' ({count} images)' if count else ''),
      '',
      '| model | NME % | FR % | AUC | AUC_KD | published NME % / FR % / AUC_KD (source) |',
      '|---|---:|---:|---:|---:|---|',
    ]
    for name, per_split in results['models'].items():
      r = per_split[split]
      pub = _fmt_published(
        published_rows(results['dataset'], split, name, key),
        results['norm'],
        results['frame'],
        refs,
      )
      other_protocol |= '†' in pub
      auc_kd = f'{r["auc_kd"]:.4f}' if 'auc_kd' in r else '—'
      lines.append(
        f'| {name} | {r["nme"]:.2f} | {r["fr"]:.2f} | {r["auc"]:.4f} | {auc_kd} | {pub} |'
      )
    parts.append('\n'.join(lines))
  notes = []
  if refs:
    notes += [f'[{i}] {src}' for src, i in refs.items()]
    if other_protocol:
      notes.append('† published under another normalisation or frame than this evaluation.')
  elif key in published()['methods']:
    table = published()['methods'][key]
    datasets = sorted({r['dataset'] for r in table['results']})
    where = f'reports on {", ".join(datasets)}' if datasets else 'reports no numbers fkd can show'
    notes.append(
      f'No published numbers for {results["dataset"]}: {table["name"]} {where} '
      '(fkd/evaluation/published.json).'
    )
  else:
    method = results.get('method')
    notes.append(
      f'No published numbers for {results["dataset"]}: '
      + (f'method {method} has no published table.' if method else 'the run records no method.')
    )
  return '\n\n'.join(parts) + '\n\n' + '\n'.join(f'- {n}' for n in notes)


def _markdown(results: dict[str, Any]) -> str:
  files = [f for f in ('ced.png', 'worst.png') if f in results.get('_figures', ())]
  figures = ''.join(f'\n![{f}]({f})\n' for f in files)
  return (
    f'# fkd results: {results["dataset"]}\n\n'
    f'NME normalised {results["norm"]} in the {results["frame"]} frame '
    f'({results["image_size"]} px crops), in %; FR (strict >) and AUC at '
    f'{results["fr_threshold"]}. AUC is the standard closed form (perfect = 1); AUC_KD is '
    f'the KD-Loss codebase variant (perfect = 0.95), comparable only with the published '
    f'AUC_KD (docs/results.md §1).\n\n{markdown_table(results)}\n{figures}'
  )


# ---------------------------------------------------------------------------------------------
# Figures.


def _ced_range(per_image: dict[str, dict[str, list[float]]], threshold: float) -> float:
  """θ, or a multiple of it that covers 90 % of the best model's images when models are poor."""
  q = min(
    float(np.quantile(v, 0.9))
    for per_split in per_image.values()
    for v in per_split.values()
    if len(v)
  )
  return next(
    threshold * m for m in (1, 2, 3, 5, 10, 20, 50, 100) if threshold * m >= q or m == 100
  )


def plot_ced(results: dict[str, Any], path: str) -> None:
  """Every model's CED, one axis per split (x: NME %, up to θ or further when models are poor)."""
  from matplotlib.figure import Figure

  per_image = results['nme_per_image']
  splits = list(next(iter(per_image.values())))
  threshold = results['fr_threshold']
  x_max = _ced_range(per_image, threshold)
  cols = min(len(splits), 3)
  rows = math.ceil(len(splits) / cols)
  fig = Figure(figsize=(5.6 * cols, 5.2 * rows), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, split in zip(axes, splits, strict=False):
    for name, per_split in per_image.items():
      nme = np.asarray(per_split[split])
      t, frac = metrics.ced(nme, x_max, 401)
      style = dict(color='0.45', ls='--') if name == 'mean_shape' else {}
      label = (
        f'{name}: NME {100 * nme.mean():.2f} %, '
        f'FR {metrics.failure_rate(nme, threshold):.1f} %, '
        f'AUC {metrics.auc(nme, threshold):.3f}'
      )
      ax.plot(100 * t, frac, lw=1.8, label=label, **style)
    if x_max > threshold:
      ax.axvline(100 * threshold, color='k', lw=0.8, ls=':')
      ax.annotate(f' θ = {100 * threshold:g} %', (100 * threshold, 0.97), fontsize=8, va='top')
    ax.set(
      xlim=(0, 100 * x_max),
      ylim=(0, 1.0),
      xlabel=f'NME (%, {results["norm"]})',
      ylabel='fraction of images ≤ NME',
      title=f'{results["dataset"]} / {split} ({len(nme)} images)',
    )
    ax.grid(alpha=0.3)
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
  for ax in axes[len(splits) :]:
    ax.set_visible(False)
  fig.suptitle(f'Cumulative error distribution (FR and AUC at θ = {threshold:g})')
  fig.savefig(path, dpi=110)


def overlay_points(overlay: dict[str, Any], i: int) -> tuple[np.ndarray, np.ndarray]:
  """(ground truth, prediction) of face i of worst.png at its labelled points only: an unlabelled
  point's ground truth is a stand-in position (`fkd.data.folder`), not a landmark, and it has no
  error to show."""
  gt, pred = overlay['gt'][i], overlay['pred'][i]
  if overlay.get('labelled') is None:
    return gt, pred
  keep = np.asarray(overlay['labelled'][i], bool)
  return gt[keep], pred[keep]


def overlay_figure(overlay: dict[str, Any], norm: str = '') -> Any:
  """The matplotlib Figure of `plot_overlays`."""
  from matplotlib.figure import Figure

  n_best, n_worst = overlay['rows']['best'], overlay['rows']['worst']
  cols = max(n_best, n_worst)
  fig = Figure(figsize=(2.6 * cols, 2.6 * 2 + 0.7), layout='constrained')
  axes = fig.subplots(2, cols, squeeze=False)
  for ax in axes.ravel():
    ax.set_axis_off()
  size = overlay['images'].shape[1]
  dot = max(4.0, 36.0 * 64 / max(size, 64) / 4)
  for i in range(n_best + n_worst):
    row, col = (0, i) if i < n_best else (1, i - n_best)
    ax = axes[row, col]
    gt, pred = overlay_points(overlay, i)
    ax.imshow(overlay['images'][i], interpolation='bilinear')
    ax.plot(
      np.stack([gt[:, 0], pred[:, 0]]),
      np.stack([gt[:, 1], pred[:, 1]]),
      color='yellow',
      lw=0.6,
      alpha=0.8,
    )
    ax.scatter(gt[:, 0], gt[:, 1], s=dot, c='lime', edgecolors='black', linewidths=0.3)
    ax.scatter(pred[:, 0], pred[:, 1], s=dot, c='red', marker='x', linewidths=0.8)
    ax.set(xlim=(-0.5, size - 0.5), ylim=(size - 0.5, -0.5))
    ax.set_title(
      f'{"best" if row == 0 else "worst"}: NME {100 * overlay["nme"][i]:.1f} %\n'
      f'{overlay["names"][i]}',
      fontsize=8,
    )
  fig.suptitle(
    f'{overlay["model"]} on {overlay["split"]}: best (top) and worst (bottom) faces'
    f'{" by " + norm + " NME" if norm else ""}\n'
    'green ● ground truth, red × prediction, yellow: error'
    + (' (labelled points only)' if overlay.get('labelled') is not None else ''),
    fontsize=10,
  )
  return fig


def plot_overlays(overlay: dict[str, Any], path: str, norm: str = '') -> None:
  """The best and worst faces, one row each: ground truth (green), prediction (red), errors, at
  the labelled points (`overlay['labelled']`, when the split has unlabelled ones)."""
  overlay_figure(overlay, norm).savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Writing.


def _dumps(record: dict[str, Any]) -> str:
  """Indented JSON with every list of numbers on one line (the per-image NMEs)."""
  text = json.dumps(record, indent=2)
  return re.sub(
    r'\[\s+([-+0-9.eE,\s]+?)\s+\]', lambda m: '[' + ' '.join(m.group(1).split()) + ']', text
  )


def write_figures(results: dict[str, Any], workdir: str) -> list[str]:
  """ced.png (needs 'nme_per_image') and worst.png (needs '_overlay'); returns the files made."""
  made = []
  if results.get('nme_per_image'):
    plot_ced(results, os.path.join(workdir, 'ced.png'))
    made.append('ced.png')
  if results.get('_overlay'):
    plot_overlays(results['_overlay'], os.path.join(workdir, 'worst.png'), results['norm'])
    made.append('worst.png')
  return made


def write_scalars(results: dict[str, Any], workdir: str) -> None:
  """TensorBoard scalars `eval/<split>/{nme,fr,auc,auc_kd}` in each stage directory of `workdir`,
  at the stage's final step, so they appear beside its training curves (and in eval.jsonl)."""
  for name, step in results.get('steps', {}).items():
    stage_dir = os.path.join(workdir, name)
    if os.path.isdir(stage_dir):
      scalars = {
        f'eval/{split}/{k}': r[k]
        for split, r in results['models'][name].items()
        for k in ('nme', 'fr', 'auc', 'auc_kd')
        if k in r
      }
      with metric_writer.MetricWriter(stage_dir, jsonl='eval.jsonl') as writer:
        writer.write_scalars(step, scalars)


def write_results(results: dict[str, Any], workdir: str) -> None:
  """Writes results.json, results.md, ced.png, worst.png and the eval scalars; prints the tables.

  Keys starting with '_' stay out of results.json (in-memory extras such as '_overlay').
  """
  write_scalars(results, workdir)
  figures = write_figures(results, workdir)
  record = {k: v for k, v in results.items() if not k.startswith('_')}
  files.atomic_write(os.path.join(workdir, 'results.json'), _dumps(record))
  files.atomic_write(
    os.path.join(workdir, 'results.md'), _markdown({**results, '_figures': figures})
  )
  print(markdown_table(results), flush=True)


# ---------------------------------------------------------------------------------------------
# Command line.


def evaluate(config: Any, workdir: str, allow_config_change: bool = False) -> dict[str, Any]:
  """Loads the eval data, scores every finished model of `workdir` and writes the reports.

  The config must be the one that trained the workdir's stages in every field that matters
  (`fkd.infra.workdir`; `allow_config_change`: a note instead of the error).
  """
  if not os.path.isdir(workdir):
    raise FkdError(f'workdir {workdir} does not exist')
  config_check.check(config, jax.device_count(), models.model_names())
  native.set_mode(config.get('cpu_kernels', 'auto'))
  stages = methods.get(config).stages
  workdir_lib.check_config(config, workdir, stages, allow_config_change, verb='evaluate')
  with workdir_lib.lock(workdir, active=jax.process_index() == 0):
    data = ip.load(config, process_index=jax.process_index(), process_count=jax.process_count())
    results = evaluate_workdir(config, workdir, data)
    if len(results['models']) == 1:
      print(f'fkd: no finished model in {workdir}; only the mean shape is scored', flush=True)
    if jax.process_index() == 0:
      write_results(results, workdir)
  return results


def _main(argv: list[str]) -> None:
  evaluate(_CONFIG.value, _WORKDIR.value, _ALLOW.value)


def main() -> None:
  """`python -m fkd.evaluate` (fkd/evaluate.py runs this)."""
  global _ALLOW, _CONFIG, _WORKDIR
  from fkd import cli

  _CONFIG, _WORKDIR = cli.define_run_flags()
  _ALLOW = cli.define_allow_config_change()
  cli.run(_main, distributed=True)
