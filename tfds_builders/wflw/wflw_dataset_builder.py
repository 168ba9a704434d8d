"""wflw: WFLW (98 points) from the official manual download (datasets.md §2).

Splits: `train` (7500 faces), `test` (2500) and the six attribute subsets of the test split
`pose` (326), `expression` (314), `illumination` (698), `makeup` (206), `occlusion` (736) and
`blur` (773), filtered from the test list's attribute flags. When the official subset lists
(`list_98pt_test/`) are present they are checked against the filters (a warning on mismatch).

Crop (KD-Loss test protocol, method.md §2.2, every split): union(given rect, landmark extent
± 3 px), clamped to the image, anisotropic resize to `crop_size`². Values are used as given
(`origin_offset` 0). Example key: `WFLW_images/<image_name>#<face_index>`.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fkd.data import augment, face_builder, formats
from fkd.data.face_builder import Face

LIST_DIR = 'WFLW_annotations/list_98pt_rect_attr_train_test'
SUBSET_DIR = 'WFLW_annotations/list_98pt_test'
IMAGES = 'WFLW_images'
OFFICIAL = {
  'train': 7500,
  'test': 2500,
  'pose': 326,
  'expression': 314,
  'illumination': 698,
  'makeup': 206,
  'occlusion': 736,
  'blur': 773,
}
MARGIN = 3.0  # method.md §2.2: WFLW test crop, union(rect, extent ± 3 px)


class WflwConfig(face_builder.FaceBuilderConfig):
  """wflw options (see face_builder.FaceBuilderConfig)."""


class Wflw(face_builder.FaceLandmarkBuilder):
  """WFLW, 98 points, KD-Loss face crops, from the manual download."""

  name = 'wflw'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [WflwConfig(name='default', description='224 px KD-Loss crops.')]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  SCHEME = 'wflw'
  AUGMENT = 'wflw'
  ORIGIN_OFFSET = 0.0
  TARGET_SPACE = 'normalized'
  CROP_PROTOCOL = (
    'KD-Loss test protocol: union(given rect, landmark extent +- 3 px), clamped '
    'to the image, anisotropic resize'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download WFLW from https://wywu.github.io/projects/LAB/WFLW.html (non-commercial research use):
WFLW_images.tar.gz and WFLW_annotations.tar.gz, and unpack both into `manual_dir`:

  WFLW_images/<N>--<Event>/*.jpg           (0--Parade .. 61--Street_Battle; keep the names)
  WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt   7500 faces
  WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_test.txt    2500 faces
  WFLW_annotations/list_98pt_test/list_98pt_test_*.txt                optional (checked)

Build with
  python -m fkd.data.build --dataset=wflw --manual_dir=<that folder> --data_dir=<tfds dir>
and add --allow_partial to build a subset of the files.
"""

  def _extra_features(self):
    return {
      'box_rect': tfds.features.Tensor(shape=(4,), dtype=np.float32),
      'attributes': tfds.features.Tensor(shape=(6,), dtype=np.bool_),
    }

  def _extra_metadata(self):
    return {
      'attribute_names': list(formats.WFLW_ATTRIBUTES),
      'subset_lists_agree': self._subsets_agree,
    }

  def _official_counts(self, splits):
    return dict(OFFICIAL)

  def _crop_box(self, face, points):
    rect = face.extras['box_rect'].astype(np.float64)
    lo, hi = points.min(0) - MARGIN, points.max(0) + MARGIN
    return np.concatenate([np.minimum(lo, rect[:2]), np.maximum(hi, rect[2:])])

  def _collect(self, root: pathlib.Path):
    problems: list[str] = []
    splits: dict[str, list[Face]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    test_records = None
    if not (root / IMAGES).is_dir():
      problems.append(f'{IMAGES}/: folder not found')
    for split in ('train', 'test'):
      path = root / LIST_DIR / f'list_98pt_rect_attr_{split}.txt'
      splits[split] = []
      if not path.exists():
        problems.append(f'{LIST_DIR}/{path.name}: not found ({OFFICIAL[split]} faces expected)')
        continue
      records = formats.read_wflw_list(path, with_rect_attr=True)
      if split == 'test':
        test_records = records
      if len(records) != OFFICIAL[split]:
        problems.append(f'{path.name}: {len(records)} lines; expected {OFFICIAL[split]}')
      missing = set()
      for r in records:
        image = root / IMAGES / r.image_name
        rel = f'{IMAGES}/{r.image_name}'
        if rel not in sizes:
          if not image.is_file():
            missing.add(rel)
            continue
          sizes[rel] = face_builder.image_size(image, rel)
        splits[split].append(
          Face(
            filename=rel,
            face_index=r.face_index,
            landmarks=r.points,
            size=sizes[rel],
            load=face_builder.file_loader(image, rel),
            extras={'box_rect': r.rect.astype(np.float32), 'attributes': r.attributes},
            copies=augment.num_copies('wflw', r.attributes),
          )
        )
      if missing:
        problems.append(
          f'{split}: {len(missing)} images missing: {face_builder.missing_list(missing)}'
        )
    for j, attr in enumerate(formats.WFLW_ATTRIBUTES):
      splits[attr] = [f for f in splits['test'] if f.extras['attributes'][j]]
    self._subsets_agree = self._check_subset_lists(root, test_records)
    return splits, problems

  def _check_subset_lists(self, root: pathlib.Path, records) -> bool | None:
    """Compares the official subset lists with the attribute filters (None: not checked)."""
    if records is None or not (root / SUBSET_DIR).is_dir():
      return None
    agree = True
    for attr, fname in zip(formats.WFLW_ATTRIBUTES, formats.WFLW_SUBSET_FILES, strict=True):
      path = root / SUBSET_DIR / fname
      if not path.exists():
        continue
      listed = {
        formats.wflw_face_key(r.image_name, r.points)
        for r in formats.read_wflw_list(path, with_rect_attr=False)
      }
      mask = formats.wflw_subset_mask(records, attr)
      filtered = {
        formats.wflw_face_key(r.image_name, r.points)
        for r, m in zip(records, mask, strict=True)
        if m
      }
      if listed != filtered:
        agree = False
        print(
          f"wflw: warning: {fname} lists {len(listed)} faces, the '{attr}' flag selects "
          f'{len(filtered)} ({len(listed ^ filtered)} differ)',
          flush=True,
        )
    return agree
