"""The one path from a checkpoint to landmarks, used by evaluation, prediction and export.

`Predictor(stage_dir)` reads the checkpoint's variables and meta, rebuilds the module and its head
(`fkd.heads.from_meta`; checkpoints written before heads existed load too) and exposes the pure
function `landmarks(variables, uint8 crops) -> (B, N, 2) crop pixels`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fkd import heads, methods, models
from fkd.errors import FkdError
from fkd.infra import checkpoint


def make_model(
  name: str,
  kwargs: dict[str, Any],
  head: heads.Head,
  num_landmarks: int,
  compute_dtype: str = 'float32',
):
  """The Flax module `name` with `kwargs` and the outputs its head needs (one-line errors).

  `compute_dtype` other than float32 becomes the model's `dtype` (its computations; parameters
  stay float32); float32 leaves the kwargs as they are, so the float32 program is unchanged.
  """
  if compute_dtype != 'float32':
    kwargs = {**kwargs, 'dtype': compute_dtype}
  try:
    return models.get_model(name, **head.model_kwargs(num_landmarks), **kwargs)
  except (KeyError, TypeError, ValueError) as e:
    raise FkdError(f'model {name!r} with kwargs {kwargs}: {e}') from e


def build_module(meta: dict[str, Any], head: heads.Head, compute_dtype: str | None = None):
  """The Flax module a checkpoint's meta describes, in `compute_dtype` (None: the meta's, as it
  was trained; float32 for checkpoints from before the field)."""
  dtype = compute_dtype or meta.get('compute_dtype', 'float32')
  return make_model(meta['model'], meta['model_kwargs'], head, int(meta['num_landmarks']), dtype)


def float32(tree: Any) -> Any:
  """Every floating array of `tree` as float32 (what losses, metrics and decoding take from a
  model of another compute dtype); float32 arrays are returned as they are."""

  def cast(a):
    floating = jnp.issubdtype(a.dtype, jnp.floating)
    return a.astype(jnp.float32) if floating and a.dtype != jnp.float32 else a

  return jax.tree.map(cast, tree)


def freeze(
  module: Any, head: heads.Head, meta: dict[str, Any], variables: dict[str, Any], fold: bool = True
) -> tuple[methods.Frozen, dict[str, Any]]:
  """A trained model as an inference program: (Frozen module/head/meta, variables).

  With `fold` (default) models that have the form (`models.fold.can_fold`: EfficientNet,
  MobileNetV2, ResNet) come back with BatchNorm folded into their convolutions
  (`models.fold.fold_batch_norm`: `module.folded`, variables {'params'} only), computing the
  same inference outputs and features to float32 rounding with fewer operations. Other models
  (heatmap networks) and `fold=False` give the module and {'params', 'batch_stats'} as they are.
  """
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  if fold and models.fold.can_fold(module):
    module, variables = models.fold.fold_batch_norm(module, variables)
  return methods.Frozen(module, head, meta), variables


def load_frozen(
  stage_dir: str, fold: bool = True, compute_dtype: str | None = None
) -> tuple[methods.Frozen, dict[str, Any]]:
  """A finished stage as a teacher or predictor: `freeze` of its checkpoint (folded unless
  `fold=False`; the checkpoint itself is unchanged), computing in `compute_dtype` (None: the
  dtype it was trained in)."""
  variables, meta = checkpoint.load_model(stage_dir)
  head = heads.from_meta(meta)
  return freeze(build_module(meta, head, compute_dtype), head, meta, variables, fold)


def is_finished(stage_dir: str) -> bool:
  """Whether a stage directory holds its final step."""
  meta = checkpoint.read_meta(stage_dir)
  if meta is None:
    return False
  return checkpoint.latest_step(stage_dir) >= meta['total_steps']


def status(info: dict[str, Any]) -> str:
  """'student_kd step 200/200' or 'student_kd step 130 of 200000: unfinished ...' (one line)."""
  stage = info.get('stage', os.path.basename(info['checkpoint']))
  if info['finished']:
    return f'{stage} step {info["step"]}/{info["total_steps"]} (finished)'
  return (
    f'{stage} step {info["step"]} of {info["total_steps"]}: UNFINISHED (training stopped or is '
    'still running; its predictions are those of a partly trained model)'
  )


def find_stage(workdir: str) -> str:
  """The stage a workdir serves: finished students first (`methods.preferred_stages`)."""
  if not os.path.isdir(workdir):
    raise FkdError(f'workdir {workdir} does not exist')
  preferred = methods.preferred_stages()
  candidates = [os.path.join(workdir, name) for name in preferred]
  for path in candidates:
    if is_finished(path):
      return path
  for path in candidates:  # an unfinished stage is better than nothing
    if checkpoint.read_meta(path) is not None:
      return path
  raise FkdError(f'no trained model in {workdir} (looked for {", ".join(preferred)})')


def passed_over(workdir: str, chosen: str) -> list[str]:
  """The stages `find_stage` preferred to `chosen` but skipped as unfinished, as notes."""
  out = []
  for name in methods.preferred_stages():
    path = os.path.join(workdir, name)
    if os.path.normpath(path) == os.path.normpath(chosen):
      break
    meta = checkpoint.read_meta(path)
    if meta is not None:
      out.append(
        f'{name} is unfinished (step {checkpoint.latest_step(path)} of {meta["total_steps"]}): '
        f'serving the finished {os.path.basename(os.path.normpath(chosen))} instead'
      )
  return out


class Predictor:
  """A stage's model as `predict(crops uint8 (B, S, S, 3)) -> landmarks (B, N, 2) crop pixels`.

  The model runs in its folded inference form (`load_frozen`) unless `fold=False`.
  """

  def __init__(self, stage_dir: str, fold: bool = True):
    frozen, self.variables = load_frozen(stage_dir, fold)
    self.stage_dir = stage_dir
    self.meta = frozen.meta
    self.head = frozen.head
    self.module = frozen.module
    self.image_size = int(self.meta['image_size'])
    self.num_landmarks = int(self.meta['num_landmarks'])
    self.step = checkpoint.latest_step(stage_dir)
    self._apply = jax.jit(self.landmarks)

  def landmarks(self, variables: Any, images: jax.Array) -> jax.Array:
    """The pure inference function: uint8 crops -> (B, N, 2) float32 crop pixels."""
    outputs, _ = self.module.apply(variables, images.astype(jnp.float32) / 255.0, train=False)
    return self.head.decode(float32(outputs))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    size = self.image_size
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3) or arr.dtype != np.uint8:
      raise FkdError(
        f'face crops must be a uint8 (B, {size}, {size}, 3) array (this model takes '
        f'{size}x{size} RGB crops), got {arr.dtype} {arr.shape}'
      )
    if not len(arr):
      return np.zeros((0, self.num_landmarks, 2), np.float32)
    return np.asarray(self._apply(self.variables, jnp.asarray(arr, jnp.uint8)))

  def info(self) -> dict[str, Any]:
    keys = ('stage', 'method', 'model', 'model_kwargs', 'dataset', 'image_size', 'num_landmarks')
    total = int(self.meta.get('total_steps', 0) or 0)
    return {
      'checkpoint': os.path.abspath(self.stage_dir),
      'step': self.step,
      'total_steps': total,
      'finished': self.step is not None and self.step >= total,
      'head': self.head.meta(),
      **{k: self.meta[k] for k in keys if k in self.meta},
    }
