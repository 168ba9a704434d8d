"""Metrics against hand-computed cases (results.md §1)."""

import numpy as np
import pytest

from fkd.evaluation import metrics


def _face(n=68, iod=10.0):
  g = np.zeros((n, 2))
  g[:, 0] = np.linspace(0, iod, n)
  io = metrics.NORMALISATION[n]['inter_ocular']
  g[io[0]] = [0.0, 0.0]
  g[io[1]] = [iod, 0.0]
  return g


def test_perfect_prediction():
  gt = np.stack([_face(), _face()])
  nme = metrics.nme_per_image(gt, gt)
  s = metrics.summarize(nme)
  assert s['nme'] == 0 and s['fr'] == 0 and s['auc'] == 1.0
  assert s['auc_kd'] == pytest.approx(0.95)


def test_uniform_shift_and_single_failure():
  gt = np.stack([_face(iod=10.0), _face(iod=10.0)])
  pred = gt.copy()
  pred[0] += [0.3, 0.4]  # |delta| = 0.5 -> NME 0.05
  pred[1] += [1.2, 1.6]  # |delta| = 2.0 -> NME 0.2 > 0.1: a failure
  nme = metrics.nme_per_image(pred, gt)
  np.testing.assert_allclose(nme, [0.05, 0.2])
  assert metrics.failure_rate(nme) == 50.0
  assert metrics.auc(nme) == pytest.approx((0.5 + 0.0) / 2)
  assert metrics.summarize(nme)['nme'] == pytest.approx(12.5)


def test_failure_is_strict():
  assert metrics.failure_rate(np.array([0.1, 0.1])) == 0.0
  assert metrics.failure_rate(np.array([0.1000001])) == 100.0


def test_auc_kd_single_image_formula():
  # results.md: an image at NME 0.04 scores (0.1/38)*(361 - (k-1)^2) with k = 8 -> 0.8210.
  assert metrics.auc_kd(np.array([0.04])) == pytest.approx(0.1 / 38 * (361 - 49))
  assert metrics.auc(np.array([0.04])) == pytest.approx(0.6)
  assert metrics.auc_kd(np.array([0.11])) == 0.0


def test_auc_kd_counts_an_image_on_a_threshold():
  # results.md §1: c_k counts NME_j <= t_k (t_k = 0.1·k/19), so an image exactly on t_5 has k_j = 5
  # and scores (0.1/38)·(361 − 4²); one exactly on t_19 = 0.1 still scores (0.1/38)·(361 − 18²).
  assert metrics.auc_kd(np.array([0.1 * 5 / 19])) == pytest.approx(0.1 / 38 * (361 - 16))
  assert metrics.auc_kd(np.array([0.1 * 19 / 19])) == pytest.approx(0.1 / 38 * (361 - 324))


def test_normalisations():
  g = np.zeros((1, 68, 2))
  g[0, 36:42] = [0.0, 0.0]
  g[0, 42:48] = [6.0, 8.0]
  g[0, 36] = [-1.0, 0.0]
  assert metrics.normalising_distance(g, 'inter_ocular')[0] == pytest.approx(np.hypot(7, 8))
  centre_left = np.array([-1.0, 0.0]) / 6
  assert metrics.normalising_distance(g, 'inter_pupil')[0] == pytest.approx(
    np.linalg.norm(np.array([6.0, 8.0]) - centre_left)
  )
  w = np.zeros((1, 98, 2))
  w[0, 96], w[0, 97] = [0, 0], [3, 4]
  assert metrics.normalising_distance(w, 'inter_pupil')[0] == 5.0
  box = np.array([[[0.0, 0.0], [3.0, 4.0]]])
  assert metrics.normalising_distance(box, 'box_diagonal')[0] == 5.0
  with pytest.raises(ValueError, match='shape'):
    metrics.nme_per_image(np.zeros((1, 68, 2)), np.zeros((1, 98, 2)))


def test_full_is_weighted_mean_of_subsets():
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0, 0.2, 135), rng.uniform(0, 0.2, 554)
  full = metrics.summarize(np.concatenate([a, b]))
  sa, sb = metrics.summarize(a), metrics.summarize(b)
  assert full['nme'] == pytest.approx((135 * sa['nme'] + 554 * sb['nme']) / 689)
  fails = lambda s: round(s['fr'] * s['count'] / 100)
  assert fails(full) == fails(sa) + fails(sb)


def test_ced_monotone():
  t, c = metrics.ced(np.array([0.0, 0.05, 0.2]))
  assert c[0] == pytest.approx(1 / 3) and c[-1] == pytest.approx(2 / 3)
  assert np.all(np.diff(c) >= 0) and t[-1] == pytest.approx(0.1)


def test_single_failure_among_good_images():
  # Hand-computed: NME 0.02, 0.03, 0.04 and one failure at 0.15.
  nme = np.array([0.02, 0.03, 0.04, 0.15])
  s = metrics.summarize(nme)
  assert s['fr'] == 25.0 and s['count'] == 4
  assert s['nme'] == pytest.approx(6.0)
  assert s['auc'] == pytest.approx((0.8 + 0.7 + 0.6 + 0.0) / 4)
  # KD variant: each image adds (0.1/38)(361 − (k−1)²), k the first t_k = 0.1k/19 ≥ NME_j:
  # k = 4, 6, 8 -> 352 + 336 + 312; the failure adds 0.
  assert s['auc_kd'] == pytest.approx(0.1 / 38 * (352 + 336 + 312) / 4)
  t, c = metrics.ced(nme)
  assert c[-1] == pytest.approx(0.75)


def test_threshold_is_configurable():
  nme = np.array([0.05, 0.09])
  assert metrics.failure_rate(nme, 0.08) == 50.0 and metrics.failure_rate(nme) == 0.0
  assert metrics.auc(nme, 0.08) == pytest.approx((1 - 0.05 / 0.08) / 2)
  assert metrics.summarize(nme, 0.08)['fr'] == 50.0


def test_ranked():
  best, worst = metrics.ranked(np.array([0.3, 0.1, 0.2, 0.05]), 2)
  assert best.tolist() == [3, 1] and worst.tolist() == [0, 2]
  best, worst = metrics.ranked(np.array([0.1]), 5)
  assert best.tolist() == worst.tolist() == [0]
