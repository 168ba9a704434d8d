"""Multi-host start-up: `jax.distributed.initialize()` when the environment describes a cluster.

Every process runs the same command. On TPU pod slices and Slurm/Open MPI clusters JAX detects the
cluster itself: set FKD_DISTRIBUTED=1. Elsewhere describe it explicitly with
JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=n and JAX_PROCESS_ID=i (i = 0..n-1). On CPU
the processes exchange gradients through gloo collectives.
"""

from __future__ import annotations

import os

import jax


def maybe_initialize() -> bool:
  """Initialises jax.distributed once when the environment asks for it; returns whether it did."""
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if os.environ.get('FKD_DISTRIBUTED', '') in ('', '0') and not address:
    return False
  kwargs = {}
  if address:
    kwargs['coordinator_address'] = address
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in os.environ:
    kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # used by CPU backends only
  jax.distributed.initialize(**kwargs)
  return True
