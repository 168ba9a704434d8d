"""The accelerator programs of a config, built and lowered on any machine, and their speed here.

  python benchmarks/accelerator.py --config=configs/kd.py:300w [--platforms=tpu,cuda]
      [--local-batch=2] [--local-steps=3] [--local-size=0] [--pipeline-batches=3]

What it does, with no dataset and no checkpoint (`fkd.tools.programs`: shapes only):

1. builds every program of the config at its own shapes (the paper's, for `:300w`): each stage's
   train step (frozen teachers inside), the evaluation forward pass (`config.eval.batch_size`),
   the predict forward pass (one image) and, with `config.data.augment_on='device'`, the training
   augmentation (`augment`: `fkd.data.device_augment`, at the first stage's batch);
2. lowers each for every `--platforms` entry with the accelerator formulation
   (`fkd.models.layers.target_platform`: every 'auto' resolves as on that platform) and
   `jit(...).trace(...).lower(lowering_platforms=(p,))`, and counts the custom calls of the
   StableHLO text that are kernels (`programs.custom_calls`: every `stablehlo.custom_call` target
   except the partitioner annotations Sharding / SPMDFullToShardShape / SPMDShardToFullShape /
   annotate_device_placement); fkd's programs must have none, since no accelerator has fkd's
   native CPU kernels;
3. FLOPs per image of each program: XLA's cost analysis of the first platform's lowering
   (`Lowered.cost_analysis()`, before optimisation: multiply-adds count 2; a train step includes
   its frozen teachers' forward passes);
4. host pipeline images/s per core: `fkd.data.pipeline.train_batch` on one thread, on synthetic
   faces (`fkd.data.testing.render`) at the config's crop size: with `config.data.augment_on=
   'device'` (the default) gathering a batch of stored uint8 crops and shipping it to the device,
   with 'host' augmenting it in NumPy / PIL (`benchmarks/input_pipeline.py` has both);
   `--pipeline-batches` batches of 16 faces ('host') or 10x as many of the config's batch;
5. on the local backend, the train steps themselves, with the local formulation: step time and
   images/s at `--local-batch` (compile excluded, median of `--local-steps` after one warm-up
   step); with `--local-size` > 0 at that crop size instead of the config's (compiling the
   paper-size programs on a small CPU is slow). On GPU/TPU also MFU: FLOPs per image × images/s
   of one device over that device's peak in the config's compute dtype (`PEAK_FLOPS`, dense, by
   `device_kind`).

The last line is JSON: `{"lowered": {"<stage>/<program>": {"<platform>": true}}, "custom_calls":
N, "flops_per_image": {...}, "host_img_per_s_per_core": ..., "backend": ..., "img_per_s":
{...}}` (plus `step_s`, `local_shape` and, off CPU with a known device kind, `mfu`,
`device_kind`, `peak_flops`, `compute_dtype`). Exit status 1 when a lowering fails or
a custom call remains.
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

from fkd import cli  # noqa: E402

# Peak dense FLOP/s of one JAX device, by `jax.Device.device_kind` prefix (the longest match):
# (bfloat16, float32). float32 is the rate of JAX's default precision for float32 convolutions and
# dots, which computes them in one bfloat16 pass on a TPU and in TF32 on NVIDIA tensor cores from
# Ampere on (docs.jax.dev "Matmul precision"); older GPUs run float32 on CUDA cores. MFU divides
# by the entry of `config.compute_dtype`. Sources: Google Cloud TPU system-architecture pages
# (cloud.google.com/tpu/docs/v3, v4, v5e, v5p, v6e: peak bf16 per chip) and NVIDIA data sheets
# (their tensor-core figures "with sparsity" halved to dense).
PEAK_FLOPS: dict[str, tuple[float, float]] = {
  # TPU v2 and v3: a JAX device is one TensorCore, two per chip (a v2-8 is 4 chips, 8 devices).
  # v2: 45 T per chip (180 T per 4-chip Cloud TPU v2 board), so 22.5 T per device.
  'TPU v2': (22.5e12, 22.5e12),
  'TPU v3': (61.5e12, 61.5e12),  # 123 T per chip (tpu/docs/v3), 2 TensorCores
  'TPU v4': (275e12, 275e12),  # 275 T per chip (tpu/docs/v4): one megacore device per chip
  'TPU v5 lite': (197e12, 197e12),  # v5e: 197 T per chip, one TensorCore (tpu/docs/v5e)
  'TPU v5e': (197e12, 197e12),
  'TPU v5p': (459e12, 459e12),  # 459 T per chip, megacore (tpu/docs/v5p)
  'TPU v5': (459e12, 459e12),  # v5p's device_kind
  'TPU v6 lite': (918e12, 918e12),  # v6e (Trillium): 918 T per chip (tpu/docs/v6e)
  'TPU v6e': (918e12, 918e12),
  # H100 SXM5 data sheet: BF16 1,979 T and TF32 989 T with sparsity (FP32 CUDA cores 67 T).
  'NVIDIA H100': (989e12, 494.5e12),
  'NVIDIA H100 PCIe': (756e12, 378e12),  # H100 PCIe: BF16 1,513 T, TF32 756 T with sparsity
  'NVIDIA H200': (989e12, 494.5e12),  # the H100 SXM's compute with more HBM
  # A100 data sheet (SXM4 and PCIe): BF16 312 T, TF32 156 T dense (FP32 CUDA cores 19.5 T).
  'NVIDIA A100': (312e12, 156e12),
  # L4 data sheet: BF16 242 T and TF32 120 T with sparsity (FP32 30.3 T).
  'NVIDIA L4': (121e12, 60e12),
  # T4 data sheet: FP16 tensor cores 65 T, FP32 8.1 T. No bfloat16 tensor cores (fkd's notebooks
  # train float32 there), so a bfloat16 MFU on a T4 is against the FP16 peak: a bound.
  'Tesla T4': (65e12, 8.1e12),
  # V100 SXM2 data sheet: FP16 tensor cores 125 T, FP32 15.7 T (no TF32, no bfloat16).
  'Tesla V100': (125e12, 15.7e12),
}


def peak_flops(device_kind: str, dtype: str = 'bfloat16') -> float | None:
  """Peak dense FLOP/s of one device of `device_kind` computing in `dtype` (None: unknown)."""
  matches = [k for k in PEAK_FLOPS if device_kind.startswith(k)]
  if not matches:
    return None
  bf16, f32 = PEAK_FLOPS[max(matches, key=len)]
  return f32 if dtype == 'float32' else bf16


def mfu(flops_per_image: float, img_per_s: float, device_kind: str, dtype: str) -> float | None:
  """Model-FLOP utilisation of one device: the program's FLOPs per image (XLA's count, before
  optimisation) times the images per second it trained, over the device's peak in `dtype`."""
  peak = peak_flops(device_kind, dtype)
  return flops_per_image * img_per_s / peak if peak else None


