"""End to end: the heatmap pipeline (teacher -> Orbax -> distilled student) on the tiny dataset."""

import json
import os

import helpers
import ml_collections
import numpy as np
import pytest

from configs import efficientfan as efficientfan_config
from configs import mobilefan as mobilefan_config
from fkd.errors import FkdError
from fkd.infra import checkpoint
from fkd.training import trainer as train


def _config(module, data_dir, arg='tiny'):
  config = module.get_config(arg)
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope='module')
def mobilefan_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('mobilefan'))
  results = train.run(_config(mobilefan_config, data_dir), workdir)
  return workdir, results


def _logged(workdir, stage):
  with open(os.path.join(workdir, stage, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_mobilefan_stages_and_results(mobilefan_run):
  workdir, results = mobilefan_run
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert list(saved['models']) == ['mean_shape', 'teacher', 'student_distill']
  for per_split in saved['models'].values():
    assert saved['models'] == json.loads(json.dumps(results['models']))
    assert per_split['test']['nme'] > 0 and 0 <= per_split['test']['auc'] <= 1
  _, meta = checkpoint.load_model(os.path.join(workdir, 'student_distill'))
  assert meta['head']['kind'] == 'heatmaps' and meta['model'] == 'mobilefan'
  assert meta['method'] == 'fan' and meta['teachers'] == ['teacher']
  assert meta['model_kwargs']['adapter_channels'] == [32, 32, 32]  # the teacher's decoder width


def test_distill_loss_is_the_weighted_sum(mobilefan_run):
  workdir, _ = mobilefan_run
  for record in _logged(workdir, 'student_distill'):
    # method.md §5.4: L = MSE(H) + 0.01 Σ L_FA + 0.01 Σ L_FS.
    want = record['loss/heatmap'] + 0.01 * record['loss/fa'] + 0.01 * record['loss/fs']
    np.testing.assert_allclose(record['loss'], want, rtol=1e-5)
  for record in _logged(workdir, 'teacher'):  # heatmap MSE alone (as student_baseline)
    assert 'loss/fa' not in record
    np.testing.assert_allclose(record['loss'], record['loss/heatmap'], rtol=1e-6)


@pytest.mark.slow  # tens of seconds; CI runs it with -m slow (the default suite's time budget)
def test_efficientfan_reuses_the_teacher(mobilefan_run, data_dir, tmp_path, capsys):
  teacher_workdir, _ = mobilefan_run
  config = _config(efficientfan_config, data_dir)
  config.teacher_ckpt = os.path.join(teacher_workdir, 'teacher')
  results = train.run(config, str(tmp_path))
  assert '[teacher] using ' in capsys.readouterr().out
  assert not os.path.exists(tmp_path / 'teacher')
  assert list(results['models']) == ['mean_shape', 'teacher', 'student_distill']
  record = _logged(str(tmp_path), 'student_distill')[-1]
  # method.md §6.4: L = MSE(H) + 0.01 Σ L_FA + 0.01 Σ L_PS, no pixel-affinity term.
  assert 'loss/fs' not in record
  np.testing.assert_allclose(
    record['loss'],
    record['loss/heatmap'] + 0.01 * (record['loss/fa'] + record['loss/ps']),
    rtol=1e-5,
  )


def test_student_without_teacher_is_an_error(data_dir, tmp_path):
  config = _config(mobilefan_config, data_dir)
  config.stages = ('student_distill',)
  with pytest.raises(FkdError, match='student_distill needs teacher'):
    train.run(config, str(tmp_path / 'w'))
  config.stages = ('teacher', 'student_kd')
  with pytest.raises(FkdError, match="unknown stage 'student_kd' for method fan"):
    train.run(config, str(tmp_path / 'w'))
  config = _config(mobilefan_config, data_dir)
  config.fan.lambda_fs = -1.0
  with pytest.raises(FkdError, match='config.fan.lambda_fs'):
    train.run(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_step_schedule_hand_values():
  tc = ml_collections.ConfigDict(
    dict(
      schedule='steps', lr=1e-3, num_epochs=80, lr_boundaries_epochs=(30, 50), lr_decay_factor=0.1
    )
  )
  schedule = train.make_schedule(tc, 800)  # 10 steps per epoch
  np.testing.assert_allclose(
    [schedule(0), schedule(299), schedule(300), schedule(499), schedule(500), schedule(799)],
    [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5],
    rtol=1e-6,
  )


def test_paper_configs_build():
  config = mobilefan_config.get_config('cofw')
  assert config.data.image_size == 256 and config.train.batch_size == 8
  assert config.train.num_epochs == 80 and tuple(config.train.lr_boundaries_epochs) == (30, 50)
  assert config.teacher.name == 'simple_baselines' and config.fan.sigma == 1.0
  config = efficientfan_config.get_config('300w')
  assert (config.fan.lambda_fa, config.fan.lambda_fs, config.fan.lambda_ps) == (0.01, 0.0, 0.01)


def test_predictor_decodes_heatmaps(mobilefan_run):
  from fkd.serve import predict

  workdir, results = mobilefan_run
  predictor = predict.Predictor(os.path.join(workdir, 'student_distill'))
  images = np.zeros((2, 64, 64, 3), np.uint8)
  points = predictor(images)
  assert points.shape == (2, 68, 2) and np.isfinite(points).all()
  assert (points >= -0.5).all() and (points <= 63.5).all()  # decoded inside the 64² crop


def test_heatmap_checkpoint_written_before_heads_predicts_the_same(mobilefan_run, tmp_path):
  from fkd import inference

  workdir, _ = mobilefan_run
  stage_dir = os.path.join(workdir, 'student_distill')
  helpers.old_style_copy(
    stage_dir, str(tmp_path / 'old'), output='heatmaps', target_space='pixel', sigma=1.0
  )
  new, old = inference.Predictor(stage_dir), inference.Predictor(str(tmp_path / 'old'))
  assert old.head == new.head and old.head.kind == 'heatmaps'
  images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), np.uint8)
  np.testing.assert_array_equal(old(images), new(images))
