"""config.data.augment_fill (fkd.data.augment.FILLS): what the KD augmentation's warp shows past
the stored crop. 'reflect' mirrors the crop at its edges (edge pixel not repeated), host and device
alike; 'context' samples the face's context image (its real surroundings; mirrored past its own
edge); 'zeros' (the default) keeps the batches of the code before the option existed."""

import dataclasses
import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.data import augment, pipeline, schemes, testing
from fkd.data import device_augment as da
from fkd.errors import FkdError

N = 6  # the hand-value image: N x N, pixel (y, x) of channel c holds 10 y + x + 100 c


def _ramp() -> np.ndarray:
  yy, xx = np.mgrid[:N, :N]
  return np.stack([10 * yy + xx + 100 * c for c in range(3)], -1).astype(np.uint8)


# Output pixel j of a crop moved by k whole pixels reads source pixel j + k; past an edge numpy's
# 'reflect' mirrors about the edge pixel (−1 -> 1, −2 -> 2, N -> N − 2, N + 1 -> N − 3), written
# out here by hand for N = 6.
SOURCE_INDEX = {
  -2: [2, 1, 0, 1, 2, 3],  # the crop 2 px left of / above the image
  -3: [3, 2, 1, 0, 1, 2],  # 3 px: the whole padding (size // 2)
  2: [2, 3, 4, 5, 4, 3],  # 2 px right of / below it
}


def _landmarks(k: int) -> np.ndarray:
  """Two landmarks whose box (margin 0) is the image moved by k: the crop affine x -> x − k."""
  return np.array([[k - 0.5, k - 0.5], [N + k - 0.5, N + k - 0.5]], np.float32)


def _translated(image: np.ndarray, k: int, fill: str) -> tuple[np.ndarray, np.ndarray]:
  """augment_kd without rotation, flip, plain copies or noise: a pure translation by k."""
  return augment.augment_kd(
    image,
    _landmarks(k),
    np.random.default_rng(0),
    (0, 1),
    margin=0.0,
    max_angle=0.0,
    flip_prob=0.0,
    photometric_noise=False,
    fill=fill,
  )


# `device_augment.draw`'s parameters of one face, no rotation, flip, jitter or photometric change.
_PARAMS = {
  'plain': jnp.zeros(1, bool),
  'flip': jnp.zeros(1, bool),
  'angle': jnp.zeros(1),
  'jitter': jnp.zeros((1, 4)),
}


@pytest.mark.parametrize('k', sorted(SOURCE_INDEX))
def test_reflect_mirrors_the_crop_without_repeating_the_edge(k):
  img = _ramp()
  idx = SOURCE_INDEX[k]
  want = img[idx][:, idx]  # rows and columns alike: the translation is diagonal
  out, pts = _translated(img, k, 'reflect')
  np.testing.assert_array_equal(out, want)
  np.testing.assert_allclose(pts, [[-0.5, -0.5], [N - 0.5, N - 0.5]], atol=1e-5)
  a = np.array([[1.0, 0.0, -k], [0.0, 1.0, -k]])
  device = da.warp(jnp.asarray(img, jnp.float32), jnp.asarray(a, jnp.float32), N, 'reflect')
  np.testing.assert_array_equal(np.asarray(device), want)
  aug = da.Augmentation('kd', (0, 1), margin=0.0, photometric=False, fill='reflect')
  batch = jax.jit(lambda x, p, q: da.apply(x, p, q, aug))(img[None], _landmarks(k)[None], _PARAMS)
  np.testing.assert_array_equal(np.asarray(batch[0][0]), want)  # the batched program's warp
  # 'zeros': black where the source index leaves the image, the same pixels elsewhere.
  inside = (np.arange(N) + k >= 0) & (np.arange(N) + k < N)
  zeros = np.where((inside[:, None] & inside[None, :])[..., None], want, 0)
  np.testing.assert_array_equal(_translated(img, k, 'zeros')[0], zeros)
  device = da.warp(jnp.asarray(img, jnp.float32), jnp.asarray(a, jnp.float32), N)
  np.testing.assert_array_equal(np.asarray(device), zeros)


