"""ibug_300w: 300-W (68 points) from the official iBUG manual download (datasets.md §1).

Splits: `train` (afw + helen/trainset + lfpw/trainset, 3148), `common` (helen/testset +
lfpw/testset, 554), `challenging` (ibug, 135), `full` (common + challenging, 689) and `private`
(01_Indoor + 02_Outdoor, 600; only when those folders are present).

Crop (KD-Loss, method.md §2.2): landmark extent ± 5 original pixels, every split, clamped to the
image, anisotropic resize to `crop_size`². Raw `.pts` values are stored in `landmarks_original`;
the crop frame uses raw − 1 (`origin_offset` = −1, method.md §1.3).
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fkd.data import augment, face_builder, formats
from fkd.data.face_builder import Face

# (folder, official count, box-file set) per split (datasets.md §1.1, §1.5).
FOLDERS = {
  'train': (
    ('afw', 337, 'afw'),
    ('helen/trainset', 2000, 'helen_trainset'),
    ('lfpw/trainset', 811, 'lfpw_trainset'),
  ),
  'common': (('helen/testset', 330, 'helen_testset'), ('lfpw/testset', 224, 'lfpw_testset')),
  'challenging': (('ibug', 135, 'ibug'),),
}
PRIVATE = (('01_Indoor', 'indoor'), ('02_Outdoor', 'outdoor'))  # 300 faces each
PRIVATE_PARENTS = ('', '300W', 'Test', '300w')
BOX_DIRS = ('Bounding Boxes', 'Bounding_Boxes')
OFFICIAL = {'train': 3148, 'common': 554, 'challenging': 135, 'full': 689}
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
MARGIN = 5.0  # method.md §2.2: 300W extent ± 5 px (train and test)


class Ibug300wConfig(face_builder.FaceBuilderConfig):
  """ibug_300w options (see face_builder.FaceBuilderConfig)."""


class Ibug300w(face_builder.FaceLandmarkBuilder):
  """300-W, 68 points, KD-Loss face crops, from the iBUG manual download."""

  name = 'ibug_300w'

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    Ibug300wConfig(name='default', description='224 px KD-Loss crops.'),
    # For photo models (configs/kd.py:300w,cpu, config.data.augment_fill='context'): the same
    # crops plus their surroundings, half the crop's width and height past each side.
    Ibug300wConfig(
      name='context',
      description='224 px KD-Loss crops and 448 px context images (the crop box doubled).',
      context=0.5,
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  SCHEME = '300w'
  AUGMENT = '300w'
  ORIGIN_OFFSET = -1.0
  TARGET_SPACE = 'normalized'
  CROP_PROTOCOL = (
    'KD-Loss: landmark extent +- 5 px (original pixels, after the origin offset), '
    'clamped to the image, anisotropic resize'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the 300-W data from https://ibug.doc.ic.ac.uk/resources/300-W/ (registration; research
use only) and unpack it so that `manual_dir` holds:

  afw/*.jpg + *.pts                      337 faces   train
  helen/trainset/*.jpg + *.pts          2000 faces   train
  helen/testset/*.jpg + *.pts            330 faces   common
  lfpw/trainset/*.png + *.pts            811 faces   train
  lfpw/testset/*.png + *.pts             224 faces   common
  ibug/*.jpg + *.pts                     135 faces   challenging  (keep `image_092 _01.jpg` as is)
  Bounding Boxes/bounding_boxes_*.mat    optional: detector and ground-truth boxes
                                         (Bounding_Boxes.zip)
  01_Indoor/, 02_Outdoor/                optional: the 300-W competition set (300w.zip), 300 + 300
                                         faces, split `private`; also found under 300W/ or Test/

Every image needs its `.pts` next to it (same base name). Build with
  python -m fkd.data.build --dataset=300w --manual_dir=<that folder> --data_dir=<tfds dir>
and add --allow_partial to build a subset of the files.
"""

  def _extra_features(self):
    box = lambda: tfds.features.Tensor(shape=(4,), dtype=np.float32)
    # Raw [x_min, y_min, x_max, y_max] from the box files (NaN detector box when unavailable).
    return {'box_detector': box(), 'box_ground_truth': box()}

  def _official_counts(self, splits):
    out = dict(OFFICIAL)
    if 'private' in splits:
      out['private'] = 600
    return out

  def _crop_box(self, face, points):
    return np.concatenate([points.min(0) - MARGIN, points.max(0) + MARGIN])

  def _collect(self, root: pathlib.Path):
    boxes = _read_boxes(root)
    afw_names = {b.name for b in boxes.get('afw', [])}
    problems: list[str] = []
    splits: dict[str, list[Face]] = {}
    for split, folders in FOLDERS.items():
      splits[split] = []
      for folder, count, box_set in folders:
        entries = boxes.get(box_set)
        expected = None
        if entries is not None:
          names = [b.name for b in entries]
          if box_set == 'ibug':  # entries 136..337 are stale AFW entries (datasets.md §1.7)
            names = [n for n in names if n not in afw_names] if afw_names else names[:135]
          expected = set(names)
        splits[split] += _folder(root, folder, count, expected, entries or [], problems)
    splits['full'] = splits['common'] + splits['challenging']
    parent = next(
      (p for p in PRIVATE_PARENTS if any((root / p / d).is_dir() for d, _ in PRIVATE)), None
    )
    if parent is not None:
      splits['private'] = []
      for d, stem in PRIVATE:
        folder = f'{parent}/{d}' if parent else d
        expected = {f'{stem}_{i:03d}.png' for i in range(1, 301)}
        splits['private'] += _folder(root, folder, 300, expected, [], problems)
    return splits, problems


