"""What a workdir knows about the runs into it: the live run's lock and each stage's config.

- `lock(workdir)`: `DIR/.lock` holds the pid, host and start time of the run writing into DIR. A
  second run stops at once with a one-line error; a lock whose process is gone (killed, crashed)
  is taken over. Several hosts: process 0 holds it for all of them (`fkd.training.trainer.run`).
- `DIR/<stage>/config.json`: the config that started the stage. `check_config` compares a rerun's
  or an evaluation's config with every stage's record over the fields that change a model or its
  scores, i.e. every field but the operational ones of `OPERATIONAL`; a difference is a one-line
  error naming the field, both values and the two ways forward.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from fkd.errors import FkdError
from fkd.infra import files

LOCK = '.lock'
RECORD = 'config.json'
ALLOW_FLAG = '--allow_config_change'

# Config fields that change neither what a stage learns nor how it is scored (fnmatch patterns of
# dotted names): they may differ between the runs into one workdir. Every other field matters.
OPERATIONAL = (
  'stages',  # which stages this command trains: a workdir grows by stages (configs/baseline.py)
  '*_ckpt',  # stages used from elsewhere; their own directories hold their records
  'data.data_dir',
  'data.manual_dir',
  'data.allow_partial',
  'data.num_workers',
  'data.eval_splits',  # which of the splits are scored, not how
  'data.max_eval_examples',
  'eval.batch_size',
  '*.log_every_steps',
  '*.checkpoint_every_steps',
  # Validation while training is looked at, not learnt from; the faces it holds out of a train
  # split are checked against the resumed checkpoint's meta instead (fkd.training.trainer).
  'eval_every_steps',
  # How a model is computed, not what it learns (the same maths to float32 rounding); the
  # checkpoint meta's `program` records what trained each stage.
  'cpu_kernels',
)


# ---------------------------------------------------------------------------------------------
# The config record.


def flatten(config: Any) -> dict[str, Any]:
  """{'train.lr': 0.002, ...}: a config's leaves by dotted name, JSON-ready (tuples as lists)."""
  tree = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  out: dict[str, Any] = {}

  def walk(prefix: str, node: Any) -> None:
    if isinstance(node, dict) and node:
      for k, v in node.items():
        walk(f'{prefix}{k}.', v)
      return
    value = list(node) if isinstance(node, tuple | list) else node
    out[prefix[:-1]] = json.loads(json.dumps(value, default=str))

  walk('', tree)
  return out


def matters(field: str) -> bool:
  return not any(fnmatch.fnmatchcase(field, p) for p in OPERATIONAL)


def read_record(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, RECORD)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise FkdError(f'{path} is unreadable ({e}); move it away to use this stage anyway') from None
  return record.get('config', {}) if isinstance(record, dict) else {}


def write_record(stage_dir: str, config: Any) -> None:
  """`stage_dir/config.json` (atomically), unless the stage already has one. `config`: the config
  or its `flatten` as the user gave it (before fkd fills fields in from the dataset)."""
  path = os.path.join(stage_dir, RECORD)
  if os.path.exists(path):
    return
  os.makedirs(stage_dir, exist_ok=True)
  flat = config if isinstance(config, dict) else flatten(config)
  record = {'note': 'the config that started this stage (fkd.infra.workdir)', 'config': flat}
  files.atomic_write(path, json.dumps(record, indent=1, sort_keys=True))


def differences(config: Any, record: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, value now, recorded value) of every field that matters and differs. Fields only one
  side has (configs of other fkd versions or methods) are not compared."""
  now = flatten(config)
  return [
    (k, now[k], record[k])
    for k in sorted(now)
    if k in record and matters(k) and now[k] != record[k]
  ]


def check_config(
  config: Any, workdir: str, stages: Sequence[str], allow_change: bool = False, verb: str = 'rerun'
) -> None:
  """A one-line FkdError when `config` differs from a stage record of `workdir` in a field that
  matters (`allow_change`: a note instead)."""
  for stage in stages:
    stage_dir = os.path.join(workdir, stage)
    record = read_record(stage_dir)
    if not record:
      continue
    diffs = differences(config, record)
    if not diffs:
      continue
    field, now, then = diffs[0]
    more = f' (and {len(diffs) - 1} more: {", ".join("config." + d[0] for d in diffs[1:4])})'
    more = more if len(diffs) > 1 else ''
    if allow_change:
      print(
        f'fkd: note: config.{field} is {now!r}, {stage} was trained with {then!r}{more}; '
        f'continuing ({ALLOW_FLAG})',
        flush=True,
      )
      continue
    raise FkdError(
      f'config.{field} is {now!r} but {stage_dir} was trained with {then!r}{more} '
      f'(recorded in {RECORD}): {verb} into a new --workdir, or pass {ALLOW_FLAG} to continue '
      'with the new value'
    )


# ---------------------------------------------------------------------------------------------
# The lock.


def _start_time(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), so that a reused pid is not taken for the owner."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(owner: dict[str, Any]) -> bool:
  pid = int(owner.get('pid', 0))
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  started = owner.get('start_time')
  return started is None or _start_time(pid) in (None, started)


def _read_owner(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      owner = json.load(f)
    return owner if isinstance(owner, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable: no process can be named as its owner


def _describe(owner: dict[str, Any]) -> str:
  when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('time', 0)))
  return f'pid {owner.get("pid", "?")} on {owner.get("host", "?")} since {when}'


def acquire(workdir: str) -> str:
  """Takes `workdir/.lock` for this process (see the module doc); returns the lock's path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  me = {
    'pid': os.getpid(),
    'host': socket.gethostname(),
    'time': time.time(),
    'start_time': _start_time(os.getpid()),
  }
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(me, f)
  try:
    for _ in range(3):
      try:
        os.link(tmp, path)  # atomic: fails when the lock exists, never leaves half a lock
        return path
      except FileExistsError:
        pass
      owner = _read_owner(path)
      if owner is None:
        continue  # released meanwhile
      if owner.get('pid') == me['pid'] and owner.get('host') == me['host']:
        return path  # this process holds it already
      if owner.get('host') not in (None, me['host']):
        raise FkdError(
          f'workdir {workdir} is in use by {_describe(owner)} ({path}); if that run is gone, '
          'delete the lock file and rerun'
        )
      if _alive(owner):
        raise FkdError(
          f'workdir {workdir} is in use by {_describe(owner)}: wait for that run to end, or '
          'use another --workdir'
        )
      stale = f'{path}.stale-{os.getpid()}'
      with contextlib.suppress(FileNotFoundError):  # another process took it over first
        os.rename(path, stale)
        os.remove(stale)
        note = f'fkd: note: taking over the lock of a run that ended ({_describe(owner)})'
        print(note, flush=True)
    raise FkdError(f'could not take the lock {path}: other runs keep starting in {workdir}')
  finally:
    os.remove(tmp)


def release(path: str) -> None:
  """Removes the lock if this process still holds it."""
  owner = _read_owner(path)
  if owner and owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def lock(workdir: str, active: bool = True) -> Iterator[None]:
  """Holds `workdir/.lock` for the block (`active=False`: other processes of a multi-host run)."""
  if not active:
    yield
    return
  try:
    path = acquire(workdir)
  except OSError as e:
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
      raise FkdError(f'workdir {workdir} is not writable ({e.strerror})') from None
    raise
  try:
    yield
  finally:
    release(path)
