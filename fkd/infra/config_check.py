"""Every config value checked before anything trains: one-line errors naming the field.

`check(config)` walks the whole config: the data and eval blocks, every optimizer block (any
sub-config with `batch_size`, `lr` and `schedule`: `train`, `teacher_train`, the pre-stage's, ...)
and every model block (any sub-config with `name` and `kwargs`). The methods check their own
blocks (`Method.validate`).
"""

from __future__ import annotations

import math
from typing import Any

from fkd.errors import FkdError

SCHEDULES = ('inverse_time', 'cosine', 'steps')
AUGMENTS = ('kd', 'flip', 'none')
AUGMENT_ON = ('auto', 'device', 'host')
AUGMENT_FILLS = ('zeros', 'reflect', 'context')  # fkd.data.augment.FILLS (infra cannot import it)
TARGET_SPACES = ('normalized', 'pixel')
CPU_KERNELS = ('auto', 'native', 'xla')  # fkd.models.native.CPU_KERNELS (infra cannot import it)
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def positive_int(field: str, value: Any) -> None:
  if not _integer(value) or value <= 0:
    raise FkdError(f'config.{field} must be a positive integer, got {value!r}')


def non_negative_int(field: str, value: Any) -> None:
  if not _integer(value) or value < 0:
    raise FkdError(f'config.{field} must be an integer >= 0, got {value!r}')


def positive_number(field: str, value: Any) -> None:
  if not _number(value) or value <= 0:
    raise FkdError(f'config.{field} must be a positive number, got {value!r}')


def count_or_all(field: str, value: Any) -> None:
  """-1 (everything) or a positive count."""
  if not _integer(value) or (value <= 0 and value != -1):
    raise FkdError(f'config.{field} must be a positive integer or -1 (all), got {value!r}')


def one_of(field: str, value: Any, known: tuple[str, ...]) -> None:
  if value not in known:
    raise FkdError(f'config.{field} must be one of {", ".join(known)}, got {value!r}')


def check_optimizer(field: str, tc: Any, process_count: int = 1) -> None:
  """Any batch size trains on any device count (the trainer pads a batch to a multiple of the
  devices with examples of weight 0); each process reads the same share of it."""
  positive_int(f'{field}.batch_size', tc.batch_size)
  if tc.batch_size % process_count:
    raise FkdError(
      f'config.{field}.batch_size ({tc.batch_size}) must be divisible by the {process_count} '
      'processes (each reads the same share of a batch)'
    )
  if not _integer(tc.num_steps):
    raise FkdError(f'config.{field}.num_steps must be an integer, got {tc.num_steps!r}')
  if tc.num_steps <= 0:  # the epochs count
    positive_number(f'{field}.num_epochs', tc.num_epochs)
  elif not _number(tc.num_epochs) or tc.num_epochs < 0:  # unused then (0 is the configs' mark)
    raise FkdError(
      f'config.{field}.num_epochs must be a number >= 0, got {tc.num_epochs!r} '
      f'(config.{field}.num_steps={tc.num_steps} sets the length)'
    )
  if not _number(tc.lr) or tc.lr < 0:  # 0: the model stays as initialised
    raise FkdError(f'config.{field}.lr must be a number >= 0, got {tc.lr!r}')
  one_of(f'{field}.schedule', tc.schedule, SCHEDULES)
  if not _number(tc.lr_decay) or tc.lr_decay < 0:
    raise FkdError(f'config.{field}.lr_decay must be a number >= 0, got {tc.lr_decay!r}')
  non_negative_int(f'{field}.warmup_steps', tc.warmup_steps)
  for beta in ('adam_b1', 'adam_b2'):
    if not _number(tc[beta]) or not 0 <= tc[beta] < 1:
      raise FkdError(f'config.{field}.{beta} must be in [0, 1), got {tc[beta]!r}')
  positive_number(f'{field}.adam_eps', tc.adam_eps)
  positive_int(f'{field}.log_every_steps', tc.log_every_steps)
  positive_int(f'{field}.checkpoint_every_steps', tc.checkpoint_every_steps)


MAX_IMAGE_SIZE = 1024  # crops beyond it are no face-landmark input (and exhaust memory)


def in_range(field: str, value: Any, lo: float, hi: float, closed_hi: bool = True) -> None:
  """A finite number in [lo, hi] (or [lo, hi))."""
  ok = _number(value) and lo <= value and (value <= hi if closed_hi else value < hi)
  if not ok:
    raise FkdError(
      f'config.{field} must be a number in [{lo:g}, {hi:g}{"]" if closed_hi else ")"}, '
      f'got {value!r}'
    )


