"""Heatmap targets, loss and decoding (method.md §4.4–4.6)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fkd.errors import FkdError
from fkd.heads import heatmaps as hm


def test_render_hand_values():
  maps = np.asarray(hm.render(jnp.array([[[2.3, 1.0]]]), 8, sigma=1.0))  # (1, 8, 8, 1)
  assert maps.shape == (1, 8, 8, 1)
  m = maps[0, :, :, 0]
  np.testing.assert_allclose(m[1, 2], math.exp(-0.09 / 2), rtol=1e-6)
  np.testing.assert_allclose(m[1, 5], math.exp(-(2.7**2) / 2), rtol=1e-6)  # |5 − round(2.3)| = 3
  np.testing.assert_allclose(m[3, 3], math.exp(-(0.7**2 + 4) / 2), rtol=1e-6)
  assert m[1, 6] == 0 and m[5, 2] == 0  # outside the 3σ window around (2, 1)
  assert m.max() < 1.0  # the sub-pixel centre is not on a pixel


def test_render_window_is_centred_on_the_rounded_point():
  # method.md §4.4 (fkd default): window centred at round(x) = 3 for x = 2.7, i.e. columns 0..6:
  # column 6 (|6 − 2.7| = 3.3) is inside, although farther than 3σ from x itself.
  m = np.asarray(hm.render(jnp.array([[[2.7, 4.0]]]), 8, sigma=1.0))[0, :, :, 0]
  np.testing.assert_allclose(m[4, 6], math.exp(-(3.3**2) / 2), rtol=1e-5)
  np.testing.assert_allclose(m[4, 0], math.exp(-(2.7**2) / 2), rtol=1e-5)
  assert m[4, 7] == 0 and m[0, 3] == 0  # |7 − 3| = 4 > 3σ; row 0: |0 − 4| = 4 > 3σ


def test_reference_decode_makes_no_shift_on_the_border():
  # method.md §4.6 step 2: the quarter-pixel shift only when 0 < j* < W − 1 (likewise for i*).
  maps = np.zeros((1, 8, 8, 2), np.float32)
  maps[0, 3, 0, 0], maps[0, 3, 1, 0] = 1.0, 0.5  # argmax on the left border, right neighbour > 0
  maps[0, 7, 4, 1], maps[0, 6, 4, 1] = 1.0, 0.5  # argmax on the bottom border
  maps[0, 7, 5, 1] = 0.25  # right neighbour larger than the left: x shifts by +1/4
  np.testing.assert_allclose(hm.decode(jnp.asarray(maps)), [[[0.0, 3.0], [4.25, 7.0]]])


def test_render_quantized_and_outside():
  maps = np.asarray(hm.render(jnp.array([[2.7, 1.2], [-9.0, 3.0]]), 8, sigma=1.0, quantize=True))
  np.testing.assert_allclose(maps[1, 2, 0], 1.0)  # centre truncated to (2, 1)
  np.testing.assert_allclose(maps[1, 3, 0], math.exp(-0.5), rtol=1e-6)
  assert not maps[..., 1].any()  # window entirely outside the map: all zero


def test_heatmap_mse_hand_value():
  pred = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(2.0)
  target = jnp.ones((1, 2, 2, 1))
  np.testing.assert_allclose(hm.heatmap_mse(pred, target), (1 + 1 + 1 + 1) / 4)


@pytest.fixture(scope='module')
def random_points():
  rng = np.random.default_rng(0)
  return rng.uniform(4.0, 27.0, size=(64, 5, 2)).astype(np.float32)


def test_decode_subpixel_within_0_05(random_points):
  maps = hm.render(random_points, 32, sigma=1.0)
  for method in ('quadratic', 'soft_argmax'):
    err = np.linalg.norm(np.asarray(hm.decode(maps, method)) - random_points, axis=-1)
    assert err.max() <= 0.05, (method, err.max())


def test_decode_reference_within_0_25(random_points):
  maps = hm.render(random_points, 32, sigma=1.5)
  err = np.abs(np.asarray(hm.decode(maps, 'reference')) - random_points)
  assert err.max() <= 0.25 + 1e-6
  assert err.max() > 0.2  # the quarter-pixel rule really is that coarse


def test_decode_reference_hand_value():
  m = np.zeros((1, 5, 5, 1), np.float32)
  m[0, 2, 2, 0], m[0, 2, 3, 0], m[0, 2, 1, 0], m[0, 1, 2, 0] = 1.0, 0.5, 0.2, 0.3
  np.testing.assert_allclose(np.asarray(hm.decode(m, 'reference'))[0, 0], [2.25, 1.75])
  m[0, 2, 2, 0], m[0, 0, 4, 0] = 0.0, 2.0  # maximum on the border: no shift
  np.testing.assert_allclose(np.asarray(hm.decode(m, 'reference'))[0, 0], [4.0, 0.0])


def test_crop_round_trip():
  rng = np.random.default_rng(1)
  points = rng.uniform(20, 44, size=(4, 3, 2)).astype(np.float32)  # 64² crop pixels
  targets = hm.targets_for_batch(points, 64, 4, sigma=1.0)
  assert targets.shape == (4, 16, 16, 3)
  back = np.asarray(hm.decode_to_crop(targets, 4, 'quadratic'))
  np.testing.assert_allclose(back, points, atol=0.05 * 4)
  np.testing.assert_allclose(
    hm.to_crop_coords(hm.to_heatmap_coords(points, 4), 4), points, rtol=1e-6
  )
  # x_in = 4(x + ½) − ½: heatmap pixel 0 covers crop pixels −0.5 … 3.5, centre 1.5.
  np.testing.assert_allclose(hm.to_crop_coords(jnp.zeros(2), 4), [1.5, 1.5])


def test_errors():
  with pytest.raises(FkdError, match='decode'):
    hm.decode(jnp.zeros((1, 4, 4, 1)), 'nope')
  with pytest.raises(FkdError, match='multiple of the heatmap stride'):
    hm.targets_for_batch(jnp.zeros((1, 1, 2)), 30, 4, 1.0)
