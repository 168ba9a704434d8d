"""KD-Loss augmentation (fkd.data.augment): geometry follows the pixels, determinism, copies."""

import numpy as np
import pytest

from fkd.data import augment, schemes, testing

S = 64
PERM = [1, 0, 2, 3]  # points 0 and 1 are a mirror pair
POINTS = np.array([[20.0, 22.0], [44.0, 21.0], [31.0, 36.0], [30.0, 50.0]])


def _blobs(points, size=S, sigma=1.6, values=None):
  yy, xx = np.mgrid[:size, :size]
  img = np.zeros((size, size, 3), np.float64)
  for k, (x, y) in enumerate(points):
    v = np.ones(3) if values is None else values[k]
    img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))[..., None] * v
  return np.clip(255 * img, 0, 255).astype(np.uint8)


def _centroid(img, p, r=4.0):
  yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
  w = img.astype(np.float64).sum(-1) * (((xx - p[0]) ** 2 + (yy - p[1]) ** 2) < r * r)
  return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()


@pytest.mark.parametrize('seed', range(6))
def test_landmarks_move_with_the_pixels(seed):
  colours = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])  # tell points apart
  img = _blobs(POINTS, values=colours)
  out, pts = augment.augment_kd(
    img, POINTS, np.random.default_rng(seed), PERM, photometric_noise=False
  )
  assert out.shape == img.shape and out.dtype == np.uint8 and pts.dtype == np.float32
  seen = []
  for p in pts:
    assert np.abs(_centroid(out, p) - p).max() < 0.35, seed
    c = out[int(round(p[1])), int(round(p[0]))] / 255.0
    seen.append(int(np.argmin(np.linalg.norm(colours * c.max() - c, axis=1))))
  # Output point k shows original point k, or point PERM[k] when the copy was flipped.
  assert seen in (list(range(4)), PERM), seen
  # The re-crop is the rotated landmark extent ± 3 px: extremes sit 3 (scaled) px inside.
  assert pts.min() > 0 and pts.max() < S - 1


def test_flip_uses_the_permutation():
  img = _blobs(POINTS)
  rng = np.random.default_rng(0)
  out, pts = augment.augment_kd(
    img, POINTS, rng, PERM, flip_prob=1.0, max_angle=0.0, photometric_noise=False
  )
  # After a flip point 0 (image-left) is the mirrored point 1: still left of point 1.
  assert pts[0, 0] < pts[1, 0]
  a, _ = augment.geometry(
    POINTS, flip=True, angle=0.0, margin=3.0, width=S, size=S, flip_permutation=PERM
  )
  assert a[0, 0] < 0  # a mirror
  for p in pts:
    assert np.abs(_centroid(out, p) - p).max() < 0.35


def test_deterministic_for_a_seed():
  img, lm = testing.render(3, S)
  perm = schemes.SCHEMES['300w'].flip_permutation
  a = augment.augment_kd(img, lm, np.random.default_rng(11), perm, plain_prob=0.2)
  b = augment.augment_kd(img, lm, np.random.default_rng(11), perm, plain_prob=0.2)
  c = augment.augment_kd(img, lm, np.random.default_rng(12), perm, plain_prob=0.2)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])
  plain = augment.augment_kd(img, lm, np.random.default_rng(0), perm, plain_prob=1.0)
  np.testing.assert_array_equal(plain[0], img)


def test_photometric_statistics():
  img = np.full((32, 32, 3), 128, np.uint8)
  outs = [augment.photometric(img, np.random.default_rng(s)) for s in range(300)]
  assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
  changed = np.mean([not np.array_equal(o, img) for o in outs])
  assert 0.6 < changed < 0.95  # gamma 2/3, noise 1/3 (blur of a flat image is a no-op)
  dark = augment._gamma(np.arange(256, dtype=np.uint8), 2.0)
  assert dark[0] == 0 and dark[255] == 255 and np.all(np.diff(dark.astype(int)) >= 0)


def test_augment_shape_copies_and_margins():
  _, lm = testing.render(5, 200)
  perm = schemes.SCHEMES['300w'].flip_permutation
  shapes = augment.augment_shape(
    lm,
    np.random.default_rng(0),
    copies=5,
    width=200,
    size=S,
    flip_permutation=perm,
    margin=augment.margin_fn('300w'),
  )
  assert shapes.shape == (5, 68, 2)
  x = shapes[..., 0]
  assert (x[0, 36] < x[0, 45]) and (x[1, 36] < x[1, 45])  # flip re-indexes: left stays left
  lo, hi = shapes.min(1), shapes.max(1)
  assert np.all(lo > 0) and np.all(hi < S - 1) and np.all(hi - lo > S - 10)
  assert augment.num_copies('wflw', [1, 0, 0, 0, 1, 0]) == 5 + 20 + 8
  assert augment.num_copies('cofw') == 10 and augment.num_copies('300w') == 6
  m = augment.margin_fn('cofw', image_height=104)
  assert all(
    0.005 * 1000 + 5 <= m(np.random.default_rng(s)) <= 0.005 * 1000 + 10 for s in range(20)
  )


