"""Command line: `python -m fkd.main --config=configs/kd.py[:ARG] --workdir=DIR [--config.x=y]`.

Only parses flags and hands over to `fkd.training.trainer.run`; notebooks call that function
directly
(after `fkd.cli.start()`, which switches on the CPU tuning).
"""

from __future__ import annotations

import sys

from fkd import cli


def main(argv: list[str]) -> None:
  from fkd.training import trainer as train

  try:
    train.run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW.value)
  except train.Preempted as e:
    print(f'fkd: {e}', file=sys.stderr, flush=True)
    sys.exit(128 + int(e.signum))  # 143 SIGTERM, 130 Ctrl-C; after a clean checkpoint
  except KeyboardInterrupt:
    print(
      'fkd: interrupted; rerun the same command to resume from the last checkpoint',
      file=sys.stderr,
      flush=True,
    )
    sys.exit(130)


if __name__ == '__main__':
  _CONFIG, _WORKDIR = cli.define_run_flags()
  _ALLOW = cli.define_allow_config_change()
  cli.run(main, distributed=True)
