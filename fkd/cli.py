"""What every `python -m fkd.<tool>` shares: `fkd: error: ...` one-liners and exit code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from fkd.errors import FkdError


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a bad flag as one line (`fkd.main.parse_flags` adds config files)."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'fkd: error: bad command line: {e}', file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[list[str]], None], one_line_flag_errors: bool = True) -> None:
  """`absl.app.run(main)`: an FkdError is printed as `fkd: error: ...` and exits with 2."""
  from absl import app

  def guarded(argv: list[str]) -> None:
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
