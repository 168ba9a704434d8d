"""KD-Loss terms against hand-computed values (method.md §2.5), one case per branch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.losses import kd_loss as losses

CODE = losses.KDParams.code()
FIG = losses.KDParams.figure()


def _aloss(p, q, g, alpha, alpha_neg, params):
  return float(
    losses.aloss(
      jnp.float32(p),
      jnp.float32(q),
      jnp.float32(g),
      alpha,
      alpha_neg,
      params.beta,
      params.low_region,
    )
  )


@pytest.mark.parametrize(
  'p, q, expected',
  [
    (1.0, 0.5, 1.9 * 0.5),  # R_P: e=1 > d=0.5 -> alpha * |d - e|
    (-1.0, 0.5, 1.9 * 0.5),  # sign of p - g does not matter
    (0.3, 1.0, -0.45 * 0.7),  # R_N: beta*d=0.15 <= e=0.3 <= d=1
    (0.1, 1.0, 0.0),  # R_L: e=0.1 < beta*d=0.15 -> weight 0
    (0.15, 1.0, -0.45 * 0.85),  # e = beta*d exactly (0.15 in float32 both ways): R_N, not R_L
    (0.5, -0.5, 0.0),  # e = d: R_N, |d - e| = 0
    (0.0, 1.0, 0.0),  # e = 0 -> weight 0
    (0.4, 0.0, 0.0),  # d = 0 -> weight 0 although e > d
  ],
)
def test_aloss_code_branches(p, q, expected):
  assert _aloss(p, q, 0.0, 1.9, -0.45, CODE) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
  'p, q, expected',
  [
    (2.0, 1.0, 0.9 * 1.0),  # R_P (e >= d)
    (1.0, 1.0, 0.0),  # e = d belongs to R_P in the figure version, |d - e| = 0
    (0.5, 1.0, -0.45 * 0.5),  # R_N: beta*d = 0.4 <= e < d
    (0.2, 1.0, (-0.45 * 0.2 / 0.4) * 0.8),  # R_L ramp: omega = alpha_neg * e / (beta d)
    (0.0, 1.0, 0.0),  # ramp starts at 0 at g
  ],
)
def test_aloss_figure_branches(p, q, expected):
  assert _aloss(p, q, 0.0, 0.9, -0.45, FIG) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
  'slope, e, lam, expected',
  [
    (3.0, 0.2, 0.5, 0.6),  # linear branch
    (3.0, 1.0, 0.5, 1.0 + 1.5 - 0.25),  # quadratic branch e^2 + 3 lam - lam^2
    (3.0, 0.5, 0.5, 1.5),  # continuity at e = lam
    (1.0, 0.2, 0.5, 0.2),  # figure slope 1
    (1.0, 1.0, 0.5, 1.0 + 0.5 - 0.25),
  ],
)
def test_main_loss_branches(slope, e, lam, expected):
  got = losses.main_loss(jnp.float32(e), jnp.float32(0.0), jnp.float32(lam), slope)
  assert float(got) == pytest.approx(expected, abs=1e-6)


def test_kd_loss_code_total():
  pred = jnp.array([1.0, 0.3])
  gt = jnp.zeros(2)
  tough = jnp.array([0.5, 1.0])
  tolerant = jnp.array([0.5, 3.0])
  total, terms = losses.kd_loss(pred, gt, tough, tolerant, CODE)
  # Tough: R_P 1.9*0.5 and R_N -0.45*0.7; Tolerant: R_P 1.8*0.5 and R_L 0.
  # Main (lambda = |s - g| = [0.5, 3]): 2.25 and 0.9, weight 2.
  assert float(terms['aloss_tough']) == pytest.approx((0.95 - 0.315) / 2, abs=1e-6)
  assert float(terms['aloss_tolerant']) == pytest.approx(0.9 / 2, abs=1e-6)
  assert float(terms['main']) == pytest.approx(2.0 * (2.25 + 0.9) / 2, abs=1e-6)
  assert float(total) == pytest.approx(3.15 + 0.3175 + 0.45, abs=1e-5)


def test_kd_loss_figure_total():
  pred = jnp.array([2.0, 0.2])
  gt = jnp.zeros(2)
  teacher = jnp.array([1.0, 1.0])
  total, terms = losses.kd_loss(pred, gt, teacher, teacher, FIG)
  aloss = (0.9 * 1.0 + (-0.225) * 0.8) / 2
  main = 2.5 * ((4.0 + 1.0 - 1.0) + 0.2) / 2  # lambda = 1: e=2 quadratic, e=0.2 linear
  assert float(terms['aloss_tough']) == pytest.approx(aloss, abs=1e-6)
  assert float(total) == pytest.approx(main + 2 * aloss, abs=1e-5)


@pytest.mark.parametrize(
  'p, q, expected',
  [
    (1.0, 0.5, 1.9),  # R_P: sigma * alpha
    (-1.0, 0.5, -1.9),
    (0.3, 1.0, 0.45),  # R_N: sigma * |alpha_neg|, toward g
    (0.1, 1.0, 0.0),  # R_L
  ],
)
def test_aloss_code_gradients(p, q, expected):
  grad = jax.grad(lambda x: losses.aloss(x, jnp.float32(q), jnp.float32(0.0), 1.9, -0.45, 0.15))
  assert float(grad(jnp.float32(p))) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('p, lam, expected', [(0.2, 0.5, 3.0), (-0.2, 0.5, -3.0), (1.0, 0.5, 2.0)])
def test_main_loss_gradients(p, lam, expected):
  grad = jax.grad(lambda x: losses.main_loss(x, jnp.float32(0.0), jnp.float32(lam), 3.0))
  assert float(grad(jnp.float32(p))) == pytest.approx(expected, abs=1e-6)


def test_teachers_get_no_gradient():
  grad = jax.grad(lambda t: losses.kd_loss(jnp.ones(3), jnp.zeros(3), t, t, CODE)[0])
  np.testing.assert_array_equal(grad(jnp.full(3, 0.5)), 0.0)


def test_single_teacher_ablation_and_sign_invariance():
  rng = np.random.default_rng(0)
  p, g, a, s = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(4))
  full, _ = losses.kd_loss(p, g, a, s, CODE)
  flipped, _ = losses.kd_loss(-p, -g, -a, -s, CODE)  # the u, v sign flip changes nothing
  assert float(full) == pytest.approx(float(flipped), rel=1e-6)
  tough_only, terms = losses.kd_loss(p, g, a, None, CODE)
  assert set(terms) == {'main', 'aloss_tough'}
  lam = jnp.abs(a - g)  # lambda falls back to the only teacher present
  assert float(terms['main']) == pytest.approx(
    float(2.0 * jnp.mean(losses.main_loss(p, g, lam, 3.0))), rel=1e-6
  )
  assert np.isfinite(float(tough_only))


def test_mse_and_config_modes():
  assert float(losses.mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]))) == pytest.approx(5.0)
  params = losses.KDParams.from_config({'mode': 'figure', 'beta': 0.3, 'w_tou': None})
  assert params.beta == 0.3 and params.low_region == 'ramp' and params.w_tou == 1.0
  with pytest.raises(ValueError, match='kd.mode'):
    losses.KDParams.from_config({'mode': 'paper'})
