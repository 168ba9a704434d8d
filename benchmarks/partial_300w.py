"""The KD-Loss pipeline on a partial 300W: the 120 real training images of ../shared/data.

  python benchmarks/partial_300w.py [--workdir /tmp/partial_300w] [--test_faces 48]

Assembles a 300W manual-download tree from `../shared/data/spinkoo-face-alignement-300w` (60 AFW +
60 HELEN training images; their `.pts` lack the header and are wrapped in it) and the real iBUG box
files. The shared folder holds no 300W test images, so the `common` (HELEN / LFPW test) and
`challenging` (iBUG) folders get rendered synthetic faces: the run checks the pipeline, not the
accuracy. Then it runs, as a user would,

  python -m fkd.main --config=configs/kd.py:300w,runlocal --workdir=W \
      --config.data.manual_dir=M --config.data.allow_partial=True --config.data.data_dir=D

(dataset build, the three stages, evaluation) and prints its wall time and results.json's splits.
The goal of the issue: all three stages in under 10 minutes on a 2-core CPU.
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


def assemble(manual: pathlib.Path, test_faces: int) -> dict[str, int]:
  """Writes the partial tree; returns faces per folder."""
  src = SHARED / 'spinkoo-face-alignement-300w'
  counts = {}
  for folder in ('afw', 'helen/trainset'):
    (manual / folder).mkdir(parents=True)
    images = sorted((src / folder).glob('*.jpg'))
    for img in images:
      os.symlink(img, manual / folder / img.name)
      testing.wrap_bare_pts(img.with_suffix('.pts'), manual / folder / f'{img.stem}.pts')
    counts[folder] = len(images)
  boxes = manual / 'Bounding Boxes'
  boxes.mkdir()
  for name in ('afw', 'helen_trainset'):
    os.symlink(
      SHARED / 'luvli-300w-bounding-boxes' / 'Bounding Boxes' / f'bounding_boxes_{name}.mat',
      boxes / f'bounding_boxes_{name}.mat',
    )
  # Synthetic stand-ins for the test folders (no real 300W test image is in ../shared/data).
  seed = 10_000
  for folder, box_set, ext, n in (
    ('helen/testset', 'helen_testset', '.jpg', test_faces // 2),
    ('lfpw/testset', 'lfpw_testset', '.png', test_faces // 2),
    ('ibug', 'ibug', '.jpg', test_faces // 4),
  ):
    (manual / folder).mkdir(parents=True)
    entries = []
    for i in range(n):
      seed += 1
      stem = f'image_{i + 1:04d}' if folder != 'helen/testset' else f'{seed}_1'
      img, points = testing.render(seed, 160)
      raw = points.astype(np.float64) + 1.0  # .pts are 1-based
      testing._save(img, manual / folder / f'{stem}{ext}')
      (manual / folder / f'{stem}.pts').write_text(formats.format_pts(raw))
      extent = np.concatenate([raw.min(0), raw.max(0)])
      entries.append((f'{stem}{ext}', extent + [-4, -4, 4, 4], extent))
    testing.write_300w_boxes(boxes / f'bounding_boxes_{box_set}.mat', entries)
    counts[folder] = n
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/partial_300w')
  parser.add_argument('--test_faces', type=int, default=48)
  args = parser.parse_args()
  if not SHARED.is_dir():
    sys.exit(f'{SHARED} is absent')
  root = pathlib.Path(args.workdir)
  shutil.rmtree(root, ignore_errors=True)
  counts = assemble(root / 'manual', args.test_faces)
  print('manual tree:', counts, flush=True)
  cmd = [
    sys.executable,
    '-m',
    'fkd.main',
    '--config=configs/kd.py:300w,runlocal',
    f'--workdir={root / "run"}',
    f'--config.data.manual_dir={root / "manual"}',
    '--config.data.allow_partial=True',
    f'--config.data.data_dir={root / "tfds"}',
  ]
  print(' '.join(cmd), flush=True)
  t0 = time.time()
  subprocess.run(cmd, cwd=REPO, check=True)
  wall = time.time() - t0
  results = json.loads((root / 'run' / 'results.json').read_text())
  for model, splits in results['models'].items():
    print(model, {s: (r['nme'], r['count']) for s, r in splits.items()})
  print(f'wall time: {wall:.0f} s ({wall / 60:.1f} min; goal < 10 min)')


if __name__ == '__main__':
  main()
