"""Multi-host start-up: `jax.distributed.initialize()` when the environment describes a cluster.

Set FKD_DISTRIBUTED=1 (or run under a cluster JAX auto-detects, e.g. a TPU pod slice with
JAX_COORDINATOR_ADDRESS / SLURM / Open MPI variables) and every process joins one global runtime.
"""

from __future__ import annotations

import os

import jax

_CLUSTER_VARS = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS')


def maybe_initialize() -> bool:
  """Initialises jax.distributed once when asked to by the environment; returns whether it did."""
  wanted = os.environ.get('FKD_DISTRIBUTED', '') not in ('', '0') or any(
      v in os.environ for v in _CLUSTER_VARS)
  if not wanted:
    return False
  jax.distributed.initialize()
  return True


maybe_initialize()
