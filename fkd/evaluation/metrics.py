"""Landmark metrics (results.md §1): NME, FR@θ, AUC@θ (closed form) and the KD-Loss AUC variant."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from fkd.data import schemes

# Normalising index sets per point count, from the mark-ups of fkd.data.schemes (datasets.md §6).
# A pair of ints names two points; a pair of groups names two point groups whose means are used
# (eye centres).
NORMALISATION = {
  s.num_landmarks: {
    'inter_ocular': s.inter_ocular,
    'inter_pupil': tuple(g if len(g) > 1 else g[0] for g in s.inter_pupil),
  }
  for s in schemes.SCHEMES.values()
}


def normalising_distance(
  gt: np.ndarray, norm: str | Sequence = 'inter_ocular', labelled: np.ndarray | None = None
) -> np.ndarray:
  """Per-image normalising distance d_j from ground-truth shapes (M, N, 2).

  `norm` is 'inter_ocular', 'inter_pupil', 'box_diagonal', or an explicit pair of indices / groups
  (also as JSON text, '[36, 45]' or '[[36, 37], [42, 43]]': a folder dataset's nme_normalizer).

  `labelled` (M, N) bool: the points with a position. 'box_diagonal' spans the labelled points; a
  face with an unlabelled normalising point (or group member) has no normaliser and gets NaN:
  the unit it would be scored in is unknown, and another normaliser (the box diagonal, say) would
  put its NME in other units than the rest of the split's (`unscorable`).
  """
  gt = np.asarray(gt, np.float64)
  mask = None if labelled is None else np.asarray(labelled, bool)
  if norm == 'box_diagonal':
    if mask is None:
      extent = gt.max(axis=1) - gt.min(axis=1)
    else:
      lo = np.where(mask[..., None], gt, np.inf).min(axis=1)
      hi = np.where(mask[..., None], gt, -np.inf).max(axis=1)
      extent = np.where(mask.any(axis=1)[:, None], hi - lo, np.nan)
    return np.sqrt(np.sum(extent**2, axis=-1))
  if isinstance(norm, str) and norm.lstrip().startswith('['):  # '[36, 45]', '[[36, 37], [42]]'
    norm = json.loads(norm)
  if isinstance(norm, str):
    if norm == 'dataset':
      raise ValueError("norm 'dataset': the folder dataset's normaliser is set at load time")
    table = NORMALISATION.get(gt.shape[1])
    if table is None or norm not in table:
      raise ValueError(f'no {norm!r} normalisation known for {gt.shape[1]} landmarks')
    norm = table[norm]
  groups = [list(i) if isinstance(i, range | list | tuple) else [i] for i in norm]
  a, b = (gt[:, g].mean(axis=1) for g in groups)
  d = np.linalg.norm(a - b, axis=-1)
  if mask is not None:
    d = np.where(mask[:, groups[0] + groups[1]].all(axis=1), d, np.nan)
  return d


def unscorable(gt: np.ndarray, norm: str | Sequence, labelled: np.ndarray | None) -> np.ndarray:
  """(M,) bool: the faces without a normaliser (an unlabelled normalising point), which
  `nme_per_image` scores NaN and the evaluation leaves out with a note naming them."""
  if labelled is None:
    return np.zeros(len(gt), bool)
  return ~np.isfinite(normalising_distance(gt, norm, labelled))


def nme_per_image(
  pred: np.ndarray,
  gt: np.ndarray,
  norm: str | Sequence = 'inter_ocular',
  labelled: np.ndarray | None = None,
) -> np.ndarray:
  """NME_j = mean_i ||p_i − g_i|| / d_j for each image (a fraction, not %).

  `labelled` (M, N) bool: the mean is over the labelled points only (an unlabelled point has no
  position to score against); a face whose normalising point is unlabelled is NaN (see
  `normalising_distance`: callers leave it out, `unscorable`).
  """
  pred = np.asarray(pred, np.float64)
  gt = np.asarray(gt, np.float64)
  if pred.shape != gt.shape:
    raise ValueError(f'prediction shape {pred.shape} != ground-truth shape {gt.shape}')
  d = normalising_distance(gt, norm, labelled)
  err = np.linalg.norm(pred - gt, axis=-1)
  if labelled is None:
    return err.mean(axis=-1) / d
  mask = np.asarray(labelled, bool)
  return (err * mask).sum(axis=-1) / np.maximum(mask.sum(axis=-1), 1) / d


def failure_rate(nme: np.ndarray, threshold: float = 0.1) -> float:
  """FR@θ in percent: share of images with NME strictly greater than θ."""
  return float(100.0 * np.mean(np.asarray(nme) > threshold))


def auc(nme: np.ndarray, threshold: float = 0.1) -> float:
  """AUC@θ in [0, 1], the closed form of (1/θ)∫₀^θ CED(t) dt = mean_j max(0, 1 − NME_j/θ)."""
  return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(nme) / threshold)))


def auc_kd(nme: np.ndarray, threshold: float = 0.1) -> float:
  """The KD-Loss codebase's AUC variant (results.md §1): perfect = 0.95; comparable only with §2."""
  nme = np.asarray(nme)
  t = threshold * np.arange(20) / 19.0
  c = np.mean(nme[None, :] <= t[:, None], axis=1)
  return float(np.sum(c[1:] * (t[:-1] + t[1:]) / 2.0))


def ced(nme: np.ndarray, threshold: float = 0.1, num: int = 101) -> tuple[np.ndarray, np.ndarray]:
  """Cumulative error distribution sampled on [0, θ]: (thresholds, fraction of images ≤ t)."""
  t = np.linspace(0.0, threshold, num)
  return t, np.mean(np.asarray(nme)[None, :] <= t[:, None], axis=1)


def ranked(nme: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the k best (lowest NME first) and k worst (highest first) images."""
  order = np.argsort(np.asarray(nme), kind='stable')
  k = min(k, len(order))
  return order[:k], order[::-1][:k]


def summarize(nme: np.ndarray, threshold: float = 0.1) -> dict[str, float]:
  """The per-split record of results.json: NME %, FR %, AUC (0..1) and the KD AUC variant."""
  return {
    'nme': float(100.0 * np.mean(nme)),
    'fr': failure_rate(nme, threshold),
    'auc': auc(nme, threshold),
    'auc_kd': auc_kd(nme, threshold),
    'count': int(len(nme)),
  }
