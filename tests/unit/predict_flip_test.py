"""Flip averaging of fkd.predict: the mirrored crop's landmarks come back to the crop's frame."""

import numpy as np
import pytest

from fkd.data import schemes
from fkd.errors import FkdError
from fkd.serve import predict


def test_flip_average_by_hand():
  # Two points that swap under the mirror (perm (1, 0)) in a 10-pixel crop: x -> 9 - x.
  crop = np.array([[[1.0, 2.0], [7.0, 3.0]]])
  # The mirrored crop's point 0 is the mirror of point 1 (9 - 7 = 2), its point 1 the mirror of
  # point 0 (9 - 1 = 8); the model misses the first by +0.4 in x.
  mirrored = np.array([[[2.4, 3.0], [8.0, 2.0]]])
  got = predict.flip_average(crop, mirrored, (1, 0), 10)
  # Mirrored back: point 0 = (9 - 8, 2) = (1, 2), point 1 = (9 - 2.4, 3) = (6.6, 3).
  np.testing.assert_allclose(got, [[[1.0, 2.0], [6.8, 3.0]]], atol=1e-6)
  assert got.dtype == np.float32


def test_flip_average_of_a_mirror_exact_model_is_its_prediction():
  perm = schemes.SCHEMES['300w'].flip_permutation
  rng = np.random.default_rng(0)
  pts = rng.uniform(0, 95, (3, 68, 2))
  ideal = schemes.flip_points(pts, perm, 96)  # what a mirror-exact model says on the mirror
  np.testing.assert_allclose(predict.flip_average(pts, ideal, perm, 96), pts, atol=1e-4)


class _Markers(predict.Predictor):
  """A predictor without a checkpoint whose 'model' finds two bright markers in each crop: point 0
  the left one, point 1 the right one (so mirroring swaps them: perm (1, 0)), each off by
  `bias` pixels, in calls of exactly `batch_size`."""

  def __init__(self, flip: bool, bias=(0.0, 0.0), batch_size: int = 4):
    self.flip, self.flip_permutation = flip, (1, 0)
    self.image_size, self.num_landmarks, self.batch_size = 16, 2, batch_size
    self.bias, self.calls = np.asarray(bias), []

  def __call__(self, images):
    self.calls.append(len(images))
    out = np.zeros((len(images), 2, 2), np.float32)
    for i, img in enumerate(images):
      ys, xs = np.nonzero(img[..., 0] > 128)
      if len(xs):
        order = np.argsort(xs)
        out[i] = np.stack([xs[order], ys[order]], 1)[[0, -1]] + self.bias
    return out


def _crops(n: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(1)
  crops = np.zeros((n, 16, 16, 3), np.uint8)
  where = np.zeros((n, 2, 2))
  for i in range(n):
    x0, x1 = rng.choice(np.arange(1, 15), 2, replace=False)
    y0, y1 = rng.integers(0, 16, 2)
    (x0, y0), (x1, y1) = sorted([(x0, y0), (x1, y1)])
    crops[i, y0, x0] = crops[i, y1, x1] = 255
    where[i] = [[x0, y0], [x1, y1]]
  return crops, where


def test_predict_crops_flip_averages_in_the_same_batches():
  crops, where = _crops(3)
  plain = _Markers(flip=False, bias=(0.6, 0.3))
  np.testing.assert_allclose(plain.predict_crops(crops), where + [0.6, 0.3], atol=1e-6)
  assert plain.calls == [4]
  flipped = _Markers(flip=True, bias=(0.6, 0.3))
  # A constant x bias cancels in the average (the mirror turns +0.6 into -0.6); y's stays.
  np.testing.assert_allclose(flipped.predict_crops(crops), where + [0.0, 0.3], atol=1e-5)
  assert flipped.calls == [4, 4]  # 3 crops and their 3 mirrors: 2 calls of 4
  exact = _Markers(flip=True)
  np.testing.assert_allclose(exact.predict_crops(crops), where, atol=1e-5)
  assert exact.predict_crops(crops[:0]).shape == (0, 2, 2)


def test_flip_default_and_checks():
  perm = schemes.SCHEMES['300w'].flip_permutation
  assert predict.default_flip(perm, {'data.augment': 'kd'})
  assert predict.default_flip(perm, {'data.augment': 'flip'})
  assert not predict.default_flip(perm, {'data.augment': 'none'})
  assert not predict.default_flip(perm, {})
  assert not predict.default_flip(None, {'data.augment': 'kd'})
  assert predict.flip_permutation({'dataset': 'ibug_300w'}) == perm
  assert predict.flip_permutation({'dataset': 'landmarks_folder'}) is None
  assert predict.flip_permutation({'flip_permutation': [1, 0]}) == (1, 0)
  for bad in ('yes', 1, None.__class__):
    with pytest.raises(FkdError, match='--flip must be true or false'):
      predict.Predictor('/nonexistent', flip=bad)
