"""fkd.data.pipeline's array steps: batch flip, resampling of points, batching, epochs."""

import numpy as np
import pytest

from fkd.data import pipeline
from fkd.errors import FkdError

S = 32


def _marked(points_batch):
  """uint8 (B, S, S, 3) images with one bright pixel at every (rounded) landmark."""
  images = np.zeros((len(points_batch), S, S, 3), np.uint8)
  for b, points in enumerate(points_batch):
    for x, y in np.round(points).astype(int):
      images[b, y, x] = 255
  return images


def test_batch_flip_mirrors_images_and_landmarks_alike():
  points = np.array(
    [[[3.0, 5.0], [20.0, 9.0], [11.0, 27.0]], [[30.0, 1.0], [7.0, 14.0], [2.0, 2.0]]]
  )
  perm = np.array([1, 0, 2])
  images, flipped = pipeline._flip(_marked(points), points, perm, S)
  # x ↦ S − 1 − x with the points re-indexed by the permutation, written out by hand.
  np.testing.assert_allclose(flipped[0], [[11.0, 9.0], [28.0, 5.0], [20.0, 27.0]])
  np.testing.assert_allclose(flipped[1], [[24.0, 14.0], [1.0, 1.0], [29.0, 2.0]])
  np.testing.assert_array_equal(images, _marked(flipped))  # the marks sit at the new landmarks


def test_scale_points_keeps_pixel_centres():
  # Resampling by s maps x -> s (x + ½) − ½: pixel 0's centre of a 2x upsample is at 0.5.
  got = pipeline._scale_points(np.array([[0.0, 3.0], [-0.5, 10.0]]), 2.0)
  np.testing.assert_allclose(got, [[0.5, 6.5], [-0.5, 20.5]])
  assert got.dtype == np.float32


def test_eval_batches_pad_the_last_batch_and_count_real_rows():
  split = pipeline.Split(
    np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8),
    np.zeros((5, 1, 2), np.float32),
    None,
    [str(i) for i in range(5)],
  )
  got = list(pipeline.eval_batches(split, 2))
  assert [n for _, n in got] == [2, 2, 1]
  assert all(images.shape == (2, 2, 2, 3) for images, _ in got)
  assert got[2][0][0].max() == 4 and got[2][0][1].max() == 0  # the pad is zeros


def test_steps_per_epoch_drops_the_last_partial_batch():
  assert pipeline.steps_per_epoch(10, 4) == 2
  assert pipeline.steps_per_epoch(8, 4) == 2
  with pytest.raises(FkdError, match='fewer than batch size'):
    pipeline.steps_per_epoch(3, 4)


def test_batch_indices_are_a_permutation_per_epoch():
  split = pipeline.Split(
    np.zeros((12, 1, 1, 3), np.uint8), np.zeros((12, 1, 2), np.float32), None, [''] * 12
  )
  epoch = np.concatenate([pipeline._batch_indices(split, 4, 7, 0, k) for k in range(3)])
  assert sorted(epoch.tolist()) == list(range(12))  # every example once in an epoch
  other = np.concatenate([pipeline._batch_indices(split, 4, 7, 1, k) for k in range(3)])
  assert sorted(other.tolist()) == list(range(12)) and not np.array_equal(epoch, other)
