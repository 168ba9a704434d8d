"""fkd.serve.smoothing: the One Euro filter against hand-computed values, jitter reduction,
tracking."""

import math

import numpy as np
import pytest

from fkd.serve import smoothing


def test_alpha_hand_computed():
  # fc = 1 Hz at 30 fps: tau = 1 / (2 pi) = 0.159155, alpha = 1 / (1 + 0.159155 · 30) = 0.173171.
  assert smoothing.alpha(1.0, 1 / 30) == pytest.approx(0.173171, abs=1e-6)
  assert smoothing.alpha(1e9, 1 / 30) == pytest.approx(1.0)


def test_constant_signal_stays_constant():
  f = smoothing.OneEuroFilter(min_cutoff=0.5, beta=3.0)
  x = np.array([[12.5, -3.0], [100.0, 7.25]])
  for _ in range(50):
    out = f(x)
  np.testing.assert_allclose(out, x, rtol=0, atol=1e-12)


def test_step_response_follows_the_formula():
  # x = 0, then 1 from the second sample on, at 30 fps, d_cutoff = 1 Hz (a_d = 0.173171).
  a = 0.173171
  # beta = 0: a plain exponential smoother, x_hat_k = 1 − (1 − a)^k.
  f = smoothing.OneEuroFilter(min_cutoff=1.0, beta=0.0)
  out = [float(f(np.array(v))) for v in [0.0] + [1.0] * 5]
  np.testing.assert_allclose(out, [0.0] + [1 - (1 - a) ** k for k in range(1, 6)], atol=1e-6)
  # beta = 1: dx_hat = a_d · 30 = 5.19512, fc = 1 + 5.19512 = 6.19512 Hz,
  # alpha = 1 / (1 + 30 / (2 pi · 6.19512)) = 0.564745; then sample 2: dx_hat = a_d ·
  # (1 − 0.564745) · 30 + (1 − a_d) · 5.19512 = 6.55668, fc = 7.55668, alpha = 0.612803,
  # x_hat = 0.564745 + 0.612803 · (1 − 0.564745) = 0.831471.
  f = smoothing.OneEuroFilter(min_cutoff=1.0, beta=1.0)
  out = [float(f(np.array(v))) for v in (0.0, 1.0, 1.0)]
  np.testing.assert_allclose(out, [0.0, 0.564745, 0.831471], atol=1e-6)


def test_timestamps_and_scale():
  # An explicit t (15 fps spacing) is the same as fps=15; scale divides the speed.
  a = smoothing.OneEuroFilter(fps=15.0, beta=2.0)
  b = smoothing.OneEuroFilter(fps=30.0, beta=2.0)
  c = smoothing.OneEuroFilter(fps=15.0, beta=4.0)
  for k, v in enumerate([0.0, 1.0, 3.0, 2.0]):
    ra, rb = a(np.array(2 * v), scale=2.0), b(np.array(v), t=k / 15)
    rc = c(np.array(v), scale=2.0)
    assert ra == pytest.approx(2 * rb) and rc == pytest.approx(rb)
  assert b(np.array(50.0), t=3 / 15) == pytest.approx(rb)  # a repeated timestamp keeps the state
  with pytest.raises(ValueError, match='shape'):
    b(np.zeros(2))


def _still_face(filter_fn, frames=300, sigma=2.0, seed=0):
  rng = np.random.default_rng(seed)
  truth = np.tile(np.array([[300.0, 200.0]]), (68, 1))
  return np.array([filter_fn(truth + rng.normal(0, sigma, truth.shape)) for _ in range(frames)])


def test_jitter_on_a_still_face_drops():
  # A still 200 px face with 2 px white jitter per coordinate at 30 fps, default parameters:
  # measured variance 4.00 -> 0.40 px² (9.9x less), mean frame-to-frame motion of a point
  # 3.57 -> 0.48 px (7.4x less).
  raw = _still_face(lambda x: x)[30:]
  f = smoothing.OneEuroFilter()
  smooth = _still_face(lambda x: f(x, scale=200.0))[30:]
  var_factor = raw.var(0).mean() / smooth.var(0).mean()
  motion_factor = smoothing.mean_motion(raw) / smoothing.mean_motion(smooth)
  assert 8 < var_factor < 12 and 6 < motion_factor < 9
  # Theory at beta = 0: an exponential smoother keeps alpha / (2 − alpha) of white-noise variance.
  f0 = smoothing.OneEuroFilter(beta=0.0)
  smooth0 = _still_face(lambda x: f0(x))[30:]
  a = smoothing.alpha(1.0, 1 / 30)
  assert smooth0.var(0).mean() / raw.var(0).mean() == pytest.approx(a / (2 - a), rel=0.15)


