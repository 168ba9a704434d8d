"""Distillation losses: hand values, and the Gram-form affinity against the naive N x N form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.errors import FkdError
from fkd.losses import affinity
from fkd.models import heatmap_net as fan


def test_cosine_affinity_hand_value():
  f = jnp.array([[[1.0, 0.0], [1.0, 1.0]]])  # (B=1, N=2, C=2)
  r = 1 / math.sqrt(2)
  np.testing.assert_allclose(affinity.cosine_affinity(f), [[[1, r], [r, 1]]], rtol=1e-6)


def test_affinity_mse_hand_value():
  # Student nodes (1,0), (0,1): A_S = I. Teacher nodes (3,0,0), (2,0,0): A_T = all ones.
  # Off-diagonal differences 1, diagonal 0: mean over N² = 4 entries is 2/4.
  fs = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  ft = jnp.array([[[3.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
  for fn in (affinity.affinity_mse_naive, affinity.affinity_mse_gram_plain, affinity.affinity_mse):
    np.testing.assert_allclose(fn(fs, ft), 0.5, rtol=1e-6)


def test_gradient_at_an_all_zero_pixel_hand_value():
  # Student nodes f0 = (1, 0) and f1 = 0 (a dead ReLU pixel), teacher nodes both (1, 0): A_T is all
  # ones, A_S = [[1, 0], [0, 0]], L = (0 + 1 + 1 + 1)/4. At s1 = 0, ∂L/∂s1 = (1/4)·2·2·Σ_q
  # (A_S − A_T)[1, q]·s_q = −(1, 0), and ∂L/∂f1 = ∂L/∂s1 / n1 with n1 = sqrt(0 + ε²) = ε
  # (module doc): −(1/ε, 0). ∂L/∂f0 = 0 (its row differs from A_T only where s1 = 0).
  fs = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
  ft = jnp.array([[[1.0, 0.0], [1.0, 0.0]]])
  for fn in (affinity.affinity_mse_naive, affinity.affinity_mse):
    loss, grad = jax.value_and_grad(fn)(fs, ft)
    assert float(loss) == pytest.approx(0.75, rel=1e-6)
    np.testing.assert_allclose(grad[0, 1], [-1.0 / affinity.EPS, 0.0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grad[0, 0], [0.0, 0.0], atol=1e-3)
  assert affinity.EPS == 1e-6


def _features(rng, b, h, c, zero_frac=0.1):
  f = np.maximum(rng.normal(size=(b, h, h, c)), 0) + 0.1 * rng.normal(size=(b, h, h, c))
  f[rng.random((b, h, h)) < zero_frac] = 0.0  # all-zero pixels, as after a ReLU
  return jnp.asarray(f, jnp.float32)


@pytest.mark.parametrize('h,cs,ct,block', [(8, 16, 32, None), (16, 8, 24, 32), (12, 12, 12, 48)])
def test_gram_equals_naive_value_and_gradient(h, cs, ct, block):
  rng = np.random.default_rng(h + cs)
  fs, ft = _features(rng, 2, h, cs), _features(rng, 2, h, ct)
  naive = jax.value_and_grad(affinity.affinity_mse_naive, argnums=(0, 1))
  gram = jax.value_and_grad(lambda s, t: affinity.affinity_mse(s, t, block=block), argnums=(0, 1))
  (v0, (gs0, gt0)), (v1, (gs1, gt1)) = naive(fs, ft), gram(fs, ft)
  assert float(v1) == pytest.approx(float(v0), rel=1e-5)
  # Element by element, on the all-zero pixels (where 1/n_p = 1/ε makes the gradient huge) and on
  # the others separately: a global norm would be dominated by the zero pixels.
  for got, want, f in ((gs1, gs0, fs), (gt1, gt0, ft)):
    got, want = np.asarray(got), np.asarray(want)
    assert np.isfinite(got).all()
    zero = np.all(np.asarray(f) == 0, axis=-1)
    assert zero.any() and (~zero).any()
    for mask in (zero, ~zero):
      scale = np.abs(want[mask]).max()
      np.testing.assert_allclose(got[mask], want[mask], rtol=1e-3, atol=1e-4 * scale)


def test_block_must_divide_the_nodes():
  with pytest.raises(FkdError, match='block 7 does not divide the 64 nodes'):
    affinity.affinity_mse(jnp.ones((1, 8, 8, 2)), jnp.ones((1, 8, 8, 3)), block=7)


def test_gram_gradient_under_jit_with_frozen_teacher():
  rng = np.random.default_rng(3)
  fs, ft = _features(rng, 2, 8, 8), _features(rng, 2, 8, 16)
  loss = lambda s, t: 3.0 * affinity.affinity_mse(s, jax.lax.stop_gradient(t))
  ref = lambda s, t: 3.0 * affinity.affinity_mse_naive(s, t)
  g = jax.jit(jax.grad(loss))(fs, ft)
  np.testing.assert_allclose(g, jax.grad(ref)(fs, ft), rtol=1e-4, atol=1e-9)


def test_feature_aligned_hand_value():
  a = jnp.array([[[[1.0, 2.0]]]])
  t = jnp.array([[[[0.0, 4.0]]]])
  np.testing.assert_allclose(affinity.feature_aligned_mse(a, t), (1 + 4) / 2)
  with pytest.raises(FkdError, match='feature-aligned'):
    affinity.feature_aligned_mse(a, t[..., :1])


def test_patch_similarity_hand_value():
  # 2x2 maps have one scale (k = 0): the plain affinity loss.
  fs = jnp.array([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
  ft = jnp.ones((1, 2, 2, 3))
  # A_S: nodes (1,0),(0,1),(1,0),(1,0); A_T = all ones. Mismatches: node 1 vs 0, 2, 3 (6 entries).
  np.testing.assert_allclose(affinity.patch_similarity_mse(fs, ft), 6 / 16, rtol=1e-6)


def test_patch_similarity_scales_average_pooled_affinities():
  assert affinity.patch_scales(64) == [0, 1, 2, 3, 4, 5]  # 4096 … 4 nodes (method.md §6.4)
  assert affinity.patch_scales(64, min_scale=1) == [1, 2, 3, 4, 5]
  rng = np.random.default_rng(5)
  fs, ft = _features(rng, 2, 8, 4), _features(rng, 2, 8, 6)
  want = np.mean(
    [affinity.affinity_mse_naive(affinity.pool(fs, k), affinity.pool(ft, k)) for k in (0, 1, 2)]
  )
  np.testing.assert_allclose(affinity.patch_similarity_mse(fs, ft), want, rtol=1e-5)
  # pool(k=1) of a 2x2 map is its mean.
  np.testing.assert_allclose(
    affinity.pool(fs[:, :2, :2], 1)[:, 0, 0], fs[:, :2, :2].mean(axis=(1, 2)), rtol=1e-6
  )
  with pytest.raises(FkdError, match='power-of-two'):
    affinity.patch_scales(12)


def test_adapter_lifts_channels():
  adapter = fan.Adapter(6)
  x = jnp.ones((2, 4, 4, 3))
  variables = adapter.init(jax.random.key(0), x, train=False)
  assert variables['params']['conv']['kernel'].shape == (1, 1, 3, 6)
  assert 'bias' not in variables['params']['conv']
  y, _ = adapter.apply(variables, x, train=True, mutable=['batch_stats'])
  assert y.shape == (2, 4, 4, 6) and float(y.min()) >= 0.0  # post-ReLU
