"""cofw: COFW (29 points, occlusion flags) and COFW-68 from the manual download (datasets.md §3–4).

Configs:
* `default` — COFW, 29 points: `train` (1345) and `test` (507) from `COFW_{train,test}_color.mat`
  (MATLAB v7.3 / HDF5, read with h5py, arrays transposed) or the grayscale release's
  `COFW_{train,test}.mat` (older MATLAB versions via scipy), loose or inside the zip.
  Crop (KD-Loss test protocol, method.md §2.2, every split): union(given bbox,
  [0.95 x_min, 0.95 y_min, 1.05 x_max, 1.05 y_max] of the landmarks) — 5 % of the coordinate values,
  the original's quirk.
* `cofw68` — COFW-68 (Ghiasi & Fowlkes), 68 points in the 300W scheme, test only (507): images
  from the COFW test `.mat`, points from `COFW68_Data/test_annotations/<i>_points.mat`
  (i = 1..507 in `IsT` order). Crop: the 300W protocol (extent ± 5 px), since COFW-68
  evaluates 300W-trained models. No train split, so its soft landmarks are NaN and it has no PCA.

Raw values are stored; the crop frame uses raw − 1 (`origin_offset` −1, method.md §1.3) for both.
Example keys: `<mat file>/IsT/<1-based index>#0`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fkd.data import augment, face_builder, formats, schemes
from fkd.data.face_builder import Face

MAT_NAMES = {
  'train': ('COFW_train_color.mat', 'COFW_train.mat'),
  'test': ('COFW_test_color.mat', 'COFW_test.mat'),
}
ZIP_NAMES = ('COFW_color.zip', 'COFW.zip')
COFW68_DIRS = ('COFW68_Data', 'cofw68-benchmark/COFW68_Data', 'cofw68_benchmark/COFW68_Data')
OFFICIAL = {'train': 1345, 'test': 507}
MARGIN_68 = 5.0


@dataclasses.dataclass(eq=False)
class CofwConfig(face_builder.FaceBuilderConfig):
  """cofw options: `variant` 'cofw29' (COFW) or 'cofw68' (COFW-68 test set)."""

  variant: str = 'cofw29'


class Cofw(face_builder.FaceLandmarkBuilder):
  """COFW (29 points + occlusion) and COFW-68, KD-Loss face crops, from the manual download."""

  name = 'cofw'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    CofwConfig(name='default', description='COFW 29 points, 224 px KD-Loss crops.'),
    CofwConfig(
      name='cofw68',
      variant='cofw68',
      description='COFW-68 (68 points, 300W scheme), test only, 224 px crops.',
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  SCHEME = 'cofw'
  AUGMENT = 'cofw'
  ORIGIN_OFFSET = -1.0
  TARGET_SPACE = 'pixel'  # method.md §2.2: COFW regresses raw 224-frame pixels
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download COFW from https://data.caltech.edu/records/bc0bf-nc666 (research use only):
COFW_color.zip, and put in `manual_dir` either the zip itself or its two files

  COFW_train_color.mat     1345 faces (IsTr, phisTr, bboxesTr; MATLAB v7.3)
  COFW_test_color.mat       507 faces (IsT, phisT, bboxesT)

(the grayscale release's COFW_train.mat / COFW_test.mat or COFW.zip also work). For the `cofw68`
config also clone https://github.com/golnazghiasi/cofw68-benchmark and put its folder

  COFW68_Data/test_annotations/{1..507}_points.mat and COFW68_Data/cofw68_test_bboxes.mat

in `manual_dir` (COFW_test_color.mat supplies the images). Build with
  python -m fkd.data.build --dataset=cofw [--config=cofw68] --manual_dir=<folder> --data_dir=<dir>
and add --allow_partial to build a subset of the files.
"""

  @property
  def _variant(self) -> str:
    return self.builder_config.variant

  @property
  def CROP_PROTOCOL(self) -> str:  # noqa: N802  (class attribute in the other builders)
    if self._variant == 'cofw68':
      return (
        '300W protocol: landmark extent +- 5 px (after the origin offset), clamped to the '
        'image, anisotropic resize'
      )
    return (
      'KD-Loss COFW test protocol: union(given bbox, [0.95 x_min, 0.95 y_min, 1.05 x_max, '
      '1.05 y_max] of the landmarks after the origin offset), clamped, anisotropic resize'
    )

  def _scheme(self) -> schemes.Scheme:
    return schemes.SCHEMES['cofw68' if self._variant == 'cofw68' else 'cofw']

  def _extra_features(self):
    n = self._scheme().num_landmarks
    return {
      'occluded': tfds.features.Tensor(shape=(n,), dtype=np.bool_),
      # Raw [x_min, y_min, x_max, y_max] from the given [x y w h] (NaN when unavailable).
      'box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
    }

  def _official_counts(self, splits):
    return {'test': 507} if self._variant == 'cofw68' else dict(OFFICIAL)

  def _crop_box(self, face, points):
    if self._variant == 'cofw68':
      return np.concatenate([points.min(0) - MARGIN_68, points.max(0) + MARGIN_68])
    box = face.extras['box'].astype(np.float64) + self.ORIGIN_OFFSET
    ext = np.concatenate([0.95 * points.min(0), 1.05 * points.max(0)])
    return np.concatenate([np.minimum(box[:2], ext[:2]), np.maximum(box[2:], ext[2:])])

  def _collect(self, root: pathlib.Path):
    problems: list[str] = []
    splits: dict[str, list[Face]] = {}
    parts = ('test',) if self._variant == 'cofw68' else ('train', 'test')
    mats = {}
    for part in parts:
      found = self._find_mat(root, part)
      if found is None:
        problems.append(
          f'{" or ".join(MAT_NAMES[part])}: not found in {root} or in '
          f'{" / ".join(ZIP_NAMES)} ({OFFICIAL[part]} faces expected)'
        )
        splits[part] = []
        continue
      path, rel = found
      mat = formats.CofwMat(path, part)
      self._cleanups.append(mat.close)
      if len(mat) != OFFICIAL[part]:
        problems.append(f'{rel}: {len(mat)} faces; expected {OFFICIAL[part]}')
      mats[part] = (mat, rel)
    if self._variant == 'cofw68':
      splits['test'] = self._cofw68_faces(root, mats.get('test'), problems)
      return splits, problems
    for part, (mat, rel) in mats.items():
      var = mat.names[0]
      splits[part] = [
        Face(
          filename=f'{rel}/{var}/{i + 1}',
          face_index=0,
          landmarks=mat.landmarks[i],
          size=mat.image_size(i),
          load=_mat_loader(mat, i),
          extras={
            'occluded': mat.occluded[i],
            'box': formats.xywh_to_xyxy(mat.boxes[i]).astype(np.float32),
          },
          copies=augment.num_copies('cofw'),
        )
        for i in range(len(mat))
      ]
    return splits, problems

  def _cofw68_faces(self, root: pathlib.Path, test, problems: list[str]) -> list[Face]:
    base = next((root / d for d in COFW68_DIRS if (root / d).is_dir()), None)
    if base is None:
      problems.append(f'COFW68_Data/: folder not found in {root} (507 _points.mat expected)')
      return []
    rel_base = base.relative_to(root).as_posix()
    boxes = None
    if (base / 'cofw68_test_bboxes.mat').exists():
      boxes = formats.read_cofw68_boxes(base / 'cofw68_test_bboxes.mat')
    else:
      problems.append(f'{rel_base}/cofw68_test_bboxes.mat: not found (boxes are NaN)')
    missing = [
      f'{i}_points.mat'
      for i in range(1, 508)
      if not (base / 'test_annotations' / f'{i}_points.mat').exists()
    ]
    if missing:
      problems.append(
        f'{rel_base}/test_annotations/: {len(missing)} of 507 files missing: '
        f'{face_builder.missing_list(missing)}'
      )
    if test is None:
      return []
    mat, rel = test
    faces = []
    for i in range(1, min(len(mat), 507) + 1):
      path = base / 'test_annotations' / f'{i}_points.mat'
      if not path.exists():
        continue
      points, occ = formats.read_cofw68_points(path)
      box = (
        formats.xywh_to_xyxy(boxes[i - 1])
        if boxes is not None and i <= len(boxes)
        else np.full(4, np.nan)
      )
      faces.append(
        Face(
          filename=f'{rel}/{mat.names[0]}/{i}',
          face_index=0,
          landmarks=points,
          size=mat.image_size(i - 1),
          load=_mat_loader(mat, i - 1),
          extras={'occluded': occ, 'box': box.astype(np.float32)},
        )
      )
    return faces

  def _find_mat(self, root: pathlib.Path, part: str) -> tuple[pathlib.Path, str] | None:
    """(path, name relative to manual_dir) of the part's .mat, loose or extracted from a zip."""
    for name in MAT_NAMES[part]:
      for p in (root / name, *sorted(root.glob(f'*/{name}'))):
        if p.is_file():
          return p, p.relative_to(root).as_posix()
    for zname in ZIP_NAMES:
      zpath = root / zname
      if not zpath.is_file():
        continue
      try:
        with zipfile.ZipFile(zpath) as z:
          members = {pathlib.PurePosixPath(m).name: m for m in z.namelist()}
          for name in MAT_NAMES[part]:
            if name in members:
              tmp = pathlib.Path(tempfile.mkdtemp(prefix='fkd-cofw-'))
              self._cleanups.append(lambda t=tmp: shutil.rmtree(t, ignore_errors=True))
              return pathlib.Path(z.extract(members[name], tmp)), f'{zname}/{members[name]}'
      except zipfile.BadZipFile:
        raise formats.DataFormatError(f'{zpath}: not a valid zip file') from None
    return None


def _mat_loader(mat: formats.CofwMat, i: int):
  return lambda draft=None: Image.fromarray(mat.image(i))