def test_box_jitter_moves_and_scales_the_landmark_box():
  # POINTS span x 20..44 (w 24), y 21..50 (h 29). Jitter: centre +¼ w in x, width ×2, so the
  # cropped box is x 14..62 (centre 38, half 24) and y 21..50; a box edge L..R maps onto the
  # crop's −½..S−½: x_crop = (x − L)·S/(R − L) − ½.
  jitter = (0.25, 0.0, np.log(2.0), 0.0)
  _, pts = augment.geometry(
    POINTS, flip=False, angle=0.0, margin=0.0, width=S, size=S, flip_permutation=PERM,
    box_jitter=jitter,
  )  # fmt: skip
  want_x = (POINTS[:, 0] - 14.0) * S / 48.0 - 0.5
  want_y = (POINTS[:, 1] - 21.0) * S / 29.0 - 0.5
  np.testing.assert_allclose(pts, np.stack([want_x, want_y], 1), atol=1e-4)
  _, exact = augment.geometry(
    POINTS, flip=False, angle=0.0, margin=0.0, width=S, size=S, flip_permutation=PERM
  )
  np.testing.assert_allclose(exact[:, 0], (POINTS[:, 0] - 20.0) * S / 24.0 - 0.5, atol=1e-4)


@pytest.mark.parametrize('seed', range(3))
def test_box_noise_keeps_landmarks_on_the_pixels(seed):
  img = _blobs(POINTS)
  noise = (0.06, 0.05, 0.1, 0.1)
  out, pts = augment.augment_kd(
    img, POINTS, np.random.default_rng(seed), PERM, photometric_noise=False, box_noise=noise
  )
  _, plain = augment.augment_kd(
    img, POINTS, np.random.default_rng(seed), PERM, photometric_noise=False
  )
  assert np.abs(pts - plain).max() > 0.5  # the box moved
  for p in pts:
    if 2 < p[0] < S - 3 and 2 < p[1] < S - 3:
      assert np.abs(_centroid(out, p) - p).max() < 0.35, seed


def test_box_noise_needs_kd_augmentation():
  from fkd.data import pipeline
  from fkd.errors import FkdError

  for mode, noise in (('flip', (0.1, 0.1, 0.1, 0.1)), ('kd', (0.1, 0.1)), ('kd', (-1, 0, 0, 0))):
    with pytest.raises(FkdError, match='box_noise needs'):
      pipeline.train_batch(None, 'train', 4, 0, 0, mode, box_noise=noise)


def test_cofw_margin_draws_every_value_from_5_to_10():
  m = augment.margin_fn('cofw', image_height=104)  # 0.005 · (104 + 2 · 448) = 5 px
  got = {m(np.random.default_rng(s)) for s in range(300)}
  assert got == {5.0 + k for k in range(5, 11)}
  assert augment.margin_fn('300w')(np.random.default_rng(0)) == 3.0


def test_plain_flip_moves_the_pixels_with_the_landmarks():
  # Marks at the landmarks (rows differ, so a flip of the wrong axis shows).
  img = _blobs(POINTS)
  from fkd.data import pipeline

  out, pts = pipeline._flip(img[None], POINTS[None], PERM, S)  # the 'flip' augmentation
  out, pts = out[0], pts[0]
  # x ↦ S − 1 − x, then re-indexed: output point 0 is input point 1 mirrored.
  np.testing.assert_allclose(pts[0], [S - 1 - 44.0, 21.0])
  np.testing.assert_allclose(pts[2], [S - 1 - 31.0, 36.0])
  for p in pts:
    assert np.abs(_centroid(out, p) - p).max() < 0.05


@pytest.mark.parametrize('flip_prob', [0.0, 1.0])
def test_flip_probability_zero_and_one(flip_prob):
  img = _blobs(POINTS)
  _, pts = augment.augment_kd(
    img,
    POINTS,
    np.random.default_rng(3),
    PERM,
    flip_prob=flip_prob,
    max_angle=0.0,
    photometric_noise=False,
  )
  _, want = augment.geometry(
    POINTS, flip=flip_prob == 1.0, angle=0.0, margin=3.0, width=S, size=S, flip_permutation=PERM
  )
  np.testing.assert_allclose(pts, want, atol=1e-5)
  # Mirrored, point 0 is the old point 1, which sat a pixel higher than point 0.
  assert (pts[0, 1] < pts[1, 1]) == (flip_prob == 1.0)
