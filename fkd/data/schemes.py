"""Landmark schemes of the real datasets: point counts, flip permutations, NME index sets.

Indices are 0-based. Flip permutations are method.md §3 (the WFLW list is the corrected one, with
9↔23); normalising index sets are datasets.md §6. A flipped shape is `L'[i] = mirror(L[perm[i]])`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_FLIP_68 = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
    27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
    64, 63, 62, 61, 60, 67, 66, 65,
)  # fmt: skip
_FLIP_98 = (
    32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
    15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38,
    51, 52, 53, 54, 59, 58, 57, 56, 55,
    72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65,
    82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83,
    92, 91, 90, 89, 88, 95, 94, 93, 97, 96,
)  # fmt: skip
_FLIP_29 = (
  1,
  0,
  3,
  2,
  6,
  7,
  4,
  5,
  9,
  8,
  11,
  10,
  14,
  15,
  12,
  13,
  17,
  16,
  19,
  18,
  20,
  21,
  23,
  22,
  24,
  25,
  26,
  27,
  28,
)


@dataclasses.dataclass(frozen=True)
class Scheme:
  """A landmark mark-up.

  Attributes:
    name: '300w', 'wflw', 'cofw' or 'cofw68'.
    num_landmarks: N.
    flip_permutation: π of method.md §3.
    inter_ocular: the outer eye corners (image-left, image-right).
    inter_pupil: two point groups whose means are the pupils / eye centres (image-left first).
  """

  name: str
  num_landmarks: int
  flip_permutation: tuple[int, ...]
  inter_ocular: tuple[int, int]
  inter_pupil: tuple[tuple[int, ...], tuple[int, ...]]

  def metadata(self) -> dict:
    """Index sets in the form `fkd.evaluation.metrics.normalising_distance` takes (ints or
    groups)."""
    pupil = [list(g) if len(g) > 1 else g[0] for g in self.inter_pupil]
    return {
      'inter_ocular': list(self.inter_ocular),
      'inter_pupil': pupil,
      'flip_permutation': list(self.flip_permutation),
      'num_landmarks': self.num_landmarks,
    }

  def distances(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inter-ocular, inter-pupil) distances of (..., N, 2) points, float64."""
    p = np.asarray(points, np.float64)
    iod = np.linalg.norm(p[..., self.inter_ocular[0], :] - p[..., self.inter_ocular[1], :], axis=-1)
    a, b = (p[..., list(g), :].mean(axis=-2) for g in self.inter_pupil)
    return iod, np.linalg.norm(a - b, axis=-1)


_EYES_68 = (tuple(range(36, 42)), tuple(range(42, 48)))
# The 68-point (300W) face parts, for drawing: (first, last, closed) index runs of the jaw, brows,
# nose bridge, nostrils, eyes and the outer and inner lips.
PARTS_68 = (
  (0, 16, False),
  (17, 21, False),
  (22, 26, False),
  (27, 30, False),
  (31, 35, False),
  (36, 41, True),
  (42, 47, True),
  (48, 59, True),
  (60, 67, True),
)

# Mark-up -> its point groups for drawing (mark-ups without an entry: points only).
CONTOURS = {'300w': PARTS_68, 'cofw68': PARTS_68}

SCHEMES = {
  '300w': Scheme('300w', 68, _FLIP_68, (36, 45), _EYES_68),
  'wflw': Scheme('wflw', 98, _FLIP_98, (60, 72), ((96,), (97,))),
  'cofw': Scheme('cofw', 29, _FLIP_29, (8, 9), ((16,), (17,))),
  'cofw68': Scheme('cofw68', 68, _FLIP_68, (36, 45), _EYES_68),
}


def flip_points(points: np.ndarray, perm, width: float) -> np.ndarray:
  """Mirrors (..., N, 2) points in an image of `width` (x ↦ width − 1 − x) and re-indexes by π."""
  out = np.array(np.asarray(points)[..., list(perm), :], copy=True)
  out[..., 0] = width - 1 - out[..., 0]
  return out


def flip_mask(mask, perm):
  """The per-point mask (..., N) of a flipped shape: re-indexed by π as `flip_points` re-indexes
  the points (the mirror moves no mask). NumPy and JAX arrays alike (the host and device flips)."""
  return mask[..., np.asarray(perm, np.int32)]
