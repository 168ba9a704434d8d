"""fkd.inference: the one checkpoint -> landmarks path; checkpoints written before heads load."""

import conftest
import helpers
import numpy as np
import pytest

from fkd import inference
from fkd.errors import FkdError


def test_old_regression_checkpoint_predicts_the_same(run_dir, tmp_path):
  meta = helpers.old_style_copy(
    str(run_dir / 'student_kd'), str(tmp_path / 'old'), target_space='normalized'
  )
  assert meta['head'] == {'kind': 'regression', 'image_size': 32, 'space': 'normalized'}
  new, old = (
    inference.Predictor(str(run_dir / 'student_kd')),
    inference.Predictor(str(tmp_path / 'old')),
  )
  assert old.head == new.head
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  np.testing.assert_array_equal(old(images), new(images))
  # Hand check of the regression decoding: x = S/2 − S·u on the raw outputs.
  outputs, _ = new.module.apply(new.variables, images.astype(np.float32) / 255.0, train=False)
  np.testing.assert_allclose(
    new(images), (16.0 - 32.0 * np.asarray(outputs)).reshape(3, 68, 2), rtol=1e-6, atol=1e-4
  )


def test_fixture_models_see_their_input(run_dir, data_dir):
  # The predict / evaluate / export tests check parity on these models: their outputs must depend
  # on the image, by far more than those tests' tolerances (<= 2e-3 px).
  from fkd.data import pipeline as ip

  faces = ip.load(conftest.tiny_kd_config(data_dir), splits=('test',)).splits['test'].images[:4]
  for stage in ('student_kd', 'teacher_tough'):
    predictor = inference.Predictor(str(run_dir / stage))
    got = predictor(faces)
    assert np.abs(got[1:] - got[:1]).max() > 0.1, stage  # face to face
    black = predictor(np.zeros_like(faces[:1]))
    assert np.abs(black - got[:1]).max() > 0.1, stage  # a black image is not a face


def test_find_stage_prefers_students(run_dir):
  assert inference.find_stage(str(run_dir)) == str(run_dir / 'student_kd')
  with pytest.raises(FkdError, match='does not exist'):
    inference.find_stage(str(run_dir / 'absent'))
