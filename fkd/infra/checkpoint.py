"""Orbax checkpoints behind three functions: a per-stage manager, `load_model` for teachers/eval.

A stage directory holds numbered steps, each with three items: `model` ({'params', 'batch_stats'}),
`train` ({'opt_state', 'step'}) and `meta` (JSON: model name and kwargs, stage, total steps, ...).
Teachers and evaluators restore only `model` + `meta`. Orbax writes each step to a temporary
directory and renames it when complete, so an interrupted save never leaves a half checkpoint.
A training stage saves asynchronously (`manager(..., asynchronous=True)`, `save(..., wait=False)`):
the arrays are host copies taken when `save` returns, Orbax writes them on a background thread
while training goes on, and `wait` / `close` block until every pending save is complete.

Several processes: `manager` + `save` / `restore` are collective (Orbax synchronises every process
at barriers, so all of them must make the same calls in the same order). `read_meta` and
`load_model` are local reads without barriers: any process may call them at any time, e.g. after
another one already created a stage directory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fkd.errors import FkdError

_ITEMS = ('model', 'train', 'meta')


@contextlib.contextmanager
def _quiet_reads() -> Iterator[None]:
  """Orbax's INFO / WARNING lines off during a read (e.g. "Item 'train' was found in the
  checkpoint, but could not be restored" for the items a model read leaves alone): what the
  command lines hide, the Python API hides too."""
  from absl import logging

  verbosity = logging.get_verbosity()
  logging.set_verbosity(min(verbosity, logging.ERROR))  # absl: lower is quieter
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _quiet(fn: Callable) -> Callable:
  @functools.wraps(fn)
  def wrapped(*args: Any, **kwargs: Any) -> Any:
    with _quiet_reads():
      return fn(*args, **kwargs)

  return wrapped


def manager(
  directory: str, max_to_keep: int = 2, asynchronous: bool = False
) -> ocp.CheckpointManager:
  """A CheckpointManager for one stage directory; synchronous unless `asynchronous`."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=True,
    enable_async_checkpointing=asynchronous,
    cleanup_tmp_directories=True,  # half-written steps of a killed or failed save
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=_ITEMS)


def _reader(directory: str) -> ocp.CheckpointManager:
  """A read-only manager local to this process: no barriers, no directory creation."""
  me = jax.process_index()
  options = ocp.CheckpointManagerOptions(
    create=False,
    enable_async_checkpointing=False,
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}
    ),
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=_ITEMS)


def host_copy(tree: Any) -> Any:
  """NumPy copies of a pytree's arrays that own their memory: an asynchronous save may still be
  writing them when the next train step reuses (donates) the device buffers, which on CPU
  `device_get` can return views of."""
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def save(
  mgr: ocp.CheckpointManager,
  step: int,
  state: dict[str, Any],
  meta: dict[str, Any],
  wait: bool = True,
) -> None:
  """Saves a train state {'params', 'batch_stats', 'opt_state', 'step'} plus JSON metadata
  (`wait=False` on an asynchronous manager: returns while Orbax writes; pass host copies)."""
  model = {'params': state['params'], 'batch_stats': state['batch_stats']}
  train = {'opt_state': state['opt_state'], 'step': state['step']}
  mgr.save(
    step,
    args=ocp.args.Composite(
      model=ocp.args.StandardSave(model),
      train=ocp.args.StandardSave(train),
      meta=ocp.args.JsonSave(meta),
    ),
    force=True,
  )
  if wait:
    mgr.wait_until_finished()


def save_model_step(
  mgr: ocp.CheckpointManager,
  step: int,
  variables: dict[str, Any],
  meta: dict[str, Any],
  wait: bool = True,
) -> None:
  """Saves {'params', 'batch_stats'} + meta as `step` (no `train` item: a model-only step, as
  `save_model` writes and `load_model` reads; the best checkpoint of a stage)."""
  model = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  mgr.save(
    step,
    args=ocp.args.Composite(model=ocp.args.StandardSave(model), meta=ocp.args.JsonSave(meta)),
    force=True,
  )
  if wait:
    mgr.wait_until_finished()


def drop_after(directory: str, step: int) -> list[int]:
  """Deletes the complete steps of `directory` newer than `step` (steps a resumed run will write
  again, identically); returns them. Only for directories whose steps are reproducible."""
  dropped = [s for s in all_steps(directory) if s > step]
  for s in dropped:
    shutil.rmtree(os.path.join(directory, str(s)))
  return dropped


def restore(
  mgr: ocp.CheckpointManager, abstract_state: dict[str, Any], step: int | None = None
) -> dict[str, Any]:
  """Restores the full train state of `step` (default: latest) into the given structure."""
  step = mgr.latest_step() if step is None else step
  model = {'params': abstract_state['params'], 'batch_stats': abstract_state['batch_stats']}
  train = {'opt_state': abstract_state['opt_state'], 'step': abstract_state['step']}
  as_abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
  got = mgr.restore(
    step,
    args=ocp.args.Composite(
      model=ocp.args.StandardRestore(as_abstract(model)),
      train=ocp.args.StandardRestore(as_abstract(train)),
    ),
  )
  return {**got['model'], **got['train']}


