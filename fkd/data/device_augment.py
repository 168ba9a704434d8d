"""The KD-Loss augmentation (method.md §2.2) as one jitted, batched program on the device.

`fkd.data.augment.augment_kd` draws and applies one face's augmentation in NumPy / PIL on a host
thread, tens of faces per second per core: an accelerator would wait for it. Here the host only
gathers the stored uint8 crops and ships them; `augment_batch` draws every face's parameters from
its own key and applies flip, rotation, re-crop, gamma, salt-and-pepper and the 5x5 median blur to
the whole batch, in pure `jax.numpy` (one formulation for every backend: gathers, element-wise
ops, min/max; no custom calls), and computes the ASM soft landmarks of the result.

Determinism: a face's key is `fold_in(fold_in(fold_in(key(seed), STREAM), step), index)`, with
`index` its position in the global batch, so a batch is a pure function of (seed, step) whatever
the device count or the zero-weight padding (`fkd.infra.sharding.pad_batch`), and a resumed run
replays it exactly. The random stream is not the host's: `config.data.augment_on='host'` keeps
that one.

Example:
  aug = Augmentation('kd', flip_permutation=tuple(perm), margin=3.0)
  fn = jax.jit(make_augment(aug, pca))
  batch = fn({'image': u8, 'landmarks': pts, 'plain_prob': p, 'index': idx}, seed, step)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fkd.data import asm, augment, schemes

STREAM = 0x6B64  # keeps the augmentation's keys apart from the train step's dropout keys
MODES = ('kd', 'flip', 'none')
# Inputs of the augmentation only: consumed here, not passed on to the train step.
INPUT_KEYS = ('plain_prob', 'index', 'context')
CONTEXT = 'context'  # fkd.data.pipeline.CONTEXT: uint8 (B, K, K, 3) context images
LABELLED = 'labelled'  # fkd.data.pipeline.LABELLED: the per-point mask, float32 (B, N)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What `augment_batch` does (static: part of the compiled program).

  mode: 'kd' (method.md §2.2), 'flip' (a horizontal flip with p 0.5) or 'none'.
  flip_permutation: the dataset's π (method.md §3); can_flip False: never flip.
  margin: re-crop margin around the rotated landmark extent, in crop pixels.
  box_noise: () or the standard deviations (dx, dy, log sx, log sy) of the box jitter
    (`fkd.data.augment.geometry`'s `box_jitter`).
  fill: what the warp shows past the stored crop, `fkd.data.augment.FILLS` ('zeros': black).
  """

  mode: str
  flip_permutation: tuple[int, ...]
  can_flip: bool = True
  margin: float = 3.0
  max_angle: float = 0.5
  box_noise: tuple[float, ...] = ()
  photometric: bool = True
  fill: str = 'zeros'

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'augmentation mode must be one of {MODES}, got {self.mode!r}')
    augment.check_fill(self.fill)


def example_keys(seed: Any, step: Any, index: jax.Array) -> jax.Array:
  """One key per example from (seed, step, global example index)."""
  base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAM), step)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


# ---------------------------------------------------------------------------------------------
# Parameters.


def draw(key: jax.Array, plain_prob: jax.Array, aug: Augmentation) -> dict[str, jax.Array]:
  """One face's parameters (method.md §2.2), as `fkd.data.augment.augment_kd` draws them.

  plain (p = plain_prob: the input unchanged), flip (p 0.5 unless the data cannot flip), angle
  ~ U(−max_angle, max_angle), jitter ~ N(0, box_noise²) (zeros without box_noise), gamma applied
  with p 2/3, γ ~ U(0.3, 0.8) w.p. 2/3 else U(1.5, 3.5) (1 when not applied), salt-and-pepper
  amount / salt ratio (0.1, 0.1) w.p. 1/9, (0.04, 0.5) w.p. 2/9, else (0, 0), median blur with
  p 0.5, and `noise`: the key of the per-value salt-and-pepper draw.
  """
  k = jax.random.split(key, 9)
  u = lambda i: jax.random.uniform(k[i], (), jnp.float32)
  flip_prob = 0.5 if aug.can_flip and aug.mode in ('kd', 'flip') else 0.0
  params = {
    'plain': (u(0) < plain_prob) if aug.mode == 'kd' else jnp.asarray(aug.mode == 'none'),
    'flip': u(1) < flip_prob,
  }
  if aug.mode != 'kd':
    return params
  params['angle'] = jax.random.uniform(k[2], (), jnp.float32, -aug.max_angle, aug.max_angle)
  if aug.box_noise:
    noise = jnp.asarray(aug.box_noise, jnp.float32)
    params['jitter'] = jax.random.normal(k[3], (4,), jnp.float32) * noise
  else:
    params['jitter'] = jnp.zeros((4,), jnp.float32)
  low = jax.random.uniform(k[4], (), jnp.float32, 0.3, 0.8)
  high = jax.random.uniform(k[5], (), jnp.float32, 1.5, 3.5)
  apply_gamma = u(6) < 2 / 3
  params['gamma'] = jnp.where(apply_gamma, jnp.where(u(7) < 2 / 3, low, high), 1.0)
  v = jax.random.uniform(jax.random.fold_in(k[8], 0), (), jnp.float32)
  params['amount'] = jnp.where(v < 1 / 9, 0.1, jnp.where(v < 3 / 9, 0.04, 0.0))
  params['salt'] = jnp.where(v < 1 / 9, 0.1, jnp.where(v < 3 / 9, 0.5, 0.0))
  params['blur'] = jax.random.uniform(jax.random.fold_in(k[8], 1), (), jnp.float32) < 0.5
  params['noise'] = jax.random.key_data(jax.random.fold_in(k[8], 2))
  return params


