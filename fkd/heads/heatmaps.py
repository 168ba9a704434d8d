"""Heatmap targets, loss and decoding for the MobileFAN / EfficientFAN students (method.md §4).

Coordinates follow method.md §1.2 (0-based, pixel centres at integers). A heatmap of stride s
(4 in the papers: 64² maps for 256² crops) sees crop pixel x at heatmap coordinate
x_hm = (x + ½)/s − ½, and back x = s·(x_hm + ½) − ½ (§4.4, §4.6).

Decoding (`decode`):

- 'reference' (method.md §4.6, the fkd default of the papers' rule): argmax, then a quarter-pixel
  shift towards the larger neighbour. Error up to 0.25 heatmap pixels per coordinate.
- 'quadratic': argmax, then the vertex of the parabola through the log-values of the argmax and its
  two neighbours, per axis (exact for an untruncated Gaussian; clipped to ±½).
- 'soft_argmax': the ReLU-normalised expectation of method.md §6.4 (L_P), over the whole map.

The official reproduction mode of §4.6 ('hrnet': 1-based indices, integer casts) is not implemented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fkd.errors import FkdError

Array = jax.Array
DECODERS = ('reference', 'quadratic', 'soft_argmax')


def to_heatmap_coords(points: Array, stride: int) -> Array:
  """Crop pixels -> heatmap coordinates: x_hm = (x + ½)/s − ½ (method.md §4.4)."""
  return (points + 0.5) / stride - 0.5


def to_crop_coords(points: Array, stride: int) -> Array:
  """Heatmap coordinates -> crop pixels: x = s·(x_hm + ½) − ½ (method.md §4.6)."""
  return stride * (points + 0.5) - 0.5


def render(points: Array, size: int, sigma: float = 1.0, quantize: bool = False) -> Array:
  """Gaussian targets (method.md §4.4) for points in heatmap coordinates.

  Args:
    points: (..., L, 2) landmark (x, y) in heatmap coordinates.
    size: heatmap side H = W.
    sigma: Gaussian sigma in heatmap pixels (MobileFAN: 1).
    quantize: official targets: centre truncated to an integer pixel (`heatmap.quantize_targets`).

  Returns:
    (..., H, W, L) float32, peak 1 at the centre, zero outside the (6σ+1)² window centred on the
    rounded (or truncated) centre; all zero when that window lies outside the map.
  """
  points = jnp.asarray(points, jnp.float32)
  centre = jnp.trunc(points) if quantize else points
  window = jnp.trunc(points) if quantize else jnp.round(points)
  grid = jnp.arange(size, dtype=jnp.float32)
  radius = 3.0 * sigma
  x, y = centre[..., 0, None], centre[..., 1, None]  # (..., L, 1)
  gx = jnp.exp(-((grid - x) ** 2) / (2 * sigma**2)) * (
    jnp.abs(grid - window[..., 0, None]) <= radius
  )
  gy = jnp.exp(-((grid - y) ** 2) / (2 * sigma**2)) * (
    jnp.abs(grid - window[..., 1, None]) <= radius
  )
  maps = gy[..., :, None] * gx[..., None, :]  # (..., L, H, W), separable
  return jnp.moveaxis(maps, -3, -1)


def heatmap_mse(pred: Array, target: Array, mask: Array | None = None) -> Array:
  """Mean squared error over B x H x W x L (method.md §4.5).

  `mask` (B, L), 1 labelled and 0 not (`fkd.data.pipeline.LABELLED`): an unlabelled point's map
  adds nothing (it has no position, so no target); the mean is per face over its labelled maps'
  pixels, then over the faces, as the regression losses (`fkd.losses.kd_loss.masked_mean`).
  """
  pred = pred.astype(jnp.float32)
  if mask is None:
    return jnp.mean(jnp.square(pred - target))
  w = jnp.asarray(mask, jnp.float32)[..., None, None, :]  # (B, 1, 1, L)
  # Unlabelled maps zeroed first: no value there (inf, NaN) reaches the loss or its gradient.
  pred, target = (jnp.where(w > 0, a, 0.0) for a in (pred, target))
  sq = jnp.square(pred - target)
  total = jnp.sum(jnp.where(w > 0, sq * w, 0.0), axis=(-3, -2, -1))
  count = jnp.maximum(jnp.sum(w, axis=(-3, -2, -1)), 1.0) * sq.shape[-3] * sq.shape[-2]
  return jnp.mean(total / count)


def _argmax(heatmaps: Array) -> tuple[Array, Array, Array]:
  """(..., H, W, L) -> integer (x, y) of each map's maximum (..., L) and the maps (..., L, H, W)."""
  maps = jnp.moveaxis(heatmaps, -1, -3).astype(jnp.float32)
  h, w = maps.shape[-2:]
  flat = jnp.argmax(maps.reshape(*maps.shape[:-2], h * w), axis=-1)
  return flat % w, flat // w, maps


