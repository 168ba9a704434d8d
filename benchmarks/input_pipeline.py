"""The KD-Loss input pipeline: the host's images/s per core and the device augmentation's share of
a train step, at a config's crop size and batch (the paper's for `:300w`), in one run.

  python benchmarks/input_pipeline.py [--config=configs/kd.py:300w] [--batch=16] [--rounds=4]
      [--faces=512] [--host-batches=20] [--old-batches=2]

1. Host, `config.data.augment_on='device'` (what 'auto' is on a TPU / GPU):
   `fkd.data.pipeline.train_batch` gathers a batch of the stored uint8 crops and landmarks (the
   config's `train.batch_size`, 70 for
   `:300w`, from `--faces` synthetic faces in memory at the config's crop size), pads it to the
   local devices and ships it (`fkd.infra.sharding.shard_batch`, until the device holds it), on
   one thread: images/s per core. Goal >= 5,000 (20,000).
2. Host, `augment_on='host'` (the NumPy / PIL augmentation of earlier runs), one thread, for
   comparison.
3. On the local backend at `--batch` faces: the device augmentation (`trainer.augment_batch_fn`:
   flip, rotation, re-crop, gamma, salt-and-pepper, median blur and the ASM soft landmarks) and
   the config's last train step (the KD student with its two frozen teachers), each compiled
   once, then timed alternately `--rounds` times (medians; 0 skips this part): the augmentation's
   share of a step is aug / (aug + step).

The last line is JSON: `host_img_per_s_per_core`, `host_augment_img_per_s_per_core` (2),
`augment_s`, `step_s`, `augment_share`, `batch`, `image_size`, `backend`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_data(config, faces: int, soft: bool = True):
  """`fkd.data.pipeline.Data` of `faces` synthetic faces (32 rendered, tiled) at the config's
  crop size, with the 300W flip permutation and, when `soft`, a PCA shape model fitted on them."""
  from fkd.data import asm, pipeline, schemes, testing

  size = config.data.image_size
  rendered = [testing.render(i, size) for i in range(min(32, faces))]
  reps = -(-faces // len(rendered))
  images = np.tile(np.stack([f[0] for f in rendered]), (reps, 1, 1, 1))[:faces]
  points = np.tile(np.stack([f[1] for f in rendered]).astype(np.float32), (reps, 1, 1))[:faces]
  split = pipeline.Split(images, points, None, [str(i) for i in range(faces)])
  perm = np.asarray(schemes.SCHEMES['300w'].flip_permutation)
  pca = asm.fit_pca(points + np.random.default_rng(0).normal(0, 2, points.shape)) if soft else None
  return pipeline.Data('bench', {'train': split}, size, points.shape[1], perm, pca, '300w')


def host_rate(config, data, batch: int, batches: int, augment_on: str) -> float:
  """Images per second of one thread making (and, for 'device', shipping) training batches."""
  import jax

  from fkd.data import pipeline
  from fkd.infra import sharding

  mesh = sharding.make_mesh()
  pipeline.set_workers(1)

  def one(step: int) -> None:
    b = pipeline.train_batch(
      data, 'train', batch, step, 0, config.data.augment, augment_on=augment_on
    )
    if augment_on == 'device':
      b = sharding.shard_batch(sharding.pad_batch(b, jax.local_device_count()), mesh)
      jax.block_until_ready(b)

  one(0)  # warm-up
  t0 = time.perf_counter()
  for i in range(batches):
    one(i + 1)
  return batches * batch / (time.perf_counter() - t0)


def augment_share(config, data, batch: int, rounds: int) -> tuple[float, float]:
  """(augmentation seconds, train step seconds) at `batch` on the local backend (medians)."""
  import jax

  from fkd.data import pipeline
  from fkd.infra import sharding
  from fkd.tools import programs
  from fkd.training import trainer

  mesh = sharding.make_mesh()
  augment = trainer.augment_batch_fn(config, data, mesh)
  host = [
    sharding.shard_batch(
      sharding.pad_batch(
        pipeline.train_batch(data, 'train', batch, i, 0, config.data.augment, augment_on='device'),
        jax.local_device_count(),
      ),
      mesh,
    )
    for i in range(rounds + 1)
  ]
  step = [p for p in programs.build(config, batch, 1) if p.kind == 'train'][-1]

  def concrete(s):
    return np.ones(s.shape, s.dtype) if s.dtype == np.uint8 else np.zeros(s.shape, s.dtype)

  state, spec, rng, teachers = jax.tree.map(concrete, step.args)
  t0 = time.perf_counter()
  compiled = jax.jit(step.fn).trace(state, spec, rng, teachers).lower().compile()
  out = jax.block_until_ready(augment(host[0], 0, 0))
  print(f'compiled the step and the augmentation in {time.perf_counter() - t0:.1f} s', flush=True)
  step_batch = {k: np.asarray(out[k]) for k in spec}
  state, _ = compiled(state, step_batch, rng, teachers)
  jax.block_until_ready(state)
  aug_times, step_times = [], []
  for r in range(rounds):
    t0 = time.perf_counter()
    jax.block_until_ready(augment(host[r + 1], 0, r + 1))
    aug_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    state, metrics = compiled(state, step_batch, rng, teachers)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - t0)
  return statistics.median(aug_times), statistics.median(step_times)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--config', default='configs/kd.py:300w')
  p.add_argument('--batch', type=int, default=16, help='faces per step for the share (3)')
  p.add_argument('--rounds', type=int, default=4, help='augmentations / steps timed; 0: skip (3)')
  p.add_argument('--faces', type=int, default=512, help='faces held in memory')
  p.add_argument('--host-batches', type=int, default=20)
  p.add_argument('--old-batches', type=int, default=2, help='0: skip the host augmentation')
  args = p.parse_args()

  import jax

  from fkd import config_lib

  path, _, arg = args.config.partition(':')
  config = config_lib.load(path, arg or None)
  config.data.augment_on = 'device'
  data = make_data(config, args.faces)
  size, batch = config.data.image_size, config.train.batch_size
  host = host_rate(config, data, batch, args.host_batches, 'device')
  print(
    f'host, augment_on=device (gather + ship uint8), batch {batch}, {size}²: {host:,.0f} img/s '
    f'per core ({"ok" if host >= 5000 else "below the 5,000 goal"})',
    flush=True,
  )
  result = {'host_img_per_s_per_core': round(host, 1)}
  if args.old_batches:
    old = host_rate(config, data, batch, args.old_batches, 'host')
    print(f'host, augment_on=host (NumPy / PIL augmentation): {old:.1f} img/s per core', flush=True)
    result['host_augment_img_per_s_per_core'] = round(old, 2)
  if not args.rounds:
    print(json.dumps(result))
    return
  aug_s, step_s = augment_share(config, data, args.batch, args.rounds)
  share = aug_s / (aug_s + step_s)
  print(
    f'{jax.default_backend()}, batch {args.batch}, {size}²: device augmentation {aug_s * 1e3:.0f} '
    f'ms, train step {step_s * 1e3:.0f} ms: the augmentation is {100 * share:.1f} % of the two',
    flush=True,
  )
  result.update(
    augment_s=round(aug_s, 4),
    step_s=round(step_s, 4),
    augment_share=round(share, 4),
    batch=args.batch,
    image_size=size,
    backend=jax.default_backend(),
  )
  print(json.dumps(result))


if __name__ == '__main__':
  from fkd import cli

  cli.start()  # the CPU process settings of `python -m fkd.*`
  main()
