"""The architecture contract of pyproject's [tool.importlinter] (also `lint-imports` in CI)."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
  proc = subprocess.run(
    [
      sys.executable,
      '-c',
      'from importlinter.cli import lint_imports_command;lint_imports_command()',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  assert "fkd's layers KEPT" in proc.stdout
  assert 'Contracts: 3 kept, 0 broken.' in proc.stdout
