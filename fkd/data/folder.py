"""Your own landmarks: `dataset.json` + a folder of images and annotations (`landmarks_folder`).

The facts of a folder dataset come from `DIR/dataset.json`, never from code:

  {"format": "pts" | "csv" | "coco",
   "num_landmarks": N,
   "landmark_names": [...],                  optional, N names
   "flip_permutation": [...] | null,         0-based involution; null: no flip augmentation
   "nme_normalizer": [i, j] | [[...], [...]],  two points, or two groups whose means are used
   "splits": ["train", "test"] | {"train": "train.txt", ...},   optional (default: subfolders)
   "train_split": "train",                   optional
   "origin_offset": -1 | 0,                  optional; added to the raw values (default: -1 for
                                             .pts, MATLAB-style like 300W; 0 for csv and coco)
   "crop_margin": 5 | "10%",                 optional; original pixels or % of the box's longer
                                             side around the box (default 5 px, KD-Loss 300W)
   "box": "annotation" | "points"}           optional; the crop box from the annotations'
                                             boxes when they have them (default) or the points

Splits: one subfolder per split (`DIR/train/`, `DIR/test/`, any names; `train` is trained on), or
`splits` mapping names to list files (one image path relative to DIR per line; annotations then
live at DIR's top level). Per format, a split folder (or DIR, with list files) holds:

* `pts`: images, each with a `.pts` (same base name) beside it; header-less `x y` files too;
* `csv`: images plus `landmarks.csv`, header `file,x0,y0,...` (optional trailing columns
  `bbox_x,bbox_y,bbox_w,bbox_h`), one row per face; `file` relative to the folder;
* `coco`: images plus `annotations.json` (COCO keypoints: `images` with `id` and `file_name`
  relative to the folder, `annotations` with `image_id`, `keypoints` (x, y, v) * N and optional
  `bbox` [x, y, w, h]); v is kept (`visibility`).

Unlabelled points (COCO v = 0; in a CSV, a point whose x and y cells are both empty; in a `.pts`,
a point written `-1 -1`) have no position: they are left out of the crop box, stored at the mean
of the face's labelled points (a finite stand-in, `visibility` 0), and left out of the training
losses (`fkd.data.pipeline.LABELLED`), the metrics, the ASM fit and projection (`fkd.data.asm`:
imputed from the model, projected from the labelled points) and worst.png. An eval face whose
NME normaliser has an unlabelled point is left out of the metrics with a note. A v = 1 point
(labelled, hidden) keeps its position, trains and is scored. A face with no labelled point, and
a CSV row repeating an earlier one, are left out with a one-line note. Image names must be paths
inside the folder, and labelled points must lie on or near their image (within half its size
around it); images are decoded upright (EXIF orientation applied, as people annotate them).

Every problem is one `FkdError` line naming the file and the row.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any

import numpy as np

from fkd.data import formats
from fkd.errors import FkdError

SPEC_FILE = 'dataset.json'
FORMATS = ('pts', 'csv', 'coco')
ANNOTATIONS = {'csv': 'landmarks.csv', 'coco': 'annotations.json'}
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp')
KEYS = {
  'format',
  'num_landmarks',
  'landmark_names',
  'flip_permutation',
  'nme_normalizer',
  'splits',
  'train_split',
  'origin_offset',
  'crop_margin',
  'box',
  'description',
}
BOX_COLUMNS = ('bbox_x', 'bbox_y', 'bbox_w', 'bbox_h')
# A `.pts` line of exactly `-1 -1` (raw, before origin_offset) marks a point missing, as some
# annotation tools write it: the iBUG syntax has no flag, and no 1-based coordinate is -1.
MISSING_PTS = (-1.0, -1.0)
MISSING_PTS_TEXT = '-1 -1'


@dataclasses.dataclass(frozen=True)
class Spec:
  """A validated dataset.json (see the module docstring)."""

  format: str
  num_landmarks: int
  landmark_names: tuple[str, ...] | None
  flip_permutation: tuple[int, ...] | None
  nme_normalizer: tuple[Any, Any]  # two ints, or two tuples of ints
  splits: tuple[tuple[str, str], ...] | None  # (name, subfolder or list file); None: subfolders
  train_split: str
  origin_offset: float
  crop_margin: float  # >= 0: pixels; < 0: minus the fraction of the box's longer side
  box: str

  def to_json(self) -> dict[str, Any]:
    norm = [list(g) if isinstance(g, tuple) else g for g in self.nme_normalizer]
    return {
      'format': self.format,
      'num_landmarks': self.num_landmarks,
      'landmark_names': list(self.landmark_names) if self.landmark_names else None,
      'flip_permutation': list(self.flip_permutation) if self.flip_permutation else None,
      'nme_normalizer': norm,
      'splits': _splits_json(self.splits),
      'train_split': self.train_split,
      'origin_offset': self.origin_offset,
      'crop_margin': self.crop_margin if self.crop_margin >= 0 else f'{-100 * self.crop_margin:g}%',
      'box': self.box,
    }

  def margin(self, box: np.ndarray) -> float:
    """The crop margin in original pixels around box [L, T, R, B]."""
    if self.crop_margin >= 0:
      return self.crop_margin
    return -self.crop_margin * float(max(box[2] - box[0], box[3] - box[1]))

  def normalizing_distance(self, points: np.ndarray) -> np.ndarray:
    """The NME normaliser of (..., N, 2) points, float64."""
    p = np.asarray(points, np.float64)
    a, b = (
      p[..., list(g), :].mean(axis=-2) if isinstance(g, tuple) else p[..., g, :]
      for g in self.nme_normalizer
    )
    return np.linalg.norm(a - b, axis=-1)


def _splits_json(splits):
  if splits is None:
    return None
  if all(name == target for name, target in splits):
    return [name for name, _ in splits]
  return dict(splits)


def _err(msg: str) -> FkdError:
  return FkdError(msg)


def _index(v: Any, n: int, where: str) -> int:
  if isinstance(v, bool) or not isinstance(v, int):
    raise _err(f'{where}: {v!r} is not a point index (0-based int)')
  if not 0 <= v < n:
    raise _err(f'{where}: index {v} out of range for num_landmarks={n} (0..{n - 1})')
  return v


def parse_spec(data: Any, where: str = SPEC_FILE) -> Spec:
  """Validates the parsed dataset.json; every error is one line naming the key."""
  if not isinstance(data, dict):
    raise _err(f'{where}: expected a JSON object, got {type(data).__name__}')
  unknown = sorted(set(data) - KEYS)
  if unknown:
    raise _err(f'{where}: unknown key(s) {unknown}; known: {sorted(KEYS)}')
  for key in ('format', 'num_landmarks', 'nme_normalizer'):
    if key not in data:
      raise _err(f'{where}: missing key {key!r}')
  fmt = data['format']
  if fmt not in FORMATS:
    raise _err(f'{where}: format {fmt!r}; expected one of {list(FORMATS)}')
  n = data['num_landmarks']
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise _err(f'{where}: num_landmarks {n!r}; expected a positive int')
  names = data.get('landmark_names')
  if names is not None:
    if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
      raise _err(f'{where}: landmark_names must be a list of strings')
    if len(names) != n:
      raise _err(f'{where}: landmark_names has {len(names)} names; num_landmarks is {n}')
    names = tuple(names)
  perm = data.get('flip_permutation')
  if perm is not None:
    if not isinstance(perm, list):
      raise _err(f'{where}: flip_permutation must be a list of {n} indices or null')
    if len(perm) != n:
      raise _err(f'{where}: flip_permutation has {len(perm)} entries; num_landmarks is {n}')
    perm = tuple(_index(v, n, f'{where}: flip_permutation[{i}]') for i, v in enumerate(perm))
    for i, j in enumerate(perm):
      if perm[j] != i:
        raise _err(
          f'{where}: flip_permutation is not an involution: flip_permutation[{i}] = {j} but '
          f'flip_permutation[{j}] = {perm[j]} (expected {i})'
        )
  norm = data['nme_normalizer']
  if not isinstance(norm, list) or len(norm) != 2:
    raise _err(f'{where}: nme_normalizer must be two point indices or two lists of indices')
  groups = []
  for k, g in enumerate(norm):
    w = f'{where}: nme_normalizer[{k}]'
    if isinstance(g, list):
      if not g:
        raise _err(f'{w}: empty group')
      groups.append(tuple(_index(v, n, f'{w}[{i}]') for i, v in enumerate(g)))
    else:
      groups.append(_index(g, n, w))
  if groups[0] == groups[1]:
    raise _err(f'{where}: nme_normalizer names the same point (group) twice: {norm}')
  splits = data.get('splits')
  if splits is not None:
    if isinstance(splits, list) and all(isinstance(s, str) for s in splits) and splits:
      splits = tuple((s, s) for s in splits)
    elif isinstance(splits, dict) and splits and all(isinstance(v, str) for v in splits.values()):
      splits = tuple((str(k), v) for k, v in splits.items())
    else:
      raise _err(
        f'{where}: splits must be a list of subfolder names or an object split -> list file'
      )
    for s, _ in splits:
      if not re.fullmatch(r'[A-Za-z0-9_]+', s):
        raise _err(f'{where}: split name {s!r}; use letters, digits and _')
  train = data.get('train_split', 'train')
  if not isinstance(train, str):
    raise _err(f'{where}: train_split must be a string')
  offset = data.get('origin_offset', -1.0 if fmt == 'pts' else 0.0)
  if isinstance(offset, bool) or not isinstance(offset, int | float) or not np.isfinite(offset):
    raise _err(f'{where}: origin_offset {offset!r}; expected a number (e.g. -1 or 0)')
  margin = data.get('crop_margin', 5.0)
  if isinstance(margin, str) and re.fullmatch(r'\d+(\.\d*)?%', margin.strip()):
    margin = -float(margin.strip()[:-1]) / 100.0
  elif (
    isinstance(margin, bool)
    or not isinstance(margin, int | float)
    or not np.isfinite(margin)
    or margin < 0
  ):
    raise _err(f"{where}: crop_margin {margin!r}; expected pixels >= 0 or a percentage ('10%')")
  box = data.get('box', 'annotation')
  if box not in ('annotation', 'points'):
    raise _err(f"{where}: box {box!r}; expected 'annotation' or 'points'")
  return Spec(
    format=fmt,
    num_landmarks=n,
    landmark_names=names,
    flip_permutation=perm,
    nme_normalizer=tuple(groups),
    splits=splits,
    train_split=train,
    origin_offset=float(offset),
    crop_margin=float(margin),
    box=box,
  )


def read_spec(root: str | os.PathLike) -> Spec:
  """Reads and validates `root/dataset.json`."""
  path = pathlib.Path(root) / SPEC_FILE
  if not path.is_file():
    raise _err(f'{path}: not found; a folder dataset needs a dataset.json (see README)')
  try:
    data = json.loads(path.read_text(encoding='utf-8-sig'), parse_constant=_no_constant)
  except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
    raise _err(f'{path}: not valid JSON ({e})') from None
  return parse_spec(data, str(path))


def _no_constant(name: str) -> Any:
  """json.loads takes NaN and Infinity, which JSON does not have: refuse them."""
  raise ValueError(f'{name} is not a JSON number')


def config_name(root: str | os.PathLike) -> str:
  """The TFDS config name of a folder: its base name plus a digest of its path and dataset.json."""
  root = pathlib.Path(root).resolve()
  text = (root / SPEC_FILE).read_bytes()
  digest = hashlib.sha1(str(root).encode() + b'\0' + text).hexdigest()[:10]
  slug = re.sub(r'[^a-z0-9]+', '_', root.name.lower()).strip('_') or 'data'
  return f'{slug[:40]}_{digest}'


# ---------------------------------------------------------------------------------------------
# Annotations.


@dataclasses.dataclass
class Record:
  """One annotated face: raw values as in the file."""

  filename: str  # relative to the dataset root
  path: pathlib.Path
  row: str  # where in the annotations ('row 7 of train/landmarks.csv')
  points: np.ndarray  # (N, 2) raw
  visibility: np.ndarray  # (N,) int32; 2 when the format has no flag
  box: np.ndarray | None  # raw [x_min, y_min, x_max, y_max] from the annotation
  face_index: int = 0


def _rel(root: pathlib.Path, p: pathlib.Path) -> str:
  return p.relative_to(root).as_posix()


def _split_sources(root: pathlib.Path, spec: Spec) -> list[tuple[str, pathlib.Path, list[str]]]:
  """(split, annotation folder, image names or None) per split."""
  if spec.splits is None:
    names = sorted(
      e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(('.', '_'))
    )
    if not names:
      raise _err(f'{root}: no split subfolders (e.g. train/, test/) and no "splits" in {SPEC_FILE}')
    names.sort(key=lambda s: s != spec.train_split)
    out = []
    for s in names:
      if not re.fullmatch(r'[A-Za-z0-9_]+', s):
        raise _err(f'{root / s}: split folder name {s!r}; use letters, digits and _')
      out.append((s, root / s, None))
    return out
  out = []
  for split, target in spec.splits:
    p = root / target
    if p.is_dir():
      out.append((split, p, None))
    elif p.is_file():
      lines = p.read_text(encoding='utf-8').splitlines()
      files = [ln.strip() for ln in lines if ln.strip() and not ln.startswith('#')]
      out.append((split, root, files))
    else:
      raise _err(f'{root / SPEC_FILE}: split {split!r}: {target} is neither a folder nor a file')
  return out


def _floats(values: list[str], where: str) -> np.ndarray:
  try:
    return np.asarray([float(v) for v in values], np.float64)
  except ValueError:
    bad = next(v for v in values if not _is_float(v))
    raise _err(f'{where}: {bad!r} is not a number') from None


def _is_float(v: str) -> bool:
  try:
    float(v)
    return True
  except ValueError:
    return False


def _xywh(b: Any, where: str) -> np.ndarray:
  if not isinstance(b, list | tuple | np.ndarray) or any(
    isinstance(v, bool) or not isinstance(v, int | float | np.floating) for v in b
  ):
    raise _err(f'{where}: bbox {b!r}; expected [x, y, w, h]')
  box = np.asarray(b, np.float64).reshape(-1)
  if box.size != 4 or not np.all(np.isfinite(box)):
    raise _err(f'{where}: bbox {b!r}; expected [x, y, w, h]')
  if box[2] <= 0 or box[3] <= 0:
    raise _err(f'{where}: bbox {b!r} has a width or height <= 0')
  return np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])


def _read_pts(root, folder, files, spec) -> list[Record]:
  n = spec.num_landmarks
  if files is None:
    files = [
      _rel(folder, pathlib.Path(d) / f)
      for d, _, fs in sorted(os.walk(folder))
      for f in sorted(fs)
      if os.path.splitext(f)[1].lower() in IMAGE_EXTS
    ]
    pts_files = {
      _rel(folder, pathlib.Path(d) / f)
      for d, _, fs in os.walk(folder)
      for f in fs
      if f.lower().endswith('.pts')
    }
    stems = {os.path.splitext(f)[0] for f in files}
    orphans = sorted(p for p in pts_files if os.path.splitext(p)[0] not in stems)
    if orphans:
      raise _err(f'{folder / orphans[0]}: no image beside it (missing or not {IMAGE_EXTS})')
  out = []
  for name in files:
    path = folder / name
    pts = path.with_suffix('.pts')
    if not pts.is_file():
      if not path.exists():
        raise _err(f'{path}: image not found (listed in the split list)')
      raise _err(f'{path}: no .pts file beside it ({pts.name})')
    points = formats.read_pts(pts, expected_points=n, allow_bare=True)
    vis = np.where((points == MISSING_PTS).all(axis=1), 0, 2).astype(np.int32)
    if not vis.any():
      note(f'{pts}: no labelled point (every point is {MISSING_PTS_TEXT}); left out')
      continue
    points[vis == 0] = np.nan
    out.append(Record(_rel(root, path), path, str(pts), points, vis, None))
  return out


def _annotation_file(folder: pathlib.Path, fmt: str) -> pathlib.Path:
  """The one annotation file of a split folder in format `fmt` (csv, coco)."""
  path = folder / ANNOTATIONS[fmt]
  if not path.is_file():
    raise _err(f'{path}: not found (format "{fmt}" needs {ANNOTATIONS[fmt]} in every split folder)')
  return path


def _read_csv(root, folder, files, spec) -> list[Record]:
  n = spec.num_landmarks
  path = _annotation_file(folder, 'csv')
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:  # -sig: Excel's "CSV UTF-8"
      rows = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise _err(f'{path}: not a UTF-8 CSV file ({e})') from None
  if not rows:
    raise _err(f'{path}: empty; expected the header file,x0,y0,...')
  header = [h.strip() for h in rows[0]]
  has_box = tuple(header[-4:]) == BOX_COLUMNS
  coords = header[1 : len(header) - 4 if has_box else len(header)]
  want = [c for i in range(n) for c in (f'x{i}', f'y{i}')]
  if header[:1] != ['file'] or coords != want:
    raise _err(
      f'{path}: header row has {len(coords)} coordinate columns ({", ".join(coords[:4])}...); '
      f'expected file,x0,y0,...,x{n - 1},y{n - 1} for num_landmarks={n}'
      + (' (optional: ,bbox_x,bbox_y,bbox_w,bbox_h)' if not has_box else '')
    )
  wanted = set(files) if files is not None else None
  seen: dict[str, int] = {}
  rows_seen: dict[tuple, str] = {}
  out = []
  for k, row in enumerate(rows[1:], start=2):
    if not any(c.strip() for c in row):
      continue
    where = f'{path} row {k}'
    if len(row) != len(header):
      got = (len(row) - 1 - (4 if has_box else 0)) / 2
      raise _err(
        f'{where} ({row[0] if row else ""}): {len(row)} columns ({got:g} points); '
        f'expected {len(header)} ({n} points)'
      )
    name = row[0].strip()
    if wanted is not None and name not in wanted:
      continue
    where = f'{where} ({name})'
    _check_name(name, folder, where)
    cells = [c.strip() for c in row[1 : 1 + 2 * n]]
    vis = np.array([2 if cells[2 * i] or cells[2 * i + 1] else 0 for i in range(n)], np.int32)
    if not vis.any():
      note(f'{where}: no labelled point (every x, y is empty); left out')
      continue
    vals = _floats([c if c else 'nan' for c in cells], where)
    box = None
    if has_box and any(c.strip() for c in row[-4:]):
      box = _xywh(_floats(row[-4:], where), where)
    key = (name, vals.tobytes(), None if box is None else box.tobytes())
    if key in rows_seen:
      note(f'{where}: the same face as {rows_seen[key]}; left out (a duplicate row)')
      continue
    rows_seen[key] = f'row {k}'
    img = folder / name
    idx = seen.get(name, 0)
    seen[name] = idx + 1
    out.append(Record(_rel(root, img), img, where, vals.reshape(n, 2), vis, box, idx))
  if wanted is not None and (missing := wanted - set(seen)):
    raise _err(f'{path}: no row for {sorted(missing)[0]} (listed in the split list)')
  return out


def _read_coco(root, folder, files, spec) -> list[Record]:
  n = spec.num_landmarks
  path = _annotation_file(folder, 'coco')
  try:
    data = json.loads(path.read_text(encoding='utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _err(f'{path}: not valid JSON ({e})') from None
  if not isinstance(data, dict) or 'images' not in data or 'annotations' not in data:
    raise _err(f'{path}: expected a COCO object with "images" and "annotations"')
  for key in ('images', 'annotations'):
    if not isinstance(data[key], list):
      raise _err(f'{path}: "{key}" is {_json_type(data[key])}; expected a list')
  images = {}
  for k, im in enumerate(data['images']):
    if not isinstance(im, dict) or 'id' not in im or 'file_name' not in im:
      raise _err(f'{path} images[{k}]: expected "id" and "file_name"')
    if isinstance(im['id'], bool) or not isinstance(im['id'], int | str):
      raise _err(f'{path} images[{k}]: id is {_json_type(im["id"])}; expected an integer')
    if not isinstance(im['file_name'], str) or not im['file_name'].strip():
      raise _err(f'{path} images[{k}]: file_name is {_json_type(im["file_name"])}; expected a path')
    _check_name(im['file_name'], folder, f'{path} images[{k}]')
    images[im['id']] = im['file_name']
  wanted = set(files) if files is not None else None
  seen: dict[str, int] = {}
  out = []
  for k, a in enumerate(data['annotations']):
    where = f'{path} annotations[{k}]'
    if not isinstance(a, dict) or 'keypoints' not in a or 'image_id' not in a:
      raise _err(f'{where}: expected "image_id" and "keypoints"')
    if 'id' in a:
      where += f' (id {a["id"]})'
    if isinstance(a['image_id'], bool) or not isinstance(a['image_id'], int | str):
      raise _err(f'{where}: image_id is {_json_type(a["image_id"])}; expected an integer')
    if a['image_id'] not in images:
      raise _err(f'{where}: image_id {a["image_id"]!r} is not in "images"')
    name = images[a['image_id']]
    if wanted is not None and name not in wanted:
      continue
    where += f' ({name})'
    kp = a['keypoints']
    if not isinstance(kp, list):
      raise _err(f'{where}: keypoints is {_json_type(kp)}; expected a list of {3 * n} numbers')
    if len(kp) != 3 * n:
      raise _err(
        f'{where}: {len(kp)} keypoint values ({len(kp) / 3:g} points); expected {3 * n} '
        f'({n} x, y, v)'
      )
    bad = [v for v in kp if isinstance(v, bool) or not isinstance(v, int | float)]
    if bad:
      raise _err(f'{where}: keypoints must be numbers; found {_json_type(bad[0])}')
    kp = np.asarray(kp, np.float64).reshape(n, 3)
    if not np.all(np.isin(kp[:, 2], (0, 1, 2))):
      i = int(np.argwhere(~np.isin(kp[:, 2], (0, 1, 2)))[0, 0])
      raise _err(f'{where}: point {i} has v = {kp[i, 2]:g}; expected 0, 1 or 2')
    box = _xywh(a['bbox'], where) if a.get('bbox') is not None else None
    if not (kp[:, 2] > 0).any():
      note(f'{where}: no labelled point (every v is 0); left out')
      continue
    kp[kp[:, 2] == 0, :2] = np.nan  # no position: masked, never (0, 0)
    img = folder / name
    idx = seen.get(name, 0)
    seen[name] = idx + 1
    out.append(
      Record(_rel(root, img), img, where, kp[:, :2].copy(), kp[:, 2].astype(np.int32), box, idx)
    )
  if wanted is not None and (missing := wanted - set(seen)):
    raise _err(f'{path}: no annotation for {sorted(missing)[0]} (listed in the split list)')
  return out


def _json_type(v: Any) -> str:
  if v is None:
    return 'null'
  return {bool: 'a boolean', str: f'the text {v!r}', list: 'a list', dict: 'an object'}.get(
    type(v), f'the number {v!r}' if isinstance(v, int | float) else type(v).__name__
  )


def _check_name(name: str, folder: pathlib.Path, where: str) -> None:
  """An image name must be a path inside the split folder (no absolute path, no '..')."""
  p = pathlib.PurePosixPath(name.replace('\\', '/'))
  if not name or p.is_absolute() or '..' in p.parts or re.match(r'^[A-Za-z]:', name):
    raise _err(
      f'{where}: image path {name!r}; expected a path relative to {folder} (no absolute path, '
      "no '..')"
    )


def note(text: str) -> None:
  """A one-line note on stdout about data that was left out or changed."""
  print(f'fkd: note: {text}', flush=True)


READERS = {'pts': _read_pts, 'csv': _read_csv, 'coco': _read_coco}


def read_records(root: str | os.PathLike, spec: Spec) -> dict[str, list[Record]]:
  """The annotated faces per split (validated points; images are checked by `check_record`)."""
  root = pathlib.Path(root)
  out = {}
  for split, folder, files in _split_sources(root, spec):
    records = READERS[spec.format](root, folder, files, spec)
    for r in records:
      bad = ~np.isfinite(r.points).all(axis=1) & (r.visibility > 0)
      if bad.any():
        i = int(np.argwhere(bad)[0, 0])
        raise _err(f'{r.row}: point {i} is {r.points[i].tolist()}; expected finite numbers')
    out[split] = records
    if split != spec.train_split:
      _note_unscored(records, spec)
  if spec.train_split not in out:
    raise _err(
      f'{root}: no {spec.train_split!r} split (found {sorted(out)}); add a {spec.train_split}/ '
      f'folder or set "train_split" in {SPEC_FILE}'
    )
  return out


def _note_unscored(records: list[Record], spec: Spec) -> None:
  """One note per eval face whose NME normaliser has an unlabelled point: it has no normaliser,
  so the evaluation leaves it out of the metrics (`fkd.evaluation.evaluate.scored_faces`)."""
  idx = sorted({i for g in spec.nme_normalizer for i in (g if isinstance(g, tuple) else (g,))})
  for r in records:
    missing = [i for i in idx if r.visibility[i] == 0]
    if missing:
      note(
        f'{r.row}: point {missing[0]} of the NME normaliser {list(idx)} is unlabelled; the face '
        'is built but left out of the metrics'
      )


def image_size(record: Record) -> tuple[int, int]:
  """(width, height) of a record's image, upright (EXIF orientation applied, as annotated and as
  `formats.open_image` decodes it); one-line errors for a missing or unreadable file."""
  if not record.path.is_file():
    raise _err(f'{record.row}: image {record.filename} not found')
  try:
    with formats.open_header(record.path, record.filename) as img:
      img.verify()
    return formats.image_size(record.path, record.filename)
  except formats.DataFormatError as e:
    if 'decompression-bomb guard' in str(e):
      raise _err(f'{record.row}: {e}') from None
    raise _err(f'{record.row}: image {record.filename} is not a readable image ({e})') from None
  except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
    raise _err(f'{record.row}: image {record.filename} is not a readable image ({e})') from None


def face_box(record: Record, spec: Spec) -> np.ndarray:
  """[L, T, R, B] before the margin, 0-based pixels: the annotated box or the points' extent."""
  if record.box is not None and spec.box == 'annotation':
    return record.box + spec.origin_offset
  pts = record.points[record.visibility > 0] if (record.visibility > 0).any() else record.points
  pts = pts + spec.origin_offset
  return np.concatenate([pts.min(0), pts.max(0)])


