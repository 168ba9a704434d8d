"""The device augmentation (fkd.data.device_augment): landmarks follow the pixels for every
transform, the parameter distributions of method.md §2.2, the host's operators, determinism by
(seed, step, index), the jnp ASM operator.

One formulation serves every backend (jnp gathers, element-wise ops, min / max), so these tests
check it on CPU; tests/integration/accelerator_test.py lowers it for tpu / cuda.
"""

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFilter

from fkd.data import asm, augment, crops, pipeline, schemes, testing
from fkd.data import device_augment as da

S = 64
PERM = (1, 0, 2, 3)  # points 0 and 1 are a mirror pair
POINTS = np.array([[20.0, 22.0], [44.0, 21.0], [31.0, 36.0], [30.0, 50.0]], np.float32)
COLOURS = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])  # tell the points apart


def _dots(points, size=S, values=COLOURS):
  """A black image with a 3x3 dot of its colour at each (integer-rounded) landmark."""
  img = np.zeros((size, size, 3), np.uint8)
  for (x, y), v in zip(np.round(points).astype(int), values, strict=True):
    img[y - 1 : y + 2, x - 1 : x + 2] = (255 * np.asarray(v)).astype(np.uint8)
  return img


def _params(n, *, flip=False, angle=0.0, jitter=(0.0, 0.0, 0.0, 0.0), plain=False):
  """Parameters as `draw` returns them (batch of n), with no photometric change."""
  full = lambda v, dtype: jnp.full((n,), v, dtype)
  return {
    'plain': full(plain, bool),
    'flip': full(flip, bool),
    'angle': full(angle, jnp.float32),
    'jitter': jnp.tile(jnp.asarray(jitter, jnp.float32), (n, 1)),
    'gamma': full(1.0, jnp.float32),
    'amount': full(0.0, jnp.float32),
    'salt': full(0.0, jnp.float32),
    'blur': full(False, bool),
    'noise': jax.vmap(jax.random.key_data)(jax.random.split(jax.random.key(0), n)),
  }


def _check_dots(image, points, flipped=None):
  """Every returned landmark inside the crop sits on a bright pixel of its own point's colour
  (its mirror pair's colour after a flip, the permutation applied)."""
  checked = 0
  for k, (x, y) in enumerate(np.asarray(points)):
    if not (1 <= x <= image.shape[1] - 2 and 1 <= y <= image.shape[0] - 2):
      continue
    c = image[int(round(y)), int(round(x))].astype(float) / 255.0
    assert c.max() > 0.3, (k, x, y, c)  # bright at the landmark
    got = int(np.argmin(np.linalg.norm(COLOURS * c.max() - c, axis=1)))
    want = PERM[k] if flipped else k
    if flipped is None:
      assert got in (k, PERM[k]), (k, got)
    else:
      assert got == want, (k, got, want)
    checked += 1
  return checked


@functools.cache
def _apply(aug):
  return jax.jit(lambda x, p, q: da.apply(x, p, q, aug))


@pytest.mark.parametrize(
  'transform',
  ['identity', 'flip', 'rotation', 'margin', 'box_noise', 'flip+rotation+box_noise'],
)
def test_landmarks_follow_each_transform(transform):
  """Dots at the landmarks; after each transform alone (and all together), the image is bright
  at the returned landmarks in the right colour, and the landmarks are those of the host's
  float64 `augment.geometry` for the same parameters."""
  margin = 9.0 if 'margin' in transform else 3.0
  kw = {}
  if 'flip' in transform:
    kw['flip'] = True
  if 'rotation' in transform:
    kw['angle'] = 0.4
  if 'box_noise' in transform:
    kw['jitter'] = (0.08, -0.05, 0.15, -0.1)
  aug = da.Augmentation('kd', PERM, margin=margin, photometric=False)
  img = _dots(POINTS)
  out, pts = _apply(aug)(img[None], POINTS[None], _params(1, **kw))
  out, pts = np.asarray(out[0]), np.asarray(pts[0])
  _, want = augment.geometry(
    POINTS,
    flip=kw.get('flip', False),
    angle=kw.get('angle', 0.0),
    margin=margin,
    width=S,
    size=S,
    flip_permutation=PERM,
    box_jitter=kw.get('jitter'),
  )
  np.testing.assert_allclose(pts, want, atol=2e-3)
  inside = np.sum(np.all((pts >= 1) & (pts <= S - 2), axis=1))
  assert inside >= 3 and _check_dots(out, pts, flipped=kw.get('flip', False)) == inside
  if transform == 'margin':  # extent ± 9 px of a 30-px-wide extent: a narrower face
    wide = np.asarray(_apply(da.Augmentation('kd', PERM, photometric=False))(
      img[None], POINTS[None], _params(1)
    )[1][0])  # fmt: skip
    assert np.ptp(pts[:, 0]) < np.ptp(wide[:, 0]) - 5


