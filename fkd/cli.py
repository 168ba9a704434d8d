"""What every `python -m fkd.<tool>` shares: start-up, config flags, `fkd: error:` one-liners.

Entry points call `run(main, ...)`: it switches on the CPU tuning and the persistent compilation
cache (`fkd.runtime`) and, for tools that take part in multi-host runs, the distributed start-up
(`fkd.distributed`) before JAX starts, then prints an `FkdError` as `fkd: error: ...` with exit
code 2. The library itself changes no process settings when imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from fkd.errors import FkdError


def define_run_flags() -> tuple[Any, Any]:
  """`--config=configs/X.py[:ARG]` (with `--config.key=value` overrides) and `--workdir`."""
  from absl import flags
  from ml_collections import config_flags

  config = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:arg]).', lock_config=True
  )
  workdir = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
  flags.mark_flags_as_required(['config', 'workdir'])
  return config, workdir


def _one_line(error: BaseException) -> str:
  """The useful line of a flag/config error (config_flags embeds whole tracebacks in messages)."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  lines = [ln.strip() for ln in text.replace('\\n', '\n').splitlines() if ln.strip()]
  if any(ln.startswith('Traceback') for ln in lines):
    lines = lines[-1:]
  return ' '.join(' '.join(lines).strip('\'"').split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a bad flag or config file as one line instead of a traceback."""
  from absl import flags

  try:
    rest = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      flags.FLAGS.config.keys()  # config files load lazily: force it here, inside this try
    return rest
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    print(f'fkd: error: bad command line: {_one_line(e)}', file=sys.stderr)
    sys.exit(2)


def start(distributed: bool = False) -> None:
  """Process settings an entry point opts into, before JAX initialises its backends: the CPU
  tuning and the persistent compilation cache (`fkd.runtime`)."""
  from fkd import runtime

  runtime.configure()
  runtime.enable_compilation_cache()
  if distributed:
    from fkd import distributed as dist

    dist.maybe_initialize()


def run(
  main: Callable[[list[str]], None],
  one_line_flag_errors: bool = True,
  distributed: bool = False,
  positional_args: bool = False,
) -> None:
  """`absl.app.run(main)` after `start()`: an FkdError is printed as `fkd: error: ...`, exit 2.

  Unless `positional_args`, arguments other than flags are a usage error.
  """
  from absl import app, logging

  def guarded(argv: list[str]) -> None:
    if len(argv) > 1 and not positional_args:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    logging.set_verbosity(logging.ERROR)  # TFDS's and Orbax's INFO/WARNING lines
    start(distributed)
    try:
      main(argv)
    except FkdError as e:
      print(f'fkd: error: {e}', file=sys.stderr, flush=True)
      sys.exit(2)

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if one_line_flag_errors:
    app.run(guarded, flags_parser=parse_flags)
  else:
    app.run(guarded)  # absl's own usage message
