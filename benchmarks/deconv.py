"""Transposed convolutions on CPU: fkd's phase split against XLA's `conv_transpose`, in one run.

  python benchmarks/deconv.py [--batch 8] [--rounds 5]

`fkd.models.heatmap_net.Deconv2x` (impl 'phases', what 'auto' picks on CPU) against the same module
with
impl 'xla' (`lax.conv_transpose`, as `nn.ConvTranspose`), same parameters, forward + gradient with
respect to input and kernel, at the decoder shapes of the heatmap networks: the k4/p1 ×2 stages of
the Simple Baselines teacher (256 channels: 8² → 16² → 32² → 64² at 256² crops) and the k2 stages
of the students (128 channels). The variants alternate call by call so that a shared machine's
noise hits both alike; prints the median seconds per call and the ratio xla / phases per shape, and
a last line `ratios: min–max`. This is the source of README's figure for the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

from fkd import cli

cli.start()  # CPU tuning before JAX initialises, as every entry point

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fkd.models import heatmap_net as fan  # noqa: E402

# (kernel, input side, channels in, channels out): teacher k4 stages, student k2 stages.
SHAPES = [
  (4, 8, 256, 256),
  (4, 16, 256, 256),
  (4, 32, 256, 256),
  (2, 16, 128, 128),
  (2, 32, 128, 128),
]


def timed(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  ratios = []
  print(f'{"kernel":>6} {"input":>10} {"cin>cout":>9} {"phases s":>9} {"xla s":>9} {"ratio":>6}')
  for k, side, cin, cout in SHAPES:
    x = jnp.asarray(rng.normal(size=(args.batch, side, side, cin)), jnp.float32)
    fns, params = {}, None
    for impl in ('phases', 'xla'):
      module = fan.Deconv2x(cout, kernel_size=k, impl=impl)
      if params is None:
        params = module.init(jax.random.key(0), x)

      def loss(p, x, module=module):
        return jnp.sum(jnp.square(module.apply(p, x)))

      fns[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    out = {impl: fn(params, x) for impl, fn in fns.items()}  # compile, and check equality
    np.testing.assert_allclose(out['phases'][0], out['xla'][0], rtol=1e-3)
    times = {impl: [] for impl in fns}
    for _ in range(args.rounds):
      for impl, fn in fns.items():
        times[impl].append(timed(fn, params, x))
    med = {impl: statistics.median(t) for impl, t in times.items()}
    ratios.append(med['xla'] / med['phases'])
    print(
      f'{k:>6} {f"{side}²x{args.batch}":>10} {f"{cin}>{cout}":>9} {med["phases"]:9.4f} '
      f'{med["xla"]:9.4f} {ratios[-1]:6.1f}'
    )
  print(f'ratios: {min(ratios):.1f}–{max(ratios):.1f}x')


if __name__ == '__main__':
  main()