def test_reflect_keeps_the_random_stream_and_the_landmarks():
  img = testing.render(3, 48)[0]
  pts = testing.render(3, 48)[1]
  perm = schemes.SCHEMES['300w'].flip_permutation
  noise = (0.1, 0.1, 0.2, 0.2)
  for seed in range(4):
    rngs = [np.random.default_rng(seed) for _ in range(2)]
    z = augment.augment_kd_flipped(img, pts, rngs[0], perm, box_noise=noise)
    r = augment.augment_kd_flipped(img, pts, rngs[1], perm, box_noise=noise, fill='reflect')
    np.testing.assert_array_equal(z[1], r[1])
    assert z[2] == r[2] and rngs[0].random() == rngs[1].random()


def _data(n: int = 8, size: int = 48) -> pipeline.Data:
  faces = [testing.render(i, size) for i in range(n)]
  images = np.stack([f[0] for f in faces])
  points = np.stack([f[1] for f in faces]).astype(np.float32)
  split = pipeline.Split(images, points, None, [str(i) for i in range(n)], None)
  perm = np.asarray(schemes.SCHEMES['300w'].flip_permutation)
  return pipeline.Data('t', {'train': split}, size, 68, perm, None, '300w')


# sha256 (first 16 hex digits) of three host 'kd' batches of `_data`, computed with the code of
# c7737c9 (before augment_fill existed): without and with box noise.
BEFORE = {(): '7af8618070ecf4e1', (0.06, 0.05, 0.1, 0.1): '35626fbf3dfa1b44'}


@pytest.mark.parametrize('noise', sorted(BEFORE))
def test_zeros_gives_the_batches_of_before(noise):
  data = _data()
  digests = {}
  for kw in ({}, {'augment_fill': 'zeros'}, {'augment_fill': 'reflect'}):
    h = hashlib.sha256()
    for step in range(3):
      b = pipeline.train_batch(data, 'train', 4, step, 7, 'kd', box_noise=noise, **kw)
      h.update(b['image'].tobytes())
      h.update(b['landmarks'].tobytes())
    digests[kw.get('augment_fill')] = h.hexdigest()[:16]
  assert digests[None] == digests['zeros'] == BEFORE[noise]
  assert digests['reflect'] != BEFORE[noise]  # the option reaches the warp


def test_a_bad_value_is_a_one_line_error():
  from fkd import config_lib, models
  from fkd.infra import config_check

  message = "config.data.augment_fill must be one of zeros, reflect, context, got 'mirror'"
  checks = [
    lambda: pipeline.train_batch(None, 'train', 4, 0, 0, 'kd', augment_fill='mirror'),
    lambda: da.Augmentation('kd', (0, 1), fill='mirror'),
    lambda: augment.augment_kd(_ramp(), _landmarks(0), np.random.default_rng(0), (0, 1),
                               fill='mirror'),
  ]  # fmt: skip
  config = config_lib.load(str(pathlib.Path(__file__).parents[2] / 'configs' / 'kd.py'), 'tiny')
  assert config.data.augment_fill == 'zeros'
  config_check.check(config, 1, models.model_names())
  config.data.augment_fill = 'mirror'
  checks.append(lambda: config_check.check(config, 1, models.model_names()))
  for check in checks:
    with pytest.raises(FkdError) as e:
      check()
    assert str(e.value) == message
  needs = r"augment_fill='reflect' needs config.data.augment='kd'"
  with pytest.raises(FkdError, match=needs):
    pipeline.train_batch(None, 'train', 4, 0, 0, 'flip', augment_fill='reflect')
  config.data.augment, config.data.augment_fill = 'kd', 'reflect'
  config_check.check(config, 1, models.model_names())
  config.data.augment = 'flip'
  with pytest.raises(FkdError, match=needs):  # before anything trains
    config_check.check(config, 1, models.model_names())


