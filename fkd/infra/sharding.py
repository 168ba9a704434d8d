"""Data-parallel placement: one 1-D mesh over every device, replicated state, batch-sharded inputs.

This jit + `NamedSharding` step is JAX's replacement for `jax.pmap`: the same program runs on one
device, many local devices or many hosts, and XLA inserts the gradient all-reduce itself.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over all devices (global, so it also spans hosts), or `devices`."""
  if devices is not None:
    return jax.sharding.Mesh(
      np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree (state, frozen teachers) fully replicated on the mesh.

  With several processes every process holds the same host values and contributes its devices.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Turns this process's slice of the global batch into global arrays sharded on 'data'."""
  sharding = batch_sharded(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


WEIGHT = 'weight'  # the batch key of `pad_batch`'s per-example weights


def pad_batch(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """This process's batch padded with zero examples to a multiple of `multiple` (its devices),
  plus `batch['weight']` (1 real, 0 padding) when it was padded; unchanged when it divides.

  So every device gets the same share of any batch size: the train step weights its loss,
  metrics and BatchNorm statistics by `weight`, which makes the padded step the unpadded one.
  """
  size = len(next(iter(batch.values())))
  extra = -size % multiple
  if not extra:
    return batch
  padded = {
    k: np.concatenate([v, np.zeros((extra, *np.shape(v)[1:]), np.asarray(v).dtype)])
    for k, v in batch.items()
  }
  padded[WEIGHT] = np.concatenate([np.ones(size, np.float32), np.zeros(extra, np.float32)])
  return padded
