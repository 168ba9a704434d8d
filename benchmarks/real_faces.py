"""Real faces (issue 14): `configs/kd.py:300w,cpu` on held-out real 300W faces, one line per lever.

  python benchmarks/real_faces.py [--root /tmp/real_faces] [--levers base,no_pretrain,...]
                                  [--folds helen0] [--gallery]

The shared folder holds 120 real 300W training images (60 AFW, 60 HELEN train) and no test image,
so the benchmark holds faces out itself. Fold `helenK` (K = 0, 1, 2): the 60 HELEN training images,
sorted by name and shuffled with `numpy.random.default_rng(14)`, are cut into three folds of 20;
fold K becomes the `helen/testset` folder of an official-layout 300W tree (with its iBUG detector
boxes), the other 40 HELEN and the 60 AFW images are the training faces. `afw0` holds out 20 AFW
images the same way. The levers were tuned on `helen0` only; `helen1`, `helen2` and `afw0` are
reported, not tuned on. Each lever runs, as a user would,

  python -m fkd.main --config=configs/kd.py:300w,cpu --workdir=W --config.data.manual_dir=M \
      --config.data.allow_partial=True --config.data.data_dir=D  [the lever's overrides]

and prints the `common` NME of every model (the 20 held-out faces), the ratio student_kd / mean
shape, and the wall time. `--gallery` runs `fkd.predict` with the detector boxes on the held-out
photos of the first lever's run and draws a gallery PNG (`--gallery_out`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fkd.data import formats, testing  # noqa: E402

SHARED = pathlib.Path(os.environ.get('FKD_SHARED_DATA', REPO.parent / 'shared' / 'data'))
SRC = SHARED / 'spinkoo-face-alignement-300w'
BOXES = SHARED / 'luvli-300w-bounding-boxes' / 'Bounding Boxes'
FOLD_SEED = 14
NUM_FOLDS = 3


def fold_names(folder: str, k: int) -> list[str]:
  """The image names of fold k of a training folder ('afw' or 'helen/trainset')."""
  names = sorted(p.name for p in (SRC / folder).glob('*.jpg'))
  order = np.random.default_rng(FOLD_SEED).permutation(len(names))
  return sorted(names[i] for i in np.array_split(order, NUM_FOLDS)[k])


def parse_fold(fold: str) -> tuple[str, str, int]:
  """'helen1' -> ('helen/trainset', 'helen_trainset', 1)."""
  for prefix, folder, box_set in (
    ('helen', 'helen/trainset', 'helen_trainset'),
    ('afw', 'afw', 'afw'),
  ):
    if fold.startswith(prefix) and fold[len(prefix) :].isdigit():
      return folder, box_set, int(fold[len(prefix) :])
  raise SystemExit(f'--folds: expected helen0..2 or afw0..2, got {fold!r}')


def assemble(manual: pathlib.Path, fold: str) -> dict[str, int]:
  """An official-layout 300W tree whose only test faces (helen/testset) are the held-out fold."""
  held_folder, held_box_set, k = parse_fold(fold)
  held = set(fold_names(held_folder, k))
  boxes = {
    s: {b.name: b for b in formats.read_300w_boxes(BOXES / f'bounding_boxes_{s}.mat')}
    for s in ('afw', 'helen_trainset')
  }
  counts = {}
  entries: dict[str, list] = {'afw': [], 'helen_trainset': [], 'helen_testset': []}
  for folder, box_set in (('afw', 'afw'), ('helen/trainset', 'helen_trainset')):
    for img in sorted((SRC / folder).glob('*.jpg')):
      test = folder == held_folder and img.name in held
      dest = 'helen/testset' if test else folder
      (manual / dest).mkdir(parents=True, exist_ok=True)
      os.symlink(img, manual / dest / img.name)
      testing.wrap_bare_pts(img.with_suffix('.pts'), manual / dest / f'{img.stem}.pts')
      b = boxes[box_set][img.name]
      entries['helen_testset' if test else box_set].append((img.name, b.detector, b.ground_truth))
      counts[dest] = counts.get(dest, 0) + 1
  for box_set, rows in entries.items():
    testing.write_300w_boxes(manual / 'Bounding Boxes' / f'bounding_boxes_{box_set}.mat', rows)
  return counts


# ---------------------------------------------------------------------------------------------
# Levers: overrides of `configs/kd.py:300w,cpu`, each measured on the held-out fold.
#
# `pretrain` names the lever whose pre-stage a lever shares (same networks, resolution and
# pre-stage settings: the pre-stage runs would be identical; it does not depend on the fold and
# lives in ROOT/pretrain/<name>), `teachers` the lever whose finished teachers of the same fold it
# reuses (the lever changes only the student stage). Reuse only skips recomputing identical stages.

# Levers measured before photo crops were adopted (box_noise, reflect fill, 1200 student steps)
# keep the former crops (`EXACT_CROPS`, added after the table for every key a lever does not set
# itself) and the teachers of `exact_crops`, the former base, so that each reproduces the figure
# given for it. Every lever but `base` gets them; the photo-crop levers set all four keys
# (`photo_crops`).
EXACT_CROPS = [
  '--config.data.name=ibug_300w',
  '--config.data.box_noise=()',
  '--config.data.augment_fill=zeros',
  '--config.train.num_steps=600',
]
RESIDUALS = '(0.06, 0.05, 0.1, 0.1)'  # box_noise at the 300-W calibration's fit residuals
RESIDUALS_1_5 = '(0.09, 0.075, 0.15, 0.15)'  # 1.5x those


def photo_crops(fill: str, box_noise: str = RESIDUALS, steps: int = 1200) -> list[str]:
  """A photo-crop lever's overrides, every key of EXACT_CROPS among them: `fill` 'reflect' (the
  stored crop mirrored, `ibug_300w`) or 'context' (cut from the context images,
  `ibug_300w/context`)."""
  dataset = 'ibug_300w/context' if fill == 'context' else 'ibug_300w'
  return [
    f'--config.data.name={dataset}',
    f'--config.data.box_noise={box_noise}',
    f'--config.data.augment_fill={fill}',
    f'--config.train.num_steps={steps}',
  ]


# Levers measured when the config was at 64² (before `res96` was adopted) keep that resolution
# (`AT_64`) and the 64² pre-stage, so that each reproduces the figure the README gives for it.
AT_64 = ['--config.data.image_size=64']

LEVERS: dict[str, dict] = {
  'base': dict(doc='configs/kd.py:300w,cpu as committed (96²)', args=[], pretrain='base'),
  'exact_crops': dict(
    doc='the config before photo crops: exact landmark-box crops, black fill, 600 student steps',
    args=[],  # EXACT_CROPS, added below
    pretrain='base',
  ),
  'seed1': dict(
    doc='base at seed 1 for every stage, its own pre-stage included (seed noise)',
    args=['--config.seed=1'],
  ),
  'flip_aug': dict(
    doc="flip-only augmentation on the real faces instead of KD-Loss's",
    args=['--config.data.augment=flip'],
    pretrain='base',
  ),
  'pretrain_no_head': dict(
    doc='pre-stage without its head (init_skip=head, a fresh head)',
    args=["--config.student.init_skip=('head/.*',)", "--config.teacher.init_skip=('head/.*',)"],
    pretrain='base',
  ),
  'student_steps_x2': dict(
    doc='student fine-tune 1200 steps instead of 600',
    args=['--config.train.num_steps=1200'],
    pretrain='base',
    teachers='base',
  ),
  'box_noise': dict(
    doc='student crops jittered like the calibrated detector box misses the landmark box (the '
    "300-W calibration's fit residuals: centre 0.06 / 0.05 box, log size 0.1)",
    args=['--config.data.box_noise=(0.06, 0.05, 0.1, 0.1)'],
    pretrain='base',
    teachers='base',
  ),
  'box_noise_all': dict(
    doc='box_noise for every stage: the teachers are trained on the jittered crops too, so the '
    'KD-Loss guidance on a jittered student crop is not that of teachers that fill the crop',
    args=['--config.data.box_noise=(0.06, 0.05, 0.1, 0.1)'],
    pretrain='base',
  ),
  'box_noise_steps_x2': dict(
    doc='box_noise with the student fine-tuned 1200 steps instead of 600',
    args=['--config.data.box_noise=(0.06, 0.05, 0.1, 0.1)', '--config.train.num_steps=1200'],
    pretrain='base',
    teachers='base',
  ),
  'box_noise_shift': dict(
    doc='box_noise with 1.5x the centre jitter (0.09 / 0.075 box), the log size at 0.1',
    args=['--config.data.box_noise=(0.09, 0.075, 0.1, 0.1)'],
    pretrain='base',
    teachers='base',
  ),
  'box_noise_1.5_steps_x2': dict(
    doc='box_noise_1.5 with the student fine-tuned 1200 steps instead of 600',
    args=['--config.data.box_noise=(0.09, 0.075, 0.15, 0.15)', '--config.train.num_steps=1200'],
    pretrain='base',
    teachers='base',
  ),
  'photo_crops': dict(
    doc='every stage on crops jittered like detector boxes (box_noise at the residuals) with '
    'the stored crop padded by reflection (augment_fill=reflect, no black border at the true box)',
    args=photo_crops('reflect', steps=600),
    pretrain='base',
  ),
  'photo_crops_steps_x2': dict(
    doc='photo_crops with the student fine-tuned 1200 steps instead of 600',
    args=photo_crops('reflect'),
    pretrain='base',
    teachers='photo_crops',
  ),
  'photo_crops_1.5_steps_x2': dict(
    doc='photo_crops_steps_x2 with the student at 1.5x the residuals (teachers of photo_crops)',
    args=photo_crops('reflect', RESIDUALS_1_5),
    pretrain='base',
    teachers='photo_crops',
  ),
  'photo_crops_1.5': dict(
    doc='every stage at 1.5x the residuals with reflect fill, the student 1200 steps',
    args=photo_crops('reflect', RESIDUALS_1_5),
    pretrain='base',
  ),
  'photo_context': dict(
    doc='photo_crops_steps_x2 with real surroundings instead of the mirror: every stage on '
    'ibug_300w/context (the crop box doubled, stored beside each crop), augment_fill=context; '
    'the config with 1200 student steps',
    args=photo_crops('context'),
    pretrain='base',
  ),
  'photo_context_1.5': dict(
    doc='photo_context with the student at 1.5x the residuals (teachers of photo_context)',
    args=photo_crops('context', RESIDUALS_1_5),
    pretrain='base',
    teachers='photo_context',
  ),
  'photo_context_steps_x2': dict(
    doc='photo_context with 2400 student steps (teachers of photo_context): the config now',
    args=photo_crops('context', steps=2400),
    pretrain='base',
    teachers='photo_context',
  ),
  'box_noise_half': dict(
    doc='box_noise at half the residuals (centre 0.03 / 0.025 box, log size 0.05)',
    args=['--config.data.box_noise=(0.03, 0.025, 0.05, 0.05)'],
    pretrain='base',
    teachers='base',
  ),
  'box_noise_1.5': dict(
    doc='box_noise at 1.5x the residuals (centre 0.09 / 0.075 box, log size 0.15)',
    args=['--config.data.box_noise=(0.09, 0.075, 0.15, 0.15)'],
    pretrain='base',
    teachers='base',
  ),
  'teacher_lr_2e-3': dict(
    doc='teachers lr 2e-3 instead of 1e-3 (the student keeps its own)',
    args=['--config.teacher_train.lr=0.002'],
    pretrain='base',
  ),
  'teacher_w1': dict(
    doc='teachers MobileNetV2 width 1.0, depth 1.0 instead of 0.75 / 0.5 (own pre-stage)',
    args=['--config.teacher.kwargs.width=1.0', '--config.teacher.kwargs.depth=1.0'],
  ),
  # --- measured at 64² (the config before res96 was adopted) ---
  'res64': dict(doc='64² crops instead of 96² (the config before)', args=AT_64, pretrain='res64'),
  'res64_seed1': dict(
    doc='64², seed 1 for the three real stages (seed noise at 64²)',
    # The shared pre-stage was trained at seed 0: fkd.main would stop on the seed difference.
    args=[*AT_64, '--config.seed=1', '--allow_config_change'],
    pretrain='res64',
  ),
  'student_lr_1e-3': dict(
    doc='64², student lr 1e-3 instead of 2e-3 (same teachers as res64)',
    args=[*AT_64, '--config.train.lr=0.001'],
    pretrain='res64',
    teachers='res64',
  ),
  'seed1_lr_1e-3': dict(
    doc='64², student lr 1e-3 at seed 1, on the res64_seed1 teachers',
    args=[*AT_64, '--config.seed=1', '--config.train.lr=0.001', '--allow_config_change'],
    pretrain='res64',
    teachers='res64_seed1',
  ),
  'student_lr_5e-4': dict(
    doc='64², student lr 5e-4 instead of 2e-3 (same teachers as res64)',
    args=[*AT_64, '--config.train.lr=0.0005'],
    pretrain='res64',
    teachers='res64',
  ),
  'no_pretrain': dict(
    doc='64², student lr 1e-3, no synthetic pre-stage: every stage from random init',
    args=[*AT_64, '--config.train.lr=0.001', '--config.pretrain.dataset='],
  ),
  'mse_student': dict(
    doc='64², student lr 1e-3, without KD-Loss (configs/baseline.py:300w,cpu, MSE)',
    config='configs/baseline.py:300w,cpu',
    args=[*AT_64, '--config.train.lr=0.001'],
    pretrain='res64',
  ),
  'pretrain_x2': dict(
    doc='64², pre-stage twice as long (student 2000, teacher 1600 steps)',
    args=[
      *AT_64,
      '--config.pretrain.student_train.num_steps=2000',
      '--config.pretrain.teacher_train.num_steps=1600',
    ],
    pretrain='pretrain_x2',
  ),
  'real_x2': dict(
    doc='64², the three real stages twice as long (teachers 800, student 1200 steps)',
    args=[*AT_64, '--config.teacher_train.num_steps=800', '--config.train.num_steps=1200'],
    pretrain='res64',
  ),
}


def _with_exact_crops(args: list[str]) -> list[str]:
  """EXACT_CROPS, then the lever's own overrides (a key the lever sets is not repeated)."""
  own = {a.split('=', 1)[0] for a in args}
  return [a for a in EXACT_CROPS if a.split('=', 1)[0] not in own] + args


