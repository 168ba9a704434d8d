"""fkd.infra.workdir: which config fields may change between runs, and the lock's owners."""

import json
import os
import socket

import pytest

from configs import kd
from fkd.errors import FkdError
from fkd.infra import workdir

# Written out by hand: the fields of configs/kd.py that change neither a model nor its scores.
OPERATIONAL_KD = {
  'cpu_kernels',
  'eval_every_steps',
  'data.allow_partial',
  'data.data_dir',
  'data.eval_splits',
  'data.manual_dir',
  'data.max_eval_examples',
  'data.num_workers',
  'eval.batch_size',
  'stages',
  'teacher_tolerant_ckpt',
  'teacher_tough_ckpt',
  'teacher_train.checkpoint_every_steps',
  'teacher_train.log_every_steps',
  'train.checkpoint_every_steps',
  'train.log_every_steps',
}


def test_every_other_field_matters():
  flat = workdir.flatten(kd.get_config())
  assert {k for k in flat if not workdir.matters(k)} == OPERATIONAL_KD
  for field in ('train.lr', 'train.num_steps', 'data.image_size', 'eval.norm', 'seed'):
    assert field in flat and workdir.matters(field)


def test_check_config_names_the_first_field_that_matters(tmp_path):
  config = kd.get_config()
  workdir.write_record(str(tmp_path / 'student_kd'), config)
  config.eval.batch_size = 3  # operational
  config.data.num_workers = 5
  workdir.check_config(config, str(tmp_path), ['student_kd', 'teacher_tough'])
  config.eval.norm = 'inter_pupil'
  config.train.lr = 1.0
  with pytest.raises(FkdError, match=r'config.eval.norm is .* \(and 1 more: config.train.lr\)'):
    workdir.check_config(config, str(tmp_path), ['student_kd'])


def _lock(tmp_path, owner):
  (tmp_path / workdir.LOCK).write_text(json.dumps(owner))


def test_a_live_process_of_another_user_holds_the_lock(tmp_path, monkeypatch):
  # As root every pid answers kill(pid, 0); another user's process answers EPERM.
  _lock(tmp_path, {'pid': 4242, 'host': socket.gethostname(), 'time': 0})

  def kill(pid, sig):
    raise PermissionError(1, 'Operation not permitted')

  monkeypatch.setattr(workdir.os, 'kill', kill)
  with pytest.raises(FkdError, match='in use by pid 4242'):
    workdir.acquire(str(tmp_path))
  assert json.loads((tmp_path / workdir.LOCK).read_text())['pid'] == 4242


def test_a_dead_owner_and_another_host(tmp_path, monkeypatch, capsys):
  def kill(pid, sig):
    raise ProcessLookupError

  monkeypatch.setattr(workdir.os, 'kill', kill)
  _lock(tmp_path, {'pid': 4242, 'host': 'elsewhere', 'time': 0})
  with pytest.raises(FkdError, match='delete the lock file'):  # cannot be checked from here
    workdir.acquire(str(tmp_path))
  _lock(tmp_path, {'pid': 4242, 'host': socket.gethostname(), 'time': 0})
  path = workdir.acquire(str(tmp_path))  # its process is gone: taken over
  assert json.loads(open(path).read())['pid'] == os.getpid()
  assert 'taking over the lock' in capsys.readouterr().out
  workdir.release(path)
  assert not os.path.exists(path)


def test_a_reused_pid_with_another_start_time_is_not_the_owner(tmp_path):
  me = {'pid': os.getpid(), 'host': socket.gethostname(), 'time': 0}
  assert workdir._alive(me | {'start_time': workdir._start_time(os.getpid())})
  assert not workdir._alive(me | {'start_time': '1'})
  assert workdir._alive(me)  # no start time recorded: the pid alone
  assert not workdir._alive({'pid': 0})
