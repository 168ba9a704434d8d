"""Output distillation's rows in KD-Loss's ablation: the same student from the same Tough teacher,
with the teacher entering the loss plainly (extra rows: run when `--rows` names them)."""

from __future__ import annotations

from fkd.methods.base import Row

NAME = 'output_kd'  # the method's REGISTRY key and its config block
STAGE = 'student_output_kd'


def rows() -> dict[str, Row]:
  return {
    'output_kd': Row(
      STAGE,
      'plain output distillation from the Tough teacher, '
      '(1 − α)·MSE(gt) + α·MSE(teacher), α = 0.5 (fkd/methods/output_kd/method.py)',
      {'method': NAME, NAME: {'alpha': 0.5}},
      extra=True,
    ),
    'output_kd_l1': Row(
      STAGE,
      "output distillation with L1 (Loss_Main's shape): (1 − α)·L1(gt) + α·L1(teacher), α = 0.5",
      {'method': NAME, NAME: {'alpha': 0.5, 'loss': 'l1'}},
      extra=True,
    ),
  }
