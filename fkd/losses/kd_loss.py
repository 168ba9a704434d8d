"""Losses of the KD-Loss method (method.md §2.5).

All functions take arrays of any shape (usually (B, 2N) regression outputs) and work
element-wise per coordinate, as the method does: x and y are independent entries, nothing uses
Euclidean distances.

Unlabelled points (a folder dataset's COCO v = 0: no position, `fkd.data.pipeline.LABELLED`): the
losses take an optional per-point `mask` (B, N), 1 labelled and 0 not, for (B, 2N) interleaved
(x, y) entries. A masked point adds nothing, to any term: its ground truth is unknown, so the
teachers' ALoss weights (which compare the teacher with the ground truth) are unknown too. The
mean is per face over its labelled entries, then over the faces (`masked_mean`): the NME's
per-face mean over the labelled points, and still a mean of per-example terms (the trainer's
padded batches, `weighted_mean`, rely on that). Without a mask every mean is the plain one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


def entry_mask(mask: jax.Array, values: jax.Array) -> jax.Array:
  """A per-point mask (B, N) as the per-entry weights of (B, 2N) interleaved (x, y) values."""
  mask = jnp.asarray(mask, values.dtype)
  if values.shape[-1] == 2 * mask.shape[-1]:
    return jnp.repeat(mask, 2, axis=-1)
  raise ValueError(f'a mask of {mask.shape[-1]} points for {values.shape[-1]} entries')


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  """The mean of (B, 2N) per-entry values over the labelled entries of each face (a face's
  mean divides by its own labelled count), then over the faces; `jnp.mean` without a mask."""
  if mask is None:
    return jnp.mean(values)
  w = entry_mask(mask, values)
  # `where`, not a product: an unlabelled entry's value never enters, whatever it is (inf, NaN).
  total = jnp.sum(jnp.where(w > 0, values * w, 0.0), axis=-1)
  per_face = total / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
  return jnp.mean(per_face)


def labelled_only(mask: jax.Array | None, *arrays: jax.Array | None) -> tuple:
  """`arrays` (B, 2N) with the unlabelled entries set to 0 before any loss sees them, so that no
  value there (inf, NaN) reaches a gradient either (0 · NaN is NaN, even behind a `where`)."""
  if mask is None:
    return arrays
  w = None
  out = []
  for a in arrays:
    if a is not None:
      w = entry_mask(mask, a) if w is None else w
      a = jnp.where(w > 0, a, 0.0)
    out.append(a)
  return tuple(out)


def mse(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean squared error over every (labelled) entry (teacher loss, baseline student; method.md
  §2.5.1)."""
  pred, target = labelled_only(mask, pred, target)
  return masked_mean(jnp.square(pred - target), mask)