def test_flip_mode_mirrors_exactly_with_the_permutation():
  aug = da.Augmentation('flip', PERM)
  img = _dots(POINTS)
  out, pts = _apply(aug)(img[None], POINTS[None], _params(1, flip=True))
  out, pts = np.asarray(out[0]), np.asarray(pts[0])
  np.testing.assert_array_equal(out, img[:, ::-1])
  np.testing.assert_allclose(pts[0], [S - 1 - 44.0, 21.0])  # point 1, mirrored
  np.testing.assert_allclose(pts[2], [S - 1 - 31.0, 36.0])
  assert _check_dots(out, pts, flipped=True) == 4


@pytest.mark.parametrize('mode', ['kd', 'flip'])
def test_drawn_augmentations_keep_landmarks_on_the_dots(mode):
  """Random draws (flip, rotation, jittered box) of a batch: bright at every landmark."""
  aug = da.Augmentation(
    mode, PERM, margin=4.0, box_noise=(0.05, 0.05, 0.1, 0.1) if mode == 'kd' else (),
    photometric=False,
  )  # fmt: skip
  n = 12
  batch = {
    'image': np.repeat(_dots(POINTS)[None], n, 0),
    'landmarks': np.repeat(POINTS[None], n, 0),
    'plain_prob': np.zeros(n, np.float32),
    'index': np.arange(n, dtype=np.int32),
  }
  out = jax.jit(da.make_augment(aug))(batch, 3, 5)
  params = jax.vmap(lambda k: da.draw(k, 0.0, aug))(da.example_keys(3, 5, batch['index']))
  flips = np.asarray(params['flip'])
  assert 0 < flips.sum() < n  # both kinds in the batch
  checked = 0
  for i in range(n):
    checked += _check_dots(np.asarray(out['image'][i]), out['landmarks'][i], flipped=flips[i])
  assert checked >= 3 * n


def test_warp_matches_the_host_warp_on_a_smooth_image():
  """Tolerance: PIL rounds its bilinear sums its own way; on a smooth image the two differ by
  at most 1 grey level per value, 0.6 on average."""
  yy, xx = np.mgrid[:S, :S]
  wave = np.sin(xx / 7.0)[..., None] * np.cos(yy / 9.0)[..., None] * np.array([1, 0.5, -0.7])
  img = (127 + 100 * wave).astype(np.uint8)
  for angle, flip in ((0.3, True), (-0.45, False)):
    a, _ = augment.geometry(
      POINTS, flip=flip, angle=angle, margin=3.0, width=S, size=S, flip_permutation=PERM
    )
    host = np.asarray(crops.warp(Image.fromarray(img), a, S)).astype(float)
    dev = np.round(np.asarray(da.warp(jnp.asarray(img, jnp.float32), jnp.asarray(a), S)))
    diff = np.abs(host - dev)
    assert diff.mean() < 0.6 and diff.max() <= 1.0, (diff.mean(), diff.max())


def test_warp_is_black_outside_the_source():
  img = np.full((S, S, 3), 200, np.float32)
  shift = np.array([[1.0, 0.0, 20.0], [0.0, 1.0, 0.0]], np.float32)  # content moves right
  out = np.asarray(da.warp(jnp.asarray(img), jnp.asarray(shift), S))
  np.testing.assert_array_equal(out[:, :20], 0.0)
  np.testing.assert_allclose(out[:, 20:], 200.0)


def test_median_blur_is_pils_median_filter():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (37, 41, 3)).astype(np.uint8)
  img[5:9, 5:30] = 255  # structure as well as noise
  want = np.asarray(Image.fromarray(img).filter(ImageFilter.MedianFilter(5)))
  np.testing.assert_array_equal(np.asarray(jax.jit(da.median_blur)(jnp.asarray(img))), want)


def test_gamma_is_the_host_lookup_table():
  values = np.arange(256, dtype=np.uint8)
  for g in (0.3, 0.55, 0.8, 1.5, 2.2, 3.5):
    want = augment._gamma(values, g).astype(float)
    got = np.asarray(da.gamma(jnp.asarray(values, jnp.float32), jnp.float32(g)))
    assert np.abs(got - want).max() <= 1.0 and np.mean(got == want) > 0.99, g


