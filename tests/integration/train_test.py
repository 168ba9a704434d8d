"""End to end: the three KD-Loss stages on the small synthetic dataset, rerun, resume, bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import baseline as baseline_config
from configs import kd as kd_config
from fkd import inference
from fkd.errors import FkdError
from fkd.infra import checkpoint
from fkd.training import trainer as train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(data_dir, arg='runlocal'):
  config = kd_config.get_config(arg)
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope='module')
def kd_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('kd'))
  results = train.run(_config(data_dir), workdir)
  return workdir, results


def test_three_stages_and_results(kd_run):
  workdir, results = kd_run
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['dataset'] == 'synthetic_faces/small'
  assert list(saved['models']) == ['mean_shape', 'teacher_tolerant', 'teacher_tough', 'student_kd']
  for per_split in saved['models'].values():
    record = per_split['test']
    assert set(record) >= {'nme', 'fr', 'auc'}
    assert 0 <= record['auc'] <= 1 and 0 <= record['fr'] <= 100 and record['nme'] > 0
  assert saved['models'] == json.loads(json.dumps(results['models']))
  assert os.path.exists(os.path.join(workdir, 'results.md'))
  for stage in ('teacher_tolerant', 'teacher_tough', 'student_kd'):
    assert inference.is_finished(os.path.join(workdir, stage))
    assert os.path.exists(os.path.join(workdir, stage, 'metrics.jsonl'))
  # Training did something (runlocal is far too short to beat the mean shape): every stage's
  # logged loss fell from its first to its last step.
  for stage in ('teacher_tolerant', 'teacher_tough', 'student_kd'):
    with open(os.path.join(workdir, stage, 'metrics.jsonl')) as f:
      logged = [json.loads(line)['loss'] for line in f]
    assert logged[-1] < logged[0], (stage, logged)


def test_rerun_skips_finished_stages(kd_run, data_dir, capsys):
  workdir, results = kd_run
  again = train.run(_config(data_dir), workdir)
  out = capsys.readouterr().out
  assert out.count('final checkpoint exists, skipping') == 3
  assert again['models'] == results['models']


def test_interrupted_stage_resumes_to_the_same_model(kd_run, data_dir, tmp_path, capsys):
  workdir, results = kd_run
  copy = str(tmp_path / 'resumed')
  shutil.copytree(workdir, copy)
  stage_dir = os.path.join(copy, 'student_kd')
  steps = sorted(int(d) for d in os.listdir(stage_dir) if d.isdigit())
  assert len(steps) >= 2, steps
  shutil.rmtree(os.path.join(stage_dir, str(steps[-1])))  # as if killed before the last save
  resumed = train.run(_config(data_dir), copy)
  assert f'resuming from step {steps[-2]}' in capsys.readouterr().out
  np.testing.assert_allclose(
    resumed['models']['student_kd']['test']['nme'],
    results['models']['student_kd']['test']['nme'],
    rtol=1e-5,
  )


def test_baseline_adds_to_the_same_workdir(kd_run, data_dir, tmp_path):
  workdir, _ = kd_run
  copy = str(tmp_path / 'with_baseline')
  shutil.copytree(workdir, copy)
  config = baseline_config.get_config('runlocal')
  config.data.data_dir = data_dir
  results = train.run(config, copy)
  assert list(results['models'])[-1] == 'student_baseline'
  assert 'student_kd' in results['models']


# ---------------------------------------------------------------------------------------------
# Bad input: one-line errors, nothing written.


def _cli(*args, cwd=REPO):
  return subprocess.run(
    [sys.executable, '-m', 'fkd.main', *args], cwd=cwd, capture_output=True, text=True, timeout=300
  )


def test_cli_misspelled_config_key(tmp_path):
  workdir = tmp_path / 'w'
  proc = _cli('--config=configs/kd.py:runlocal', f'--workdir={workdir}', '--config.trian.lr=1')
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'trian' in lines[0] and lines[0].startswith('fkd: error:')
  assert not workdir.exists()


def test_cli_missing_teacher_checkpoint(tmp_path, data_dir):
  workdir = tmp_path / 'w'
  proc = _cli(
    '--config=configs/kd.py:runlocal',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    f'--config.teacher_tough_ckpt={tmp_path / "nope"}',
  )
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'teacher_tough_ckpt' in lines[0] and 'nope' in lines[0]
  assert not workdir.exists()


def test_unwritable_workdir(tmp_path, data_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(FkdError, match='workdir .* is not writable'):
    train.run(_config(data_dir), str(blocker / 'run'))


class ManualOnlyFaces(tfds.core.GeneratorBasedBuilder):
  """A dataset that needs a manual download, like the real 300W/WFLW/COFW builders."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put the files in manual_dir.'

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {'landmarks': tfds.features.Tensor(shape=(68, 2), dtype=np.float32)}
      ),
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    yield 0, {'landmarks': np.zeros((68, 2), np.float32)}


def test_unbuilt_dataset_without_manual_dir(tmp_path, data_dir):
  config = _config(data_dir)
  config.data.name = 'manual_only_faces'
  workdir = tmp_path / 'w'
  with pytest.raises(FkdError, match="'manual_only_faces' is not built .*manual_dir is not set"):
    train.run(config, str(workdir))
  assert not workdir.exists()


def test_teacher_checkpoint_is_loadable_alone(kd_run):
  workdir, _ = kd_run
  variables, meta = checkpoint.load_model(os.path.join(workdir, 'teacher_tough'))
  assert set(variables) == {'params', 'batch_stats'}
  assert meta['stage'] == 'teacher_tough' and meta['num_landmarks'] == 68


@pytest.mark.slow  # tens of seconds; CI runs it with -m slow (the default suite's time budget)
def test_corrupt_latest_step_is_set_aside_and_the_stage_resumes(kd_run, data_dir, tmp_path, capsys):
  """A truncated file in the newest step: renamed to <step>.corrupt-1 (never deleted), the stage
  resumes from the step before to the uninterrupted model, and metrics.jsonl keeps one row per
  step (the rows after the resumed step are dropped, then written again)."""
  workdir, results = kd_run
  copy = tmp_path / 'corrupt'
  shutil.copytree(workdir, copy)
  stage_dir = copy / 'student_kd'
  steps = sorted(int(d.name) for d in stage_dir.iterdir() if d.name.isdigit())
  data = max((stage_dir / str(steps[-1]) / 'model').rglob('d/*'), key=lambda p: p.stat().st_size)
  with open(data, 'r+b') as f:
    f.truncate(data.stat().st_size // 2)
  resumed = train.run(_config(data_dir), str(copy))
  out = capsys.readouterr().out
  assert f'set aside as {stage_dir / f"{steps[-1]}.corrupt-1"}' in out
  assert f'resuming from step {steps[-2]}' in out
  assert (stage_dir / f'{steps[-1]}.corrupt-1').is_dir() and inference.is_finished(str(stage_dir))
  np.testing.assert_allclose(
    resumed['models']['student_kd']['test']['nme'],
    results['models']['student_kd']['test']['nme'],
    rtol=1e-5,
  )
  with open(stage_dir / 'metrics.jsonl') as f:
    logged = [json.loads(line)['step'] for line in f]
  assert logged == sorted(set(logged)), logged