@pytest.mark.parametrize(
  'angle, flip, jitter',
  [(0.45, False, (0.3, -0.25, 0.9, 0.8)), (-0.5, True, (-0.3, 0.3, 1.0, 0.7))],
)
def test_device_reflect_matches_the_host(angle, flip, jitter):
  """Rotations and box jitter that reach well past the crop (checked): the device warp is the
  host's within 1 grey level (PIL rounds its bilinear sums its own way), in the mirrored band
  too, and both differ from 'zeros' there."""
  s = 48
  img, pts = testing.render(5, s)
  perm = schemes.SCHEMES['300w'].flip_permutation
  a, _ = augment.geometry(
    pts, flip=flip, angle=angle, margin=3.0, width=s, size=s, flip_permutation=perm,
    box_jitter=jitter,
  )  # fmt: skip
  inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2]
  yy, xx = np.mgrid[:s, :s]
  src = np.stack([xx, yy], -1) @ inv[:, :2].T + inv[:, 2]
  outside = np.any((src < -0.5) | (src > s - 0.5), axis=-1)
  pad = s // 2
  assert outside.mean() > 0.15 and src.min() > -pad and src.max() < s - 1 + pad  # within the pad
  host = augment.warp(img, a, s, 'reflect').astype(float)
  dev = np.round(np.asarray(da.warp(jnp.asarray(img, jnp.float32), jnp.asarray(a), s, 'reflect')))
  diff = np.abs(host - dev)
  assert diff.max() <= 1.0 and diff.mean() < 0.6, (diff.max(), diff.mean())
  assert host[outside].mean() > 20  # image content, not black
  np.testing.assert_array_equal(augment.warp(img, a, s)[outside], 0)


def _context_ramp() -> np.ndarray:
  """A 2N x 2N context image (the crop box doubled): pixel (y, x) of channel c holds
  12 y + x + 100 c (c < 2), or 200 − y − x (c = 2)."""
  yy, xx = np.mgrid[: 2 * N, : 2 * N]
  return np.stack([12 * yy + xx, 12 * yy + xx + 100, 200 - yy - xx], -1).astype(np.uint8)


# Output pixel j of the crop moved by k reads context pixel j + k + N / 2 (the crop sits at
# N / 2 = 3 in its context image); past the context's edge numpy's 'reflect' mirrors about the edge
# pixel (−1 -> 1, −2 -> 2, 2N -> 2N − 2), written out by hand for N = 6.
CONTEXT_INDEX = {
  -2: [1, 2, 3, 4, 5, 6],  # 2 px left of / above the crop: real surroundings, no mirror
  -3: [0, 1, 2, 3, 4, 5],  # the context's own edge
  -5: [2, 1, 0, 1, 2, 3],  # past it: mirrored
  3: [6, 7, 8, 9, 10, 11],
  4: [7, 8, 9, 10, 11, 10],
}


