"""Tests for fkd.data.asm (method.md §2.3)."""

import glob
import os
import pathlib

import numpy as np
import pytest

from fkd.data import asm

# Hand-computed case: 3 shapes of 2 points (2N = 4). The centred rows are combinations of the
# orthonormal directions e1 = (1, 1, 0, 0)/√2 and e2 = (0, 0, 1, -1)/√2 with orthogonal coefficient
# columns c1 = (1, -2, 1)·√2 and c2 = (-1, 0, 1)·√2, so S² = (12, 4) and λ = S²/(M − 1) = (6, 2),
# r = (0.75, 0.25).
_MEAN = np.array([1.0, 2.0, 3.0, 4.0])
_E1 = np.array([1.0, 1.0, 0.0, 0.0]) / np.sqrt(2)
_E2 = np.array([0.0, 0.0, 1.0, -1.0]) / np.sqrt(2)
_C1 = np.array([1.0, -2.0, 1.0]) * np.sqrt(2)
_C2 = np.array([-1.0, 0.0, 1.0]) * np.sqrt(2)
# Rows: (2, 3, 2, 5), (-1, 0, 3, 4), (2, 3, 4, 3).
_SHAPES = (_MEAN + _C1[:, None] * _E1 + _C2[:, None] * _E2).reshape(3, 2, 2)


def _random_shapes(seed=0, m=200, n=10):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 100, (n, 2))
  modes = rng.normal(size=(4, n, 2)) * np.array([8.0, 4.0, 2.0, 1.0])[:, None, None]
  coef = rng.normal(size=(m, 4))
  return base + np.einsum('mk,knd->mnd', coef, modes) + rng.normal(0, 0.2, (m, n, 2))


