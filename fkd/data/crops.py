"""Face crops as affine maps (method.md §1.2): pixel centres at integers, A maps source -> crop."""

from __future__ import annotations

import numpy as np
from PIL import Image


def landmark_box(points: np.ndarray, margin: float) -> np.ndarray:
  """[L, T, R, B] of the landmark extent widened on each side by `margin` × its width / height."""
  lo, hi = points.min(axis=0), points.max(axis=0)
  pad = margin * (hi - lo)
  return np.concatenate([lo - pad, hi + pad]).astype(np.float64)


def box_transform(box: np.ndarray, size: int) -> np.ndarray:
  """The 2x3 affine A taking source coordinates into the size x size anisotropic crop of `box`.

  The box edges L..R map onto the crop's outer pixel edges −½..size−½.
  """
  sx, sy = (box[2] - box[0]) / size, (box[3] - box[1]) / size
  return np.array([[1 / sx, 0.0, -box[0] / sx - 0.5], [0.0, 1 / sy, -box[1] / sy - 0.5]])


def warp(img: Image.Image, a: np.ndarray, size: int) -> Image.Image:
  """Resamples `img` into the size x size crop of affine A (each output centre mapped back)."""
  inv = np.linalg.inv(np.vstack([a, [0.0, 0.0, 1.0]]))[:2]
  # PIL samples output pixel o at inv·(o + ½) + c in corner coordinates (centres at +½), so
  # c = t + ½ − inv·(½, ½) makes it sample inv·o + t in centre coordinates.
  shift = inv[:, 2] + 0.5 - inv[:, :2] @ np.array([0.5, 0.5])
  coeffs = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
  return img.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)


def apply(a: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Maps (..., 2) points with the 2x3 affine A."""
  return (np.asarray(points, np.float64) @ a[:, :2].T + a[:, 2]).astype(np.float32)


def invert(a: np.ndarray) -> np.ndarray:
  """The 2x3 inverse of a 2x3 affine (crop -> source, for mapping predictions back)."""
  return np.linalg.inv(np.vstack([a, [0.0, 0.0, 1.0]]))[:2]