def pipeline_rate(config, batches: int) -> float:
  """Images per second per core of the host's part of training batches, at the config's crop
  size and batch, on synthetic faces (`benchmarks/input_pipeline.py`): with
  `augment_on='device'` gathering and shipping the uint8 crops, with 'host' augmenting them."""
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  import input_pipeline

  augment_on = config.data.get('augment_on', 'auto')
  augment_on = 'device' if augment_on == 'auto' else augment_on  # as on a TPU / GPU
  data = input_pipeline.make_data(config, 512 if augment_on == 'device' else 32, soft=False)
  batch = config.train.batch_size if augment_on == 'device' else 16
  count = batches if augment_on == 'host' else 10 * batches
  return input_pipeline.host_rate(config, data, batch, count, augment_on)


def time_step(program, steps: int) -> float:
  """Median seconds of one call of a compiled train step (arguments zeros / ones)."""
  import jax

  def concrete(s):
    return np.ones(s.shape, s.dtype) if s.dtype == np.uint8 else np.zeros(s.shape, s.dtype)

  state, batch, rng, teachers = jax.tree.map(concrete, program.args)
  compiled = jax.jit(program.fn).trace(state, batch, rng, teachers).lower().compile()
  state, _ = compiled(state, batch, rng, teachers)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, rng, teachers)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='configs/x.py[:ARG]')
  parser.add_argument('--platforms', default='tpu,cuda')
  parser.add_argument('--local-batch', type=int, default=2)
  parser.add_argument('--local-steps', type=int, default=3)
  parser.add_argument('--local-size', type=int, default=0, help='0: the config crop size')
  parser.add_argument('--pipeline-batches', type=int, default=3)
  args = parser.parse_args(argv)
  cli.start()

  import jax

  from fkd import config_lib
  from fkd.tools import programs

  path, _, arg = args.config.partition(':')
  config = config_lib.load(path, arg or None)
  platforms = [p for p in args.platforms.split(',') if p]
  lowered: dict[str, dict[str, bool]] = {}
  flops: dict[str, float] = {}
  calls_total = 0
  failed = False
  t0 = time.time()
  for program in programs.build(config):
    lowered[program.name] = {}
    for platform in platforms:
      try:
        low = programs.lower(program, platform)
      except Exception as e:  # noqa: BLE001  (reported, and the exit status says so)
        print(f'{program.name} [{platform}]: lowering failed: {type(e).__name__}: {e}')
        lowered[program.name][platform] = False
        failed = True
        continue
      calls = programs.custom_calls(low.as_text())
      calls_total += sum(calls.values())
      lowered[program.name][platform] = True
      if program.name not in flops:
        cost = low.cost_analysis() or {}
        if isinstance(cost, list):
          cost = cost[0] if cost else {}
        if cost.get('flops'):
          flops[program.name] = float(cost['flops']) / program.images
      note = f' custom calls {calls}' if calls else ''
      print(f'{program.name} [{platform}]: lowered, {program.images} image(s){note}', flush=True)
  print(f'lowering: {time.time() - t0:.1f}s')

  host_rate = pipeline_rate(config, args.pipeline_batches)
  where = config.data.get('augment_on', 'auto')
  where = 'device' if where == 'auto' else where
  print(
    f'host pipeline ({config.data.augment} on the {where}, {config.data.image_size}²): '
    f'{host_rate:.1f} img/s per core'
  )

  if args.local_size:
    config.data.image_size = args.local_size
  local = [p for p in programs.build(config, args.local_batch, 1) if p.kind == 'train']
  backend = jax.default_backend()
  img_per_s, step_s, utilisation = {}, {}, {}
  device_kind = jax.devices()[0].device_kind
  dtype = str(config.get('compute_dtype', 'float32'))
  measured: dict[str, float] = {}  # the same step twice (KD's two teachers): timed once
  for program in local if args.local_steps > 0 else []:
    key = repr(jax.tree.map(lambda s: (s.shape, str(s.dtype)), program.args))
    if key not in measured:
      measured[key] = time_step(program, args.local_steps)
    seconds = measured[key]
    step_s[program.name] = round(seconds, 4)
    img_per_s[program.name] = round(program.images / seconds, 2)
    rate = img_per_s[program.name]
    print(f'{program.name} [{backend}]: {seconds * 1e3:.1f} ms/step, {rate} img/s')
    if backend != 'cpu' and program.name in flops and not args.local_size:
      util = mfu(flops[program.name], rate, device_kind, dtype)
      if util is not None:
        utilisation[program.name] = round(util, 4)
  result = {
    'lowered': lowered,
    'custom_calls': calls_total,
    'flops_per_image': {k: round(v) for k, v in flops.items()},
    'host_img_per_s_per_core': round(host_rate, 2),
    'backend': backend,
    'img_per_s': img_per_s,
    'step_s': step_s,
    'local_shape': [args.local_batch, config.data.image_size],
  }
  if utilisation:
    result['mfu'] = utilisation
    result['device_kind'] = device_kind
    result['peak_flops'] = peak_flops(device_kind, dtype)
    result['compute_dtype'] = dtype
  print(json.dumps(result))
  return 1 if failed or calls_total else 0


if __name__ == '__main__':
  sys.exit(main())
