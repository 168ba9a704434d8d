"""KD-Loss's ablation rows (method.md §2.5.4): the teachers, the MSE baseline and the KD-Loss
term ablations, compared with the full KD-Loss student (`kd`)."""

from __future__ import annotations

from typing import Any

from fkd.methods.base import Row

REFERENCE = 'kd'


def rows(config: Any) -> dict[str, Row]:
  del config
  return {
    'teacher_tough': Row('teacher_tough', 'Tough teacher (ground truth)', teacher=True),
    'teacher_tolerant': Row(
      'teacher_tolerant', 'Tolerant teacher (ASM soft landmarks)', teacher=True
    ),
    'baseline_mse': Row('student_baseline', 'student alone, MSE', {'loss.baseline': 'mse'}),
    'main_only': Row(
      'student_kd',
      'Loss_Main alone, constant λ, no ALoss: no teacher information',
      {'kd.teachers': (), 'kd.lambda_source': 'constant'},
    ),
    'tough_only': Row(
      'student_kd',
      'KD-Loss, Tough ALoss only (λ = |a − g|)',
      {'kd.teachers': ('teacher_tough',), 'kd.lambda_source': 'tough'},
    ),
    'tolerant_only': Row(
      'student_kd',
      'KD-Loss, Tolerant ALoss only (λ = |s − g|)',
      {'kd.teachers': ('teacher_tolerant',), 'kd.lambda_source': 'tolerant'},
    ),
    REFERENCE: Row('student_kd', 'KD-Loss, both teachers'),
  }
