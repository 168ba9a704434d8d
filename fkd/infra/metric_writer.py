"""Scalar logging: JSON lines + TensorBoard events (tensorboardX, no TensorFlow); progress bars.

`MetricWriter(logdir).write_scalars(step, {'loss': ..., 'lr': ...})` appends one JSON line to
`logdir/metrics.jsonl` and the scalars to a TensorBoard event file written by tensorboardX
(`tensorboard --logdir runs/`). `read_scalars(logdir)` reads the event files back with
TensorBoard's own reader (the `tensorboard` package, in the `test` extra).

`progress(iterable, total=...)` is a tqdm bar with rate and ETA for long loops; it disables itself
when stderr is not a terminal (logs) unless `FKD_PROGRESS=1`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tqdm

from fkd.infra import files


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Tag -> [(step, value), ...] of every event file in `logdir`, read by TensorBoard."""
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(logdir, size_guidance={'scalars': 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def truncate(path: str, step: int) -> None:
  """Drops the rows of a `metrics.jsonl` after `step` (a resumed stage: rows of an attempt that
  was interrupted after its last checkpoint), rewriting the file atomically."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row_step = int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
      continue  # a row cut short by a kill
    if row_step <= step:
      kept.append(line)
  if len(kept) == len(lines):
    return
  files.atomic_write(path, ''.join(kept))


class MetricWriter:
  """Appends scalars to `logdir/metrics.jsonl` and to a TensorBoard event file.

  Args:
    logdir: directory for both files (created on first write).
    active: False makes every call a no-op (e.g. `jax.process_index() != 0`).
    jsonl: file name of the JSON-lines log; None writes only the event file.
    flush_secs: flush the event file at most this often (and on `flush`/`close`).
  """

  def __init__(
    self,
    logdir: str,
    active: bool = True,
    jsonl: str | None = 'metrics.jsonl',
    flush_secs: float = 10.0,
  ):
    self.logdir = logdir
    self.active = active
    self.jsonl = jsonl
    self.flush_secs = flush_secs
    self._events = None

  @property
  def event_files(self) -> list[str]:
    """The TensorBoard event files in `logdir` (this writer's and earlier runs')."""
    if not os.path.isdir(self.logdir):
      return []
    return sorted(
      os.path.join(self.logdir, f)
      for f in os.listdir(self.logdir)
      if f.startswith('events.out.tfevents.')
    )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs numeric scalars (numpy / jax scalars are converted with float())."""
    if not self.active or not scalars:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    if self._events is None:
      from tensorboardX import SummaryWriter

      os.makedirs(self.logdir, exist_ok=True)
      self._events = SummaryWriter(self.logdir, flush_secs=self.flush_secs)
    for tag, value in values.items():
      self._events.add_scalar(tag, value, int(step))
    if self.jsonl:
      with open(os.path.join(self.logdir, self.jsonl), 'a') as f:
        f.write(json.dumps({'step': int(step), **values}) + '\n')

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


# ---------------------------------------------------------------------------------------------
# Progress bars.


def progress(
  iterable: Iterable | None = None,
  total: int | None = None,
  desc: str | None = None,
  initial: int = 0,
  unit: str = 'it',
  enabled: bool = True,
  **kwargs: Any,
) -> tqdm.tqdm:
  """A tqdm bar with rate and ETA; off when `enabled` is False or stderr is not a terminal.

  `FKD_PROGRESS=1` forces it on (e.g. in a notebook log), `FKD_PROGRESS=0` off.
  """
  env = os.environ.get('FKD_PROGRESS')
  disable = (not enabled) or env == '0' or (None if env != '1' else False)
  options = {'dynamic_ncols': True, 'mininterval': 1.0, 'leave': False, **kwargs}
  return tqdm.tqdm(
    iterable, total=total, desc=desc, initial=initial, unit=unit, disable=disable, **options
  )


def write(message: str) -> None:
  """Prints a line (flushed, for logs) without breaking an active progress bar."""
  tqdm.tqdm.write(message)
  sys.stdout.flush()
