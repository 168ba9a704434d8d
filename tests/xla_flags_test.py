"""fkd's CPU-only XLA flags: when they are set, and that a train step gives the same numbers."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from fkd import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAG = '--xla_llvm_disable_expensive_passes=true'


def test_added_on_cpu_only():
  assert xla_flags.with_cpu_flags({'JAX_PLATFORMS': 'cpu'}) == FLAG
  assert xla_flags.with_cpu_flags({'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--a=1'}) == '--a=1 ' + FLAG


def test_left_alone():
  assert xla_flags.with_cpu_flags({'JAX_PLATFORMS': 'cuda'}) is None
  assert xla_flags.with_cpu_flags({'JAX_PLATFORMS': 'cpu,tpu'}) is None
  assert xla_flags.with_cpu_flags({'JAX_PLATFORMS': 'cpu', 'FKD_XLA_CPU_FLAGS': '0'}) is None
  # The user's own value of the flag wins.
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_llvm_disable_expensive_passes=false'}
  assert xla_flags.with_cpu_flags(env) is None


_STEP = r'''
import functools, json, os, sys
import fkd, jax, jax.numpy as jnp, numpy as np, optax
from fkd.models import MobileNetV2
print('XLA_FLAGS', os.environ.get('XLA_FLAGS', ''), file=sys.stderr)
model = MobileNetV2(num_outputs=4, width=0.35, depth=0.34, bn_momentum=0.9)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.uniform(size=(4, 32, 32, 3)), jnp.float32)
y = jnp.asarray(rng.uniform(size=(4, 4)), jnp.float32)
v = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
def loss_fn(p):
  (out, _), upd = model.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,
                              mutable=['batch_stats'])
  return jnp.mean((out - y) ** 2), upd
(loss, upd), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(v['params'])
leaves = [np.asarray(a).ravel() for a in jax.tree.leaves((g, upd))]
print(json.dumps({'loss': float(loss), 'flat': np.concatenate(leaves).tolist()}))
'''


def _run(flags_env: dict[str, str]) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'FKD_XLA_CPU_FLAGS')}
  env.update(flags_env, JAX_PLATFORMS='cpu', JAX_ENABLE_COMPILATION_CACHE='false',
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run([sys.executable, '-c', _STEP], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1]) | {'stderr': result.stderr}


def test_train_step_numbers_unchanged():
  """A small MobileNetV2 train step: loss, gradients and BN statistics with fkd's flag (set by
  `import fkd`) equal those without it (FKD_XLA_CPU_FLAGS=0)."""
  fast, plain = _run({}), _run({'FKD_XLA_CPU_FLAGS': '0'})
  assert FLAG in fast['stderr'] and FLAG not in plain['stderr']
  np.testing.assert_allclose(fast['loss'], plain['loss'], rtol=1e-6)
  np.testing.assert_allclose(fast['flat'], plain['flat'], rtol=1e-5, atol=1e-7)
