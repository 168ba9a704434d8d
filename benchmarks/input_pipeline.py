"""KD-Loss online augmentation throughput vs. the student train step, at the same batch size.

  python benchmarks/input_pipeline.py [--batch 16] [--res 224] [--width 1.0] [--workers 1,2]

Augmentation: `fkd.data.pipeline.train_batch(augment='kd')`, i.e. `fkd.data.augment.augment_kd`
(flip, rotation, re-crop, gamma, salt-and-pepper, median blur) of every face of a batch of res²
synthetic crops plus the batch assembly, on each `--workers` number of threads. Train step: the
MobileNetV2 student regression step of benchmarks/depthwise.py (MSE, Adam, BatchNorm in training
mode); the KD step also runs two frozen teachers, so it consumes images more slowly and this ratio
is a lower bound. Prints img/s of both and their ratio; the goal is >= 3x so that the train step
never waits for input.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fkd.data import pipeline as input_pipeline  # noqa: E402
from fkd.data import schemes, testing  # noqa: E402

PERM = schemes.SCHEMES['300w'].flip_permutation


def _crops(n: int, res: int) -> tuple[np.ndarray, np.ndarray]:
  faces = [testing.render(i, res) for i in range(n)]
  return np.stack([f[0] for f in faces]), np.stack([f[1] for f in faces])


def augment_rate(images, points, batch: int, rounds: int, workers: int) -> float:
  """Images per second of `input_pipeline.train_batch(augment='kd')` on `workers` threads."""
  split = input_pipeline.Split(
    images, points.astype(np.float32), None, [str(i) for i in range(len(images))]
  )
  data = input_pipeline.Data(
    'bench', {'train': split}, images.shape[1], points.shape[1], np.asarray(PERM), None, '300w'
  )
  input_pipeline.set_workers(workers)
  input_pipeline.train_batch(data, 'train', batch, 0, 0, 'kd')  # warm-up
  t0 = time.perf_counter()
  for r in range(rounds):
    input_pipeline.train_batch(data, 'train', batch, r + 1, 0, 'kd')
  return rounds * batch / (time.perf_counter() - t0)


def train_rate(batch: int, res: int, width: float, rounds: int) -> float:
  """Student MobileNetV2 train steps, images per second (median of `rounds` steps)."""
  import jax
  import jax.numpy as jnp
  import optax

  from fkd.models import MobileNetV2

  sys.path.insert(0, str(Path(__file__).resolve().parent))
  from depthwise import make_step, random_variables

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(batch, res, res, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(size=(batch, 136)), jnp.float32)
  model = MobileNetV2(num_outputs=136, width=width)
  tx = optax.adam(1e-3)
  variables = random_variables(model, x)
  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))
  step = make_step(model, tx)
  t0 = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  print(
    f'train step compiled in {time.perf_counter() - t0:.1f} s (jax {jax.__version__}, '
    f'{jax.default_backend()})',
    flush=True,
  )
  state, loss = compiled(state, x, y)
  loss.block_until_ready()
  rates = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    state, loss = compiled(state, x, y)
    loss.block_until_ready()
    rates.append(batch / (time.perf_counter() - t0))
  return statistics.median(rates)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--res', type=int, default=224)
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--rounds', type=int, default=4, help='batches / steps timed')
  p.add_argument(
    '--workers', default='1,2', help='comma-separated thread counts (config.data.num_workers)'
  )
  args = p.parse_args()
  images, points = _crops(32, args.res)
  step = train_rate(args.batch, args.res, args.width, args.rounds)
  print(
    f'student train step: {step:8.1f} img/s (batch {args.batch}, {args.res} px, width {args.width})'
  )
  for w in map(int, args.workers.split(',')):
    aug = augment_rate(images, points, args.batch, args.rounds * 2, w)
    print(
      f'train_batch(augment=kd), {w} thread(s): {aug:8.1f} img/s = {aug / step:5.1f}x '
      'the train step '
      f'({"ok" if aug >= 3 * step else "below the 3x goal"})',
      flush=True,
    )


if __name__ == '__main__':
  from fkd import cli

  cli.start()  # the CPU process settings of `python -m fkd.*`
  main()