# ---------------------------------------------------------------------------------------------
# Geometry.


# Element-wise products, not matmuls: exact float32 on every backend (a TPU's default matmul
# precision would round landmarks by up to half a pixel).


def _affine(m: jax.Array, p: jax.Array) -> jax.Array:
  """(..., 2) points through the 2x3 affine `m`."""
  x, y = p[..., 0], p[..., 1]
  return jnp.stack([m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]], -1)


def _compose(a: jax.Array, b: jax.Array) -> jax.Array:
  """The 2x3 affine of `a` after `b`."""
  lin = (a[:, :2, None] * b[None, :, :2]).sum(axis=1)
  return jnp.concatenate([lin, _affine(a, b[:, 2])[:, None]], axis=1)


def geometry(
  points: jax.Array,
  params: dict[str, jax.Array],
  aug: Augmentation,
  size: int,
) -> tuple[jax.Array, jax.Array]:
  """(A, landmarks): the 2x3 map source -> crop and the crop landmarks of one face, as
  `fkd.data.augment.geometry` (flip, rotation about the landmark-box centre, jittered box ±
  margin, anisotropic resize), in float32."""
  perm = np.asarray(aug.flip_permutation)
  w = float(size)
  mirror = jnp.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]], jnp.float32)
  flip = params['flip']
  a = jnp.where(flip, mirror, jnp.eye(2, 3, dtype=jnp.float32))
  p = jnp.where(flip, points[perm], points)
  if aug.mode != 'kd':
    return a, _affine(a, p)
  q = _affine(a, p)
  c = (q.min(axis=0) + q.max(axis=0)) / 2
  cos, sin = jnp.cos(params['angle']), jnp.sin(params['angle'])
  rot = jnp.stack([jnp.stack([cos, -sin, 0.0]), jnp.stack([sin, cos, 0.0])])
  rot = rot.at[:, 2].set(c - _affine(rot, c))  # about the landmark-box centre
  a = _compose(rot, a)
  q = _affine(a, p)
  lo, hi = q.min(axis=0), q.max(axis=0)
  jitter = params['jitter']
  centre = (lo + hi) / 2 + jitter[:2] * (hi - lo)
  half = (hi - lo) / 2 * jnp.exp(jitter[2:])
  lo, hi = centre - half - aug.margin, centre + half + aug.margin
  # crops.box_transform: the box edges onto the crop's outer pixel edges −½..size−½.
  s = (hi - lo) / size
  box = jnp.stack(
    [
      jnp.stack([1 / s[0], 0.0, -lo[0] / s[0] - 0.5]),
      jnp.stack([0.0, 1 / s[1], -lo[1] / s[1] - 0.5]),
    ]
  )
  a = _compose(box, a)
  return a, _affine(a, p)


def _reflect(i: jax.Array, n: int) -> jax.Array:
  """Indices in [−(n − 1), 2(n − 1)] mapped into [0, n − 1] as numpy's 'reflect' pads (the edge
  pixel not repeated): i < 0 -> −i, i > n − 1 -> 2(n − 1) − i."""
  return jnp.where(i < 0, -i, jnp.where(i > n - 1, 2 * (n - 1) - i, i))


