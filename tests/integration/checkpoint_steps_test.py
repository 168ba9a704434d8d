"""Checkpoints with several steps per stage: the newest good step first, and which stage a workdir
serves when a student is unfinished beside finished teachers."""

import os
import shutil

import numpy as np
import pytest

from fkd import inference
from fkd.errors import FkdError
from fkd.infra import checkpoint


def _stage(directory, steps, total_steps):
  """A stage directory with the given steps (tiny states), its meta naming `total_steps`."""
  mgr = checkpoint.manager(str(directory), max_to_keep=10)
  for step in steps:
    state = {
      'params': {'w': np.full(2, float(step), np.float32)},
      'batch_stats': {'m': np.zeros(1, np.float32)},
      'opt_state': {'mu': np.zeros(2, np.float32)},
      'step': np.int32(step),
    }
    meta = {'model': 'tiny', 'stage': os.path.basename(directory), 'total_steps': total_steps}
    checkpoint.save(mgr, step, state, meta)
  mgr.close()
  return str(directory)


def _break(directory, step):
  """Truncates the step's model data: the step is listed but does not restore."""
  model = os.path.join(directory, str(step), 'model')
  for root, _, files in os.walk(model):
    for name in files:
      if root != model:  # the array chunks, not the item's own metadata
        open(os.path.join(root, name), 'wb').close()


def test_newest_good_step_first_and_broken_ones_set_aside(tmp_path, capsys):
  d = _stage(tmp_path / 'student_kd', [1, 2, 3, 4], total_steps=4)
  assert checkpoint.all_steps(d) == [1, 2, 3, 4] and checkpoint.latest_step(d) == 4
  assert checkpoint.last_good_step(d) == 4
  assert capsys.readouterr().out == ''
  _break(d, 4)
  _break(d, 3)
  assert checkpoint.last_good_step(d) == 2
  out = capsys.readouterr().out
  assert out.count('does not restore') == 2 and out.index('/4 ') < out.index('/3 ')
  assert sorted(os.listdir(d)) == ['1', '2', '3.corrupt-1', '4.corrupt-1']
  assert checkpoint.all_steps(d) == [1, 2] and checkpoint.read_meta(d)['total_steps'] == 4
  # The same step broken again is set aside under the next free name.
  os.rename(os.path.join(d, '3.corrupt-1'), os.path.join(d, '3'))
  assert checkpoint.last_good_step(d) == 2
  assert sorted(os.listdir(d)) == ['1', '2', '3.corrupt-1', '4.corrupt-1']
  shutil.copytree(os.path.join(d, '2'), os.path.join(d, '3'))
  _break(d, 3)
  assert checkpoint.last_good_step(d, rename=False) == 2
  assert checkpoint.set_aside(d, 3) == os.path.join(d, '3.corrupt-2')


def test_no_step_restores(tmp_path):
  d = _stage(tmp_path / 'teacher_tough', [1, 2], total_steps=2)
  _break(d, 1)
  _break(d, 2)
  with pytest.raises(FkdError, match='no checkpoint in .* restores'):
    checkpoint.last_good_step(d)
  assert checkpoint.last_good_step(str(tmp_path / 'absent')) is None


def test_an_unfinished_student_beside_finished_teachers(tmp_path):
  _stage(tmp_path / 'teacher_tough', [1, 2], total_steps=2)
  _stage(tmp_path / 'teacher_tolerant', [1, 2], total_steps=2)
  student = _stage(tmp_path / 'student_kd', [1, 2, 3], total_steps=5)
  assert not inference.is_finished(student)
  assert inference.is_finished(str(tmp_path / 'teacher_tolerant'))
  assert not inference.is_finished(str(tmp_path / 'absent'))
  # A finished teacher is served before an unfinished student.
  assert inference.find_stage(str(tmp_path)) == str(tmp_path / 'teacher_tough')
  _stage(tmp_path / 'student_kd', [5], total_steps=5)  # the student finishes
  assert inference.find_stage(str(tmp_path)) == student
  # Nothing finished: an unfinished stage rather than nothing.
  only = tmp_path / 'only'
  _stage(only / 'teacher_tolerant', [1], total_steps=3)
  _stage(only / 'student_kd', [1], total_steps=3)
  assert inference.find_stage(str(only)) == str(only / 'student_kd')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FkdError, match='no trained model'):
    inference.find_stage(str(tmp_path / 'empty'))
