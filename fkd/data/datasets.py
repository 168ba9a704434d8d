"""The one table of dataset facts: TFDS name, mark-up, evaluation splits, KD-Loss protocol, crops.

Per-point facts (flip permutation, normalising index sets) live with the mark-up in
`fkd.data.schemes`; the builders store them in their TFDS metadata too. Builders are found by
module name (`builder_module`), so fkd never imports `tfds_builders` at import time.
"""

from __future__ import annotations

import dataclasses
import importlib

from fkd.data import crops, schemes
from fkd.errors import FkdError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Attributes:
  key: the name in config args and `fkd.data.build --dataset`.
  tfds_name: the TFDS builder name.
  scheme: the mark-up, a key of `fkd.data.schemes.SCHEMES` ('' for `folder`: from dataset.json).
  eval_splits: the official test splits, in report order (() for `folder`: every split but train).
  kd_norm: the NME normalisation KD-Loss reports (method.md §2.7, results.md §2); 'dataset' for
    `folder`: the nme_normalizer of its dataset.json, read from the built dataset's metadata.
  kd_space: KD-Loss's regression space (method.md §2.2 / §9 #5).
  builder_module: the module that registers the builder with TFDS.
  builder_config: the TFDS config `fkd.data.build` uses by default (None: the builder's own).
  crop_margin: how far the training crops reach beyond the landmark box (`crops.CropMargin`), as
    prediction reproduces them; a folder dataset's own `crop_margin` (its metadata) wins.
  """

  key: str
  tfds_name: str
  scheme: str
  eval_splits: tuple[str, ...]
  kd_norm: str
  kd_space: str
  builder_module: str
  builder_config: str | None = None
  # WFLW and COFW crops (a box union) are wider than a few pixels: the embedded dataset's margin.
  crop_margin: crops.CropMargin = crops.CropMargin(0.05)

  @property
  def num_landmarks(self) -> int:
    """N of the mark-up; 0 when the dataset itself says (`folder`: its dataset.json)."""
    return schemes.SCHEMES[self.scheme].num_landmarks if self.scheme else 0

  @property
  def contours(self) -> tuple[tuple[int, int, bool], ...]:
    """The mark-up's point groups for drawing (`schemes.CONTOURS`; () for none)."""
    return schemes.CONTOURS.get(self.scheme, ())

  def builder_class(self):
    module = importlib.import_module(self.builder_module)
    return getattr(module, module.BUILDER_CLASS)


DATASETS = {
  d.key: d
  for d in (
    Dataset(
      'synthetic',
      'synthetic_faces',
      '300w',
      ('test',),
      'inter_ocular',
      'normalized',
      'tfds_builders.synthetic_faces',
      crop_margin=crops.CropMargin(0.05),  # its builder's crop_margin
    ),
    Dataset(
      '300w',
      'ibug_300w',
      '300w',
      ('common', 'challenging', 'full'),
      'inter_ocular',
      'normalized',
      'tfds_builders.ibug_300w',
      # The landmark extent ± 5 source px (its builder's MARGIN): 0.013 of the landmark box's
      # width and height, the median over the 300-W faces (scale-free, for photos of any size).
      crop_margin=crops.CropMargin(0.013),
    ),
    Dataset(
      'wflw',
      'wflw',
      'wflw',
      ('test', 'pose', 'expression', 'illumination', 'makeup', 'occlusion', 'blur'),
      'inter_pupil',
      'normalized',
      'tfds_builders.wflw',
    ),
    Dataset('cofw', 'cofw', 'cofw', ('test',), 'inter_ocular', 'pixel', 'tfds_builders.cofw'),
    Dataset(
      'cofw68', 'cofw', 'cofw68', ('test',), 'inter_ocular', 'pixel', 'tfds_builders.cofw', 'cofw68'
    ),
    # Your own landmarks: the facts come from DIR/dataset.json (fkd.data.folder).
    Dataset(
      'folder',
      'landmarks_folder',
      '',
      (),
      'dataset',
      'normalized',
      'tfds_builders.landmarks_folder',
    ),
  )
}


def get(key: str) -> Dataset:
  if key not in DATASETS:
    raise FkdError(f'unknown dataset {key!r}; known: {sorted(DATASETS)}')
  return DATASETS[key]


def by_tfds_name(name: str) -> Dataset | None:
  """The dataset of a TFDS name ('ibug_300w', 'synthetic_faces/small:1.1.0', ...), or None."""
  base = name.split('/')[0].split(':')[0]
  return next((d for d in DATASETS.values() if d.tfds_name == base), None)


def register_builders() -> None:
  """Imports every builder module, which registers the builders with TFDS."""
  for module in dict.fromkeys(d.builder_module for d in DATASETS.values()):
    importlib.import_module(module)
