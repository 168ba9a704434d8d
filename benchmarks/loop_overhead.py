"""The train loop's own cost per step, around a stub step of ~1 ms: the loop before and after.

  python benchmarks/loop_overhead.py [--stub sleep|compute] [--steps 300] [--rounds 15]
      [--step-ms 1] [--log-every 50]

Overhead per step = wall time per step of a loop - device time per step, the device time being
the time from each step's call until its outputs are ready, in that same loop (CPU steps dispatch
synchronously, so that wait adds nothing to the loop), so both come from the same steps whatever
else the machine runs.
The default stub step waits ~1 ms in a host callback, as the host waits for an accelerator: the
CPU stays free for the loop's thread (`--stub compute` computes instead, and then competes with
it). Two loops alternate, `--rounds` times each (medians over the rounds):

- `before`: the loop as it was (kept here as the reference): the next host batch made on a thread,
  placed on the device on the main thread after the previous dispatch, and the previous step's
  metrics pulled to the host at every step (the finite check);
- `after`: the loop of `fkd.training.trainer.train_stage`, with its own pieces: batches made and
  placed on the device on a thread two steps ahead (`trainer.DevicePrefetch`), metrics kept on
  the device and checked every `--log-every` steps (`trainer.StepQueue`).

Both make the same batches and the same metrics and log every `--log-every` steps. The last line
is JSON with both overheads (µs per step) and `ratio` = after / before.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fkd import cli
from fkd.infra import runtime, sharding
from fkd.training import trainer as train

BATCH, RES, LANDMARKS = 16, 64, 68


def make_stub(step_ms: float, kind: str):
  """(jitted step(state, batch) -> (state, metrics), initial state), ~`step_ms` long.

  'sleep': the step waits `step_ms` in a host callback, as the host waits for an accelerator
  (the CPU stays free for the loop, and the time does not depend on other processes); 'compute':
  small matmuls, repeated until the step takes ~`step_ms` of CPU.
  """
  width = 192

  def pause(x):
    time.sleep(step_ms / 1e3)
    return x

  def step_fn(state, batch, repeats):
    x = state['w']
    if kind == 'sleep':
      x = jax.pure_callback(pause, jax.ShapeDtypeStruct(x.shape, x.dtype), jnp.tanh(x))
    for _ in range(repeats):
      x = jnp.tanh(x @ state['w'])
    pixels = jnp.mean(batch['image'].astype(jnp.float32)) / 255.0
    loss = jnp.mean(x) + 1e-3 * pixels + 1e-3 * jnp.mean(batch['landmarks'])
    new = {'w': state['w'] * 0.999 + 1e-4 * x, 'step': state['step'] + 1}
    metrics = {
      'loss': loss,
      'loss/main': loss * 0.5,
      'loss/aux': loss * 0.25,
      'grad_norm': jnp.linalg.norm(x),
      'mae': jnp.mean(jnp.abs(x)),
    }
    return new, metrics

  state = {'w': jnp.eye(width, dtype=jnp.float32) * 0.5, 'step': jnp.zeros((), jnp.int32)}
  batch = sharding.shard_batch(host_batch(0), sharding.make_mesh())
  repeats = 0 if kind == 'sleep' else 1
  while True:  # calibrate 'compute': repeats of a small matmul until the step takes ~step_ms
    jit_step = jax.jit(lambda s, b, r=repeats: step_fn(s, b, r), donate_argnums=(0,))
    if kind == 'sleep':
      return jit_step, state
    ms = 1e3 * min(device_time(jit_step, state, batch, 30) for _ in range(5))
    if ms >= step_ms or repeats >= 4096:
      return jit_step, state
    repeats = max(repeats + 1, int(repeats * step_ms / max(ms, 1e-3)))


def host_batch(i: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(i)
  return {
    'image': rng.integers(0, 256, (BATCH, RES, RES, 3), dtype=np.uint8),
    'landmarks': rng.uniform(0, RES, (BATCH, LANDMARKS, 2)).astype(np.float32),
  }


def fresh(state):
  return jax.tree.map(jnp.copy, state)


def device_time(jit_step, state, batch, steps: int) -> float:
  """Seconds per step of the stub step back to back (the device's time; one wait at the end)."""
  state = fresh(state)
  state, m = jit_step(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = jit_step(state, batch)
  jax.block_until_ready((state, m))
  return (time.perf_counter() - t0) / steps


class Timed:
  """The stub step, timing each call until its outputs are ready: the device time of exactly
  the steps of this loop (CPU steps dispatch synchronously, so the wait only matters for the
  sleep stub's host callback, which may return before it has slept)."""

  def __init__(self, jit_step):
    self.jit_step, self.inside = jit_step, 0.0

  def __call__(self, state, batch):
    t0 = time.perf_counter()
    out = jax.block_until_ready(self.jit_step(state, batch))
    self.inside += time.perf_counter() - t0
    return out


def loop_before(jit_step, state, batches, mesh, steps: int, log_every: int) -> tuple[float, float]:
  """The loop as it was: host batches on a thread, `shard_batch` on the main thread, the
  previous step's metrics on the host at every step. (wall, device) seconds per step."""
  state, step_fn = fresh(state), Timed(jit_step)
  t0 = time.perf_counter()
  pool = concurrent.futures.ThreadPoolExecutor(1)
  next_batch = pool.submit(batches.__getitem__, 0)
  pending = None
  with pool:
    for step in range(steps):
      batch = next_batch.result()
      if step + 1 < steps:
        next_batch = pool.submit(batches.__getitem__, step + 1)
      state, metrics = step_fn(state, sharding.shard_batch(batch, mesh))
      if pending is not None:
        train._check_finite('stub', *pending, '-')
      done = step + 1
      pending = (done, metrics)
      if done % log_every == 0 or done == steps:
        train._check_finite('stub', done, metrics, '-')
  jax.block_until_ready(state)
  return (time.perf_counter() - t0) / steps, step_fn.inside / steps


def loop_after(jit_step, state, batches, mesh, steps: int, log_every: int) -> tuple[float, float]:
  """The loop of `train_stage`: device batches two ahead on a thread, metrics checked every
  `log_every` steps. (wall, device) seconds per step."""
  state, step_fn = fresh(state), Timed(jit_step)
  t0 = time.perf_counter()
  queue = train.StepQueue('stub', '-')
  make = lambda i: sharding.shard_batch(batches[i], mesh)
  with train.DevicePrefetch(make, 0, steps) as device_batches:
    for step in range(steps):
      state, metrics = step_fn(state, next(device_batches))
      done = step + 1
      queue.push(done, metrics)
      if done % log_every == 0 or done == steps:
        queue.check()
  jax.block_until_ready(state)
  return (time.perf_counter() - t0) / steps, step_fn.inside / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--rounds', type=int, default=15)
  parser.add_argument('--step-ms', type=float, default=1.0)
  parser.add_argument('--log-every', type=int, default=50)
  parser.add_argument('--stub', choices=('sleep', 'compute'), default='sleep', help='see make_stub')
  args = parser.parse_args()
  cli.start()
  mesh = sharding.make_mesh()
  jit_step, state = make_stub(args.step_ms, args.stub)
  batches = [host_batch(i) for i in range(args.steps)]
  print(
    f'jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s); '
    f'{runtime.describe()}; {args.stub} stub step, {args.steps} steps x {args.rounds} rounds, '
    f'log every {args.log_every}',
    flush=True,
  )
  loops = {'before': loop_before, 'after': loop_after}
  for loop in loops.values():  # warm-up: compile, threads
    loop(jit_step, state, batches, mesh, min(args.steps, 60), args.log_every)
  rounds = {k: [] for k in loops}
  for _ in range(args.rounds):
    for name, loop in loops.items():
      rounds[name].append(loop(jit_step, state, batches, mesh, args.steps, args.log_every))
  med = {k: tuple(statistics.median(x[i] for x in v) for i in (0, 1)) for k, v in rounds.items()}
  overhead = {k: statistics.median(w - d for w, d in v) for k, v in rounds.items()}
  for k, (w, d) in med.items():
    print(
      f'{k:>6}: {1e3 * w:.3f} ms/step wall, {1e3 * d:.3f} ms/step in the step, '
      f'overhead {1e6 * overhead[k]:.1f} µs/step (medians of {len(rounds[k])} rounds)',
      flush=True,
    )
  ratio = overhead['after'] / overhead['before'] if overhead['before'] > 0 else None
  print(f'overhead after / before: {ratio:.3f}' if ratio is not None else 'no overhead before')
  out = {
    'backend': jax.default_backend(),
    'stub': args.stub,
    'device_ms': 1e3 * med['after'][1],
    'before_overhead_us': 1e6 * overhead['before'],
    'after_overhead_us': 1e6 * overhead['after'],
    'ratio': ratio,
  }
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == '__main__':
  main()
