"""fkd.evaluate's mean-shape baseline: the mean of the train split's landmarks, scored on the
eval splits (no trained model in the workdir)."""

import numpy as np
import pytest

from configs import kd
from fkd.data import pipeline
from fkd.evaluation import evaluate


def _split(landmarks, shards=range(1)):
  m = len(landmarks)
  return pipeline.Split(
    np.zeros((m, 8, 8, 3), np.uint8),
    np.asarray(landmarks, np.float32),
    None,
    [f'face{i}' for i in range(m)],
    shards=shards,
    num_shards=len(shards),
  )


@pytest.mark.parametrize('shards', [1, 2])
def test_mean_shape_is_fitted_on_the_train_split(tmp_path, shards):
  rng = np.random.default_rng(0)
  base = rng.uniform(10, 50, (68, 2))
  train = base + rng.normal(0, 2, (4, 68, 2))  # held as `shards` shards of 4 / shards faces
  test = base + 5.0 + rng.normal(0, 2, (3, 68, 2))  # shifted: its own mean would score better
  data = pipeline.Data(
    'synthetic_faces',
    {'train': _split(train, range(shards)), 'test': _split(test)},
    image_size=8,
    num_landmarks=68,
    flip_permutation=np.arange(68),
    pca=None,
    eval_splits=('test',),
  )
  config = kd.get_config()
  results = evaluate.evaluate_workdir(config, str(tmp_path), data)
  assert list(results['models']) == ['mean_shape']
  # By hand: the mean train shape, its NME against each test face over the inter-ocular
  # distance (300-W points 36 and 45).
  mean = train.astype(np.float32).astype(np.float64).mean(axis=0)
  test = test.astype(np.float32).astype(np.float64)
  d = np.linalg.norm(test[:, 36] - test[:, 45], axis=-1)
  nme = np.linalg.norm(mean[None] - test, axis=-1).mean(axis=-1) / d
  np.testing.assert_allclose(results['nme_per_image']['mean_shape']['test'], nme, atol=1e-5)
  got = results['models']['mean_shape']['test']
  assert got['nme'] == pytest.approx(100 * nme.mean(), abs=1e-3)
  assert got['fr'] == pytest.approx(100 * np.mean(nme > config.eval.fr_threshold))
