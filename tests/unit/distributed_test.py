"""fkd.infra.distributed and sharding: what reaches jax.distributed.initialize, device checks."""

import jax
import numpy as np
import pytest

from fkd.infra import distributed, sharding


@pytest.fixture
def calls(monkeypatch):
  got = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: got.append(kw))
  monkeypatch.setattr(jax.config, 'update', lambda *a: None)
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'FKD_DISTRIBUTED'):
    monkeypatch.delenv(name, raising=False)
  return got


def test_nothing_asked_nothing_started(calls, monkeypatch):
  assert distributed.maybe_initialize() is False
  monkeypatch.setenv('FKD_DISTRIBUTED', '0')
  assert distributed.maybe_initialize() is False
  assert calls == []


def test_auto_detected_cluster(calls, monkeypatch):
  monkeypatch.setenv('FKD_DISTRIBUTED', '1')
  assert distributed.maybe_initialize() is True
  assert calls == [{}]  # JAX finds the cluster itself


def test_explicit_cluster(calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('JAX_PROCESS_ID', '0')
  assert distributed.maybe_initialize() is True
  assert calls == [{'coordinator_address': 'localhost:1234', 'num_processes': 4, 'process_id': 0}]


def test_mesh_and_batch_checks():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ('data',) and mesh.size == jax.device_count()
  assert sharding.batch_sharded(mesh).spec == jax.sharding.PartitionSpec('data')
  assert sharding.replicated(mesh).spec == jax.sharding.PartitionSpec()
  # A batch that divides is unchanged; one that doesn't is padded with zero examples of weight 0.
  assert sharding.pad_batch({'x': np.ones((6, 2))}, 3)['x'].shape == (6, 2)
  padded = sharding.pad_batch({'x': np.ones((5, 2))}, 4)
  assert padded['x'].shape == (8, 2) and padded['x'][5:].sum() == 0
  np.testing.assert_array_equal(padded[sharding.WEIGHT], [1, 1, 1, 1, 1, 0, 0, 0])


_FOUR = """
import jax, numpy as np
from fkd.errors import FkdError
from fkd.infra import sharding
assert jax.device_count() == 4
mesh = sharding.make_mesh()
padded = sharding.pad_batch({'x': np.arange(6 * 3).reshape(6, 3)}, jax.local_device_count())
assert padded['x'].shape == (8, 3) and list(padded[sharding.WEIGHT]) == [1] * 6 + [0] * 2
batch = sharding.shard_batch({'x': np.arange(8 * 3).reshape(8, 3)}, mesh)['x']
rows = sorted(s.data.shape[0] for s in batch.addressable_shards)
assert rows == [2, 2, 2, 2], rows  # each device holds a quarter of the batch
tree = sharding.replicate({'w': np.ones(5)}, mesh)['w']
assert all(s.data.shape == (5,) for s in tree.addressable_shards)
sub = sharding.make_mesh(jax.devices()[:2])
assert sub.size == 2
print('OK')
"""


def test_four_devices():
  import os
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
    [sys.executable, '-c', _FOUR], env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and proc.stdout.strip() == 'OK', proc.stderr[-2000:]