def l1(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean absolute error over every (labelled) entry (baseline option, method.md §2.5.4)."""
  pred, target = labelled_only(mask, pred, target)
  return masked_mean(jnp.abs(pred - target), mask)


@dataclasses.dataclass(frozen=True)
class KDParams:
  """Constants of KD-Loss. `code()` and `figure()` give the two published variants.

  Attributes:
    alpha_tou / alpha_neg_tou: R_P and R_N weights of the Tough teacher's ALoss.
    alpha_tol / alpha_neg_tol: the same for the Tolerant teacher.
    beta: beta-point fraction of the teacher's distance.
    low_region: weight in R_L, 'zero' (released code) or 'ramp' (figures: linear from 0 at g).
    main_slope: linear slope of Loss_Main below lambda (code 3, figure 1).
    lambda_source: 'tolerant' (λ = |s − g|), 'tough' (|a − g|) or 'constant' (`lambda_const`).
    w_main, w_tou, w_tol: weights of the three terms.
  """

  alpha_tou: float = 1.9
  alpha_neg_tou: float = -0.45
  alpha_tol: float = 1.8
  alpha_neg_tol: float = -0.4
  beta: float = 0.15
  low_region: str = 'zero'
  main_slope: float = 3.0
  lambda_source: str = 'tolerant'
  lambda_const: float = 0.5
  w_main: float = 2.0
  w_tou: float = 1.0
  w_tol: float = 1.0

  @classmethod
  def code(cls, **overrides: Any) -> KDParams:
    """Released-code constants (method.md §2.5.2 weight table, `aliprf/KD-Loss@5f6f045`)."""
    return cls(**overrides)

  @classmethod
  def figure(cls, **overrides: Any) -> KDParams:
    """Paper-figure constants (method.md §2.5.3, `fkd` defaults for `figure` mode)."""
    base = dict(
      alpha_tou=0.9,
      alpha_neg_tou=-0.45,
      alpha_tol=0.9,
      alpha_neg_tol=-0.45,
      beta=0.4,
      low_region='ramp',
      main_slope=1.0,
      w_main=2.5,
      w_tou=1.0,
      w_tol=1.0,
    )
    base.update(overrides)
    return cls(**base)

  @classmethod
  def from_config(cls, kd_config: Any) -> KDParams:
    """Builds from a `config.kd` ConfigDict: `mode` picks the variant, set fields override it."""
    cfg = dict(kd_config)
    mode = cfg.pop('mode', 'code')
    cfg.pop(
      'teachers', None
    )  # which teachers are loaded: the method's business (fkd.methods.kd.method)
    overrides = {k: v for k, v in cfg.items() if v is not None}
    if mode == 'code':
      return cls.code(**overrides)
    if mode == 'figure':
      return cls.figure(**overrides)
    raise ValueError(f"config.kd.mode must be 'code' or 'figure', got {mode!r}")


def assistive_weight(
  e: jax.Array, d: jax.Array, alpha: float, alpha_neg: float, beta: float, low_region: str
) -> jax.Array:
  """ω_t(e): the piecewise weight of ALoss for one teacher whose distance to g is d."""
  if low_region == 'zero':
    # Released code: R_P is e > d, R_N is β·d ≤ e ≤ d, R_L (e < β·d) has weight 0, and ω = 0 at
    # e = 0 or d = 0.
    w = jnp.where(e > d, alpha, jnp.where(e >= beta * d, alpha_neg, 0.0))
    return jnp.where((d == 0) | (e == 0), 0.0, w)
  if low_region == 'ramp':
    # Figures: R_P is e ≥ d, R_N is β·d ≤ e < d, R_L ramps linearly from 0 at g to α⁻ at B_t.
    safe = jnp.where(d > 0, beta * d, 1.0)
    ramp = alpha_neg * e / safe
    return jnp.where(e >= d, alpha, jnp.where(e >= beta * d, alpha_neg, ramp))
  raise ValueError(f"low_region must be 'zero' or 'ramp', got {low_region!r}")


def aloss(
  pred: jax.Array,
  teacher: jax.Array,
  gt: jax.Array,
  alpha: float,
  alpha_neg: float,
  beta: float,
  low_region: str = 'zero',
) -> jax.Array:
  """Per-entry Assistive Loss ω_t(e)·|d_t − e| (teacher treated as a constant)."""
  teacher = jax.lax.stop_gradient(teacher)
  e = jnp.abs(pred - gt)
  d = jnp.abs(teacher - gt)
  return assistive_weight(e, d, alpha, alpha_neg, beta, low_region) * jnp.abs(d - e)


def main_loss(pred: jax.Array, gt: jax.Array, lam: jax.Array, slope: float) -> jax.Array:
  """Per-entry Loss_Main: slope·e below λ, e² + slope·λ − λ² above (continuous at e = λ)."""
  lam = jax.lax.stop_gradient(lam)
  e = jnp.abs(pred - gt)
  return jnp.where(e <= lam, slope * e, jnp.square(e) + slope * lam - jnp.square(lam))


def kd_loss(
  pred: jax.Array,
  gt: jax.Array,
  tough: jax.Array | None,
  tolerant: jax.Array | None,
  params: KDParams,
  mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """KD-Loss = w_main·mean(Loss_Main) + w_tou·mean(ALoss_tou) + w_tol·mean(ALoss_tol).

  Either teacher may be None (the Tough-only / Tolerant-only ablations of method.md §2.5.4);
  its term is then dropped. `mask` (B, N): every term leaves the unlabelled points out
  (`masked_mean`, the module docstring).

  Returns:
    The scalar loss and a dict of its (weighted) terms for logging.
  """
  pred, gt, tough, tolerant = labelled_only(mask, pred, gt, tough, tolerant)
  if params.lambda_source == 'constant':
    lam = jnp.full_like(gt, params.lambda_const)
  else:
    source = tolerant if params.lambda_source == 'tolerant' else tough
    if source is None:  # Tough-only student: λ from the only teacher present.
      source = tough if tolerant is None else tolerant
    if source is None:
      raise ValueError('kd_loss needs at least one teacher prediction')
    lam = jnp.abs(source - gt)
  mean = lambda v: masked_mean(v, mask)
  terms = {'main': params.w_main * mean(main_loss(pred, gt, lam, params.main_slope))}
  if tough is not None:
    terms['aloss_tough'] = params.w_tou * mean(
      aloss(pred, tough, gt, params.alpha_tou, params.alpha_neg_tou, params.beta, params.low_region)
    )
  if tolerant is not None:
    terms['aloss_tolerant'] = params.w_tol * mean(
      aloss(
        pred, tolerant, gt, params.alpha_tol, params.alpha_neg_tol, params.beta, params.low_region
      )
    )
  return sum(terms.values()), terms
