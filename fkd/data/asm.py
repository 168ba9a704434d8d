"""ASM soft landmarks: a PCA shape model and its clipped projection (method.md §2.3).

A shape (N, 2) is flattened to the interleaved vector [x0, y0, x1, y1, ...]. There is no
Procrustes alignment. The model is fitted in float64 with eigenvalues λ_i = S_i² / (M − 1) and
keeps the smallest k whose cumulative explained-variance ratio is *strictly* greater than `acc`
(as scikit-learn's `PCA(n_components=acc)`). The ASM operator projects onto the first k
components, clips each coefficient to ±clip_sigmas·√λ_i and reconstructs.

Unlabelled points (a folder dataset's `visibility` 0: no position, a finite stand-in stored) never
act as landmarks here. `asm_project(..., labelled=mask)` solves the coefficients by least squares
over a face's labelled points only (`masked_coefficients`), so a stand-in moved anywhere changes
nothing; its soft target is the model's reconstruction there. `complete_shapes` fills the
unlabelled points of a fit set from the model itself (EM-style imputation) before `fit_pca`, so the
stand-ins are not learnt as shape variation. A face (or fit set) with every point labelled takes
exactly the unmasked computation, bit for bit.

Example:
  pca = fit_pca(train_landmarks, acc=0.90)           # (M, 68, 2) -> PCAModel
  soft = asm_project(pca, landmarks)                 # (..., 68, 2) -> (..., 68, 2)
  soft = asm_project(pca, landmarks, labelled=mask)  # mask (..., 68) bool
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# The weight of an unlabelled coordinate in the masked projection, pulling it towards the mean
# shape: it keeps the normal equations positive definite (eigenvalues >= this) when a face has
# fewer labelled coordinates than modes, in float32 on a device too, and the stand-in values
# never enter. Relative to a labelled coordinate's weight 1.
UNLABELLED_WEIGHT = 1e-4
# EM imputation of a fit set with unlabelled points (`complete_shapes`).
IMPUTE_ITERATIONS = 50
IMPUTE_TOLERANCE = 1e-4  # pixels: stop when no imputed coordinate moves more


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


def coordinate_weights(labelled) -> np.ndarray:
  """(..., N) point mask -> (..., 2N) interleaved weights: 1 labelled, `UNLABELLED_WEIGHT` not."""
  w = np.repeat(np.asarray(labelled, bool), 2, axis=-1)
  return np.where(w, 1.0, UNLABELLED_WEIGHT)


def masked_coefficients(pca: PCAModel, flat: np.ndarray, labelled: np.ndarray) -> np.ndarray:
  """The mode coefficients b of (..., 2N) vectors fitted to their labelled points only (float64).

  b minimises Σ_labelled (x − μ − V b)² + δ Σ_unlabelled (V b)², δ = `UNLABELLED_WEIGHT`: a
  least-squares fit of the labelled coordinates, with the unlabelled ones weakly held at the mean
  shape (never at the stored stand-in, which does not enter). Normal equations
  (Vᵀ W_δ V) b = Vᵀ W (x − μ), W the 0/1 mask, W_δ the `coordinate_weights`.
  """
  comps = pca.components
  labelled = np.asarray(labelled, bool)
  lab = labelled.reshape(-1, labelled.shape[-1])
  w = np.repeat(lab, 2, axis=-1)
  r = np.where(w, flat.reshape(len(lab), -1) - pca.mean, 0.0) @ comps
  # One system per mask pattern (faces tend to share a few): no (M, k, k) array, few solves.
  patterns, inverse = np.unique(lab, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  b = np.empty_like(r)
  for p, pattern in enumerate(patterns):
    rows = inverse == p
    a = (comps.T * coordinate_weights(pattern)) @ comps
    b[rows] = np.linalg.solve(a, r[rows].T).T
  return b.reshape(labelled.shape[:-1] + (comps.shape[1],))


def asm_project(pca: PCAModel, shapes, clip_sigmas: float | None = 3.0, labelled=None):
  """Applies the ASM operator: x_soft = μ + V_k clip(V_kᵀ(x − μ), ±clip_sigmas·√λ).

  Works on NumPy arrays (computed in float64, returned in the input's float dtype) and, through
  plain operators and methods only, on jax.numpy arrays (computed in float32; no mask).

  Args:
    pca: the shape model.
    shapes: (..., N, 2) shapes in the space the model was fitted in.
    clip_sigmas: clip bound in standard deviations; None disables clipping.
    labelled: optional (..., N) bool mask. A face with an unlabelled point gets the coefficients
      of its labelled points (`masked_coefficients`) instead of V_kᵀ(x − μ); its unlabelled points
      get the model's reconstruction. Fully labelled faces are computed as without a mask.

  Returns:
    Soft shapes with the shape of `shapes`.
  """
  if labelled is not None and not np.all(labelled):
    x = np.asarray(shapes)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    x = x.astype(np.float64)
    labelled = np.broadcast_to(np.asarray(labelled, bool), x.shape[:-1])
    flat = x.reshape(x.shape[:-2] + (-1,))
    full = labelled.all(axis=-1, keepdims=True)
    b = np.where(full, (flat - pca.mean) @ pca.components, 0.0)
    part = ~full[..., 0]
    b[part] = masked_coefficients(pca, flat[part], labelled[part])
    if clip_sigmas is not None:
      lim = clip_sigmas * np.sqrt(pca.eigenvalues)
      b = b.clip(-lim, lim)
    return (pca.mean + b @ pca.components.T).reshape(x.shape).astype(out_dtype)
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


def complete_shapes(
  shapes: np.ndarray,
  labelled: np.ndarray,
  acc: float | None = 0.90,
  k: int | None = None,
  iterations: int = IMPUTE_ITERATIONS,
  tolerance: float = IMPUTE_TOLERANCE,
) -> tuple[np.ndarray, int]:
  """A fit set with its unlabelled points filled from the shape model itself (EM-style).

  The rule: every shape is kept (a face with an occluded point is often a turned one, so fitting
  on the complete faces only would leave out the very variation the model needs); its unlabelled
  coordinates start at the mean of that coordinate over the shapes where it is labelled, then
  each iteration fits the PCA model (acc, k) to the filled set and replaces them by the model's
  reconstruction from the shape's labelled points (`masked_coefficients`, unclipped), until none
  moves more than `tolerance` or after `iterations`. Labelled coordinates are never changed, and
  the stored stand-ins are not used (but as the start of a coordinate unlabelled in every shape,
  which then has no data and just follows the model).

  Args:
    shapes: (M, N, 2) fit shapes.
    labelled: (M, N) bool.
    acc, k: the model of the imputation (as `fit_pca`; the largest one the caller keeps).

  Returns:
    ((M, N, 2) float64 filled shapes, the number of iterations run).
  """
  x = np.asarray(shapes, np.float64)
  flat = x.reshape(x.shape[0], -1)
  w = np.repeat(np.asarray(labelled, bool), 2, axis=-1)
  if w.all():
    return x, 0
  count = w.sum(axis=0)
  start = np.where(w, flat, 0.0).sum(axis=0) / np.maximum(count, 1)
  filled = np.where(w, flat, np.where(count > 0, start, flat))
  part = ~w.all(axis=1)
  done, moved = 0, np.inf
  while done < iterations and moved > tolerance:
    pca = _covariance_pca(filled, acc, k)
    b = masked_coefficients(pca, flat[part], labelled[part])
    new = filled.copy()
    new[part] = np.where(w[part], flat[part], pca.mean + b @ pca.components.T)
    moved = float(np.abs(new - filled).max())
    filled, done = new, done + 1
  return filled.reshape(x.shape), done


def _covariance_pca(x: np.ndarray, acc: float | None, k: int | None) -> PCAModel:
  """`fit_pca`'s model (up to the modes' signs and rounding) from the eigendecomposition of the
  2N x 2N covariance: for the imputation rounds, where the thin SVD of M x 2N would cost M / 2N
  times more."""
  mean = x.mean(axis=0)
  d = x - mean
  lam, vecs = np.linalg.eigh(d.T @ d / (len(x) - 1))
  lam, vecs = np.clip(lam[::-1], 0.0, None), vecs[:, ::-1]
  ratio = lam / lam.sum()
  if k is None:
    k = int(np.searchsorted(np.cumsum(ratio), acc, side='right')) + 1
  k = int(min(max(k, 1), len(x) - 1, len(lam)))
  return PCAModel(mean, vecs[:, :k], lam[:k], acc, k, ratio[:k], len(x))