def test_mean_motion_hand_computed():
  seq = np.array([[[0, 0], [1, 1]], [[3, 4], [1, 1]], [[3, 4], [1, 2]]], float)  # (T=3, N=2, 2)
  assert smoothing.mean_motion(seq) == pytest.approx((5 + 0 + 0 + 1) / 4)
  with pytest.raises(ValueError, match='T >= 2'):
    smoothing.mean_motion(seq[:1])


def test_video_motion_per_track_over_consecutive_frames():
  """The per-track summary `fkd.predict --smooth` prints, by hand: frame pairs seen back to back."""
  motion = smoothing.Motion()
  point = lambda x, y: np.array([[x, y]], float)
  for frame, raw, smooth in [
    (0, point(0, 0), point(0, 0)),
    (1, point(3, 4), point(0, 1)),  # raw moves 5 px, smoothed 1 px
    (2, point(3, 4), point(0, 3)),  # 0 and 2
    (5, point(90, 90), point(90, 90)),  # after a gap: no pair
    (6, point(90, 91), point(90, 91)),  # 1 and 1
  ]:
    motion.add(frame, 0, raw, smooth)
  motion.add(3, 1, point(7, 7), point(7, 7))  # a track seen once: no line
  assert motion.lines() == [
    'track 0: mean frame-to-frame landmark motion 2.00 px raw -> 1.33 px smoothed (3 frame pairs)'
  ]


def test_beta_cuts_the_lag_of_motion():
  # A face moving 1 face size (200 px) per second: beta = 1 lags far less than beta = 0.
  def lag(beta):
    f = smoothing.OneEuroFilter(beta=beta)
    for k in range(90):
      out = f(np.array([200.0 * k / 30]), scale=200.0)
    return 200.0 * 89 / 30 - float(out[0])

  assert lag(0.0) == pytest.approx(200 * (1 / 0.173171 - 1) / 30, rel=0.01)  # 31.8 px
  assert lag(1.0) < lag(0.0) / 3


def test_match_greedy_by_iou():
  tracks = np.array([[0, 0, 10, 10], [100, 0, 10, 10]], float)
  boxes = np.array([[101, 0, 10, 10], [1, 0, 10, 10], [500, 500, 5, 5]], float)
  assert sorted(smoothing.match(tracks, boxes, 0.3)) == [(0, 1), (1, 0)]
  assert smoothing.match(tracks, np.zeros((0, 4)), 0.3) == []


def test_tracker_keeps_each_face_its_filter():
  tracker = smoothing.FaceTracker(max_missed=2)
  left, right = np.array([0.0, 0, 100, 100]), np.array([300.0, 0, 100, 100])
  pts_l, pts_r = np.full((5, 2), 50.0), np.full((5, 2), 350.0)
  first = tracker.update([left, right], [pts_l, pts_r])
  assert [i for i, _ in first] == [0, 1]
  np.testing.assert_allclose(first[0][1], pts_l)  # a new track passes through
  # Next frame, faces given in the other order and moved a little: ids follow the boxes, and each
  # filter only sees its own face.
  second = tracker.update([right + 5, left + 5], [pts_r + 10, pts_l + 10])
  assert [i for i, _ in second] == [1, 0]
  a = smoothing.OneEuroFilter()
  a(pts_l, scale=100.0)
  np.testing.assert_allclose(second[1][1], a(pts_l + 10, scale=105.0))  # box size 105
  # A third face starts a new track; the right face, gone for more than 2 frames, ends.
  for _ in range(3):
    out = tracker.update([left, left + [600, 0, 0, 0]], [pts_l, pts_l + 600])
  assert [i for i, _ in out] == [0, 2]
  assert sorted(t.id for t in tracker.tracks) == [0, 2]
  back = tracker.update([right], [pts_r])
  assert back[0][0] == 3
  with pytest.raises(ValueError, match='boxes'):
    tracker.update([left], [])
  assert math.isclose(tracker.params['min_cutoff'], 1.0)


