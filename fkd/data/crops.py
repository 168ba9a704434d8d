"""Face crops as affine maps (method.md §1.2): pixel centres at integers, A maps source -> crop."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

MARGIN_UNITS = ('box', 'longer_side', 'pixels')


@dataclasses.dataclass(frozen=True)
class CropMargin:
  """How far a dataset's face crops reach beyond the landmark box, per side.

  `unit` 'box': `value` × the box's width (left, right) and height (top, bottom), the scale-free
  form of the embedded and 300W crops; 'longer_side': `value` × the longer of width and height on
  every side (a folder dataset's "10%"); 'pixels': `value` source pixels (a folder dataset's `5`).
  Prediction widens a face's landmark box the same way, so that the model sees the crops it was
  trained on (`fkd.serve.predict`).
  """

  value: float
  unit: str = 'box'

  def __post_init__(self):
    if self.unit not in MARGIN_UNITS:
      raise ValueError(f'crop margin unit must be one of {MARGIN_UNITS}, got {self.unit!r}')

  def pads(self, width: float, height: float) -> tuple[float, float]:
    """(horizontal, vertical) widening of a width x height landmark box, per side."""
    if self.unit == 'box':
      return self.value * width, self.value * height
    if self.unit == 'longer_side':
      pad = self.value * max(width, height)
      return pad, pad
    return self.value, self.value

  def to_json(self) -> dict[str, Any]:
    return {'value': self.value, 'unit': self.unit}

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> CropMargin:
    return cls(float(record['value']), str(record.get('unit', 'box')))

  @classmethod
  def from_folder(cls, crop_margin: float | str) -> CropMargin:
    """A folder dataset's `crop_margin` as its builder stores it: pixels, or '10%' of the box's
    longer side (`fkd.data.folder`)."""
    if isinstance(crop_margin, str):
      return cls(float(crop_margin.strip().rstrip('%')) / 100.0, 'longer_side')
    return cls(float(crop_margin), 'pixels')


def landmark_box(points: np.ndarray, margin: float) -> np.ndarray:
  """[L, T, R, B] of the landmark extent widened on each side by `margin` × its width / height."""
  lo, hi = points.min(axis=0), points.max(axis=0)
  pad = margin * (hi - lo)
  return np.concatenate([lo - pad, hi + pad]).astype(np.float64)


def context_side(size: int, context: float) -> int | None:
  """Side of a context image (the crop box widened by `context` x its width and height on each
  side) at the crop's pixel scale: size x (1 + 2 context), or None when that is not a whole
  number of pixels."""
  side = size * (1 + 2 * context)
  return round(side) if abs(side - round(side)) <= 1e-6 else None


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
