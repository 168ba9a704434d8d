"""KD-Loss augmentation (method.md §2.2): flip, rotation, landmark-box re-crop, photometric noise.

Two entry points:

* `augment_kd(image, landmarks, rng, flip_permutation)` — the online augmentation of one stored
  square face crop (pure NumPy/PIL, deterministic for a given `rng` state);
* `augment_shape(points, rng, ...)` — the same geometry on landmarks alone, in any frame; the
  builders use it to draw the augmented ASM fit set of method.md §2.3.

Geometry of one augmented copy (method.md §2.2 steps 2–6, with the fkd default of rotating about
the landmark-box centre): optional horizontal flip with the dataset permutation, rotation by
θ ~ U(−max_angle, max_angle) rad, crop to the rotated landmark extent ± margin, anisotropic resize
to size × size. Everything outside the source is black (the original zero-pads by 448 px), or,
with `fill='reflect'`, the source mirrored at its edges (`FILLS`). Pixel centres are at integers
(method.md §1.2) and one affine maps pixels and landmarks alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from fkd.data import crops
from fkd.errors import FkdError

# Copies per training face in the offline original (method.md §2.2): plain crop + F − 1 augmented.
COPIES = {'300w': 6, 'cofw': 10, 'wflw': 5}
# WFLW extra copies per attribute flag (pose, expression, illumination, make-up, occlusion, blur).
WFLW_EXTRA_COPIES = (20, 7, 2, 2, 8, 2)
PAD = 448  # zero padding of the original, which sets COFW's 0.005·H_padded margin
# What an augmented crop shows where it reaches past the stored crop (config.data.augment_fill):
# 'zeros' black, as the original's zero padding; 'reflect' the crop mirrored at its edges (edge
# pixels not repeated, numpy's 'reflect'), so a box-noise re-crop's border does not mark where the
# stored crop, and so the landmark box, ends (a detector's crop of a photo has real context there);
# 'context' the face's real surroundings from the dataset's context image (a builder's `context`),
# mirrored past its edge.
FILLS = ('zeros', 'reflect', 'context')


def check_fill(fill: str) -> None:
  """A one-line FkdError unless `fill` is one of `FILLS`."""
  if fill not in FILLS:
    raise FkdError(f'config.data.augment_fill must be one of {", ".join(FILLS)}, got {fill!r}')


def num_copies(dataset: str, attributes: Sequence[bool] | None = None) -> int:
  """F for one training face: its plain crop plus F − 1 augmented copies."""
  f = COPIES[dataset]
  if dataset == 'wflw' and attributes is not None:
    f += int(np.dot(np.asarray(attributes, bool), WFLW_EXTRA_COPIES))
  return f


def num_copies_each(
  dataset: str, attributes: np.ndarray | None = None, count: int = 1
) -> np.ndarray:
  """`num_copies` of `count` faces at once (float32; `attributes`: (count, 6) or None)."""
  rows = [None] * count if attributes is None else attributes
  return np.array([num_copies(dataset, a) for a in rows], np.float32)


def margin_fn(
  dataset: str, image_height: int | None = None
) -> Callable[[np.random.Generator], float]:
  """The re-crop margin (original pixels) of an augmented copy, method.md §2.2 step 5."""
  if dataset == 'cofw':
    h = 0.005 * ((image_height or 0) + 2 * PAD)
    return lambda rng: h + float(rng.integers(5, 11))  # {5, …, 10} inclusive (fkd default)
  return lambda rng: 3.0


def _to3(a: np.ndarray) -> np.ndarray:
  return np.vstack([a, [0.0, 0.0, 1.0]])


def geometry(
  points: np.ndarray,
  *,
  flip: bool,
  angle: float,
  margin: float,
  width: float,
  size: int,
  flip_permutation: Sequence[int],
  box_jitter: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """The affine of one augmented copy and the landmarks it produces.

  Args:
    points: (N, 2) landmarks in the source frame.
    flip: mirror x ↦ width − 1 − x first and re-index with `flip_permutation`.
    angle: rotation in radians about the landmark-box centre (after the flip).
    margin: crop margin around the rotated landmark extent, in source pixels.
    width: source width (for the mirror).
    size: output crop size.
    flip_permutation: π of method.md §3.
    box_jitter: (dx, dy, log sx, log sy): the landmark box's centre moved by dx, dy of its width
      and height and its size scaled by sx, sy before the margin (a detector's box misses the
      landmark box like this; `augment_kd`'s `box_noise`). None: the exact box.

  Returns:
    (A, landmarks): the 2x3 map source -> crop and the (N, 2) float32 crop landmarks.
  """
  p = np.asarray(points, np.float64)
  a = np.eye(3)
  if flip:
    a = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p = p[list(flip_permutation)]
  q = p @ a[:2, :2].T + a[:2, 2]
  c = (q.min(axis=0) + q.max(axis=0)) / 2
  cos, sin = np.cos(angle), np.sin(angle)
  rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
  rot[:2, 2] = c - rot[:2, :2] @ c
  a = rot @ a
  q = p @ a[:2, :2].T + a[:2, 2]
  lo, hi = q.min(axis=0), q.max(axis=0)
  if box_jitter is not None:
    jitter = np.asarray(box_jitter, np.float64)
    centre = (lo + hi) / 2 + jitter[:2] * (hi - lo)
    half = (hi - lo) / 2 * np.exp(jitter[2:])
    lo, hi = centre - half, centre + half
  box = np.concatenate([lo - margin, hi + margin])
  a = _to3(crops.box_transform(box, size)) @ a
  return a[:2], crops.apply(a[:2], p)


def augment_shape(
  points: np.ndarray,
  rng: np.random.Generator,
  *,
  copies: int,
  width: float,
  size: int,
  flip_permutation: Sequence[int],
  margin: Callable[[np.random.Generator], float],
  max_angle: float = 0.5,
) -> np.ndarray:
  """Crop-frame landmarks of `copies` augmented copies (offline scheme: flip copies 0, 2, 4, …).

  Returns:
    (copies, N, 2) float32.
  """
  out = []
  for j in range(copies):
    angle = float(rng.uniform(-max_angle, max_angle))
    out.append(
      geometry(
        points,
        flip=j % 2 == 0,
        angle=angle,
        margin=margin(rng),
        width=width,
        size=size,
        flip_permutation=flip_permutation,
      )[1]
    )
  return np.stack(out) if out else np.zeros((0, len(points), 2), np.float32)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
  lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
  return lut[image]


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Gamma, salt-and-pepper and 5x5 median blur of method.md §2.2 step 7 on uint8 (H, W, 3)."""
  out = image
  if rng.random() < 2 / 3:
    gamma = rng.uniform(0.3, 0.8) if rng.random() < 2 / 3 else rng.uniform(1.5, 3.5)
    out = _gamma(out, float(gamma))
  u = rng.random()
  amount, salt = (0.1, 0.1) if u < 1 / 9 else (0.04, 0.5) if u < 3 / 9 else (0.0, 0.0)
  if amount:
    # Per value, as skimage.util.random_noise(mode='s&p').
    r = rng.random(out.shape)
    s = rng.random(out.shape) < salt
    out = out.copy()
    out[(r < amount) & s] = 255
    out[(r < amount) & ~s] = 0
  if rng.random() < 0.5:
    out = np.asarray(Image.fromarray(out).filter(ImageFilter.MedianFilter(5)))
  return out


def context_affine(a: np.ndarray, crop_size: int, context_size: int) -> np.ndarray:
  """The 2x3 affine `a` of a crop frame moved onto its context image's frame, which is the same
  scale shifted by (context_size − crop_size) / 2 (a builder's `context`)."""
  off = (context_size - crop_size) / 2
  return a @ np.array([[1.0, 0.0, -off], [0.0, 1.0, -off], [0.0, 0.0, 1.0]])


def warp(
  image: np.ndarray,
  a: np.ndarray,
  size: int,
  fill: str = 'zeros',
  context: np.ndarray | None = None,
) -> np.ndarray:
  """uint8 (H, W, 3) -> the size x size crop of the 2x3 affine `a` (`crops.warp`, bilinear),
  black outside the image, or with fill='reflect' the image padded by size // 2 mirrored pixels
  (numpy's 'reflect': the edge pixel not repeated) and `a` moved onto the padded frame; with
  fill='context' sampled from `context` (the crop's context image, `context_affine`) as 'reflect'
  samples the image."""
  if fill == 'context':
    if context is None:
      raise FkdError("augment_fill='context' needs the face's context image")
    return warp(context, context_affine(a, image.shape[0], context.shape[0]), size, 'reflect')
  if fill == 'reflect':
    pad = size // 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    a_pad = a @ np.array([[1.0, 0.0, -pad], [0.0, 1.0, -pad], [0.0, 0.0, 1.0]])
    return np.asarray(crops.warp(Image.fromarray(padded), a_pad, size))
  return np.asarray(crops.warp(Image.fromarray(image), a, size))


def augment_kd(
  image: np.ndarray,
  landmarks: np.ndarray,
  rng: np.random.Generator,
  flip_permutation: Sequence[int],
  **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
  """One online KD-Loss augmentation of a square face crop: `augment_kd_flipped` (same arguments
  and options, same random stream) without its flip flag.

  Returns:
    (image uint8 (S, S, 3), landmarks float32 (N, 2)).
  """
  return augment_kd_flipped(image, landmarks, rng, flip_permutation, **options)[:2]


def augment_kd_flipped(
  image: np.ndarray,
  landmarks: np.ndarray,
  rng: np.random.Generator,
  flip_permutation: Sequence[int],
  *,
  margin: float = 3.0,
  max_angle: float = 0.5,
  flip_prob: float = 0.5,
  plain_prob: float = 0.0,
  photometric_noise: bool = True,
  box_noise: Sequence[float] = (),
  fill: str = 'zeros',
  context: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
  """One online KD-Loss augmentation of a square face crop, and whether the copy was flipped (a
  per-point mask of unlabelled points follows the flip's re-indexing, `schemes.flip_mask`).

  Args:
    image: uint8 (S, S, 3) crop.
    landmarks: (N, 2) crop-frame landmarks (pixel centres at integers).
    rng: the randomness; the result is a pure function of its state.
    flip_permutation: the dataset's π (method.md §3).
    margin: re-crop margin around the rotated extent, in crop pixels (method.md: 3 px).
    max_angle: rotation bound in radians (method.md: 0.5).
    flip_prob: probability of a horizontal flip (online mode: 0.5).
    plain_prob: probability of returning the input unchanged (online mode: 1/F).
    photometric_noise: apply gamma / salt-and-pepper / median blur (step 7) after the geometry.
    box_noise: () or the standard deviations (dx, dy, log sx, log sy) of a Gaussian box jitter
      (`geometry`'s `box_jitter`), so the model learns the crops a calibrated detector box gives;
      drawn only when set, so runs without it keep their random stream.
    fill: what lies outside the crop (`FILLS`): 'zeros' (method.md §2.2 step 1) or 'reflect'
      (the crop padded by size // 2 mirrored pixels before the warp; same random stream) or
      'context' (sampled from `context`, mirrored past its edge; same random stream).
    context: uint8 (K, K, 3), the crop's context image (fill='context'): the same pixel scale,
      shifted by (K − S) / 2.

  Returns:
    (image uint8 (S, S, 3), landmarks float32 (N, 2), flipped).
  """
  check_fill(fill)
  size = image.shape[0]
  if rng.random() < plain_prob:
    return image, np.asarray(landmarks, np.float32), False
  flip = bool(rng.random() < flip_prob)
  angle = float(rng.uniform(-max_angle, max_angle))
  jitter = rng.normal(0.0, 1.0, 4) * np.asarray(box_noise, np.float64) if len(box_noise) else None
  a, points = geometry(
    landmarks,
    flip=flip,
    angle=angle,
    margin=margin,
    width=image.shape[1],
    size=size,
    flip_permutation=flip_permutation,
    box_jitter=jitter,
  )
  out = warp(image, a, size, fill, context)
  return (photometric(out, rng) if photometric_noise else out), points, flip
