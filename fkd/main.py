"""Command line: `python -m fkd.main --config=configs/kd.py[:ARG] --workdir=DIR [--config.x=y]`.

Only parses flags and hands over to `fkd.train.run`; notebooks call that function directly.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.ERROR)  # TFDS's INFO/WARNING lines drown the training log
  from fkd import (
    distributed,  # noqa: F401  (initialises multi-host runs from the environment)
    train,
  )
  from fkd.errors import FkdError

  try:
    train.run(_CONFIG.value, _WORKDIR.value)
  except train.Preempted as e:
    print(f'fkd: {e}', file=sys.stderr, flush=True)
    sys.exit(143)  # 128 + SIGTERM, after a clean checkpoint
  except FkdError as e:
    print(f'fkd: error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except KeyboardInterrupt:
    print('fkd: interrupted; rerun the same command to resume from the last checkpoint',
          file=sys.stderr, flush=True)
    sys.exit(130)


def _one_line(error: BaseException) -> str:
  """The useful line of a flag/config error (config_flags embeds whole tracebacks in messages)."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  lines = [ln.strip() for ln in text.replace('\\n', '\n').splitlines() if ln.strip()]
  if any(ln.startswith('Traceback') for ln in lines):
    lines = lines[-1:]
  return ' '.join(' '.join(lines).strip('\'"').split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with config errors (typos, bad values) as one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # config files load lazily: force it here, inside this try
    return rest
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    print(f'fkd: error: bad command line: {_one_line(e)}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  app.run(main, flags_parser=parse_flags)
