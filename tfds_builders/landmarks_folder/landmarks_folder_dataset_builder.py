"""landmarks_folder: any point set, any folder (`DIR/dataset.json`, see `fkd.data.folder`).

One TFDS config per folder, made by `fkd.data.build.make_builder(..., manual_dir=DIR)`: its name is
the folder's base name plus a digest of its path and dataset.json, and it carries the validated
dataset.json (`spec`) so that the features (N points) are known before the build.

Crop (as ibug_300w): the box (the annotation's box, else the extent of the points with v > 0),
after `origin_offset`, ± `crop_margin`, clamped to the image, anisotropic resize to `crop_size`².
The dataset.json facts go into `info.metadata` (`nme_normalizer`, `flip_permutation` (null: no
flip), `landmark_names`, `splits`, `train_split`); the trainer reads them there at load time.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fkd.data import augment, face_builder, folder, schemes
from fkd.data.face_builder import Face
from fkd.errors import FkdError


@dataclasses.dataclass(eq=False)
class LandmarksFolderConfig(face_builder.FaceBuilderConfig):
  """A folder dataset: `num_landmarks` and the validated dataset.json (`spec`, JSON text)."""

  num_landmarks: int = 1
  spec: str = ''


@dataclasses.dataclass(frozen=True)
class FolderScheme(schemes.Scheme):
  """The mark-up of a dataset.json: one normaliser, stored in both `norm` distances."""

  spec: folder.Spec | None = None

  def distances(self, points):
    d = self.spec.normalizing_distance(points)
    return d, d

  def metadata(self) -> dict:
    s = self.spec.to_json()
    return {
      'num_landmarks': self.num_landmarks,
      'flip_permutation': s['flip_permutation'],
      'nme_normalizer': s['nme_normalizer'],
      'landmark_names': s['landmark_names'],
    }


class LandmarksFolder(face_builder.FaceLandmarkBuilder):
  """Any landmark set from a folder of images + .pts / CSV / COCO keypoints + dataset.json."""

  name = 'landmarks_folder'

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    LandmarksFolderConfig(name='default', description='Made per folder by fkd.data.build.')
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  AUGMENT = '300w'  # the KD augmentation constants (copies, re-crop margin) of 300W
  TARGET_SPACE = 'normalized'
  CROP_PROTOCOL = (
    'box (annotation, else landmark extent) +- crop_margin (original pixels, after the origin '
    'offset), clamped to the image, anisotropic resize'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder with a dataset.json and one subfolder per split (any names; `train` is trained on,
every other split is evaluated):

  DIR/dataset.json   {"format": "pts" | "csv" | "coco", "num_landmarks": N,
                      "flip_permutation": [...] | null, "nme_normalizer": [i, j] | [[...], [...]],
                      "landmark_names": [...] (optional)}
  DIR/train/...      pts: images, each with a .pts beside it
  DIR/test/...       csv: images + landmarks.csv (file,x0,y0,...)
                     coco: images + annotations.json (COCO keypoints, file_name relative to it)

Build with
  python -m fkd.data.build --dataset=folder --manual_dir=DIR --data_dir=<tfds dir>
"""

  def _spec(self) -> folder.Spec:
    cfg = self.builder_config
    if not cfg.spec:
      raise FkdError(
        "landmarks_folder: make the builder with fkd.data.build.make_builder('folder', "
        'data_dir, manual_dir=DIR) (python -m fkd.data.build --dataset=folder --manual_dir=DIR)'
      )
    return folder.parse_spec(json.loads(cfg.spec))

  def _scheme(self) -> schemes.Scheme:
    n = self.builder_config.num_landmarks
    spec = self._spec() if self.builder_config.spec else None
    perm = spec.flip_permutation if spec and spec.flip_permutation else tuple(range(n))
    return FolderScheme('folder', n, perm, (0, 0), ((0,), (0,)), spec)

  def _extra_features(self):
    n = self.builder_config.num_landmarks
    return {
      # COCO v per point (0 not labelled, 1 labelled but not visible, 2 visible); 2 for pts / csv.
      'visibility': tfds.features.Tensor(shape=(n,), dtype=np.int32),
      # Raw [x_min, y_min, x_max, y_max] of the annotation's box (NaN when it has none).
      'box_annotation': tfds.features.Tensor(shape=(4,), dtype=np.float32),
    }

  def _official_counts(self, splits):
    return {}

  def _crop_box(self, face, points):
    box = face.extras.pop('_box')
    m = self._spec().margin(box)
    return box + np.array([-m, -m, m, m])

  def _extra_metadata(self):
    s = self._spec().to_json()
    return {
      'format': s['format'],
      'train_split': s['train_split'],
      'splits': list(self._split_names),
      'crop_margin': s['crop_margin'],
      'box': s['box'],
      'augment': self.AUGMENT,
      'dataset_json': s,
    }

  def _collect(self, root: pathlib.Path):
    spec = self._spec()
    on_disk = folder.read_spec(root)
    if on_disk != spec:
      raise FkdError(
        f'{root / folder.SPEC_FILE} changed since this builder was made; make it again'
      )
    self.ORIGIN_OFFSET = spec.origin_offset
    records = folder.read_records(root, spec)
    self._split_names = tuple(records)
    splits = {}
    for split, recs in records.items():
      faces = []
      for r in recs:
        size = folder.image_size(r)
        folder.check_points(r, size, spec)
        box = folder.face_box(r, spec)
        folder.check_box(r, box, size)
        faces.append(
          Face(
            filename=r.filename,
            face_index=r.face_index,
            landmarks=folder.filled_points(r),
            size=size,
            load=face_builder.file_loader(r.path, r.filename),
            extras={
              'visibility': r.visibility,
              'box_annotation': (r.box if r.box is not None else np.full(4, np.nan)).astype(
                np.float32
              ),
              '_box': box,
            },
            copies=augment.num_copies(self.AUGMENT),
          )
        )
      if not faces:
        raise FkdError(f'{root}: split {split!r} has no annotated faces')
      splits[split] = faces
    return splits, []

  def _fit_pcas(self, train):
    if self._spec().flip_permutation is not None or self.builder_config.asm_fit_set == 'plain':
      return super()._fit_pcas(train)
    # No flip permutation: the flipped copies of 'augmented' / 'plain_plus_flips' are undefined.
    cfg = self.builder_config
    fit = np.stack([lm for _, _, _, lm in train])
    n = self.builder_config.num_landmarks
    labelled = np.stack([self._face_mask(face, n) for face, _, _, _ in train])
    note = (
      f'plain (no flip_permutation, so no flipped copies; asm_fit_set={cfg.asm_fit_set} not '
      f'applied): {len(fit)} shapes from the {len(train)} train faces, crop frame '
      f'({cfg.crop_size} px), pixel space, no Procrustes{face_builder.imputed_note(labelled)}'
    )
    return face_builder.fit_pcas(fit, face_builder.ASM_ACCS, labelled), note

  def _labelled(self, face):
    v = face.extras.get('visibility')
    return None if v is None or np.all(v > 0) else np.asarray(v) > 0
