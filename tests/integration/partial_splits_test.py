"""`allow_partial` end to end: the eval splits follow the splits a partial 300W build holds."""

import pathlib
import shutil

import pytest

from fkd.data import pipeline as input_pipeline
from fkd.errors import FkdError
from fkd.methods.kd import recipe as kd_recipe

DUMMY = pathlib.Path(__file__).resolve().parents[2] / 'tfds_builders' / 'ibug_300w' / 'dummy_data'


@pytest.fixture(scope='module')
def no_ibug(tmp_path_factory):
  """The 300W dummy download without ibug/ (no `challenging` face) nor the competition set."""
  root = tmp_path_factory.mktemp('300w')
  manual = root / 'manual'
  shutil.copytree(DUMMY, manual, ignore=shutil.ignore_patterns('ibug', '01_Indoor', '02_Outdoor'))
  return manual, root / 'tfds'


def _config(no_ibug):
  manual, data_dir = no_ibug
  c = kd_recipe.kd_base('300w', runlocal=True)
  c.data.manual_dir, c.data.data_dir, c.data.allow_partial = str(manual), str(data_dir), True
  return c


def test_missing_eval_split_is_dropped_with_reason(no_ibug, capsys):
  c = _config(no_ibug)
  assert c.data.eval_splits == ('common', 'challenging', 'full')
  data = input_pipeline.load(c)
  assert data.eval_splits == ('common', 'full')
  assert set(data.splits) == {'train', 'common', 'full'}
  assert '135 faces' in data.dropped['challenging']
  assert "eval split 'challenging' dropped" in capsys.readouterr().out


def test_split_the_dataset_never_has_is_an_error(no_ibug):
  c = _config(no_ibug)
  c.data.eval_splits = ('common', 'valid')
  with pytest.raises(FkdError, match="has no split 'valid'"):
    input_pipeline.load(c)
  c.data.eval_splits = ('challenging',)
  with pytest.raises(FkdError, match='none of'):
    input_pipeline.load(c)