def warp(image: jax.Array, a: jax.Array, size: int, fill: str = 'zeros') -> jax.Array:
  """Bilinear resampling of a float (H, W, C) image into the size x size crop of affine `a`,
  as `fkd.data.crops.warp` (PIL): each output centre mapped back, pixel centres at integers,
  black where it falls outside [−½, W − ½), edge pixels repeated within that band.

  fill='reflect': as `fkd.data.augment`'s warp of the image padded by size // 2 mirrored pixels
  (numpy's 'reflect'): the band and the neighbour clipping are the padded image's, and each
  neighbour index is mirrored back into the image (a gather of the unpadded image)."""
  h, w = image.shape[:2]
  pad = size // 2 if fill == 'reflect' else 0
  if pad > min(h, w) - 1:  # one reflection reaches only n − 1 pixels past the edge
    raise ValueError(f'reflect padding {pad} needs an image of at least {pad + 1} pixels')
  det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
  inv = jnp.stack([jnp.stack([a[1, 1], -a[0, 1]]), jnp.stack([-a[1, 0], a[0, 0]])]) / det
  t = -(inv[:, 0] * a[0, 2] + inv[:, 1] * a[1, 2])
  o = jnp.arange(size, dtype=jnp.float32)
  x = inv[0, 0] * o[None, :] + inv[0, 1] * o[:, None] + t[0]
  y = inv[1, 0] * o[None, :] + inv[1, 1] * o[:, None] + t[1]
  inside = (x >= -0.5 - pad) & (x < w - 0.5 + pad) & (y >= -0.5 - pad) & (y < h - 0.5 + pad)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  xi = [jnp.clip(x0 + d, -pad, w - 1 + pad).astype(jnp.int32) for d in (0, 1)]
  yi = [jnp.clip(y0 + d, -pad, h - 1 + pad).astype(jnp.int32) for d in (0, 1)]
  if pad:
    xi, yi = [_reflect(i, w) for i in xi], [_reflect(i, h) for i in yi]
  flat = image.reshape(h * w, -1)
  at = lambda yy, xx: jnp.take(flat, yy * w + xx, axis=0)
  top = at(yi[0], xi[0]) * (1 - fx) + at(yi[0], xi[1]) * fx
  bottom = at(yi[1], xi[0]) * (1 - fx) + at(yi[1], xi[1]) * fx
  return jnp.where(inside[..., None], top * (1 - fy) + bottom * fy, 0.0)


# ---------------------------------------------------------------------------------------------
# Photometric noise (method.md §2.2 step 7), on float images holding uint8 values.


def gamma(image: jax.Array, g: jax.Array) -> jax.Array:
  """round(255 (v / 255)^γ): `fkd.data.augment`'s lookup table, computed per value."""
  return jnp.round(255.0 * (image / 255.0) ** g)


NOISE_BITS = 16  # resolution of the salt-and-pepper draw: probabilities within 2^-16


def salt_and_pepper(image: jax.Array, key: jax.Array, amount: jax.Array, salt: jax.Array):
  """Per value: 255 with p amount·salt, 0 with p amount·(1 − salt) (skimage's 's&p': one
  16-bit uniform per value serves both choices; half the random bits of a float draw)."""
  u = jax.random.bits(key, image.shape, jnp.uint16).astype(jnp.float32)
  scale = float(1 << NOISE_BITS)
  return jnp.where(u < amount * salt * scale, 255.0, jnp.where(u < amount * scale, 0.0, image))


@functools.cache
def _median_network(n: int) -> tuple[list[tuple[int, int, bool, bool]], int]:
  """Batcher's odd-even merge sort of n wires (padded to a power of two with +inf), pruned to the
  comparators the middle output depends on: [(i, j, need_min, need_max)], and that output."""
  m = 1 << (n - 1).bit_length()
  net = []
  p = 1
  while p < m:
    k = p
    while k >= 1:
      for j in range(k % p, m - k, 2 * k):
        for i in range(min(k, m - j - k)):
          if (i + j) // (2 * p) == (i + j + k) // (2 * p):
            net.append((i + j, i + j + k))
      k //= 2
    p *= 2
  out = n // 2
  needed = {out}
  kept = []
  for i, j in reversed(net):
    if i in needed or j in needed:
      kept.append((i, j, i in needed, j in needed))
      needed |= {i, j}
  return list(reversed(kept)), out