@pytest.mark.parametrize('k', sorted(CONTEXT_INDEX))
def test_context_samples_the_real_surroundings(k):
  ctx = _context_ramp()
  crop = ctx[N // 2 : N // 2 + N, N // 2 : N // 2 + N].copy()  # the stored crop inside it
  idx = CONTEXT_INDEX[k]
  want = ctx[idx][:, idx]
  out, pts = augment.augment_kd(
    crop, _landmarks(k), np.random.default_rng(0), (0, 1), margin=0.0, max_angle=0.0,
    flip_prob=0.0, photometric_noise=False, fill='context', context=ctx,
  )  # fmt: skip
  np.testing.assert_array_equal(out, want)
  np.testing.assert_allclose(pts, [[-0.5, -0.5], [N - 0.5, N - 0.5]], atol=1e-5)
  aug = da.Augmentation('kd', (0, 1), margin=0.0, photometric=False, fill='context')
  batch = jax.jit(lambda x, p, q, c: da.apply(x, p, q, aug, c))(
    crop[None], _landmarks(k)[None], _PARAMS, ctx[None]
  )
  np.testing.assert_array_equal(np.asarray(batch[0][0]), want)
  with pytest.raises(FkdError, match='context image'):
    augment.warp(crop, np.array([[1.0, 0, 0], [0, 1.0, 0]]), N, 'context')


def _context_data(n: int = 8, size: int = 48) -> pipeline.Data:
  """`_data` with context images: each face's crop at the centre of a 2x render of its own
  surroundings (a random border), so context pixel = crop pixel + size / 2."""
  data = _data(n, size)
  split = data.splits['train']
  rng = np.random.default_rng(3)
  context = rng.integers(0, 256, (n, 2 * size, 2 * size, 3), dtype=np.uint8)
  context[:, size // 2 : size // 2 + size, size // 2 : size // 2 + size] = split.images
  data.splits['train'] = dataclasses.replace(split, context=context)
  return data


def test_context_batches_host_and_device():
  """The host batch samples the context images (a random border shows where the crop reaches
  past the stored one); the device inputs carry them and the device program consumes them; a
  split without context images is a one-line error."""
  data = _context_data()
  noise = (0.1, 0.1, 0.2, 0.2)
  ctx = pipeline.train_batch(data, 'train', 4, 0, 7, 'kd', box_noise=noise, augment_fill='context')
  ref = pipeline.train_batch(data, 'train', 4, 0, 7, 'kd', box_noise=noise, augment_fill='reflect')
  np.testing.assert_array_equal(ctx['landmarks'], ref['landmarks'])  # the same random stream
  assert not np.array_equal(ctx['image'], ref['image'])
  # Inside the stored crop both show that face: most pixels agree, face by face.
  diff = np.abs(ctx['image'].astype(int) - ref['image'].astype(int)).reshape(4, -1)
  assert np.all(np.median(diff, axis=1) == 0), np.median(diff, axis=1)
  inputs = pipeline.train_batch(
    data, 'train', 4, 0, 7, 'kd', box_noise=noise, augment_on='device', augment_fill='context'
  )
  assert inputs[pipeline.CONTEXT].shape == (4, 96, 96, 3)
  aug = pipeline.device_augmentation(data, 'kd', noise, 'context')
  out = jax.jit(da.make_augment(aug))(inputs, 7, 0)
  assert pipeline.CONTEXT not in out and out['image'].shape == (4, 48, 48, 3)
  plain = jax.jit(da.make_augment(dataclasses.replace(aug, fill='reflect')))(
    {k: v for k, v in inputs.items() if k != pipeline.CONTEXT}, 7, 0
  )
  np.testing.assert_array_equal(out['landmarks'], plain['landmarks'])
  assert not np.array_equal(out['image'], plain['image'])  # the context reaches the warp
  with pytest.raises(FkdError, match='loaded without context images'):
    pipeline.train_batch(_data(), 'train', 4, 0, 7, 'kd', augment_fill='context')


def test_the_flip_pre_stage_leaves_the_kd_options_to_the_real_stages():
  """configs/kd.py:300w,cpu pre-trains on synthetic faces with flips only: box_noise and
  augment_fill=reflect (options of 'kd') stay with the real-data stages instead of failing the
  pre-stage's config check."""
  from fkd import config_lib, models
  from fkd.infra import config_check
  from fkd.training import prestage

  config = config_lib.load(str(pathlib.Path(__file__).parents[2] / 'configs' / 'kd.py'), '300w,cpu')
  config.data.box_noise, config.data.augment_fill = (0.06, 0.05, 0.1, 0.1), 'reflect'
  sub = prestage.pretrain_config(config)
  assert sub.data.augment == 'flip' and sub.stages
  assert tuple(sub.data.box_noise) == () and sub.data.augment_fill == 'zeros'
  config_check.check(sub, 1, models.model_names())
  assert config.data.augment_fill == 'reflect'  # the real stages keep them
  config.pretrain.augment = 'kd'
  sub = prestage.pretrain_config(config)
  assert sub.data.augment_fill == 'reflect' and tuple(sub.data.box_noise) == (0.06, 0.05, 0.1, 0.1)
  config.data.augment_fill = 'context'  # synthetic_faces has no context images: the mirror
  sub = prestage.pretrain_config(config)
  assert sub.data.augment_fill == 'reflect' and config.data.augment_fill == 'context'
  config_check.check(sub, 1, models.model_names())