for _name, _lever in LEVERS.items():
  if _name != 'base':
    _lever['args'] = _with_exact_crops(_lever['args'])
    if _lever.get('teachers') == 'base':
      _lever['teachers'] = 'exact_crops'


def run_lever(
  name: str, fold: str, root: pathlib.Path, manual: pathlib.Path, data_dir: pathlib.Path
) -> dict:
  """Runs one lever on one fold (reusing identical finished stages); returns its results."""
  lever = LEVERS[name]
  workdir = root / 'runs' / fold / name
  workdir.mkdir(parents=True, exist_ok=True)
  extra = []
  if (src := lever.get('pretrain')) and not (workdir / 'pretrain').exists():
    (root / 'pretrain' / src).mkdir(parents=True, exist_ok=True)
    os.symlink(root / 'pretrain' / src, workdir / 'pretrain')
  if src := lever.get('teachers'):
    extra += [
      f'--config.teacher_{t}_ckpt={root / "runs" / fold / src / f"teacher_{t}"}'
      for t in ('tough', 'tolerant')
    ] + ["--config.stages=('student_kd',)"]
  config = lever.get('config', 'configs/kd.py:300w,cpu')
  cmd = [
    sys.executable,
    '-m',
    'fkd.main',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.data.manual_dir={manual}',
    '--config.data.allow_partial=True',
    f'--config.data.data_dir={data_dir}',
    *lever['args'],
    *extra,
  ]
  if config.startswith('configs/baseline.py'):  # MSE student beside the base run's teachers
    cmd = [c for c in cmd if not c.startswith('--config.teacher_')]
  t0 = time.time()
  with open(workdir / 'log.txt', 'w') as log:
    log.write(' '.join(cmd) + '\n')
    log.flush()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
  results = json.loads((workdir / 'results.json').read_text())
  results['bench_wall_s'] = time.time() - t0
  results['cmd'] = ' '.join(cmd[1:])
  return results


