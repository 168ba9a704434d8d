"""fkd.infra.distributed and sharding: what reaches jax.distributed.initialize, device checks."""

import jax
import pytest

from fkd.errors import FkdError
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
  n = jax.device_count()
  sharding.check_batch_size(3 * n)
  if n > 1:
    with pytest.raises(FkdError, match='not divisible'):
      sharding.check_batch_size(n + 1)


_FOUR = """
import jax, numpy as np
from fkd.errors import FkdError
from fkd.infra import sharding
assert jax.device_count() == 4
mesh = sharding.make_mesh()
sharding.check_batch_size(8)
try:
  sharding.check_batch_size(6)
  raise SystemExit('6 examples on 4 devices passed')
except FkdError as e:
  assert 'not divisible by the 4 devices' in str(e)
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