def test_photometric_is_the_host_order():
  """Gamma then 5x5 median (no noise) as the host does them, though the device applies gamma
  last (it commutes with the median)."""
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (1, S, S, 3)).astype(np.uint8)
  aug = da.Augmentation('kd', PERM, photometric=True)
  params = _params(1)
  params.update(gamma=jnp.full((1,), 0.5), blur=jnp.ones((1,), bool))
  # The geometry of a zero angle and a box of the whole image: a near-identity warp.
  pts = np.array([[[-0.5 + 3, -0.5 + 3], [S - 0.5 - 3, S - 0.5 - 3]]], np.float32)
  aug = da.Augmentation('kd', (1, 0), margin=3.0)
  out, _ = _apply(aug)(img, pts, params)
  warped, _ = _apply(da.Augmentation('kd', (1, 0), margin=3.0, photometric=False))(img, pts, params)
  warped = np.asarray(warped[0])
  want = np.asarray(
    Image.fromarray(augment._gamma(warped, 0.5)).filter(ImageFilter.MedianFilter(5))
  )
  diff = np.abs(np.asarray(out[0]).astype(int) - want)
  assert diff.max() <= 1 and np.mean(diff == 0) > 0.99


def test_salt_and_pepper_rates():
  img = jnp.full((200, 200, 3), 128.0)
  n = img.size
  for amount, salt in ((0.1, 0.1), (0.04, 0.5)):
    out = np.asarray(da.salt_and_pepper(img, jax.random.key(2), amount, salt))
    for value, p in ((255, amount * salt), (0, amount * (1 - salt))):
      got = np.mean(out == value)
      assert abs(got - p) < 5 * np.sqrt(p * (1 - p) / n), (amount, salt, value, got, p)
    assert np.all((out == 0) | (out == 255) | (out == 128))


def _within(p_hat, p, n, z=4.5):
  return abs(p_hat - p) < z * np.sqrt(p * (1 - p) / n)


def test_parameter_distributions():
  """Over many draws: the probabilities and ranges of method.md §2.2 (binomial / uniform
  standard errors, 4.5 of them)."""
  n = 20000
  aug = da.Augmentation('kd', PERM, box_noise=(0.1, 0.2, 0.3, 0.4))
  keys = da.example_keys(0, 7, jnp.arange(n))
  plain_prob = 1.0 / 6
  p = jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: da.draw(k, plain_prob, aug)))(keys))
  assert _within(p['plain'].mean(), 1 / 6, n)
  assert _within(p['flip'].mean(), 0.5, n)
  a = p['angle']
  assert a.min() >= -0.5 and a.max() <= 0.5 and a.min() < -0.49 and a.max() > 0.49
  assert abs(a.mean()) < 4.5 * np.sqrt(1 / 12 / n)  # U(-0.5, 0.5): variance 1/12
  assert _within(np.mean(a < -0.25), 0.25, n) and _within(np.mean(a > 0.4), 0.1, n)
  sd = p['jitter'].std(axis=0)
  np.testing.assert_allclose(sd, aug.box_noise, rtol=4.5 / np.sqrt(2 * n))
  assert np.all(np.abs(p['jitter'].mean(axis=0)) < 4.5 * np.asarray(aug.box_noise) / np.sqrt(n))
  g = p['gamma']
  applied = g != 1.0
  assert _within(applied.mean(), 2 / 3, n)
  low = (g >= 0.3) & (g <= 0.8)
  high = (g >= 1.5) & (g <= 3.5)
  assert np.all(low | high | ~applied)
  assert _within(low[applied].mean(), 2 / 3, applied.sum())
  for sel, lo, hi in ((low, 0.3, 0.8), (high, 1.5, 3.5)):
    m = sel.sum()
    assert abs(g[sel].mean() - (lo + hi) / 2) < 4.5 * (hi - lo) * np.sqrt(1 / 12 / m)
    assert _within(np.mean(g[sel] < lo + (hi - lo) / 4), 0.25, m)
  heavy = (p['amount'] == 0.1) & (p['salt'] == 0.1)
  mild = (p['amount'] == 0.04) & (p['salt'] == 0.5)
  none = (p['amount'] == 0.0) & (p['salt'] == 0.0)
  assert np.all(heavy | mild | none)
  assert _within(heavy.mean(), 1 / 9, n) and _within(mild.mean(), 2 / 9, n)
  assert _within(p['blur'].mean(), 0.5, n)
  # Draws are independent of each other: flip and blur, gamma and noise.
  assert _within(np.mean(p['flip'] & p['blur']), 0.25, n)
  assert _within(np.mean(applied & none), 2 / 3 * 6 / 9, n)


