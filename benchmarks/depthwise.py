"""Depthwise implementations in a MobileNetV2 train step: img/s, measured A/B/... in one run.

  python benchmarks/depthwise.py [--impls shifted,native] [--batch 8] [--res 224] [--rounds 5]

Regression step as in KD-Loss: 136 outputs, MSE, Adam, BatchNorm in training mode. Each variant
is compiled (time printed), warmed up, then the variants alternate step by step so that the noise
of a shared machine hits all of them alike. Reports the median img/s per variant.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fkd.models import MobileNetV2


def random_variables(model, x, seed=0):
  """Variables from numpy (a jitted `init` spends ~20 s compiling threefry on CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':
      return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)
    return jnp.ones(s.shape, s.dtype) if name in ('scale', 'var') else jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_step(model, tx):
  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, x, y):
    params, batch_stats, opt_state = state

    def loss_fn(p):
      (out, _), upd = model.apply(
        {'params': p, 'batch_stats': batch_stats}, x, train=True, mutable=['batch_stats']
      )
      return jnp.mean((out - y) ** 2), upd['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_stats, opt_state), loss

  return step


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--impls', default='grouped,shifted_autodiff,shifted,native')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--res', type=int, default=224)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--width', type=float, default=1.0)
  args = parser.parse_args()
  print(f'jax {jax.__version__} backend {jax.default_backend()} devices {jax.devices()}')

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(args.batch, args.res, args.res, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(size=(args.batch, 136)), jnp.float32)
  tx = optax.adam(1e-3)
  runs = {}
  for impl in args.impls.split(','):
    model = MobileNetV2(num_outputs=136, width=args.width, depthwise_impl=impl)
    variables = random_variables(model, x)
    state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))
    step = make_step(model, tx)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    t1 = time.perf_counter()
    state, loss = compiled(state, x, y)
    loss.block_until_ready()
    print(
      f'{impl:>16}: compile {t1 - t0:6.1f} s, first step {time.perf_counter() - t1:5.2f} s, '
      f'loss {float(loss):.4f}',
      flush=True,
    )
    runs[impl] = [compiled, state, []]

  for _ in range(args.rounds):
    for run in runs.values():
      t0 = time.perf_counter()
      run[1], loss = run[0](run[1], x, y)
      loss.block_until_ready()
      run[2].append(args.batch / (time.perf_counter() - t0))
  base = None
  for impl, (_, _, ips) in runs.items():
    med = statistics.median(ips)
    base = base or med
    print(
      f'{impl:>16}: {med:6.2f} img/s median ({min(ips):.2f}-{max(ips):.2f}), '
      f'{med / base:5.2f}x the first'
    )


if __name__ == '__main__':
  from fkd import cli

  cli.start()  # the CPU process settings of `python -m fkd.*`
  main()
