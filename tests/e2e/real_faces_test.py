"""`configs/kd.py:300w,cpu` (issue 14) at tiny sizes: the synthetic pre-stage, the three stages
started from it, and results.json on a 300W folder whose only test faces are helen/testset."""

import json
import pathlib
import shutil

import pytest

from configs import kd as kd_config
from fkd.data import pipeline as input_pipeline
from fkd.infra import checkpoint
from fkd.training import trainer as train

DUMMY = pathlib.Path(__file__).resolve().parents[2] / 'tfds_builders' / 'ibug_300w' / 'dummy_data'


def _synthetic_small(data_dir):
  config = kd_config.get_config('runlocal')
  config.data.data_dir = data_dir
  return config


def test_cpu_preset_needs_300w():
  with pytest.raises(ValueError, match="'cpu' preset is for 300w"):
    kd_config.get_config('cpu')


@pytest.mark.slow  # five tiny stages (~100 s of CPU): `pytest -m slow`, run by .ci/run
def test_300w_cpu_end_to_end(tmp_path, data_dir, capsys):
  manual = tmp_path / 'manual'  # train faces + helen/testset only: no ibug, no lfpw/testset
  shutil.copytree(
    DUMMY, manual, ignore=shutil.ignore_patterns('ibug', 'testset', '01_Indoor', '02_Outdoor')
  )
  shutil.copytree(DUMMY / 'helen' / 'testset', manual / 'helen' / 'testset')
  config = kd_config.get_config('300w,cpu,runlocal')
  assert config.data.eval_splits == ('common', 'challenging', 'full')  # as the user gets it
  config.data.manual_dir, config.data.allow_partial = str(manual), True
  # The session's synthetic_faces/small (other tests use it too) serves the pre-stage.
  input_pipeline.prepare(_synthetic_small(data_dir))
  (tmp_path / 'tfds').mkdir()
  (tmp_path / 'tfds' / 'synthetic_faces').symlink_to(pathlib.Path(data_dir) / 'synthetic_faces')
  config.data.data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  train.run(config, str(workdir))
  out = capsys.readouterr().out
  assert "eval split 'challenging' dropped" in out
  results = json.loads((workdir / 'results.json').read_text())
  for model in ('mean_shape', 'teacher_tolerant', 'teacher_tough', 'student_kd'):
    assert set(results['models'][model]) == {'common', 'full'}
    assert results['models'][model]['common']['nme'] > 0
  assert 'challenging' in results['dropped_splits']
  # The pre-stage trained both networks on synthetic faces, and every real stage started there.
  pre = json.loads((workdir / 'pretrain' / 'results.json').read_text())
  assert pre['dataset'] == 'synthetic_faces/small'
  assert set(pre['models']) == {'mean_shape', 'teacher_tough', 'student_baseline'}
  for stage, source in (
    ('teacher_tolerant', 'teacher_tough'),
    ('teacher_tough', 'teacher_tough'),
    ('student_kd', 'student_baseline'),
  ):
    assert f'[{stage}] initialised from {workdir / "pretrain" / source}' in out
    assert checkpoint.read_meta(str(workdir / stage))['dataset'] == 'ibug_300w/context'


def test_benchmark_levers_are_valid_overrides(monkeypatch):
  """Every lever of benchmarks/real_faces.py parses as `python -m fkd.main` would parse it (a
  misspelt key would otherwise surface only after a 10-minute run), and `res64` is the 64²
  config that the README's lever table compares with."""
  import importlib.util

  from absl import flags
  from conftest import REPO
  from ml_collections import config_flags

  spec = importlib.util.spec_from_file_location('rf', REPO / 'benchmarks' / 'real_faces.py')
  rf = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(rf)
  parsed = {}
  for name, lever in rf.LEVERS.items():
    argv = ['prog', f'--config={REPO / lever.get("config", "configs/kd.py:300w,cpu")}']
    argv += lever['args']
    monkeypatch.setattr('sys.argv', argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv)
    flags.DEFINE_bool('allow_config_change', False, '', flag_values=fv)
    fv(argv)
    parsed[name] = fv.config
    for teachers in [lever.get('teachers')] if lever.get('teachers') else []:
      assert teachers in rf.LEVERS, name
  assert parsed['base'].data.image_size == 96 and parsed['res64'].data.image_size == 64
  assert parsed['seed1'].seed == 1 and not parsed['no_pretrain'].pretrain.dataset
  assert parsed['teacher_w1'].teacher.kwargs.width == 1.0
  # The config trains on photo crops cut from context images; the levers measured before keep
  # their crops: the mirror (photo_crops*) or the former exact crops, of the default build.
  assert parsed['base'].data.box_noise == (0.06, 0.05, 0.1, 0.1)
  assert parsed['base'].data.augment_fill == 'context' and parsed['base'].train.num_steps == 2400
  assert parsed['base'].data.name == 'ibug_300w/context' == parsed['photo_context'].data.name
  # photo_context keeps the 1200 student steps it was measured with; its x2 lever is the config.
  assert parsed['photo_context'].train.num_steps == 1200
  for key in ('name', 'box_noise', 'augment_fill'):
    assert parsed['photo_context_steps_x2'].data[key] == parsed['base'].data[key], key
  assert parsed['photo_context_steps_x2'].train.num_steps == 2400
  for name in ('photo_crops', 'photo_crops_steps_x2', 'photo_crops_1.5'):
    assert parsed[name].data.augment_fill == 'reflect', name
    assert parsed[name].data.name == 'ibug_300w', name
  for name in ('exact_crops', 'res64', 'real_x2', 'student_steps_x2'):
    assert parsed[name].data.box_noise == () and parsed[name].data.augment_fill == 'zeros', name
    assert parsed[name].data.name == 'ibug_300w', name
  assert parsed['exact_crops'].train.num_steps == 600 == parsed['photo_crops'].train.num_steps
  assert parsed['real_x2'].train.num_steps == 1200 == parsed['student_steps_x2'].train.num_steps
  assert parsed['box_noise'].data.box_noise == (0.06, 0.05, 0.1, 0.1)
  assert parsed['box_noise'].data.augment_fill == 'zeros'
  assert rf.LEVERS['box_noise']['teachers'] == 'exact_crops'