def test_hand_computed_fit():
  np.testing.assert_array_equal(_SHAPES.reshape(3, 4), [[2, 3, 2, 5], [-1, 0, 3, 4], [2, 3, 4, 3]])
  pca = asm.fit_pca(_SHAPES, acc=0.5)
  np.testing.assert_allclose(pca.mean, [1, 2, 3, 4], atol=1e-12)
  assert pca.k == 1 and pca.num_shapes == 3
  np.testing.assert_allclose(pca.eigenvalues, [6.0], rtol=1e-12)
  np.testing.assert_allclose(pca.components[:, 0], _E1, atol=1e-12)  # sign: largest entry > 0
  full = asm.fit_pca(_SHAPES, k=5)
  assert full.k == 3  # capped at min(M, 2N) components; the third has λ = 0
  np.testing.assert_allclose(full.eigenvalues, [6.0, 2.0, 0.0], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(full.ratio, [0.75, 0.25, 0.0], rtol=1e-12, atol=1e-12)
  assert asm.fit_pca(_SHAPES, acc=0.74).k == 1
  assert asm.fit_pca(_SHAPES, acc=0.76).k == 2


def test_k_selection_is_strictly_greater():
  r1 = float(asm.fit_pca(_SHAPES, k=2).ratio[0])  # 0.75 up to rounding
  assert asm.fit_pca(_SHAPES, acc=r1).k == 2  # r1 > r1 is false
  assert asm.fit_pca(_SHAPES, acc=float(np.nextafter(r1, 0))).k == 1
  assert asm.fit_pca(_SHAPES, acc=0.9999).k == 2


def test_hand_computed_projection_and_clipping():
  pca = asm.fit_pca(_SHAPES, k=2)
  # Inside the bounds: unchanged (x lies in the model's span).
  x = (_MEAN + 2.0 * _E1 - 1.0 * _E2).reshape(2, 2)
  np.testing.assert_allclose(asm.asm_project(pca, x), x, atol=1e-12)
  # b1 = 10 > 3·√6 ≈ 7.348 is clipped, b2 = 1 < 3·√2 is kept; the off-model part is removed.
  off = np.array([1.0, -1.0, 0.0, 0.0]) / np.sqrt(2)
  x = (_MEAN + 10.0 * _E1 + 1.0 * _E2 + 5.0 * off).reshape(2, 2)
  expected = (_MEAN + 3.0 * np.sqrt(6.0) * _E1 + 1.0 * _E2).reshape(2, 2)
  np.testing.assert_allclose(asm.asm_project(pca, x), expected, atol=1e-12)
  b = (asm.asm_project(pca, x).reshape(-1) - pca.mean) @ pca.components
  np.testing.assert_allclose(np.abs(b), [3 * np.sqrt(6), 1], atol=1e-12)
  # With clip_sigmas=1 both are clipped: b = (√6, √2) up to the signs of the data.
  x = (_MEAN - 10.0 * _E1 + 5.0 * _E2).reshape(2, 2)
  expected = (_MEAN - np.sqrt(6.0) * _E1 + np.sqrt(2.0) * _E2).reshape(2, 2)
  np.testing.assert_allclose(asm.asm_project(pca, x, clip_sigmas=1.0), expected, atol=1e-12)
  # No clipping: plain projection.
  np.testing.assert_allclose(asm.asm_project(pca, x, clip_sigmas=None), x, atol=1e-12)


def test_idempotence_and_batch_shapes():
  shapes = _random_shapes()
  pca = asm.fit_pca(shapes, acc=0.9)
  soft = asm.asm_project(pca, shapes * 1.3)  # push some coefficients past 3σ
  np.testing.assert_allclose(asm.asm_project(pca, soft), soft, atol=1e-9)
  batched = asm.asm_project(pca, shapes.reshape(10, 20, 10, 2))
  np.testing.assert_allclose(batched.reshape(shapes.shape), asm.asm_project(pca, shapes))
  assert asm.asm_project(pca, shapes.astype(np.float32)).dtype == np.float32


def test_equivariance_under_isotropic_affine_map():
  shapes = _random_shapes(1)
  a, c = -1.0 / 224.0, 0.5
  pca = asm.fit_pca(shapes, acc=0.9)
  pca2 = asm.fit_pca(a * shapes + c, acc=0.9)
  assert pca2.k == pca.k
  np.testing.assert_allclose(pca2.mean, a * pca.mean + c, atol=1e-12)
  np.testing.assert_allclose(pca2.eigenvalues, a**2 * pca.eigenvalues, rtol=1e-9)
  test = _random_shapes(2, m=20) * 1.2
  np.testing.assert_allclose(
    asm.asm_project(pca2, a * test + c), a * asm.asm_project(pca, test) + c, atol=1e-10
  )


def test_k_increases_with_acc_and_clip_bounds():
  shapes = _random_shapes(3)
  ks = [asm.fit_pca(shapes, acc=acc).k for acc in (0.5, 0.8, 0.9, 0.97, 0.999)]
  assert ks == sorted(ks) and ks[0] < ks[-1]
  pca = asm.fit_pca(shapes, acc=0.97)
  far = shapes * 2.0 - 50.0
  b = (asm.asm_project(pca, far).reshape(len(far), -1) - pca.mean) @ pca.components
  lim = 3.0 * np.sqrt(pca.eigenvalues)
  assert np.all(np.abs(b) <= lim + 1e-9)
  assert np.any(np.isclose(np.abs(b), lim))


def test_to_dict_round_trip():
  import json

  pca = asm.fit_pca(_random_shapes(4), acc=0.85)
  d = json.loads(json.dumps(pca.to_dict()))
  pca2 = asm.PCAModel.from_dict(d)
  for f in ('mean', 'components', 'eigenvalues', 'ratio'):
    np.testing.assert_array_equal(getattr(pca2, f), getattr(pca, f))
  assert (pca2.k, pca2.acc, pca2.num_shapes) == (pca.k, pca.acc, pca.num_shapes)
  x = _random_shapes(5, m=3)
  np.testing.assert_array_equal(asm.asm_project(pca2, x), asm.asm_project(pca, x))


def test_jax_arrays():
  jnp = pytest.importorskip('jax.numpy')
  import jax

  shapes = _random_shapes(6).astype(np.float32)
  pca = asm.fit_pca(shapes, acc=0.9)
  out = jax.jit(lambda s: asm.asm_project(pca, s))(jnp.asarray(shapes))
  np.testing.assert_allclose(np.asarray(out), asm.asm_project(pca, shapes), atol=1e-3)


# -------------------------------------------------------------------------------------------------
# Real 300W shapes (shared fixture folder, datasets.md §8.2); skipped when absent.


def _shared_data() -> pathlib.Path:
  env = os.environ.get('FKD_SHARED_DATA')
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'


def _load_300w_crops() -> np.ndarray:
  root = _shared_data() / 'spinkoo-face-alignement-300w'
  files = sorted(glob.glob(str(root / 'afw' / '*.pts')))
  if not files:
    pytest.skip(f'300W fixture shapes not found under {root}')
  out = []
  for f in files:
    pts = np.loadtxt(f, dtype=np.float64).reshape(68, 2)
    lo = np.maximum(pts.min(0) - 5.0, 0.0)
    hi = pts.max(0) + 5.0
    out.append((pts - lo) * (224.0 / (hi - lo)))  # KD-Loss 224 crop, anisotropic
  return np.stack(out)


def test_real_300w_shapes():
  shapes = _load_300w_crops()
  assert shapes.shape[1:] == (68, 2) and len(shapes) > 300
  ks = []
  for acc in (0.80, 0.85, 0.90, 0.95, 0.97):
    pca = asm.fit_pca(shapes, acc=acc)
    assert np.cumsum(pca.ratio)[-1] > acc
    assert pca.k == 1 or np.cumsum(pca.ratio)[-2] <= acc
    soft = asm.asm_project(pca, shapes)
    np.testing.assert_allclose(asm.asm_project(pca, soft), soft, atol=1e-8)
    b = (soft.reshape(len(soft), -1) - pca.mean) @ pca.components
    assert np.all(np.abs(b) <= 3 * np.sqrt(pca.eigenvalues) + 1e-8)
    ks.append(pca.k)
  assert ks == sorted(ks) and ks[0] < ks[-1], ks
  # Pixel and normalised (u = (112 − x)/224) spaces give the same soft landmarks.
  pca = asm.fit_pca(shapes, acc=0.9)
  pca_n = asm.fit_pca((112.0 - shapes) / 224.0, acc=0.9)
  np.testing.assert_allclose(
    112.0 - 224.0 * asm.asm_project(pca_n, (112.0 - shapes) / 224.0),
    asm.asm_project(pca, shapes),
    atol=1e-8,
  )
