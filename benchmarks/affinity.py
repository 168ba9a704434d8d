"""Pixel-affinity distillation loss + gradient: naive N x N form vs the Gram form, one run.

Measures XLA's temporary memory (`compiled.memory_analysis().temp_size_in_bytes`) and the wall time
of the compiled `value_and_grad` (w.r.t. the student features; the teacher is frozen) at
MobileFAN's stage 3 (64² = 4096 nodes, 128 student and 256 teacher channels, batch 8, fp32):

  python benchmarks/affinity.py            # prints `memory ratio: <naive/gram>x`, `time ratio: ...`
  python benchmarks/affinity.py --n=1024   # smaller, quicker

`gram` is fkd.losses.affinity.affinity_mse (streamed custom VJP); `gram_plain` (normalise,
Grams, autodiff)
is printed for reference. All forms are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fkd.losses import affinity


def compile_loss_and_grad(fn, fs, ft):
  step = jax.jit(jax.value_and_grad(lambda s, t: fn(s, jax.lax.stop_gradient(t))))
  return step.lower(fs, ft).compile()


def timeit(compiled, fs, ft, repeats: int) -> float:
  jax.block_until_ready(compiled(fs, ft))  # warm-up
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(fs, ft))
    best = min(best, time.perf_counter() - t0)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, default=4096, help='nodes (H·W)')
  parser.add_argument('--cs', type=int, default=128)
  parser.add_argument('--ct', type=int, default=256)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  # Post-ReLU-like features (non-negative, some all-zero pixels as after a ReLU).
  fs = jnp.asarray(np.maximum(rng.normal(size=(args.batch, args.n, args.cs)), 0), jnp.float32)
  ft = jnp.asarray(np.maximum(rng.normal(size=(args.batch, args.n, args.ct)), 0), jnp.float32)
  print(
    f'B={args.batch} N={args.n} Cs={args.cs} Ct={args.ct} fp32, value_and_grad w.r.t. the '
    f'student features, {jax.devices()[0].platform}',
    flush=True,
  )

  forms = {
    'naive': affinity.affinity_mse_naive,
    'gram_plain': affinity.affinity_mse_gram_plain,
    'gram': affinity.affinity_mse,
  }
  results, outputs = {}, {}
  for name, fn in forms.items():
    compiled = compile_loss_and_grad(fn, fs, ft)
    temp = compiled.memory_analysis().temp_size_in_bytes
    outputs[name] = jax.device_get(compiled(fs, ft))
    seconds = timeit(compiled, fs, ft, args.repeats)
    results[name] = (temp, seconds)
    print(f'{name:>10}: temp {temp / 2**20:9.2f} MiB, {seconds * 1e3:9.1f} ms', flush=True)

  ref_loss, ref_grad = outputs['naive']
  for name in ('gram_plain', 'gram'):
    loss, grad = outputs[name]
    rel_l = abs(loss - ref_loss) / abs(ref_loss)
    rel_g = np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)
    print(f'{name:>10}: relative error vs naive: loss {rel_l:.1e}, gradient {rel_g:.1e}')
    assert rel_l < 1e-4 and rel_g < 1e-4, (name, rel_l, rel_g)

  (tn, sn), (tg, sg) = results['naive'], results['gram']
  (tp, sp) = results['gram_plain']
  print(f'plain Gram (reference): memory {tn / tp:.1f}x, time {sn / sp:.1f}x less than naive')
  print(f'memory ratio: {tn / tg:.1f}x')
  print(f'time ratio: {sn / sg:.1f}x')


if __name__ == '__main__':
  from fkd import cli

  cli.start()  # the CPU process settings of `python -m fkd.*`
  main()
