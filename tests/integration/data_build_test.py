"""`python -m fkd.data.build` and `input_pipeline.prepare/load` on the builders' dummy_data."""

import pathlib

import numpy as np
import pytest

from fkd.data import build
from fkd.data import pipeline as input_pipeline
from fkd.errors import FkdError
from fkd.methods.kd import recipe as kd_recipe

BUILDERS = pathlib.Path(__file__).resolve().parents[2] / 'tfds_builders'


def test_cli_builds_and_prints_counts(tmp_path, capsys):
  args = [
    '--dataset=cofw',
    f'--manual_dir={BUILDERS / "cofw" / "dummy_data"}',
    f'--data_dir={tmp_path}',
    '--crop_size=48',
  ]
  assert build.main(args) == 2  # a user error: not the official 1345 / 507 faces
  err = capsys.readouterr().err
  assert 'error: cofw: the manual download' in err and 'official count is 1345' in err
  assert not any(p.is_file() for p in tmp_path.rglob('*'))
  assert build.main([*args, '--allow_partial']) == 0
  out = capsys.readouterr().out
  assert 'cofw/default_48px/1.0.0' in out and 'train' in out and '     4' in out
  assert build.main([*args, '--allow_partial']) == 0
  assert 'already built' in capsys.readouterr().out
  assert (
    build.main(
      [
        '--dataset=cofw68',
        f'--manual_dir={BUILDERS / "cofw" / "dummy_data"}',
        f'--data_dir={tmp_path}',
        '--crop_size=48',
        '--allow_partial',
      ]
    )
    == 0
  )
  assert 'cofw/cofw68_48px/1.0.0' in capsys.readouterr().out
  assert build.main(['--dataset=300w', '--manual_dir=/nonexistent']) == 2
  assert build.main(['--dataset=afw', '--manual_dir=/tmp']) == 2


def test_prepare_and_load_pass_allow_partial(tmp_path):
  c = kd_recipe.kd_base('300w', runlocal=True)
  c.data.data_dir = str(tmp_path)
  c.data.manual_dir = str(BUILDERS / 'ibug_300w' / 'dummy_data')
  with pytest.raises(FkdError, match='allow_partial'):
    input_pipeline.prepare(c)
  c.data.allow_partial = True
  data = input_pipeline.load(c, soft_targets=c.asm.acc)
  assert set(data.splits) == {'train', 'common', 'challenging', 'full'}
  assert len(data.splits['train']) == 7 and data.splits['full'].images.shape[1:] == (32, 32, 3)
  assert data.pca is not None and data.pca.num_points == 68
  np.testing.assert_array_equal(data.flip_permutation[[36, 45]], [45, 36])
  batch = input_pipeline.train_batch(data, 'train', 4, 0, 0, 'flip')
  assert batch['soft_landmarks'].shape == (4, 68, 2)


def test_kd_augmentation_in_train_batches(tmp_path):
  c = kd_recipe.kd_base('300w', runlocal=True)
  c.data.data_dir = str(tmp_path)
  c.data.manual_dir = str(BUILDERS / 'ibug_300w' / 'dummy_data')
  c.data.allow_partial = True
  data = input_pipeline.load(c, soft_targets=c.asm.acc)
  assert c.data.augment == 'kd' and data.scheme == '300w'
  train = data.splits['train']
  try:
    input_pipeline.set_workers(1)
    one = input_pipeline.train_batch(data, 'train', 6, 3, 0, 'kd')
    input_pipeline.set_workers(2)
    two = input_pipeline.train_batch(data, 'train', 6, 3, 0, 'kd')
  finally:
    input_pipeline.set_workers(1)
  # Deterministic for (seed, step) and independent of the number of worker threads.
  for key in ('image', 'landmarks', 'soft_landmarks'):
    np.testing.assert_array_equal(one[key], two[key])
  other = input_pipeline.train_batch(data, 'train', 6, 3, 1, 'kd')
  assert not np.array_equal(one['landmarks'], other['landmarks'])
  # Augmented faces differ from every stored crop; the ASM targets follow the augmented shapes.
  changed = [not any(np.array_equal(lm, t) for t in train.landmarks) for lm in one['landmarks']]
  assert sum(changed) >= 3, changed
  np.testing.assert_allclose(
    one['soft_landmarks'], input_pipeline.asm.asm_project(data.pca, one['landmarks']), atol=1e-4
  )
  # The re-crop keeps the face inside the frame (3 px margin at 224², scaled).
  assert one['landmarks'].min() > -1 and one['landmarks'].max() < 32


def test_builders_leave_no_temp_dirs(tmp_path):
  """TFDS makes an empty /tmp/tmp…tfds (and asks GCS) for an unprepared dataset's info; fkd's
  builders skip that, so repeated runs do not litter the temp directory."""
  import glob
  import os
  import tempfile

  import tensorflow_datasets as tfds

  import tfds_builders  # noqa: F401  (registers the builders)

  pattern = os.path.join(tempfile.gettempdir(), 'tmp*tfds')
  before = set(glob.glob(pattern))
  for name in ('synthetic_faces', 'ibug_300w', 'wflw', 'cofw'):
    tfds.builder(name, data_dir=str(tmp_path))
  assert set(glob.glob(pattern)) == before


def test_abandoned_incomplete_builds_are_removed(tmp_path, capsys):
  """A killed build leaves `incomplete.*` next to the version folder; the next build (under the
  data_dir's lock, so no other build is running) removes it before building."""
  import types

  from fkd.data import build

  config_dir = tmp_path / 'faces' / 'default'
  (config_dir / 'incomplete.ABC123_1.0.0' / 'part').mkdir(parents=True)
  (config_dir / 'incomplete.ABC123_1.0.0' / 'part' / 'shard').write_text('half')
  (config_dir / 'notes.txt').write_text('mine')
  calls = []
  fake = types.SimpleNamespace(
    data_dir_root=str(tmp_path),
    data_dir=str(config_dir / '1.0.0'),
    is_prepared=lambda: False,
    download_and_prepare=lambda **kw: calls.append(sorted(p.name for p in config_dir.iterdir())),
  )
  build.prepare(fake)
  assert calls == [['notes.txt']]
  assert 'removing the abandoned build' in capsys.readouterr().out


def test_cli_errors_are_one_fkd_line_with_exit_2(tmp_path, capsys):
  from fkd.data import build

  assert build.main(['--dataset=300w', f'--manual_dir={tmp_path / "nope"}']) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
    f'fkd: error: --manual_dir={tmp_path / "nope"} is not a directory'
  ]
  with pytest.raises(SystemExit) as e:
    build.main(['--manual_dir=x'])
  assert e.value.code == 2
  assert capsys.readouterr().err.startswith('fkd: error: the following arguments are required')
