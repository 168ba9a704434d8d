"""`init_from`: start a stage's model from an fkd checkpoint (e.g. ImageNet weights converted by
`fkd.tools.import_weights`, or a stage directory) instead of random initialisation.

`config.student.init_from` / `config.teacher.init_from` name the checkpoint directory (None =
random init, the KD-Loss code's choice, method.md §2.4). Every variable except the
classification `head` (whose size differs) is loaded; a missing variable or a shape mismatch is an
error naming the parameter path. The checkpoint's input normalisation, BatchNorm ε and padding
(`PREPROCESSING_KWARGS` of its meta) become the stage's model kwargs unless the config sets them,
so an imported backbone sees the inputs it was trained on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from fkd.errors import FkdError
from fkd.infra import checkpoint

PREPROCESSING_KWARGS = ('input_mean', 'input_std', 'bn_epsilon', 'padding')
DONT_LOAD = ('head/.*',)


def _init_from(model_config: Any) -> str | None:
  return model_config.get('init_from') if hasattr(model_config, 'get') else None


def check(model_config: Any, key: str) -> None:
  """Validation before anything is written: the checkpoint exists and holds the same model."""
  path = _init_from(model_config)
  if not path:
    return
  meta = checkpoint.read_meta(path)
  if meta is None:
    raise FkdError(f'config.{key}.init_from: no checkpoint at {path}')
  if meta.get('model') != model_config.name:
    raise FkdError(
      f'config.{key}.init_from: {path} holds a {meta.get("model")!r} model, '
      f'config.{key}.name is {model_config.name!r}'
    )


def resolve_stage(stage: Any) -> Any:
  """The stage with its checkpoint's preprocessing kwargs merged under the config's kwargs."""
  path = _init_from(stage.model_config)
  if not path:
    return stage
  key = stage.role
  check(stage.model_config, key)
  meta = checkpoint.read_meta(path)
  recorded = {k: v for k, v in meta.get('model_kwargs', {}).items() if k in PREPROCESSING_KWARGS}
  model_config = ml_collections.ConfigDict(stage.model_config.to_dict())
  model_config.kwargs = {**recorded, **dict(stage.model_config.kwargs)}
  return dataclasses.replace(stage, model_config=model_config)


def merge_params(
  init: Any, loaded: Any, dont_load: Sequence[str] = DONT_LOAD, source: str = 'checkpoint'
) -> Any:
  """`init` with every leaf taken from `loaded`, except paths matching a `dont_load` regex.

  Paths are '/'-joined dict keys below the collection (e.g. 'block_3/expand/kernel').

  Raises:
    FkdError: a leaf of `init` is missing from `loaded` or has another shape.
  """
  patterns = [re.compile(p) for p in dont_load]
  flat_loaded = {
    '/'.join(str(k.key) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(loaded)[0]
  }

  def take(path, leaf):
    name = '/'.join(str(k.key) for k in path)
    if any(p.fullmatch(name) for p in patterns):
      return leaf
    if name not in flat_loaded:
      raise FkdError(f'{source}: has no {name} (shape {tuple(leaf.shape)})')
    new = flat_loaded[name]
    if tuple(new.shape) != tuple(leaf.shape):
      raise FkdError(
        f'{source}: {name} has shape {tuple(new.shape)}, the model expects '
        f'{tuple(leaf.shape)} (check the model name and kwargs)'
      )
    return np.asarray(new, leaf.dtype)

  return jax.tree_util.tree_map_with_path(take, init)


def load_into(state: dict[str, Any], stage: Any, optimizer: Any) -> dict[str, Any]:
  """A fresh train state whose params and BatchNorm statistics come from `init_from`."""
  path = _init_from(stage.model_config)
  if not path:
    return state
  variables, _ = checkpoint.load_model(path)
  source = f'config.{stage.role}.init_from={path}'
  # `init_skip` (regexes, default the head): what stays randomly initialised; () loads the head
  # too, for a checkpoint of the same task (the synthetic pre-stage, fkd/training/prestage.py).
  skip = tuple(stage.model_config.get('init_skip', DONT_LOAD))
  params = merge_params(state['params'], variables['params'], skip, source=source)
  batch_stats = merge_params(
    state['batch_stats'], variables.get('batch_stats', {}), skip, source=source
  )
  return {
    **state,
    'params': params,
    'batch_stats': batch_stats,
    'opt_state': optimizer.init(params),
  }