def check_model(field: str, mc: Any, known: list[str]) -> None:
  if mc.name not in known:
    raise FkdError(f'config.{field}.name must be one of {", ".join(known)}, got {mc.name!r}')
  kwargs = mc.kwargs
  for key in ('width', 'depth'):  # multipliers of the channels and blocks
    if key in kwargs and kwargs[key] is not None:
      positive_number(f'{field}.kwargs.{key}', kwargs[key])
      in_range(f'{field}.kwargs.{key}', kwargs[key], 0, 16)
  if 'bn_momentum' in kwargs and kwargs['bn_momentum'] is not None:
    in_range(f'{field}.kwargs.bn_momentum', kwargs['bn_momentum'], 0, 1, closed_hi=False)


def _blocks(node: Any, prefix: str = '') -> list[tuple[str, Any]]:
  """(dotted name, sub-config) of every sub-config of `node`."""
  out = []
  for key in node.keys():
    value = node[key]
    if hasattr(value, 'keys') and not isinstance(value, dict):
      out.append((prefix + key, value))
      out += _blocks(value, prefix + key + '.')
  return out


def check(config: Any, device_count: int, model_names: list[str], process_count: int = 1) -> None:
  """Raises an FkdError naming the first field of `config` with a value fkd cannot train on.

  `device_count`: no constraint any more (batches are padded to a multiple of the devices, see
  `check_optimizer`); kept for the callers."""
  del device_count
  d = config.data
  positive_int('data.image_size', d.image_size)
  if d.image_size > MAX_IMAGE_SIZE:
    raise FkdError(
      f'config.data.image_size must be at most {MAX_IMAGE_SIZE} pixels, got {d.image_size}'
    )
  non_negative_int('data.num_landmarks', d.num_landmarks)  # 0: from the dataset (folder)
  one_of('data.target_space', d.target_space, TARGET_SPACES)
  one_of('data.augment', d.augment, AUGMENTS)
  one_of('data.augment_on', d.get('augment_on', 'auto'), AUGMENT_ON)
  one_of('data.augment_fill', d.get('augment_fill', 'zeros'), AUGMENT_FILLS)
  if d.get('augment_fill', 'zeros') != 'zeros' and d.augment != 'kd':
    raise FkdError(
      f"config.data.augment_fill={d.augment_fill!r} needs config.data.augment='kd' (only its warp "
      f'reaches past the stored crop), got augment {d.augment!r}'
    )
  count_or_all('data.max_train_examples', d.max_train_examples)
  count_or_all('data.max_eval_examples', d.max_eval_examples)
  non_negative_int('data.num_workers', d.num_workers)
  non_negative_int('data.num_shards', d.num_shards)
  if isinstance(d.eval_splits, str):  # () = every split of a folder dataset but train
    raise FkdError(f'config.data.eval_splits must be a list of splits, got {d.eval_splits!r}')
  positive_int('eval.batch_size', config.eval.batch_size)
  positive_number('eval.fr_threshold', config.eval.fr_threshold)
  one_of('compute_dtype', config.get('compute_dtype', 'float32'), COMPUTE_DTYPES)
  in_range('eval.fr_threshold', config.eval.fr_threshold, 0, 1)  # a fraction of the normaliser
  if 'asm' in config and 'acc' in config.asm:
    acc = config.asm.acc
    if not _number(acc) or not 0 < acc <= 1:
      raise FkdError(f'config.asm.acc must be a number in (0, 1], got {acc!r}')
  if not _integer(config.get('seed', 0)):
    raise FkdError(f'config.seed must be an integer, got {config.seed!r}')
  non_negative_int('eval_every_steps', config.get('eval_every_steps', 0))
  keep_best = config.get('keep_best', False)
  if not isinstance(keep_best, bool):
    raise FkdError(f'config.keep_best must be True or False, got {keep_best!r}')
  if keep_best and config.get('eval_every_steps', 0) <= 0:
    raise FkdError(
      'config.keep_best needs config.eval_every_steps > 0 (the best checkpoint is the one with '
      'the best validation NME)'
    )
  one_of('cpu_kernels', config.get('cpu_kernels', 'auto'), CPU_KERNELS)
  for field, block in _blocks(config):
    keys = set(block.keys())
    if {'batch_size', 'lr', 'schedule'} <= keys:
      check_optimizer(field, block, process_count)
    elif {'name', 'kwargs'} <= keys:
      check_model(field, block, model_names)
