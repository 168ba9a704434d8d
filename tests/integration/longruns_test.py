"""Long runs: the loop's deferred finite checks, validation while training, the best checkpoint,
the program on record."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import baseline as baseline_config
from fkd.data import pipeline as ip
from fkd.errors import FkdError
from fkd.evaluation import evaluate, metrics
from fkd.infra import config_check, metric_writer
from fkd.infra import workdir as workdir_lib
from fkd.models import layers, native
from fkd.training import trainer as train

STAGE = 'student_baseline'


def _config(data_dir, **top):
  config = baseline_config.get_config('runlocal')
  config.data.data_dir = data_dir
  config.train.num_steps = 7
  config.train.checkpoint_every_steps = 3
  for k, v in top.items():
    config[k] = v
  return config


# ---------------------------------------------------------------------------------------------
# The loop's pieces.


def test_step_queue_names_the_first_non_finite_step_of_those_it_holds():
  queue = train.StepQueue('s', '/ckpt', max_in_flight=2)
  for step, loss in ((1, 1.0), (2, np.inf), (3, np.nan), (4, 2.0)):
    queue.push(step, {'loss': jnp.float32(loss), 'grad_norm': jnp.float32(1.0)})
  with pytest.raises(FkdError, match=r'non-finite loss at step 2; stopped'):
    queue.check()
  queue.push(5, {'loss': jnp.float32(3.0)})
  assert queue.check() == {'loss': 3.0}  # the checked steps are gone


def test_device_prefetch_gives_every_step_once_in_order_and_at_most_depth_ahead():
  made = []

  def make(i):
    made.append(i)
    return jax.device_put(np.full((2,), i))

  with train.DevicePrefetch(make, 3, 9, depth=2) as batches:
    first = next(batches)
    assert int(first[0]) == 3 and max(made) <= 3 + 2
    rest = [int(b[0]) for b in batches]
  assert rest == [4, 5, 6, 7, 8] and made == list(range(3, 9))


def test_hold_out_is_fixed_per_shard_disjoint_and_keeps_shards_equal():
  n, shards = 40, 2
  split = ip.Split(
    np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(2, 1),
    np.zeros((n, 3, 2), np.float32),
    None,
    [f'f{i}' for i in range(n)],
    shards=range(shards),
    num_shards=shards,
  )
  kept, held = ip.hold_out(split, 0.1, 5)
  again_kept, again_held = ip.hold_out(split, 0.1, 5)
  assert held.names == again_held.names and kept.names == again_kept.names
  assert len(held) == 4 and len(kept) == 36  # 2 of each shard of 20
  ids = held.images[:, 0, 0, 0]
  assert sum(i < 20 for i in ids) == 2 and sum(i >= 20 for i in ids) == 2
  assert set(held.names).isdisjoint(kept.names) and len(set(kept.names) | set(held.names)) == n
  assert ip.num_examples(kept) == 36  # 18 per shard, both shards
  assert ip.hold_out(split, 0.1, 6)[1].names != held.names


def test_program_record_follows_cpu_kernels_and_fkd_native(monkeypatch):
  if jax.default_backend() != 'cpu' or jax.device_count() != 1 or not native.available():
    pytest.skip('one CPU device with the native kernels')
  config = baseline_config.get_config('runlocal')
  model = train.build_model(_stage(config), 68)
  monkeypatch.delenv('FKD_NATIVE', raising=False)
  monkeypatch.delenv('FKD_FROZEN_CHUNK', raising=False)
  try:
    native.set_mode('xla')
    config.cpu_kernels = 'xla'
    p = train.program(config, model, has_teachers=True)
    assert (p['depthwise'], p['native_kernels'], p['teacher_chunk']) == (
      'shifted',
      False,
      'whole batch',
    )
    monkeypatch.setenv('FKD_NATIVE', '1')  # the environment overrides the config
    monkeypatch.setenv('FKD_FROZEN_CHUNK', '8')
    p = train.program(config, model, has_teachers=True)
    assert (p['depthwise'], p['native_kernels'], p['teacher_chunk']) == ('native', True, 8)
    assert p['cpu_kernels'] == 'xla'  # what was asked for, beside what ran
    native.set_mode('auto')
    monkeypatch.setenv('FKD_NATIVE', '0')
    assert layers.resolve_depthwise_impl('auto') == 'shifted'
  finally:
    native.set_mode('auto')


def _stage(config):
  from fkd import methods

  return methods.get(config).stage(STAGE, config)


def test_program_differences_compare_only_what_both_record():
  a = {'backend': 'cpu', 'depthwise': 'native', 'teacher_chunk': None}
  b = {'backend': 'cpu', 'depthwise': 'shifted', 'teacher_chunk': 4}
  assert evaluate.program_differences({'t': a, 's': b}) == ['depthwise: t=native, s=shifted']
  assert evaluate.program_differences({'t': a, 's': dict(a, teacher_chunk=4)}) == []


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('eval_every_steps', -1, 'config.eval_every_steps must be an integer >= 0'),
    ('keep_best', True, 'config.keep_best needs config.eval_every_steps > 0'),
    ('cpu_kernels', 'fast', 'config.cpu_kernels must be one of auto, native, xla'),
  ],
)
def test_new_fields_are_checked(field, value, message):
  config = baseline_config.get_config('runlocal')
  config[field] = value
  with pytest.raises(FkdError, match=message):
    config_check.check(config, 1, ['mobilenet_v2'])


def test_operational_fields():
  assert not workdir_lib.matters('eval_every_steps') and not workdir_lib.matters('cpu_kernels')
  assert workdir_lib.matters('keep_best')  # it changes which model is scored


# ---------------------------------------------------------------------------------------------
# Validation while training, end to end.


@pytest.fixture(scope='module')
def val_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('val'))
  results = train.run(_config(data_dir, eval_every_steps=2, keep_best=True), workdir)
  return workdir, results


def _rows(workdir):
  with open(os.path.join(workdir, STAGE, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_validation_rows_tensorboard_and_the_held_out_faces(val_run, data_dir):
  workdir, results = val_run
  rows = _rows(workdir)
  assert [r['step'] for r in rows if 'val_nme' in r] == [2, 4, 6, 7]
  assert all('loss' in r for r in rows)  # validation steps are logged steps
  assert [s for s, _ in metric_writer.read_scalars(os.path.join(workdir, STAGE))['val_nme']] == [
    2,
    4,
    6,
    7,
  ]
  with open(os.path.join(workdir, 'validation.json')) as f:
    record = json.load(f)
  full = ip.load(_config(data_dir)).splits['train']
  assert record['count'] == len(record['names']) == round(0.1 * len(full))  # 256 faces: 26
  assert results['validation']['count'] == record['count'] and 'names' not in results['validation']
  assert set(record['names']) <= set(full.names)


def test_best_checkpoint_is_the_lowest_validation_nme_and_evaluation_uses_it(val_run, data_dir):
  workdir, results = val_run
  rows = [r for r in _rows(workdir) if 'val_nme' in r]
  best = min(rows, key=lambda r: r['val_nme'])
  assert results['checkpoints'][STAGE] == {'which': 'best', 'step': best['step']}
  # The best checkpoint, scored here on the held-out faces by name: its logged validation NME.
  with open(os.path.join(workdir, 'validation.json')) as f:
    names = json.load(f)['names']
  full = ip.load(_config(data_dir)).splits['train']
  idx = [full.names.index(n) for n in names]
  from fkd import inference

  predictor = inference.Predictor(evaluate.best_dir(os.path.join(workdir, STAGE)))
  assert predictor.step == best['step']
  pred = np.concatenate([predictor(full.images[idx[i : i + 8]]) for i in range(0, len(idx), 8)])
  norm = _config(data_dir).eval.norm
  nme = 100 * metrics.nme_per_image(pred, full.landmarks[idx], norm).mean()
  np.testing.assert_allclose(nme, best['val_nme'], rtol=1e-4)


def test_program_on_record(val_run):
  workdir, results = val_run
  p = results['programs'][STAGE]
  assert p['backend'] == jax.default_backend() and p['devices'] == jax.device_count()
  assert p['compute_dtype'] == 'float32' and p['depthwise'] == layers.resolve_depthwise_impl('auto')
  from fkd.infra import checkpoint

  assert checkpoint.read_meta(os.path.join(workdir, STAGE))['program'] == p


@pytest.mark.slow  # tens of seconds; CI runs it with -m slow (the default suite's time budget)
def test_resumed_stage_with_best_kept_ends_identical(val_run, data_dir, tmp_path):
  """Killed after the last checkpoint but one: the best steps after the resumed one are made
  again, and the stage ends with the same best checkpoint and scores."""
  workdir, results = val_run
  copy = str(tmp_path / 'resumed')
  shutil.copytree(workdir, copy)
  stage_dir = os.path.join(copy, STAGE)
  shutil.rmtree(os.path.join(stage_dir, '7'))  # the final checkpoint; best may be newer than 6
  resumed = train.run(_config(data_dir, eval_every_steps=2, keep_best=True), copy)
  assert resumed['checkpoints'] == results['checkpoints']
  assert resumed['models'] == results['models']
  assert [r['step'] for r in _rows(copy)] == [r['step'] for r in _rows(workdir)]


def test_resume_with_other_held_out_faces_is_refused(val_run, data_dir, tmp_path):
  workdir, _ = val_run
  copy = str(tmp_path / 'other')
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, STAGE, '7'))
  with pytest.raises(FkdError, match='trained on fewer train faces'):
    train.run(_config(data_dir), copy, allow_config_change=True)


@pytest.mark.slow  # tens of seconds; CI runs it with -m slow (the default suite's time budget)
def test_keep_best_keeps_the_lowest_logged_validation_nme_not_the_last(
  data_dir, tmp_path, monkeypatch
):
  """Validation NMEs 5, 3, 4, 6 at steps 2, 4, 6, 7 (a stub validator): step 4 is kept as best,
  evaluation and results.json say so, and the last checkpoint is still step 7."""
  scores = iter([5.0, 3.0, 4.0, 6.0])
  monkeypatch.setattr(
    train, '_validator', lambda *a: lambda state: {'val_nme': next(scores), 'val_fr': 0.0}
  )
  workdir = str(tmp_path / 'w')
  results = train.run(_config(data_dir, eval_every_steps=2, keep_best=True), workdir)
  stage_dir = os.path.join(workdir, STAGE)
  from fkd.infra import checkpoint

  assert checkpoint.all_steps(evaluate.best_dir(stage_dir)) == [4]
  assert checkpoint.read_meta(evaluate.best_dir(stage_dir))['best'] == {'step': 4, 'val_nme': 3.0}
  assert checkpoint.latest_step(stage_dir) == 7
  assert results['checkpoints'][STAGE] == {'which': 'best', 'step': 4}
  assert [(r['step'], r['val_nme']) for r in _rows(workdir) if 'val_nme' in r] == [
    (2, 5.0),
    (4, 3.0),
    (6, 4.0),
    (7, 6.0),
  ]
