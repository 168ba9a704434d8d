"""ASM soft landmarks: a PCA shape model and its clipped projection (method.md §2.3).

A shape (N, 2) is flattened to the interleaved vector [x0, y0, x1, y1, ...]. There is no
Procrustes alignment. The model is fitted in float64 with eigenvalues λ_i = S_i² / (M − 1) and
keeps the smallest k whose cumulative explained-variance ratio is *strictly* greater than `acc`
(as scikit-learn's `PCA(n_components=acc)`). The ASM operator projects onto the first k
components, clips each coefficient to ±clip_sigmas·√λ_i and reconstructs.

Example:
  pca = fit_pca(train_landmarks, acc=0.90)           # (M, 68, 2) -> PCAModel
  soft = asm_project(pca, landmarks)                 # (..., 68, 2) -> (..., 68, 2)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class PCAModel:
  """A PCA shape model in the interleaved 2N-vector space.

  Attributes:
    mean: μ, (2N,) float64.
    components: V_k, (2N, k) float64 with orthonormal columns.
    eigenvalues: λ_1..λ_k, (k,) float64 (denominator M − 1).
    acc: the variance fraction used to choose k (None when k was given).
    k: the number of kept components.
    ratio: explained-variance ratios r_1..r_k, (k,) float64.
    num_shapes: M, the number of fitted shapes.
  """

  mean: np.ndarray
  components: np.ndarray
  eigenvalues: np.ndarray
  acc: float | None
  k: int
  ratio: np.ndarray
  num_shapes: int

  @property
  def num_points(self) -> int:
    return self.mean.shape[0] // 2

  @property
  def mean_shape(self) -> np.ndarray:
    """The mean shape as (N, 2)."""
    return self.mean.reshape(-1, 2)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable dict (lists of Python floats)."""
    return {
      'mean': self.mean.tolist(),
      'components': self.components.tolist(),
      'eigenvalues': self.eigenvalues.tolist(),
      'acc': None if self.acc is None else float(self.acc),
      'k': int(self.k),
      'ratio': self.ratio.tolist(),
      'num_shapes': int(self.num_shapes),
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> PCAModel:
    """Inverse of `to_dict`."""
    k = int(d['k'])
    mean = np.asarray(d['mean'], np.float64)
    return cls(
      mean=mean,
      components=np.asarray(d['components'], np.float64).reshape(mean.shape[0], k),
      eigenvalues=np.asarray(d['eigenvalues'], np.float64).reshape(k),
      acc=None if d.get('acc') is None else float(d['acc']),
      k=k,
      ratio=np.asarray(d.get('ratio', [np.nan] * k), np.float64).reshape(k),
      num_shapes=int(d.get('num_shapes', 0)),
    )


def fit_pca(shapes: np.ndarray, acc: float | None = 0.90, k: int | None = None) -> PCAModel:
  """Fits the PCA shape model of method.md §2.3.

  Args:
    shapes: (M, N, 2) shapes (or (M, 2N) interleaved vectors).
    acc: variance fraction; k = min{k : r_1 + ... + r_k > acc} (strictly greater).
    k: if given, overrides `acc` (the model then stores acc=None); capped at min(M, 2N).

  Returns:
    The fitted `PCAModel`.
  """
  x = np.asarray(shapes, np.float64)
  x = x.reshape(x.shape[0], -1)
  m = x.shape[0]
  if m < 2:
    raise ValueError(f'Need at least 2 shapes to fit a PCA, got {m}.')
  mean = x.mean(axis=0)
  _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
  # Fix the arbitrary SVD signs (largest-|v| entry positive) so stored models are reproducible.
  vt = vt * np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(1)] < 0, -1.0, 1.0)[:, None]
  lam = s**2 / (m - 1)
  ratio = lam / lam.sum()
  if k is None:
    if acc is None:
      raise ValueError('Give acc or k.')
    k = int(np.searchsorted(np.cumsum(ratio), acc, side='right')) + 1
  else:
    acc = None
  k = int(min(max(k, 1), lam.shape[0]))
  return PCAModel(
    mean=mean,
    components=np.ascontiguousarray(vt[:k].T),
    eigenvalues=lam[:k],
    acc=None if acc is None else float(acc),
    k=k,
    ratio=ratio[:k],
    num_shapes=m,
  )


def asm_project(pca: PCAModel, shapes, clip_sigmas: float | None = 3.0):
  """Applies the ASM operator: x_soft = μ + V_k clip(V_kᵀ(x − μ), ±clip_sigmas·√λ).

  Works on NumPy arrays (computed in float64, returned in the input's float dtype) and, through
  plain operators and methods only, on jax.numpy arrays (computed in float32).

  Args:
    pca: the shape model.
    shapes: (..., N, 2) shapes in the space the model was fitted in.
    clip_sigmas: clip bound in standard deviations; None disables clipping.

  Returns:
    Soft shapes with the shape of `shapes`.
  """
  if isinstance(shapes, np.ndarray) or not hasattr(shapes, 'reshape'):
    x = np.asarray(shapes)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    x = x.astype(np.float64)
    mean, comps, lam = pca.mean, pca.components, pca.eigenvalues
  else:  # e.g. a jax array: keep its dtype and stay traceable.
    x, out_dtype = shapes, None
    mean = pca.mean.astype(np.float32)
    comps = pca.components.astype(np.float32)
    lam = pca.eigenvalues.astype(np.float32)
  flat = x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
  b = (flat - mean) @ comps
  if clip_sigmas is not None:
    lim = clip_sigmas * np.sqrt(lam)
    b = b.clip(-lim, lim)
  out = (mean + b @ comps.T).reshape(x.shape)
  return out if out_dtype is None else out.astype(out_dtype)