def real_shapes(fold: str, size: int) -> np.ndarray:
  """The real 300W training shapes of ../shared/data (337 AFW + 870 HELEN train .pts, most of them
  without images) minus the held-out fold, in the KD crop frame at `size`² (landmark box ± 5 px,
  as the builder crops). Never the HELEN test shapes nor the test CSVs."""
  from fkd.data import crops

  held_folder, _, k = parse_fold(fold)
  held = {n[:-4] for n in fold_names(held_folder, k)}
  shapes = []
  for folder in ('afw', 'helen/trainset'):
    for p in sorted((SRC / folder).glob('*.pts')):
      if folder == held_folder and p.stem in held:
        continue
      pts = formats.read_pts(p, expected_points=68, allow_bare=True) - 1.0  # 1-based raw
      box = np.concatenate([pts.min(0) - 5.0, pts.max(0) + 5.0])
      shapes.append(crops.apply(crops.box_transform(box, size), pts))
  return np.stack(shapes).astype(np.float32)


def posthoc(
  fold: str, root: pathlib.Path, manual: pathlib.Path, data_dir: pathlib.Path, source: str = 'base'
) -> list[str]:
  """Levers applied to a finished run's predictions (no training): the real-shape prior (mean
  shape and ASM projection on a PCA of the real training shapes), flip test-time augmentation
  and the average of the three models."""
  from configs import kd
  from fkd.data import asm
  from fkd.data import pipeline as ip
  from fkd.evaluation import metrics
  from fkd.serve import predict

  c = kd.get_config('300w,cpu')
  c.data.manual_dir, c.data.allow_partial, c.data.data_dir = str(manual), True, str(data_dir)
  data = ip.load(c)
  test, size = data.splits['common'], data.image_size
  nme = lambda pred: 100 * float(metrics.nme_per_image(pred, test.landmarks, c.eval.norm).mean())
  shapes = real_shapes(fold, size)
  real_mean = nme(np.broadcast_to(shapes.mean(0), test.landmarks.shape))
  train_mean = nme(np.broadcast_to(data.splits['train'].landmarks.mean(0), test.landmarks.shape))
  lines = [
    f'mean shape of the {len(shapes)} real shapes {real_mean:.2f}, of the '
    f'{len(data.splits["train"])} training faces {train_mean:.2f}'
  ]
  preds = {}
  for stage in ('teacher_tolerant', 'teacher_tough', 'student_kd'):
    model = predict.Predictor(str(root / 'runs' / fold / source / stage))
    plain = model(test.images)
    flipped = model(test.images[:, :, ::-1].copy())[:, data.flip_permutation].copy()
    flipped[..., 0] = size - 1 - flipped[..., 0]
    preds[stage] = plain
    row = [f'{stage} {nme(plain):.2f}', f'flip-TTA {nme((plain + flipped) / 2):.2f}']
    for acc in (0.95, 0.97, 0.99):
      for name, fit in (('real', shapes), ('train', data.splits['train'].landmarks)):
        projected = asm.asm_project(asm.fit_pca(fit, acc), plain)
        row.append(f'ASM-{name}{acc:g} {nme(projected):.2f}')
    lines.append(' '.join(row))
  lines.append(f'average of the 3 models {nme(np.mean(list(preds.values()), 0)):.2f}')
  return [f'posthoc({source}) {fold}: {line}' for line in lines]


