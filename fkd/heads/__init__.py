"""Output heads: how a model's output becomes landmarks, and how landmarks become its targets.

A head is plain data stored in every checkpoint's meta (`meta['head']`), so a checkpoint alone is
enough to score or serve it (`fkd.inference.Predictor`):

- `RegressionHead` (KD-Loss, the hint baseline): the model outputs (B, 2N) interleaved (x, y) in
  `space` — 'normalized', u = (S/2 − x)/S (method.md §2.2), or 'pixel' (COFW, §9 #5);
- `HeatmapHead` (MobileFAN, EfficientFAN): the model outputs (B, H, W, N) heatmaps of stride
  S/H; Gaussian targets of `sigma` heatmap pixels and the `decode` rule of `fkd.heads.heatmaps`.

Crop pixels are 0-based with pixel centres at integers (method.md §1.2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fkd.errors import FkdError
from fkd.heads import heatmaps

SPACES = ('normalized', 'pixel')


def to_target(points: Any, size: int, space: str) -> Any:
  """(…, N, 2) crop pixels -> flat interleaved targets (…, 2N): u = (S/2 − x)/S or pixels."""
  flat = points.reshape(*points.shape[:-2], -1)
  if space == 'normalized':
    return ((size / 2.0 - flat) / size).astype(np.float32)
  if space == 'pixel':
    return flat.astype(np.float32)
  raise FkdError(f"target space must be 'normalized' or 'pixel', got {space!r}")


def from_target(flat: Any, size: int, space: str) -> Any:
  """Inverse of `to_target`: (…, 2N) -> (…, N, 2) crop pixels (x = S/2 − S·u)."""
  if isinstance(flat, np.ndarray | list | tuple):
    flat = np.asarray(flat, np.float32)  # (jax arrays stay jax arrays: used inside jit too)
  if space == 'normalized':
    flat = size / 2.0 - size * flat
  elif space != 'pixel':
    raise FkdError(f"target space must be 'normalized' or 'pixel', got {space!r}")
  return flat.reshape(*flat.shape[:-1], -1, 2)


@dataclasses.dataclass(frozen=True)
class RegressionHead:
  """(B, 2N) coordinates in `space` of an `image_size` crop."""

  image_size: int
  space: str = 'normalized'
  kind = 'regression'

  def __post_init__(self):
    if self.space not in SPACES:
      raise FkdError(f"target space must be 'normalized' or 'pixel', got {self.space!r}")

  def model_kwargs(self, num_landmarks: int) -> dict[str, Any]:
    return {'num_outputs': 2 * num_landmarks}

  def targets(self, points: jax.Array) -> jax.Array:
    """Crop-pixel landmarks (B, N, 2) -> (B, 2N) regression targets."""
    return to_target(points, self.image_size, self.space)

  def decode(self, outputs: jax.Array) -> jax.Array:
    """(B, 2N) -> (B, N, 2) crop pixels."""
    return from_target(outputs, self.image_size, self.space)

  def train_metrics(
    self, outputs: jax.Array, points: jax.Array, mask: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """Logged beside the loss: mean |output − target| in the target space (over the labelled
    points of `mask` (B, N), per face, as the losses)."""
    return {'mae': _masked_mean(jnp.abs(outputs - self.targets(points)), mask, 2)}

  def meta(self) -> dict[str, Any]:
    return {'kind': self.kind, 'image_size': self.image_size, 'space': self.space}


@dataclasses.dataclass(frozen=True)
class HeatmapHead:
  """(B, H, W, N) heatmaps of an `image_size` crop (stride image_size / H)."""

  image_size: int
  sigma: float = 1.0
  decode_method: str = 'reference'
  quantize_targets: bool = False
  kind = 'heatmaps'

  def __post_init__(self):
    if self.decode_method not in heatmaps.DECODERS:
      raise FkdError(
        f'heatmap decode must be one of {heatmaps.DECODERS}, got {self.decode_method!r}'
      )
    if self.sigma <= 0:
      raise FkdError(f'heatmap sigma must be positive, got {self.sigma}')

  def model_kwargs(self, num_landmarks: int) -> dict[str, Any]:
    return {'num_landmarks': num_landmarks}

  def stride(self, outputs: jax.Array) -> int:
    return self.image_size // outputs.shape[1]

  def targets(self, points: jax.Array, outputs: jax.Array) -> jax.Array:
    """Gaussian targets at the resolution of `outputs` (method.md §4.4)."""
    return heatmaps.targets_for_batch(
      points, self.image_size, self.stride(outputs), self.sigma, self.quantize_targets
    )

  def decode(self, outputs: jax.Array) -> jax.Array:
    """(B, H, W, N) -> (B, N, 2) crop pixels (method.md §4.6)."""
    return heatmaps.decode_to_crop(outputs, self.stride(outputs), self.decode_method)

  def train_metrics(
    self, outputs: jax.Array, points: jax.Array, mask: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """Logged beside the loss: mean |decoded − ground truth| in crop pixels (over the labelled
    points of `mask` (B, N), per face, as the losses)."""
    err = jnp.abs(self.decode(jax.lax.stop_gradient(outputs)) - points)  # (B, N, 2)
    return {'mae_px': _masked_mean(err.reshape(*err.shape[:-2], -1), mask, 2)}

  def meta(self) -> dict[str, Any]:
    return {
      'kind': self.kind,
      'image_size': self.image_size,
      'sigma': self.sigma,
      'decode': self.decode_method,
      'quantize_targets': self.quantize_targets,
    }


Head = RegressionHead | HeatmapHead


def _masked_mean(values: jax.Array, mask: jax.Array | None, per_point: int) -> jax.Array:
  """Mean of (B, per_point·N) values over each face's labelled points, then over the faces."""
  if mask is None:
    return jnp.mean(values)
  w = jnp.repeat(jnp.asarray(mask, values.dtype), per_point, axis=-1)
  total = jnp.sum(jnp.where(w > 0, values * w, 0.0), axis=-1)
  return jnp.mean(total / jnp.maximum(jnp.sum(w, axis=-1), 1.0))


def from_meta(meta: dict[str, Any]) -> Head:
  """The head of a checkpoint's meta; checkpoints written before heads existed load too."""
  head = meta.get('head')
  if head is None:  # older checkpoints: 'output' and 'target_space' at the top level
    size = int(meta['image_size'])
    if meta.get('output') == 'heatmaps':
      return HeatmapHead(size, float(meta.get('sigma', 1.0)))
    return RegressionHead(size, meta.get('target_space', 'normalized'))
  if head['kind'] == 'regression':
    return RegressionHead(int(head['image_size']), head['space'])
  if head['kind'] == 'heatmaps':
    return HeatmapHead(
      int(head['image_size']),
      float(head['sigma']),
      head['decode'],
      bool(head.get('quantize_targets', False)),
    )
  raise FkdError(f'unknown head kind {head["kind"]!r} in checkpoint meta')