def test_distributions_per_face_and_mode():
  n = 6000
  keys = da.example_keys(1, 0, jnp.arange(n))
  draw = lambda aug, pp: jax.tree.map(
    np.asarray, jax.vmap(lambda k, q: da.draw(k, q, aug))(keys, pp)
  )
  # Per-face 1/F (WFLW attribute extras): each face its own plain probability.
  pp = np.where(np.arange(n) % 2 == 0, 1 / 5, 1 / 33).astype(np.float32)
  p = draw(da.Augmentation('kd', PERM), jnp.asarray(pp))
  assert _within(p['plain'][::2].mean(), 1 / 5, n // 2)
  assert _within(p['plain'][1::2].mean(), 1 / 33, n // 2)
  assert not np.any(p['jitter'])  # no box_noise: no jitter
  assert not draw(da.Augmentation('kd', PERM, can_flip=False), jnp.zeros(n))['flip'].any()
  p = draw(da.Augmentation('flip', PERM), jnp.full(n, 0.5))
  assert not p['plain'].any() and _within(p['flip'].mean(), 0.5, n)


def _batch(n=8, size=S):
  faces = [testing.render(i, size) for i in range(n)]
  return {
    'image': np.stack([f[0] for f in faces]),
    'landmarks': np.stack([f[1] for f in faces]).astype(np.float32),
    'plain_prob': np.full(n, 0.2, np.float32),
    'index': np.arange(n, dtype=np.int32),
  }


@functools.cache
def _augment(aug, pca=None):
  return jax.jit(da.make_augment(aug, pca))


AUG = da.Augmentation('kd', tuple(schemes.SCHEMES['300w'].flip_permutation), margin=1.0)


def test_a_face_depends_on_seed_step_and_its_index_only():
  batch = _batch()
  fn = _augment(AUG)
  a, b = fn(batch, 0, 3), fn(batch, 0, 3)
  for k in ('image', 'landmarks'):
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['landmarks'], fn(batch, 0, 4)['landmarks'])
  assert not np.array_equal(a['landmarks'], fn(batch, 1, 3)['landmarks'])
  # The same faces in another order, with two zero padding rows: each face as before.
  order = np.array([5, 2, 7, 0, 1, 3, 6, 4])
  other = {k: np.concatenate([v[order], np.zeros_like(v[:2])]) for k, v in batch.items()}
  c = fn(other, 0, 3)
  for k in ('image', 'landmarks'):
    np.testing.assert_array_equal(np.asarray(c[k])[:8], np.asarray(a[k])[order])
  plain = np.asarray(a['image']) == batch['image']
  assert 0 < plain.all(axis=(1, 2, 3)).sum() < 8  # plain (1/5) and augmented faces both


def test_plain_faces_and_mode_none_are_unchanged():
  batch = _batch(4)
  for aug, prob in ((AUG, 1.0), (da.Augmentation('none', AUG.flip_permutation), 0.0)):
    out = _augment(aug)({**batch, 'plain_prob': np.full(4, prob, np.float32)}, 0, 0)
    np.testing.assert_array_equal(out['image'], batch['image'])
    np.testing.assert_array_equal(out['landmarks'], batch['landmarks'])


def test_other_keys_pass_through_and_inputs_are_consumed():
  batch = _batch(4)
  weight = np.array([1, 1, 1, 0], np.float32)
  labelled = np.random.default_rng(0).random((4, 68)) < 0.5
  out = _augment(AUG)({**batch, 'weight': weight, 'labelled': labelled}, 0, 1)
  assert set(out) == {'image', 'landmarks', 'weight', 'labelled'}
  np.testing.assert_array_equal(out['weight'], weight)
  # The per-point mask is re-indexed where the face was flipped (and not left plain).
  keys = da.example_keys(0, 1, jnp.asarray(batch['index']))
  params = jax.vmap(lambda k, p: da.draw(k, p, AUG))(keys, jnp.asarray(batch['plain_prob']))
  flipped = np.asarray(params['flip'] & ~params['plain'])
  perm = list(AUG.flip_permutation)
  want = np.where(flipped[:, None], labelled[:, perm], labelled)
  np.testing.assert_array_equal(out['labelled'], want)
  assert out['image'].dtype == jnp.uint8 and out['landmarks'].dtype == jnp.float32


def test_asm_project_matches_numpy():
  rng = np.random.default_rng(0)
  shapes = rng.normal(0, 4, (200, 68, 2)) + np.stack(
    [np.linspace(20, 200, 68), np.sin(np.arange(68)) * 50 + 112], 1
  )
  pca = asm.fit_pca(shapes, acc=0.9)
  probe = (shapes[:16] + rng.normal(0, 30, (16, 68, 2))).astype(np.float32)  # some clipped
  want = asm.asm_project(pca, probe.astype(np.float64))
  got = np.asarray(jax.jit(lambda x: da.asm_project(pca, x))(probe))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # In the batch: the soft landmarks of the augmented landmarks.
  out = _augment(AUG, pca)(_batch(4), 0, 2)
  np.testing.assert_allclose(
    out['soft_landmarks'], asm.asm_project(pca, np.asarray(out['landmarks'], np.float64)),
    atol=1e-4,
  )  # fmt: skip


def _data(n=8, size=S, scheme='300w', attributes=None):
  b = _batch(n, size)
  split = pipeline.Split(b['image'], b['landmarks'], None, [str(i) for i in range(n)], attributes)
  perm = np.asarray(schemes.SCHEMES['300w'].flip_permutation)
  return pipeline.Data('t', {'train': split}, size, 68, perm, None, scheme)


def test_train_batch_on_device_ships_the_stored_crops():
  attrs = np.zeros((8, 6), bool)
  attrs[::2, 0] = True  # pose: 5 + 20 copies
  data = _data(scheme='wflw', attributes=attrs)
  split = data.splits['train'] = dataclasses.replace(
    data.splits['train'], shards=range(1, 2), num_shards=2
  )  # process 1's shard of 2
  host = pipeline.train_batch(data, 'train', 4, 1, 0, 'kd', 1, 2, augment_on='device')
  assert set(host) == {'image', 'landmarks', 'plain_prob', 'index'}
  idx = pipeline._batch_indices(split, 4, 0, 0, 1)
  np.testing.assert_array_equal(host['image'], split.images[idx])  # the stored crops, raw
  np.testing.assert_array_equal(host['landmarks'], split.landmarks[idx])
  np.testing.assert_array_equal(host['index'], [2, 3])  # its place in the global batch
  np.testing.assert_allclose(host['plain_prob'], np.where(idx % 2 == 0, 1 / 25, 1 / 5), rtol=1e-6)
  aug = pipeline.device_augmentation(data, 'kd', (0.1, 0.1, 0.1, 0.1))
  assert aug.margin == 3.0 * S / 224 and aug.box_noise == (0.1,) * 4 and aug.mode == 'kd'
  with pytest.raises(pipeline.FkdError, match='augment_on'):
    pipeline.train_batch(data, 'train', 4, 1, 0, 'kd', 1, 2, augment_on='gpu')


def test_num_copies_each_and_the_config_check():
  attrs = np.array([[1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  want = [augment.num_copies('wflw', a) for a in attrs]
  np.testing.assert_array_equal(augment.num_copies_each('wflw', attrs, 3), want)
  np.testing.assert_array_equal(augment.num_copies_each('cofw', None, 2), [10, 10])
  from fkd import config_lib, models
  from fkd.infra import config_check

  config = config_lib.load(str(pathlib.Path(__file__).parents[2] / 'configs' / 'kd.py'), 'tiny')
  assert config.data.augment_on == 'auto'
  config.data.augment_on = 'gpu'
  with pytest.raises(pipeline.FkdError, match='data.augment_on'):
    config_check.check(config, 1, models.model_names())


def test_auto_is_the_device_on_an_accelerator_and_the_host_on_cpu():
  """'auto' (the default) resolves by the platform: the device on TPU / GPU, the host on CPU
  (where the "device" is the same cores); explicit choices stay; anything else is refused."""
  from fkd.models import layers
  from fkd.training import trainer

  for platform, want in (('cpu', 'host'), ('tpu', 'device'), ('cuda', 'device')):
    with layers.target_platform(platform):
      assert trainer.resolve_augment_on('auto') == want, platform
      assert trainer.resolve_augment_on('device') == 'device'
      assert trainer.resolve_augment_on('host') == 'host'
  with pytest.raises(pipeline.FkdError, match='augment_on'):
    trainer.resolve_augment_on('gpu')
