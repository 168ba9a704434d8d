"""Distillation losses of MobileFAN (method.md §5.4) and EfficientFAN (§6.4).

Pixel affinity. Every spatial position p of a feature map (B, H, W, C) is a node with vector f_p;
its unit vector is s_p = f_p / n_p with n_p = sqrt(‖f_p‖² + ε²) (ε = 1e-6 keeps the gradient finite
at all-zero post-ReLU pixels; method.md §5.4 notes that the exact ε placement changes results
negligibly). The affinity is A[p, q] = ⟨s_p, s_q⟩ (N x N, N = H·W) and the feature-similarity loss
is mean_{b,p,q} (A_S − A_T)².

The naive form builds the B x N x N matrices: at 64², 64 MB per image in fp32, then its gradient.
For S (N x Cs) and T (N x Ct) holding the unit vectors,

    ‖S Sᵀ − T Tᵀ‖²_F = ‖SᵀS‖²_F + ‖TᵀT‖²_F − 2 ‖SᵀT‖²_F,

so only C x C Gram matrices are needed: O(N·C²) time, O(C²) memory. `affinity_mse` computes this
with a custom VJP that streams over blocks of rows and never materialises the normalised features:
each block of raw features is scaled by 1/n_p on the fly, and the backward pass writes the gradient
block by block,

    ∂L/∂S = c (S·SᵀS − T·TᵀS),   ∂L/∂f_p = (g_p − s_p ⟨s_p, g_p⟩) / n_p   (g = ∂L/∂S, c = 4/(B N²)),

and symmetrically for the teacher side (dead code, removed by XLA, when the teacher is frozen).
`affinity_mse_naive` (N x N) and `affinity_mse_gram_plain` (normalise, then Grams, autodiff) are
kept as references for tests and benchmarks/affinity.py.

Note on precision: the Gram form subtracts terms of size ~‖A‖²; when the two affinities nearly agree
the loss keeps fewer significant digits than the naive form (fp32), which is harmless for training.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fkd.errors import FkdError

Array = jax.Array
EPS = 1e-6
_HI = lax.Precision.HIGHEST


def _flat(f: Array) -> Array:
  """(B, H, W, C) or (B, N, C) -> (B, N, C) float32."""
  f = f.astype(jnp.float32)
  return f.reshape(f.shape[0], -1, f.shape[-1]) if f.ndim == 4 else f


def _inv_norm(f: Array, eps: float = EPS) -> Array:
  """1 / sqrt(‖f_p‖² + ε²) over the last axis, (..., N, C) -> (..., N)."""
  return lax.rsqrt(jnp.sum(f * f, axis=-1) + eps * eps)


def normalize(f: Array, eps: float = EPS) -> Array:
  """Unit vectors s_p = f_p / sqrt(‖f_p‖² + ε²), (B, N, C)."""
  f = _flat(f)
  return f * _inv_norm(f, eps)[..., None]


def cosine_affinity(f: Array, eps: float = EPS) -> Array:
  """(B, H, W, C) -> (B, N, N) pixel cosine affinity (method.md §5.4, C(F))."""
  s = normalize(f, eps)
  return jnp.einsum('bnc,bmc->bnm', s, s, precision=_HI)


def affinity_mse_naive(fs: Array, ft: Array, eps: float = EPS) -> Array:
  """mean over B·N·N of (C(F_S) − C(F_T))², building the N x N matrices (reference)."""
  return jnp.mean(jnp.square(cosine_affinity(fs, eps) - cosine_affinity(ft, eps)))


def _gram_terms(s: Array, t: Array) -> Array:
  """‖SᵀS‖² + ‖TᵀT‖² − 2‖SᵀT‖² per batch element for unit-vector rows, (B,)."""
  gss = jnp.einsum('bnc,bnd->bcd', s, s, precision=_HI)
  gtt = jnp.einsum('bnc,bnd->bcd', t, t, precision=_HI)
  gst = jnp.einsum('bnc,bnd->bcd', s, t, precision=_HI)
  sq = lambda g: jnp.sum(g * g, axis=(-2, -1))
  return sq(gss) + sq(gtt) - 2.0 * sq(gst)


def affinity_mse_gram_plain(fs: Array, ft: Array, eps: float = EPS) -> Array:
  """The Gram form on normalised features, differentiated by autodiff (reference)."""
  s, t = normalize(fs, eps), normalize(ft, eps)
  n = s.shape[1]
  return jnp.sum(_gram_terms(s, t)) / (s.shape[0] * n * n)


def _block_size(n: int, target: int = 256) -> int:
  """The largest divisor of n that is at most `target` (rows streamed per step)."""
  for k in range(min(n, target), 0, -1):
    if n % k == 0:
      return k
  return 1


def _grams(fs: Array, ft: Array, ns: Array, nt: Array, block: int):
  """SᵀS, TᵀT, TᵀS of the unit vectors, accumulated over blocks of rows of the raw features."""
  b, n, cs = fs.shape
  ct = ft.shape[-1]

  def body(i, acc):
    gss, gtt, gts = acc
    lo = i * block
    s = (
      lax.dynamic_slice_in_dim(fs, lo, block, axis=1)
      * lax.dynamic_slice_in_dim(ns, lo, block, axis=1)[..., None]
    )
    t = (
      lax.dynamic_slice_in_dim(ft, lo, block, axis=1)
      * lax.dynamic_slice_in_dim(nt, lo, block, axis=1)[..., None]
    )
    return (
      gss + jnp.einsum('bnc,bnd->bcd', s, s, precision=_HI),
      gtt + jnp.einsum('bnc,bnd->bcd', t, t, precision=_HI),
      gts + jnp.einsum('bnc,bnd->bcd', t, s, precision=_HI),
    )

  zeros = (
    jnp.zeros((b, cs, cs), jnp.float32),
    jnp.zeros((b, ct, ct), jnp.float32),
    jnp.zeros((b, ct, cs), jnp.float32),
  )
  return lax.fori_loop(0, n // block, body, zeros)


def _grad_rows(
  f: Array,
  inv: Array,
  own: Array,
  other_f: Array,
  other_inv: Array,
  cross: Array,
  scale: Array,
  block: int,
) -> Array:
  """∂L/∂f for one side, block by block: g = scale (S·own − T·cross), then through the norm."""

  def body(i, out):
    lo = i * block
    fb = lax.dynamic_slice_in_dim(f, lo, block, axis=1)
    ib = lax.dynamic_slice_in_dim(inv, lo, block, axis=1)[..., None]
    s = fb * ib
    t = (
      lax.dynamic_slice_in_dim(other_f, lo, block, axis=1)
      * lax.dynamic_slice_in_dim(other_inv, lo, block, axis=1)[..., None]
    )
    g = scale * (
      jnp.einsum('bnc,bcd->bnd', s, own, precision=_HI)
      - jnp.einsum('bne,bed->bnd', t, cross, precision=_HI)
    )
    g = (g - s * jnp.sum(s * g, axis=-1, keepdims=True)) * ib
    return lax.dynamic_update_slice_in_dim(out, g, lo, axis=1)

  return lax.fori_loop(0, f.shape[1] // block, body, jnp.zeros_like(f))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _affinity_mse_flat(fs: Array, ft: Array, eps: float, block: int) -> Array:
  return _affinity_fwd(fs, ft, eps, block)[0]


def _affinity_fwd(fs, ft, eps, block):
  ns, nt = _inv_norm(fs, eps), _inv_norm(ft, eps)
  gss, gtt, gts = _grams(fs, ft, ns, nt, block)
  b, n = fs.shape[:2]
  sq = lambda g: jnp.sum(g * g)
  loss = (sq(gss) + sq(gtt) - 2.0 * sq(gts)) / (b * n * n)
  return loss, (fs, ft, ns, nt, gss, gtt, gts)


def _affinity_bwd(eps, block, res, ct):
  del eps
  fs, ft, ns, nt, gss, gtt, gts = res
  b, n = fs.shape[:2]
  scale = ct * 4.0 / (b * n * n)
  # ∂L/∂S = c (S SᵀS − T TᵀS);  ∂L/∂T = c (T TᵀT − S SᵀT).
  d_fs = _grad_rows(fs, ns, gss, ft, nt, gts, scale, block)
  d_ft = _grad_rows(ft, nt, gtt, fs, ns, jnp.swapaxes(gts, 1, 2), scale, block)
  return d_fs, d_ft


_affinity_mse_flat.defvjp(_affinity_fwd, _affinity_bwd)


def affinity_mse(fs: Array, ft: Array, eps: float = EPS, block: int | None = None) -> Array:
  """mean_{b,p,q} (C(F_S) − C(F_T))² in Gram form, O(C²) memory (module doc).

  Args:
    fs: (B, H, W, Cs) student feature maps (or (B, N, Cs)).
    ft: (B, H, W, Ct) teacher feature maps (or (B, N, Ct)), with the same B and N as `fs`.
    eps: norm regulariser.
    block: rows per streamed block, dividing N (default: the largest divisor of N up to 256).
  """
  fs, ft = _flat(fs), _flat(ft)
  if fs.shape[:2] != ft.shape[:2]:
    raise FkdError(
      f'affinity: student {fs.shape} and teacher {ft.shape} features differ in batch '
      'or spatial size'
    )
  block = block or _block_size(fs.shape[1])
  if fs.shape[1] % block:
    raise FkdError(f'affinity: block {block} does not divide the {fs.shape[1]} nodes')
  return _affinity_mse_flat(fs, ft, eps, block)


# ---------------------------------------------------------------------------------------------
# Feature-aligned and patch-similarity distillation.


def feature_aligned_mse(adapted: Array, teacher: Array) -> Array:
  """mean((φ(S) − T)²) for one layer (method.md §5.4 / §6.4 L_FA); φ is the Adapter module."""
  if adapted.shape != teacher.shape:
    raise FkdError(
      f'feature-aligned distillation: adapted student {adapted.shape} vs teacher {teacher.shape}'
    )
  return jnp.mean(jnp.square(adapted.astype(jnp.float32) - teacher.astype(jnp.float32)))


def pool(f: Array, k: int, how: str = 'avg') -> Array:
  """(B, H, W, C) pooled with a 2^k x 2^k window and stride (k = 0: unchanged)."""
  if k == 0:
    return f
  w = 2**k
  if how == 'avg':
    return nn.avg_pool(f, (w, w), (w, w))
  if how == 'max':
    return nn.max_pool(f, (w, w), (w, w))
  raise FkdError(f"patch-similarity pooling must be 'avg' or 'max', got {how!r}")


def patch_scales(size: int, min_scale: int = 0) -> list[int]:
  """Scales k = min_scale … n−1 for a 2^n map, i.e. down to a 2x2 grid (method.md §6.4)."""
  n = int(size).bit_length() - 1
  if 2**n != size or n < 1:
    raise FkdError(f'patch similarity needs a power-of-two feature map of side >= 2, got {size}')
  return list(range(min_scale, n))


def patch_similarity_mse(
  fs: Array, ft: Array, min_scale: int = 0, how: str = 'avg', affinity=None
) -> Array:
  """(1/K) Σ_k mean (A_S^(k) − A_T^(k))² over the pooled scales (method.md §6.4, one layer)."""
  affinity = affinity or affinity_mse
  if fs.shape[1] != fs.shape[2]:
    raise FkdError(f'patch similarity needs square feature maps, got {fs.shape}')
  scales = patch_scales(fs.shape[1], min_scale)
  if not scales:
    raise FkdError(
      f'patch similarity: min_scale {min_scale} leaves no scale for a {fs.shape[1]}² map'
    )
  return sum(affinity(pool(fs, k, how), pool(ft, k, how)) for k in scales) / len(scales)