@_quiet
def latest_step(directory: str) -> int | None:
  """The latest complete step in a stage directory, or None (a local read, like `read_meta`)."""
  return _reader(directory).latest_step() if os.path.isdir(directory) else None


@_quiet
def read_meta(directory: str, step: int | None = None) -> dict[str, Any] | None:
  """The JSON metadata of a stage's latest (or given) step, or None when there is no checkpoint."""
  if not os.path.isdir(directory):
    return None
  mgr = _reader(directory)
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  try:
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  except Exception as e:  # noqa: BLE001
    raise unreadable(directory, step, e) from None


def unreadable(directory: str, step: int, error: BaseException) -> FkdError:
  """The one-line error of a checkpoint step that does not restore."""
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:160]
  return FkdError(
    f'checkpoint {os.path.join(directory, str(step))} does not restore ({reason}); rerun '
    '`python -m fkd.main` with the same config to set it aside and resume from the step before'
  )


# ---------------------------------------------------------------------------------------------
# Checkpoints you can trust: a step that does not restore is set aside, never deleted.


@_quiet
def all_steps(directory: str) -> list[int]:
  """The complete steps of a stage directory, oldest first (a local read)."""
  return sorted(_reader(directory).all_steps()) if os.path.isdir(directory) else []


def verify(directory: str, step: int) -> str | None:
  """None when every item of `step` restores as it was saved, else what failed (one line)."""
  try:
    mgr = _reader(directory)
    args = {'meta': ocp.args.JsonRestore()}
    for item in ('model', 'train'):  # `save_model` checkpoints have no `train`
      path = os.path.join(directory, str(step), item)
      if os.path.isdir(path):
        saved = ocp.StandardCheckpointer().metadata(path)
        saved = getattr(saved, 'item_metadata', saved)
        # NumPy targets: the saved shardings name devices of the run that wrote them.
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), saved)
        args[item] = ocp.args.StandardRestore(target)
    got = mgr.restore(step, args=ocp.args.Composite(**args))
    if not isinstance(got['meta'], dict) or 'model' not in got['meta']:
      return 'its meta has no model'
  except Exception as e:  # noqa: BLE001  (any failure to read back is a corrupt step)
    return ' '.join(f'{type(e).__name__}: {e}'.split())[:200]
  return None


def set_aside(directory: str, step: int) -> str:
  """Renames step `step` to `<step>.corrupt-<n>` (Orbax no longer sees it); returns the path."""
  n = 1
  while os.path.exists(os.path.join(directory, f'{step}.corrupt-{n}')):
    n += 1
  target = os.path.join(directory, f'{step}.corrupt-{n}')
  os.rename(os.path.join(directory, str(step)), target)
  return target


def last_good_step(directory: str, rename: bool = True) -> int | None:
  """The newest step of `directory` that restores; newer ones that do not are set aside
  (`rename`: this process renames; the other processes of a multi-host run only read), each with
  a one-line note. None for a directory without steps.

  Raises:
    FkdError: when the directory has steps but none of them restores.
  """
  steps = all_steps(directory)
  for step in reversed(steps):
    problem = verify(directory, step)
    if problem is None:
      return step
    where = set_aside(directory, step) if rename else os.path.join(directory, str(step))
    print(
      f'fkd: note: checkpoint {os.path.join(directory, str(step))} does not restore ({problem}); '
      f'set aside as {where}',
      flush=True,
    )
  if steps:
    raise FkdError(
      f'no checkpoint in {directory} restores; the broken steps are set aside as '
      '<step>.corrupt-<n>: rerun the same command to train this stage from the start'
    )
  return None


def save_model(directory: str, variables: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes {'params', 'batch_stats'} + meta as step 0 of `directory` (imported weights).

  The layout is a stage directory's without the `train` item, so `load_model` and `read_meta`
  read it and configs can name it as `init_from`.
  """
  mgr = manager(directory)
  save_model_step(mgr, 0, variables, meta)
  mgr.close()


@_quiet
def load_model(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Host (NumPy) {'params', 'batch_stats'} and metadata of a stage's latest step.

  For teachers and evaluation; every process reads the whole model (see `sharding.replicate`).

  Raises:
    FkdError: when the directory holds no checkpoint.
  """
  if not os.path.isdir(directory):
    raise FkdError(f'checkpoint directory {directory} does not exist')
  mgr = _reader(directory)
  step = mgr.latest_step()
  if step is None:
    raise FkdError(f'no checkpoint found in {directory}')
  # Restored as NumPy: the saved shardings name devices of the run that wrote them.
  as_numpy = lambda m: np.empty(m.shape, m.dtype)
  try:
    target = jax.tree.map(as_numpy, mgr.item_metadata(step)['model'])
    got = mgr.restore(
      step,
      args=ocp.args.Composite(model=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
    )
  except Exception as e:  # noqa: BLE001
    raise unreadable(directory, step, e) from None
  return got['model'], got['meta']