def _take(maps: Array, y: Array, x: Array) -> Array:
  """maps[..., l, y, x] per landmark, with (y, x) clipped into the map."""
  h, w = maps.shape[-2:]
  idx = jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)
  return jnp.take_along_axis(maps.reshape(*maps.shape[:-2], h * w), idx[..., None], axis=-1)[..., 0]


def decode(heatmaps: Array, method: str = 'reference') -> Array:
  """(..., H, W, L) heatmaps -> (..., L, 2) (x, y) in heatmap coordinates (see module doc)."""
  if method not in DECODERS:
    raise FkdError(f'heatmap.decode must be one of {DECODERS}, got {method!r}')
  if method == 'soft_argmax':
    maps = jnp.moveaxis(heatmaps, -1, -3).astype(jnp.float32)
    p = jax.nn.relu(maps)
    p = p / (jnp.sum(p, axis=(-2, -1), keepdims=True) + 1e-6)
    h, w = maps.shape[-2:]
    x = jnp.sum(p * jnp.arange(w, dtype=jnp.float32), axis=(-2, -1))
    y = jnp.sum(p * jnp.arange(h, dtype=jnp.float32)[:, None], axis=(-2, -1))
    return jnp.stack([x, y], axis=-1)
  xi, yi, maps = _argmax(heatmaps)
  h, w = maps.shape[-2:]
  centre = _take(maps, yi, xi)
  right, left = _take(maps, yi, xi + 1), _take(maps, yi, xi - 1)
  down, up = _take(maps, yi + 1, xi), _take(maps, yi - 1, xi)
  inside_x = (xi > 0) & (xi < w - 1)
  inside_y = (yi > 0) & (yi < h - 1)
  if method == 'reference':
    dx = 0.25 * jnp.sign(right - left)
    dy = 0.25 * jnp.sign(down - up)
  else:  # quadratic in log space: vertex of the parabola through (−1, l), (0, c), (1, r)
    tiny = 1e-10
    lc = jnp.log(jnp.maximum(centre, tiny))

    def vertex(a, b):
      la, lb = jnp.log(jnp.maximum(a, tiny)), jnp.log(jnp.maximum(b, tiny))
      curv = la - 2 * lc + lb
      ok = (curv < 0) & (centre > 0)
      return jnp.where(ok, jnp.clip(0.5 * (la - lb) / jnp.where(ok, curv, -1.0), -0.5, 0.5), 0.0)

    dx, dy = vertex(left, right), vertex(up, down)
  x = xi.astype(jnp.float32) + jnp.where(inside_x, dx, 0.0)
  y = yi.astype(jnp.float32) + jnp.where(inside_y, dy, 0.0)
  return jnp.stack([x, y], axis=-1)


def decode_to_crop(heatmaps: Array, stride: int, method: str = 'reference') -> Array:
  """(..., H, W, L) -> (..., L, 2) crop pixels (method.md §4.6 step 3)."""
  return to_crop_coords(decode(heatmaps, method), stride)


def targets_for_batch(
  points: Array, image_size: int, stride: int, sigma: float, quantize: bool = False
) -> Array:
  """Crop-pixel landmarks (B, L, 2) -> (B, H, W, L) Gaussian targets at image_size / stride."""
  if image_size % stride:
    raise FkdError(f'image size {image_size} is not a multiple of the heatmap stride {stride}')
  return render(to_heatmap_coords(points, stride), image_size // stride, sigma, quantize)