def _one_euro_step(x, x_prev, dx_prev, dt, min_cutoff, beta, d_cutoff, scale):
  """One step of Casiez et al.'s filter written out from the paper (not from the module)."""

  def smoothing_factor(fc):
    return (2 * math.pi * fc * dt) / (2 * math.pi * fc * dt + 1)  # = 1 / (1 + tau / dt)

  a_d = smoothing_factor(d_cutoff)
  dx = a_d * (x - x_prev) / dt + (1 - a_d) * dx_prev
  a = smoothing_factor(min_cutoff + beta * abs(dx) / scale)
  return a * x + (1 - a) * x_prev, dx


def test_distinct_cutoffs_hand_computed():
  # d_cutoff (4 Hz) differs from min_cutoff (0.5 Hz): the speed estimate uses the former, the
  # position the latter raised by beta · speed / scale. Samples at irregular times.
  params = dict(min_cutoff=0.5, beta=0.7, d_cutoff=4.0)
  f = smoothing.OneEuroFilter(**params, fps=10.0)
  samples = [(0.0, 0.0), (0.1, 2.0), (0.25, 2.5), (0.3, 1.0)]
  x_hat, dx_hat, t_prev = samples[0][1], 0.0, samples[0][0]
  assert float(f(np.array(x_hat), t=t_prev, scale=3.0)) == x_hat
  for t, x in samples[1:]:
    x_hat, dx_hat = _one_euro_step(x, x_hat, dx_hat, t - t_prev, **params, scale=3.0)
    t_prev = t
    assert float(f(np.array(x), t=t, scale=3.0)) == pytest.approx(x_hat, rel=1e-12)
  # The same with the cutoffs swapped gives other values: the test tells them apart.
  g = smoothing.OneEuroFilter(min_cutoff=4.0, beta=0.7, d_cutoff=0.5)
  outs = [float(g(np.array(x), t=t, scale=3.0)) for t, x in samples]
  assert abs(outs[-1] - x_hat) > 1e-3


def test_tracker_scale_is_the_geometric_mean_of_a_tall_box():
  # A 4 x 16 box: speed is divided by sqrt(4 · 16) = 8 face sizes, not by its width or height.
  params = dict(min_cutoff=1.0, beta=2.0, d_cutoff=1.0)
  tracker = smoothing.FaceTracker(**params, fps=30.0)
  box = [100.0, 100.0, 4.0, 16.0]
  p0 = np.array([[100.0, 110.0]])
  p1 = np.array([[103.0, 106.0]])
  tracker.update([box], [p0])
  ((_, got),) = tracker.update([box], [p1])
  want = [_one_euro_step(p1[0, k], p0[0, k], 0.0, 1 / 30, **params, scale=8.0)[0] for k in (0, 1)]
  np.testing.assert_allclose(got[0], want, rtol=1e-12)


def test_missed_track_ends_after_max_missed_frames():
  tracker = smoothing.FaceTracker(max_missed=2)
  box = [10.0, 10.0, 50.0, 50.0]
  pts = np.array([[20.0, 20.0]])
  ((first, _),) = tracker.update([box], [pts])
  counts = []
  for _ in range(3):
    tracker.update([], [])
    counts.append(len(tracker.tracks))
  assert counts == [1, 1, 0]  # missed 1 and 2 frames: kept; 3 > max_missed: dropped
  ((again, _),) = tracker.update([box], [pts])
  assert again == first + 1  # a new track
  tracker = smoothing.FaceTracker(max_missed=2)
  tracker.update([box], [pts])
  tracker.update([], [])
  tracker.update([], [])
  assert tracker.update([box], [pts])[0][0] == 0  # back after 2 missed frames: the same track


def test_match_at_the_iou_threshold():
  # IoU of (0, 0, 10, 10) and (0, 0, 10, 5) is exactly 50 / 100.
  a, b = np.array([[0.0, 0, 10, 10]]), np.array([[0.0, 0, 10, 5]])
  assert smoothing.match(a, b, 0.5) == [(0, 0)]
  assert smoothing.match(a, b, 0.5000001) == []
