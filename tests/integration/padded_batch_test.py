"""The paper's batch on any device count: a batch the devices do not divide is padded with
examples of weight 0 (`fkd.infra.sharding.pad_batch`), and the padded step is the unpadded one:
loss, metrics, gradients and BatchNorm statistics (see RTOL and the gradient bounds for what
float32 rounding leaves between formulations and partitionings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.infra import sharding
from fkd.models import batch_norm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Relative error (in norm: per metric, per BatchNorm statistic, over the whole gradient) against
# the unpadded step of batch 70 on one device, through the same (weighted) formulation.
RTOL = 1e-5
# Bounds of the gradient where float32 rounding differs, each amplified by the ReLU6 / ReLU
# inputs that lie within rounding of a kink (their derivative flips):
# - against the plain (unweighted) step: another BatchNorm formulation (weighted sums vs means;
#   the fused custom VJP on CPU); measured 4e-5 (CPU formulation) to 4e-4 (GPU/TPU) with weights
#   1 and no padding at all;
# - sharded over 8 devices: per-device partial sums (XLA's partitioned reductions, the
#   depthwise kernel gradient's per-shard scan); measured for the same padded batch on 8
#   devices against one: 9e-4 (KD student), 2e-3 (MobileFAN student; 2e-5 on the gradient
#   norm). Loss, the other metrics and BatchNorm
#   statistics stay within RTOL there.
GRAD_RTOL_PLAIN = 2e-3
GRAD_RTOL_SHARDED = 5e-3


def test_pad_batch():
  batch = {'image': np.ones((70, 2, 2, 3), np.uint8), 'landmarks': np.ones((70, 5, 2), np.float32)}
  assert sharding.pad_batch(batch, 7) is batch  # divides: unchanged, no weight
  padded = sharding.pad_batch(batch, 8)
  assert padded['image'].shape == (72, 2, 2, 3) and padded['image'].dtype == np.uint8
  assert padded['landmarks'].shape == (72, 5, 2)
  np.testing.assert_array_equal(padded['weight'], [1.0] * 70 + [0.0] * 2)
  assert not padded['image'][70:].any()


def test_weighted_batch_norm_is_the_unpadded_one():
  """Hand check: weights 0 drop examples from the statistics, in value and gradient."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, (5, 3, 3, 4)), jnp.float32)
  junk = jnp.asarray(rng.normal(50.0, 9.0, (3, 3, 3, 4)), jnp.float32)
  weights = jnp.asarray([1.0] * 5 + [0.0] * 3)
  scale, bias = jnp.full((4,), 1.5), jnp.full((4,), 0.25)

  def loss(x, w):
    y, mean, var = batch_norm.batch_norm_train_weighted(x, scale, bias, 1e-5, jax.nn.relu, w)
    return jnp.sum(y[:5] ** 2), (mean, var)

  (value, (mean, var)), grad = jax.value_and_grad(loss, has_aux=True)(
    jnp.concatenate([x, junk]), weights
  )
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(mean, x64.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(var, x64.var((0, 1, 2)), rtol=1e-5)
  y = np.maximum((x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5) * 1.5 + 0.25, 0)
  np.testing.assert_allclose(value, np.sum(y**2), rtol=1e-5)
  ref_value, ref_grad = jax.value_and_grad(
    lambda x: jnp.sum(batch_norm.batch_norm_train_plain(x, scale, bias, 1e-5, jax.nn.relu)[0] ** 2)
  )(x)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad[:5], ref_grad, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(grad[5:], 0.0)


SCRIPT = textwrap.dedent(
  """
  import json, sys
  import jax, jax.numpy as jnp, numpy as np, optax
  from fkd import config_lib
  from fkd.infra import sharding
  from fkd.tools import programs

  config = config_lib.load(sys.argv[1], 'tiny')
  for role in ('student', 'teacher'):
    config[role].kwargs.bn_momentum = 0.0  # the running statistics are this batch's
  # An "optimizer" whose state is the gradient: the step returns it exactly.
  keep = optax.GradientTransformation(
    lambda p: jax.tree.map(jnp.zeros_like, p),
    lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
  )
  step = next(p for p in programs.build(config, 70, 1, keep) if p.name == sys.argv[2])
  rng = np.random.default_rng(0)

  def value(path, s):  # an initialisation's scales: well-conditioned BatchNorm statistics
    name = jax.tree_util.keystr(path)
    if s.dtype == np.uint8:
      return rng.integers(0, 256, s.shape).astype(np.uint8)
    if not np.issubdtype(s.dtype, np.floating):
      return np.zeros(s.shape, s.dtype)
    if 'kernel' in name:
      return rng.normal(0.0, np.prod(s.shape[:-1]) ** -0.5, s.shape).astype(s.dtype)
    if 'scale' in name or 'var' in name:
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    return rng.normal(0.0, 0.1, s.shape).astype(s.dtype)

  state, batch, key, teachers = jax.tree_util.tree_map_with_path(value, step.args)
  for k in ('landmarks', 'soft_landmarks'):
    if k in batch:
      batch[k] = rng.uniform(0, config.data.image_size, batch[k].shape).astype(np.float32)
  fn = jax.jit(lambda *a: step.fn(*a))
  one = fn(state, batch, key, teachers)  # batch 70 on one device, unpadded: the plain step
  # The same on one device through the weighted formulation (weights 1, nothing padded).
  ones = fn(state, dict(batch, weight=np.ones(70, np.float32)), key, teachers)
  mesh = sharding.make_mesh()
  r = lambda t: sharding.replicate(t, mesh)
  padded = sharding.pad_batch(batch, jax.device_count())
  assert padded['image'].shape[0] == 72, padded['image'].shape
  many = fn(r(state), sharding.shard_batch(padded, mesh), r(key), r(teachers))
  pad1 = fn(state, padded, key, teachers)  # the padded batch on one device

  def rel(a, b):
    a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

  def errors(got, want):
    (got_state, got_metrics), (want_state, want_metrics) = got, want
    out = {f'metric/{k}': rel(got_metrics[k], want_metrics[k]) for k in want_metrics}
    out['gradient'] = rel(got_state['opt_state'], want_state['opt_state'])
    stats = jax.tree_util.tree_leaves_with_path(want_state['batch_stats'])
    for (path, a), b in zip(stats, jax.tree.leaves(got_state['batch_stats'])):
      out['batch_stats' + jax.tree_util.keystr(path)] = rel(b, a)
    return out

  print(json.dumps({'devices': jax.device_count(), 'loss': float(one[1]['loss']),
                    'padded_vs_weighted': errors(pad1, ones), 'padded_vs_plain': errors(pad1, one),
                    'sharded_vs_weighted': errors(many, ones),
                    'sharded_vs_plain': errors(many, one)}))
  """
)


@pytest.mark.slow  # two 8-device subprocesses; `pytest -m slow` (CI) runs it
@pytest.mark.parametrize(
  'config,stage', [('kd', 'student_kd/train'), ('mobilefan', 'student_distill/train')]
)
def test_padded_step_on_8_devices_is_the_unpadded_step(config, stage):
  env = {
    **os.environ,
    'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
    'JAX_PLATFORMS': 'cpu',
    'PYTHONPATH': REPO,
  }
  done = subprocess.run(
    [sys.executable, '-c', SCRIPT, os.path.join(REPO, 'configs', f'{config}.py'), stage],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['devices'] == 8 and np.isfinite(result['loss']) and result['loss'] > 0
  bounds = {  # gradient bounds; everything else within RTOL
    'padded_vs_weighted': RTOL,  # the padding itself: exact to float32 rounding
    'padded_vs_plain': GRAD_RTOL_PLAIN,
    'sharded_vs_weighted': GRAD_RTOL_SHARDED,
    'sharded_vs_plain': GRAD_RTOL_PLAIN + GRAD_RTOL_SHARDED,
  }
  for against, grad_bound in bounds.items():
    errors = result[against]
    assert any(k.startswith('batch_stats') for k in errors) and 'gradient' in errors
    for key, error in errors.items():
      bound = grad_bound if key in ('gradient', 'metric/grad_norm') else RTOL
      assert error <= bound, (against, key, error)