def _read_boxes(root: pathlib.Path) -> dict[str, list[formats.Box300W]]:
  for d in BOX_DIRS:
    if (root / d).is_dir():
      return {
        s: formats.read_300w_boxes(p)
        for s in ('afw', 'helen_trainset', 'helen_testset', 'lfpw_trainset', 'lfpw_testset', 'ibug')
        if (p := root / d / f'bounding_boxes_{s}.mat').exists()
      }
  return {}


def _folder(
  root: pathlib.Path,
  folder: str,
  count: int,
  expected: set[str] | None,
  boxes: list[formats.Box300W],
  problems: list[str],
) -> list[Face]:
  """The faces of one 300W folder; appends what is missing to `problems`."""
  d = root / folder
  if not d.is_dir():
    problems.append(f'{folder}/: folder not found ({count} faces expected)')
    return []
  images = {}
  for name in formats.iter_files(d, IMAGE_EXTS):
    images.setdefault(name.rsplit('.', 1)[0], name)
  pts = {n.rsplit('.', 1)[0] for n in formats.iter_files(d, ('.pts',))}
  if no_pts := sorted(images[s] for s in images.keys() - pts):
    problems.append(f'{folder}/: images without a .pts file: {face_builder.missing_list(no_pts)}')
  if no_img := sorted(f'{s}.pts' for s in pts - images.keys()):
    problems.append(f'{folder}/: .pts files without an image: {face_builder.missing_list(no_img)}')
  stems = sorted(images.keys() & pts)
  if expected is not None:
    if missing := expected - {images[s] for s in stems}:
      problems.append(
        f'{folder}/: {len(missing)} of {len(expected)} faces missing: '
        f'{face_builder.missing_list(missing)}'
      )
  elif len(stems) != count:
    problems.append(f'{folder}/: {len(stems)} faces; expected {count}')
  joined = formats.join_boxes(boxes, [images[s] for s in stems])
  faces = []
  for s in stems:
    name = images[s]
    rel = f'{folder}/{name}'
    points = formats.read_pts(d / f'{s}.pts', expected_points=68)
    box = joined.get(name)
    nan = np.full(4, np.nan)
    extent = np.concatenate([points.min(0), points.max(0)])
    faces.append(
      Face(
        filename=rel,
        face_index=0,
        landmarks=points,
        size=face_builder.image_size(d / name, rel),
        load=face_builder.file_loader(d / name, rel),
        extras={
          'box_detector': (box.detector if box else nan).astype(np.float32),
          'box_ground_truth': (box.ground_truth if box else extent).astype(np.float32),
        },
        copies=augment.num_copies('300w'),
      )
    )
  return faces
