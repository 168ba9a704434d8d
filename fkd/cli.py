"""What every `python -m fkd.<tool>` shares: start-up, config flags, `fkd: error:` one-liners.

Entry points call `run(main, ...)`: it switches on the CPU tuning and the persistent compilation
cache (`fkd.infra.runtime`) and, for tools that take part in multi-host runs, the distributed
start-up
(`fkd.infra.distributed`) before JAX starts. Then one exit convention for every tool (`report`):

- 0: done;
- 2: a user error (`FkdError`, a bad flag, or an I/O error of the user's files such as a full
  disk or a denied permission), printed as one line `fkd: error: ...`, no traceback;
- 130: interrupted (Ctrl-C); `fkd.main` saves a checkpoint first, like SIGTERM (143);
- 1: a bug in fkd: the traceback, then a line saying so and asking for a report.

The library itself changes no process settings when imported.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
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


def define_allow_config_change() -> Any:
  """`--allow_config_change`: use a workdir whose stages were trained with another config."""
  from absl import flags

  return flags.DEFINE_boolean(
    'allow_config_change',
    False,
    "Continue although the config differs from the one that trained the workdir's stages "
    '(DIR/<stage>/config.json) in a field that matters; default: a one-line error.',
  )


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
  tuning and the persistent compilation cache (`fkd.infra.runtime`)."""
  from fkd.infra import runtime

  runtime.configure()
  runtime.enable_compilation_cache()
  if distributed:
    from fkd.infra import distributed as dist

    dist.maybe_initialize()


# I/O failures that are about the user's files or machine, not about fkd: one line, exit 2.
USER_ERRNOS = frozenset(
  {
    errno.ENOSPC,  # disk full
    errno.EDQUOT,  # quota exceeded
    errno.EACCES,  # permission denied
    errno.EPERM,
    errno.EROFS,  # read-only file system
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.EIO,
  }
)
BUG_REPORT = 'please report it with the command and this traceback to the fkd issue tracker'


def _chain(error: BaseException) -> list[BaseException]:
  """`error` and every exception behind it (causes, contexts, exception groups)."""
  out: list[BaseException] = []
  stack = [error]
  while stack:
    e = stack.pop()
    if e is None or any(e is seen for seen in out):
      continue
    out.append(e)
    stack += [e.__cause__, e.__context__, *(getattr(e, 'exceptions', None) or ())]
  return out


# TensorStore (under Orbax) reports the OS error in its message: `... [os_error_code='28']`.
_TS_ERRNO = re.compile(r"os_error_code='(\d+)'")
_TS_PATH = re.compile(r'(?:local file|Failed writing:|Failed to open|Error opening) "([^"]+)"')


def user_io_problem(error: BaseException) -> str | None:
  """One line about the I/O failure of the user's files or machine behind `error`, if it is one
  (its causes included: Orbax and TFDS wrap them; a full disk under Orbax is a TensorStore
  `ValueError` naming the OS error code), else None."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in USER_ERRNOS:
      return describe_os_error(e)
  for e in _chain(error):
    found = _TS_ERRNO.search(str(e))
    if found and int(found.group(1)) in USER_ERRNOS:
      path = _TS_PATH.search(str(e))
      return describe_os_error(OSError(int(found.group(1)), '', path.group(1) if path else None))
  return None


def describe_os_error(e: OSError) -> str:
  what = os.strerror(e.errno) if e.errno else str(e)
  where = ' -> '.join(str(f) for f in (e.filename, e.filename2) if f)
  hint = (
    ' (free some space and rerun the same command)'
    if e.errno in (errno.ENOSPC, errno.EDQUOT)
    else ''
  )
  return f'{what}: {where}{hint}' if where else f'{what}{hint}'


def report(error: BaseException) -> int:
  """Prints `error` the fkd way (see the module doc) and returns the exit code."""
  if isinstance(error, KeyboardInterrupt):
    print('fkd: interrupted', file=sys.stderr, flush=True)
    return 130
  if isinstance(error, FkdError):
    print(f'fkd: error: {error}', file=sys.stderr, flush=True)
    return 2
  problem = user_io_problem(error)
  if problem is not None:
    print(f'fkd: error: {problem}', file=sys.stderr, flush=True)
    return 2
  traceback.print_exception(error, file=sys.stderr)
  print(f'fkd: this is a bug in fkd, not in your input: {BUG_REPORT}', file=sys.stderr, flush=True)
  return 1


class _DropOrbaxTracebacks:
  """A logging filter: Orbax's background threads log every failed write or read as an ERROR with
  its traceback (one per array and thread: hundreds of lines for a full disk). The failure also
  reaches fkd as an exception, which `report` turns into one line, so those records are dropped."""

  def filter(self, record: Any) -> bool:
    return not (record.exc_info and f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


def _quiet_orbax_noise() -> None:
  """Drops Orbax's and TensorStore's echoes of a failure fkd reports itself: the logged tracebacks
  (`_DropOrbaxTracebacks`) and the `RuntimeError: Event loop is closed` of TensorStore callbacks
  that complete after Orbax gave up on a failed read or write, which Python prints as unraisable
  exceptions. Either would bury the one line that says what went wrong."""
  import logging as py_logging

  absl_logger = py_logging.getLogger('absl')
  if not any(isinstance(f, _DropOrbaxTracebacks) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxTracebacks())
  previous = sys.unraisablehook
  if getattr(previous, 'fkd_quiet', False):
    return

  def hook(unraisable: Any) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and 'Event loop is closed' in str(value):
      return
    previous(unraisable)

  hook.fkd_quiet = True
  sys.unraisablehook = hook


def run(
  main: Callable[[list[str]], None],
  one_line_flag_errors: bool = True,
  distributed: bool = False,
  positional_args: bool = False,
) -> None:
  """`absl.app.run(main)` after `start()`, with the exit convention of `report`.

  Unless `positional_args`, arguments other than flags are a usage error.
  """
  from absl import app, logging

  def guarded(argv: list[str]) -> None:
    if len(argv) > 1 and not positional_args:
      print(f'fkd: error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
      sys.exit(2)
    logging.set_verbosity(logging.ERROR)  # TFDS's and Orbax's INFO/WARNING lines
    start(distributed)
    try:
      main(argv)
    except SystemExit:
      raise
    except app.UsageError as e:
      print(f'fkd: error: {e}', file=sys.stderr, flush=True)
      sys.exit(2)
    except BaseException as e:  # noqa: BLE001  (every other ending goes through `report`)
      sys.exit(report(e))

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  _quiet_orbax_noise()
  if one_line_flag_errors:
    app.run(guarded, flags_parser=parse_flags)
  else:
    app.run(guarded)  # absl's own usage message