def summary(name: str, fold: str, results: dict) -> str:
  models = results['models']
  nme = {m: r['common']['nme'] for m, r in models.items()}
  student = nme.get('student_kd', nme.get('student_baseline'))
  ratio = student / nme['mean_shape'] if student is not None else float('nan')
  cells = ' '.join(f'{m}={v:.2f}' for m, v in nme.items())
  return (
    f'{name:18s} {fold:7s} student/mean={ratio:.3f} {cells} '
    f'wall={results["bench_wall_s"] / 60:.1f}min'
  )


def gallery(
  workdir: pathlib.Path, manual: pathlib.Path, out: pathlib.Path, cols: int = 5, tile: int = 128
) -> None:
  """`fkd.predict` on every held-out photo with its iBUG detector box; a gallery PNG of them.

  Uses `fkd.predict.run` (what `python -m fkd.predict --workdir=W --image=P --bbox=x,y,w,h
  --margin=0 --output=O` runs) per photo, the overlays and JSON in `workdir/predict/`; the tile
  shows the detector box region widened by 15 %, ground truth (green) and prediction (red), and
  the photo's inter-ocular NME (outer eye corners, photo pixels).
  """
  from PIL import Image, ImageDraw

  from fkd.serve import predict

  test = manual / 'helen' / 'testset'
  boxes = {
    b.name: b
    for b in formats.read_300w_boxes(manual / 'Bounding Boxes' / 'bounding_boxes_helen_testset.mat')
  }
  shutil.rmtree(workdir / 'predict', ignore_errors=True)  # this gallery's own outputs, remade
  tiles, nmes = [], []
  for img_path in sorted(test.glob('*.jpg')):
    x0, y0, x1, y1 = boxes[img_path.name].detector
    bbox = (x0, y0, x1 - x0, y1 - y0)
    [json_path] = predict.run(
      str(img_path), str(workdir / 'predict'), workdir=str(workdir), bbox=bbox, margin=0.0
    )
    [face] = json.loads(pathlib.Path(json_path).read_text())['faces']  # the one boxed face
    pred = np.asarray(face['landmarks'])
    gt = formats.read_pts(img_path.with_suffix('.pts'), expected_points=68) - 1.0  # 1-based
    nme = np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45])
    nmes.append(nme)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.575 * max(x1 - x0, y1 - y0)
    img = Image.open(img_path).convert('RGB')
    left, top = round(cx - half), round(cy - half)
    side = round(2 * half)
    crop = img.crop((left, top, left + side, top + side)).resize(  # black outside the photo
      (tile, tile), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    draw = ImageDraw.Draw(crop)
    s = tile / side
    for points, color in ((gt, (40, 255, 40)), (pred, (255, 40, 40))):
      for x, y in (points + 0.5 - [left, top]) * s:
        draw.ellipse([x - 1.2, y - 1.2, x + 1.2, y + 1.2], fill=color)
    draw.rectangle([0, 0, 62, 11], fill=(0, 0, 0))
    draw.text((2, 0), f'NME {100 * nme:.1f}%', fill=(255, 255, 255))
    tiles.append(crop)
  rows = -(-len(tiles) // cols)
  sheet = Image.new('RGB', (cols * tile, rows * tile), (255, 255, 255))
  for i, t in enumerate(tiles):
    sheet.paste(t, ((i % cols) * tile, (i // cols) * tile))
  out.parent.mkdir(parents=True, exist_ok=True)
  sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
  print(
    f'gallery: {out} ({out.stat().st_size / 1024:.0f} KB), {len(tiles)} held-out photos, '
    f'detector boxes: mean NME {100 * np.mean(nmes):.2f} % (median '
    f'{100 * np.median(nmes):.2f} %)',
    flush=True,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default='/tmp/real_faces')
  parser.add_argument(
    '--levers', default=','.join(LEVERS), help=f'comma-separated subset of {",".join(LEVERS)}'
  )
  parser.add_argument('--folds', default='helen0', help='helen0,helen1,helen2,afw0,...')
  parser.add_argument(
    '--posthoc',
    action='store_true',
    help="the first lever's models with the real-shape prior, flip TTA, average",
  )
  parser.add_argument(
    '--gallery',
    action='store_true',
    help="fkd.predict on the first fold's held-out photos of the first lever",
  )
  parser.add_argument('--gallery_out', default=str(REPO / 'benchmarks' / 'real_faces.png'))
  args = parser.parse_args()
  if not SRC.is_dir():
    sys.exit(f'{SRC} is absent (set FKD_SHARED_DATA)')
  root = pathlib.Path(args.root)
  levers = [n for n in args.levers.split(',') if n]
  if unknown := [n for n in levers if n not in LEVERS]:
    sys.exit(f'--levers: unknown {unknown}; known: {", ".join(LEVERS)}')
  for fold in args.folds.split(','):
    manual = root / 'manual' / fold
    if not manual.exists():
      print(fold, 'manual tree:', assemble(manual, fold), flush=True)
    data_dir = root / 'tfds' / fold
    data_dir.mkdir(parents=True, exist_ok=True)
    shared_syn = root / 'tfds' / 'synthetic_faces'  # one synthetic build for every fold
    shared_syn.mkdir(parents=True, exist_ok=True)
    if not (data_dir / 'synthetic_faces').exists():
      os.symlink(shared_syn, data_dir / 'synthetic_faces')
    # A lever that reuses another's stages needs that one first.
    order = []
    for n in levers:
      for dep in (LEVERS[n].get('teachers'),):
        if dep and dep not in order:
          order.append(dep)
      if n not in order:
        order.append(n)
    for n in order:
      results = run_lever(n, fold, root, manual, data_dir)
      print(summary(n, fold, results), flush=True)
    if args.posthoc:
      print('\n'.join(posthoc(fold, root, manual, data_dir, levers[0])), flush=True)
  if args.gallery:
    fold = args.folds.split(',')[0]
    gallery(
      root / 'runs' / fold / levers[0], root / 'manual' / fold, pathlib.Path(args.gallery_out)
    )


if __name__ == '__main__':
  main()