def filled_points(record: Record) -> np.ndarray:
  """The points with every unlabelled one (v = 0, no position) at the labelled points' mean: a
  finite stand-in inside the face that the `visibility` feature marks as unlabelled."""
  labelled = record.visibility > 0
  pts = np.array(record.points, np.float64)
  pts[~labelled] = pts[labelled].mean(axis=0)
  return pts


def check_points(record: Record, size: tuple[int, int], spec: Spec) -> None:
  """Labelled points must lie on or near their image (within half its size around it): a point
  far outside is a wrong file, a wrong origin or swapped coordinates."""
  w, h = size
  pts = record.points[record.visibility > 0] + spec.origin_offset
  lo, hi = np.array([-0.5 * w, -0.5 * h]), np.array([1.5 * w, 1.5 * h])
  far = ~((pts >= lo) & (pts <= hi)).all(axis=1)
  if far.any():
    i = int(np.flatnonzero(record.visibility > 0)[np.argmax(far)])
    x, y = record.points[i]
    raise _err(
      f'{record.row}: point {i} ({x:g}, {y:g}) lies far outside the {w}x{h} image '
      f'{record.filename}; expected points on the image (wrong file, origin or x/y order?)'
    )


def check_box(record: Record, box: np.ndarray, size: tuple[int, int]) -> None:
  """A box must overlap the image by at least half of its area."""
  w, h = size
  box = np.array(box, np.float64)
  for lo, hi in ((0, 2), (1, 3)):  # a single point or a line: at least one pixel
    if box[hi] - box[lo] < 1:
      c = (box[hi] + box[lo]) / 2
      box[lo], box[hi] = c - 0.5, c + 0.5
  bw, bh = box[2] - box[0], box[3] - box[1]
  ix = max(0.0, min(box[2], w - 0.5) - max(box[0], -0.5))
  iy = max(0.0, min(box[3], h - 0.5) - max(box[1], -0.5))
  area = bw * bh
  if ix * iy < 0.5 * area:
    b = ', '.join(f'{v:.1f}' for v in box)
    raise _err(
      f'{record.row}: face box [{b}] (x_min, y_min, x_max, y_max) lies outside the '
      f'{w}x{h} image {record.filename}'
    )
