"""Surviving trouble: NaN guard, SIGTERM / SIGKILL and resume, determinism (issue 7)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import baseline as baseline_config
from fkd import inference
from fkd.data import pipeline as ip
from fkd.errors import FkdError
from fkd.infra import checkpoint
from fkd.training import trainer as train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(data_dir, **train_overrides):
  config = baseline_config.get_config('runlocal')
  config.data.data_dir = data_dir
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  real = ip.train_batch

  def poisoned(*args, **kwargs):
    batch = real(*args, **kwargs)
    if args[3] >= 10:  # step index 10 -> the state after step 11 is NaN
      batch['landmarks'] = np.full_like(batch['landmarks'], np.nan)
    return batch

  monkeypatch.setattr(ip, 'train_batch', poisoned)
  config = _config(data_dir, checkpoint_every_steps=4, log_every_steps=100)
  with pytest.raises(FkdError, match=r'non-finite .*loss.* at step 11; stopped'):
    train.run(config, str(tmp_path))
  mgr = checkpoint.manager(str(tmp_path / 'student_baseline'))
  assert mgr.latest_step() == 8
  variables, _ = checkpoint.load_model(str(tmp_path / 'student_baseline'))
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__('jax').tree.leaves(variables))


@pytest.mark.slow  # tens of seconds on 2 cores; `pytest -m slow` (CI) runs it
def test_same_seed_same_metrics_other_seed_differs(data_dir, tmp_path):
  runs = []
  for seed, name in ((0, 'a'), (0, 'b'), (1, 'c')):
    config = _config(data_dir, num_steps=6)
    config.seed = seed
    runs.append(train.run(config, str(tmp_path / name))['models']['student_baseline'])
  assert runs[0] == runs[1]
  assert runs[0] != runs[2]


def _start(workdir, data_dir):
  return subprocess.Popen(
    [
      sys.executable,
      '-m',
      'fkd.main',
      '--config=configs/baseline.py:runlocal',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      '--config.train.log_every_steps=1',
      '--config.train.checkpoint_every_steps=4',
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for_step(proc, step: int, timeout: float = 400) -> None:
  deadline = time.time() + timeout
  for line in proc.stdout:
    if f'step {step}/' in line:
      return
    assert time.time() < deadline, 'run did not reach the step in time'
  raise AssertionError(f'process ended before step {step}: {proc.stderr.read()[-2000:]}')


@pytest.mark.slow  # two training runs in subprocesses; `pytest -m slow` and .ci/run run it
def test_sigterm_saves_then_sigkill_resumes_to_the_uninterrupted_result(data_dir, tmp_path):
  workdir = tmp_path / 'interrupted'
  stage_dir = str(workdir / 'student_baseline')
  # SIGTERM: the stage saves a checkpoint where it is and exits with 143.
  proc = _start(workdir, data_dir)
  _wait_for_step(proc, 6)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err
  assert 'stopped by SIGTERM at step' in err.strip().splitlines()[-1] and 'Traceback' not in err
  term_step = checkpoint.manager(stage_dir).latest_step()
  assert term_step is not None and term_step >= 6 and not inference.is_finished(stage_dir)
  # SIGKILL after the resume: nothing can be saved, the rerun starts from the last checkpoint.
  proc = _start(workdir, data_dir)
  _wait_for_step(proc, term_step + 6)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert not inference.is_finished(stage_dir)
  proc = _start(workdir, data_dir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  assert 'resuming from step' in out
  with open(workdir / 'results.json') as f:
    resumed = json.load(f)['models']['student_baseline']
  uninterrupted = train.run(_config(data_dir), str(tmp_path / 'straight'))
  np.testing.assert_allclose(
    resumed['test']['nme'], uninterrupted['models']['student_baseline']['test']['nme'], rtol=1e-5
  )
