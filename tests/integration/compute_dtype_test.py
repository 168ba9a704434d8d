"""`config.compute_dtype`: bfloat16 models with float32 parameters, losses and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import RUN_DIR_FLAGS

from configs import kd as kd_config
from configs import mobilefan as mobilefan_config
from fkd import models
from fkd.errors import FkdError
from fkd.infra import config_check
from fkd.tools import programs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny bfloat16 run ends within these of the float32 one from the same start (`run_dir`, six
# steps per stage): the last logged train loss of every stage within LOSS_RTOL (bfloat16 keeps 8
# mantissa bits, ~0.2 % rounding per op; measured: teachers 0.3–0.6 %, the student, whose frozen
# teachers also compute in bfloat16, 2.8 %), and the test NME of every model within NME_RTOL:
# six-step models score ~90 % NME (worse than the mean shape) with inference-mode BatchNorm
# statistics of a few batches, so their evaluation amplifies small differences (measured up to
# 16 %); the bound still catches a broken bfloat16 path (NaN, a collapsed model).
LOSS_RTOL = 0.05
NME_RTOL = 0.25


def test_config_check_names_the_field():
  config = kd_config.get_config('tiny')
  config.compute_dtype = 'float16'
  with pytest.raises(FkdError, match=r'config\.compute_dtype must be one of float32, bfloat16'):
    config_check.check(config, 1, models.model_names())
  config.compute_dtype = 'bfloat16'
  config_check.check(config, 1, models.model_names())


@pytest.mark.parametrize(
  'config_module', [kd_config, pytest.param(mobilefan_config, marks=pytest.mark.slow)]
)
def test_bfloat16_programs_keep_float32_state_and_loss(config_module):
  config = config_module.get_config('tiny')
  config.compute_dtype = 'bfloat16'
  built = programs.build(config, train_batch=2, eval_batch=2)
  step = [p for p in built if p.kind == 'train'][-1]  # the student, frozen teachers inside
  state, metrics = jax.eval_shape(step.fn, *step.args)
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert all(v.dtype == jnp.float32 for v in metrics.values())
  text = programs.trace(step).lower().as_text()
  assert 'bf16' in text  # the convolutions compute in bfloat16
  predict = next(p for p in built if p.kind == 'predict')
  assert jax.eval_shape(predict.fn, *predict.args).dtype == jnp.float32


@pytest.mark.parametrize('config_module', [kd_config])
def test_float32_is_the_default_program(config_module):
  """float32 traces no bfloat16 op (the default program is the one it always was)."""
  config = config_module.get_config('tiny')
  step = next(p for p in programs.build(config, train_batch=2) if p.kind == 'train')
  assert 'bf16' not in programs.trace(step).lower().as_text()


def _nme(results: dict) -> dict[tuple[str, str], float]:
  return {
    (model, split): r['nme']
    for model, splits in results['models'].items()
    if model != 'mean_shape'
    for split, r in splits.items()
  }


def _last_loss(stage_dir) -> float:
  rows = [json.loads(line) for line in (stage_dir / 'metrics.jsonl').read_text().splitlines()]
  return rows[-1]['loss']


@pytest.mark.slow  # a subprocess run of minutes; `pytest -m slow` (CI) runs it
def test_bfloat16_run_matches_float32(run_dir, data_dir, tmp_path):
  """`python -m fkd.main ... --config.compute_dtype=bfloat16` records bfloat16 per model and ends
  within LOSS_RTOL / NME_RTOL of the same run in float32 (`run_dir`, the session's tiny KD
  run)."""
  workdir = tmp_path / 'bf16'
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.main',
      '--config=configs/kd.py:tiny',
      *RUN_DIR_FLAGS,
      f'--config.data.data_dir={data_dir}',
      '--config.compute_dtype=bfloat16',
      f'--workdir={workdir}',
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, 'PYTHONPATH': REPO},
    timeout=1800,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  bf16 = json.loads((workdir / 'results.json').read_text())
  f32 = json.loads((run_dir / 'results.json').read_text())
  stages = ('teacher_tolerant', 'teacher_tough', 'student_kd')
  assert bf16['compute_dtype'] == dict.fromkeys(stages, 'bfloat16')
  assert f32['compute_dtype'] == dict.fromkeys(stages, 'float32')
  a, b = _nme(f32), _nme(bf16)
  assert a.keys() == b.keys() and len(a) >= 3
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=NME_RTOL, err_msg=str(key))
  for stage in stages:
    loss_32, loss_16 = (_last_loss(d / stage) for d in (run_dir, workdir))
    np.testing.assert_allclose(loss_16, loss_32, rtol=LOSS_RTOL, err_msg=stage)
    assert loss_16 != loss_32  # the run did compute in bfloat16
