"""MobileFAN (FA + FS) or EfficientFAN (FA + PS) ablation rows: the row set follows the config's
λs, compared with the full distilled student (`distill`)."""

from __future__ import annotations

from typing import Any

from fkd.errors import FkdError
from fkd.methods.base import Row

REFERENCE = 'distill'


def rows(config: Any) -> dict[str, Row]:
  fan = config.fan
  sim = [k for k in ('fs', 'ps') if fan[f'lambda_{k}'] > 0]
  if fan.lambda_fa <= 0 or not sim:
    raise FkdError(
      'the fan ablation needs config.fan.lambda_fa > 0 and lambda_fs or lambda_ps '
      f'> 0, got fa={fan.lambda_fa} fs={fan.lambda_fs} ps={fan.lambda_ps}'
    )
  off = {f'fan.lambda_{k}': 0.0 for k in sim}
  out = {
    'teacher': Row('teacher', 'teacher (heatmaps)', teacher=True),
    'baseline': Row('student_baseline', 'student alone, heatmap MSE'),
    'fa_only': Row('student_distill', f'+ feature-aligned only (λ_FA {fan.lambda_fa})', off),
  }
  names = {'fs': 'pixel-affinity', 'ps': 'patch-similarity'}
  for k in sim:
    only = {'fan.lambda_fa': 0.0, **{f'fan.lambda_{j}': 0.0 for j in sim if j != k}}
    out[f'{k}_only'] = Row(
      'student_distill', f'+ {names[k]} only (λ_{k.upper()} {fan[f"lambda_{k}"]})', only
    )
  out[REFERENCE] = Row('student_distill', '+ ' + ' + '.join(['FA', *(k.upper() for k in sim)]))
  return out