def median_blur(image: jax.Array, radius: int = 2) -> jax.Array:
  """The (2r+1)² median of an (H, W, C) image with edges repeated: PIL's MedianFilter(5) for
  r = 2. A pruned sorting network of element-wise min / max over the shifted images."""
  h, w = image.shape[:2]
  d = 2 * radius + 1
  padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode='edge')
  wires: list[Any] = [padded[dy : dy + h, dx : dx + w] for dy in range(d) for dx in range(d)]
  network, out = _median_network(len(wires))
  wires += [None] * ((1 << (len(wires) - 1).bit_length()) - len(wires))  # None: +inf
  for i, j, need_min, need_max in network:
    a, b = wires[i], wires[j]
    if b is None:  # min(a, inf) = a, max(a, inf) = inf: nothing moves
      continue
    if a is None:
      wires[i], wires[j] = b, None
      continue
    lo = jnp.minimum(a, b) if need_min else None
    hi = jnp.maximum(a, b) if need_max else None
    wires[i], wires[j] = lo, hi
  return wires[out]


# ---------------------------------------------------------------------------------------------
# One face, a batch.


def apply(
  images: jax.Array,
  points: jax.Array,
  params: dict[str, jax.Array],
  aug: Augmentation,
  context: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """A batch with given parameters (`draw` vmapped: each with a leading batch axis): uint8
  (B, S, S, 3) and (B, N, 2) -> the same, augmented. fill 'context': the warp samples `context`
  (uint8 (B, K, K, 3), the crops' context images: the same scale shifted by (K − S) / 2) mirrored
  past its edge, as `fkd.data.augment.warp`.

  Gamma comes last: it is monotone and keeps 0 and 255, so it commutes with salt-and-pepper and
  the median, and the result is that of method.md's order (gamma, noise, blur).
  """
  size = images.shape[1]
  points = points.astype(jnp.float32)
  if aug.mode == 'none':
    return images, points
  a, out_points = jax.vmap(lambda p, q: geometry(p, q, aug, size))(points, params)
  per_example = lambda v: v[:, None, None, None]
  if aug.mode == 'flip':
    return jnp.where(per_example(params['flip']), images[:, :, ::-1], images), out_points
  if aug.fill == 'context':
    if context is None:
      raise ValueError("fill='context' needs the batch's context images")
    off = (context.shape[1] - size) / 2  # augment.context_affine
    a_context = a.at[:, :, 2].add(-(a[:, :, 0] + a[:, :, 1]) * off)
    x = jax.vmap(lambda im, m: warp(im.astype(jnp.float32), m, size, 'reflect'))(context, a_context)
  else:
    x = jax.vmap(lambda im, m: warp(im.astype(jnp.float32), m, size, aug.fill))(images, a)
  x = jnp.round(x)
  if aug.photometric:
    keys = jax.vmap(jax.random.wrap_key_data)(params['noise'])
    x = jax.vmap(salt_and_pepper)(x, keys, params['amount'], params['salt'])
  out = jnp.clip(x, 0, 255).astype(jnp.uint8)
  plain = params['plain']
  if aug.photometric:
    blur = per_example(params['blur'] & ~plain)
    # The median on uint8 (a quarter of the bytes of float32) and behind a conditional: its
    # operand is then materialised once (fused into the median's 25 shifted reads, XLA would
    # redo the warp and noise for each), and a batch without a blurred face skips it.
    out = jax.lax.cond(
      jnp.any(blur),
      lambda o: jnp.where(blur, jax.vmap(median_blur)(o), o),
      lambda o: o,
      out,
    )
    g = per_example(params['gamma'])
    out = jnp.where(g != 1.0, gamma(out.astype(jnp.float32), g), out).astype(jnp.uint8)
  plain_image = per_example(plain)
  return jnp.where(plain_image, images, out), jnp.where(plain[:, None, None], points, out_points)


def asm_project(pca: asm.PCAModel, shapes: jax.Array, clip_sigmas: float = 3.0) -> jax.Array:
  """`fkd.data.asm.asm_project` in float32 jnp, at full matmul precision on every backend."""
  hp = jax.lax.Precision.HIGHEST
  mean = jnp.asarray(pca.mean, jnp.float32)
  comps = jnp.asarray(pca.components, jnp.float32)
  lim = clip_sigmas * jnp.sqrt(jnp.asarray(pca.eigenvalues, jnp.float32))
  flat = shapes.reshape(*shapes.shape[:-2], -1).astype(jnp.float32)
  b = jnp.clip(jnp.matmul(flat - mean, comps, precision=hp), -lim, lim)
  return (mean + jnp.matmul(b, comps.T, precision=hp)).reshape(shapes.shape)


def _solve_spd(a: jax.Array, r: jax.Array) -> jax.Array:
  """x with a x = r for (..., k, k) symmetric positive definite a: Gauss-Jordan elimination
  without pivoting (stable for SPD), in a loop of k steps of element-wise ops (a LAPACK-backed
  solve would be a custom call on GPU)."""
  k = a.shape[-1]
  m = jnp.concatenate([a, r[..., None]], axis=-1)  # (..., k, k + 1)
  rows = jnp.arange(k)

  def step(i, m):
    row = jax.lax.dynamic_index_in_dim(m, i, axis=-2, keepdims=True)  # (..., 1, k + 1)
    row = row / jax.lax.dynamic_index_in_dim(row, i, axis=-1, keepdims=True)
    col = jax.lax.dynamic_index_in_dim(m, i, axis=-1, keepdims=True)  # (..., k, 1)
    return jnp.where((rows == i)[:, None], row, m - col * row)

  return jax.lax.fori_loop(0, k, step, m)[..., k]


def asm_project_masked(
  pca: asm.PCAModel, shapes: jax.Array, labelled: jax.Array, clip_sigmas: float = 3.0
) -> jax.Array:
  """`fkd.data.asm.asm_project(..., labelled=)` in float32 jnp: a face with an unlabelled point
  (`labelled` (..., N) 0) takes the coefficients of its labelled points only
  (`asm.masked_coefficients`); fully labelled faces the unmasked ones, as `asm_project`."""
  hp = jax.lax.Precision.HIGHEST
  mean = jnp.asarray(pca.mean, jnp.float32)
  comps = jnp.asarray(pca.components, jnp.float32)
  lim = clip_sigmas * jnp.sqrt(jnp.asarray(pca.eigenvalues, jnp.float32))
  flat = shapes.reshape(*shapes.shape[:-2], -1).astype(jnp.float32)
  w = jnp.repeat(labelled > 0, 2, axis=-1)
  wd = jnp.where(w, 1.0, asm.UNLABELLED_WEIGHT).astype(jnp.float32)
  a = jnp.einsum('...i,ij,ik->...jk', wd, comps, comps, precision=hp)
  r = jnp.matmul(jnp.where(w, flat - mean, 0.0), comps, precision=hp)
  plain = jnp.matmul(flat - mean, comps, precision=hp)
  b = jnp.where(jnp.all(w, axis=-1, keepdims=True), plain, _solve_spd(a, r))
  b = jnp.clip(b, -lim, lim)
  return (mean + jnp.matmul(b, comps.T, precision=hp)).reshape(shapes.shape)


def augment_batch(
  batch: dict[str, jax.Array],
  seed: Any,
  step: Any,
  aug: Augmentation,
  pca: asm.PCAModel | None = None,
) -> dict[str, jax.Array]:
  """The augmented batch: 'image' (uint8) and 'landmarks' augmented, 'soft_landmarks' = the ASM
  operator of the new landmarks when `pca` is given (of their labelled points only when the
  batch has `LABELLED`: `asm_project_masked`), 'plain_prob' / 'index' / `CONTEXT` consumed
  (absent: 0, the row number, no context images), `LABELLED` (a per-point mask) re-indexed by
  the flip, every other key passed through unchanged."""
  images, points = batch['image'], batch['landmarks']
  n = images.shape[0]
  index = batch.get('index', jnp.arange(n, dtype=jnp.int32))
  plain_prob = batch.get('plain_prob', jnp.zeros((n,), jnp.float32))
  keys = example_keys(seed, step, index)
  params = jax.vmap(lambda k, p: draw(k, p, aug))(keys, plain_prob)
  out_images, out_points = apply(images, points, params, aug, batch.get(CONTEXT))
  out = {k: v for k, v in batch.items() if k not in INPUT_KEYS}
  out['image'], out['landmarks'] = out_images, out_points
  if LABELLED in batch:  # the per-point mask follows the points' re-indexing
    flipped = (params['flip'] & ~params['plain'])[:, None]
    mask = batch[LABELLED]
    out[LABELLED] = jnp.where(flipped, schemes.flip_mask(mask, aug.flip_permutation), mask)
  if pca is not None and LABELLED in batch:  # from the labelled points only
    out['soft_landmarks'] = asm_project_masked(pca, out_points, out[LABELLED])
  elif pca is not None:
    out['soft_landmarks'] = asm_project(pca, out_points)
  return out


def make_augment(aug: Augmentation, pca: asm.PCAModel | None = None):
  """(batch, seed, step) -> augmented batch, to jit (`augment_batch` with `aug`, `pca` bound)."""
  return lambda batch, seed, step: augment_batch(batch, seed, step, aug, pca)
