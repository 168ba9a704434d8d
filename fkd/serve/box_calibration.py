"""Detector box -> landmark box: a calibration fitted on training data and stored as JSON.

A face detector's box is not the box a landmark model was trained on (300-W crops are the
landmark extent ± 5 px, `tfds_builders/ibug_300w`): dlib's HOG box is square, takes in the
forehead and cuts the chin (on 300-W the landmark box's centre lies well below the detector's).
`fit` learns, per coordinate, where the *landmark box* (the tight box of the
annotated points) lies relative to the detector box:

  centre_target = centre_det + offset · size_det      size_target = scale · size_det

(offset and scale per axis: 4 numbers, the mean normalised offset and the geometric mean size
ratio over the training faces). The numbers are fitted for all faces and again per detector
`view` (dlib's HOG filter: front, left, right, ...) that has at least `MIN_VIEW_FACES` training
faces: a turned face's landmarks sit off-centre in its box, and per-view numbers raise the held-out
IoU (see below). `apply(calib, box, view)` maps a detection to the landmark box, in the (x, y, w, h)
convention of `fkd.serve.detect` / `--bbox` (edges x−½ .. x+w−½); `fkd.predict` then widens it by
its
margin as for a `--bbox`.

The calibration is data, not a constant: `calibration.json` (`FILENAME`), written by
`python -m fkd.tools.calibrate_detector` beside a model or dataset, records the detector and its
settings, the training folders and face count, the fit residuals and a leave-one-folder-out check
(fit on AFW, test on HELEN and vice versa): mean IoU with the landmark box before and after.
`find(stage_dir, dataset='ibug_300w')` returns the `calibration.json` of the stage or its workdir,
else the one fkd ships for the dataset (`fkd/serve/calibrations/<dataset>.json`: 300-W, fitted
on AFW + HELEN training photos; its record holds the face count and the held-out IoU with the
landmark box before and after).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fkd.data import crops, datasets
from fkd.errors import FkdError
from fkd.infra import files
from fkd.serve.detect import iou

FILENAME = 'calibration.json'
FORMAT = 'fkd.box_calibration/1'
TARGET = (
  'landmark box: the tight box of the annotated points, as (x, y, w, h) = (min + 1/2, '
  'max - min) in 0-based pixel-centre coordinates (edges at the extreme points)'
)
MATCH_IOU = 0.3  # a detection belongs to an annotated face when their IoU reaches this
MIN_VIEW_FACES = 5  # a view gets its own numbers from this many training faces on
# The 300-W training folders of a manual download (`tfds_builders/ibug_300w`).
FOLDERS_300W = ('afw', 'helen/trainset', 'lfpw/trainset')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
PACKAGED = pathlib.Path(__file__).parent / 'calibrations'


@dataclasses.dataclass
class Calibration:
  """offset (dx, dy) in detector widths / heights; scale (sw, sh) = target size / detector size.

  `views` maps a detector view to its own {'offset', 'scale', 'faces'}; other views use the
  global numbers.
  """

  offset: tuple[float, float]
  scale: tuple[float, float]
  views: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  detector: dict[str, Any] = dataclasses.field(default_factory=dict)
  data: dict[str, Any] = dataclasses.field(default_factory=dict)
  fit: dict[str, Any] = dataclasses.field(default_factory=dict)
  validation: dict[str, Any] = dataclasses.field(default_factory=dict)
  target: str = TARGET

  def params(self, view: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) for a detection of `view` (the global numbers for None or unknown)."""
    entry = self.views.get(view) if view is not None else None
    if entry is None:
      return np.asarray(self.offset, np.float64), np.asarray(self.scale, np.float64)
    return np.asarray(entry['offset'], np.float64), np.asarray(entry['scale'], np.float64)

  def to_json(self) -> dict[str, Any]:
    return {
      'format': FORMAT,
      'offset': [float(v) for v in self.offset],
      'scale': [float(v) for v in self.scale],
      'views': {
        k: {
          'offset': [float(x) for x in v['offset']],
          'scale': [float(x) for x in v['scale']],
          'faces': int(v['faces']),
        }
        for k, v in self.views.items()
      },
      'target': self.target,
      'detector': self.detector,
      'data': self.data,
      'fit': self.fit,
      'validation': self.validation,
    }

  @classmethod
  def from_json(cls, record: dict[str, Any], name: str = 'calibration') -> Calibration:
    if record.get('format') != FORMAT:
      raise FkdError(
        f'{name}: not an fkd box calibration (format {record.get("format")!r}; expected {FORMAT!r})'
      )

    def numbers(entry: dict[str, Any], where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
      try:
        offset = tuple(float(v) for v in entry['offset'])
        scale = tuple(float(v) for v in entry['scale'])
      except (KeyError, TypeError, ValueError) as e:
        raise FkdError(f'{name}: bad offset / scale{where} ({e})') from None
      if len(offset) != 2 or len(scale) != 2 or not all(s > 0 for s in scale):
        raise FkdError(f'{name}: offset needs 2 numbers and scale 2 positive numbers{where}')
      return offset, scale

    offset, scale = numbers(record, '')
    views = {}
    for view, entry in (record.get('views') or {}).items():
      o, s = numbers(entry, f' of view {view!r}')
      views[view] = {'offset': o, 'scale': s, 'faces': int(entry.get('faces', 0))}
    return cls(
      offset,
      scale,
      views,
      record.get('detector', {}),
      record.get('data', {}),
      record.get('fit', {}),
      record.get('validation', {}),
      record.get('target', TARGET),
    )


IDENTITY = Calibration((0.0, 0.0), (1.0, 1.0), target='the detector box itself (uncalibrated)')


def landmark_box(points: np.ndarray) -> np.ndarray:
  """The (x, y, w, h) landmark box of (N, 2) 0-based points (see `TARGET`): the training crops'
  `crops.landmark_box` without margin, in the `--bbox` convention (edges x−½ .. x+w−½)."""
  left, top, right, bottom = crops.landmark_box(np.asarray(points, np.float64), 0.0)
  return np.array([left + 0.5, top + 0.5, right - left, bottom - top])


def apply(
  calib: Calibration,
  box: Sequence[float] | np.ndarray,
  view: str | Sequence[str | None] | None = None,
) -> np.ndarray:
  """Maps detector (x, y, w, h) boxes (..., 4) of `view` (one, or one per box) to landmark boxes."""
  box = np.asarray(box, np.float64)
  if view is None or isinstance(view, str):
    offset, scale = calib.params(view)
  else:
    params = [calib.params(v) for v in view]
    offset, scale = np.array([p[0] for p in params]), np.array([p[1] for p in params])
  size = box[..., 2:]
  centre = box[..., :2] + size / 2 + offset * size
  new_size = size * scale
  return np.concatenate([centre - new_size / 2, new_size], axis=-1)


def _fit_numbers(det: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, ...]:
  """(offset, scale, offset residuals, log-scale residuals) of matched (n, 4) boxes."""
  rel = (tgt[:, :2] + tgt[:, 2:] / 2 - det[:, :2] - det[:, 2:] / 2) / det[:, 2:]
  log_ratio = np.log(tgt[:, 2:] / det[:, 2:])
  return rel.mean(0), np.exp(log_ratio.mean(0)), rel - rel.mean(0), log_ratio - log_ratio.mean(0)


def fit(
  detector_boxes: np.ndarray,
  target_boxes: np.ndarray,
  views: Sequence[str | None] | None = None,
  min_view_faces: int = MIN_VIEW_FACES,
  **info: Any,
) -> Calibration:
  """Least-squares fit on matched (n, 4) boxes, globally and per view; `info` fills the record."""
  det = np.asarray(detector_boxes, np.float64).reshape(-1, 4)
  tgt = np.asarray(target_boxes, np.float64).reshape(-1, 4)
  if len(det) != len(tgt) or len(det) < 2:
    raise FkdError(f'a calibration needs at least 2 matched faces, got {len(det)}')
  offset, scale, rel, log_ratio = _fit_numbers(det, tgt)
  calib = Calibration(tuple(float(v) for v in offset), tuple(float(v) for v in scale), **info)
  if views is not None:
    views = list(views)
    for view in sorted({v for v in views if v is not None}):
      mask = np.array([v == view for v in views])
      if mask.sum() >= min_view_faces:
        o, s, rel[mask], log_ratio[mask] = _fit_numbers(det[mask], tgt[mask])
        calib.views[view] = {
          'offset': tuple(float(v) for v in o),
          'scale': tuple(float(v) for v in s),
          'faces': int(mask.sum()),
        }
  calib.fit = {
    'faces': len(det),
    'offset_std': rel.std(0).tolist(),
    'log_scale_std': log_ratio.std(0).tolist(),
    **evaluate(calib, det, tgt, views),
  }
  return calib


def evaluate(
  calib: Calibration,
  detector_boxes: np.ndarray,
  target_boxes: np.ndarray,
  views: Sequence[str | None] | None = None,
) -> dict[str, float]:
  """How well detections match landmark boxes: raw, calibrated, and calibrated without views.

  IoU with the landmark box (mean, median); centre error in units of the landmark box size
  (sqrt(w·h)); |log| of the size ratio (mean over both axes).
  """
  det = np.asarray(detector_boxes, np.float64).reshape(-1, 4)
  tgt = np.asarray(target_boxes, np.float64).reshape(-1, 4)
  out = {'faces': len(det)}
  variants = [('raw', det), ('calibrated', apply(calib, det, views))]
  if views is not None and calib.views:
    variants.append(('global', apply(calib, det)))
  for name, boxes in variants:
    size = np.sqrt(tgt[:, 2] * tgt[:, 3])
    centre_err = (
      np.linalg.norm(boxes[:, :2] + boxes[:, 2:] / 2 - tgt[:, :2] - tgt[:, 2:] / 2, axis=1) / size
    )
    ious = iou(boxes, tgt)
    out |= {
      f'{name}_iou_mean': round(float(ious.mean()), 4),
      f'{name}_iou_median': round(float(np.median(ious)), 4),
      f'{name}_centre_error': round(float(centre_err.mean()), 4),
      f'{name}_size_error': round(float(np.abs(np.log(boxes[:, 2:] / tgt[:, 2:])).mean()), 4),
    }
  return out


def output_path(path: str | os.PathLike) -> str:
  """The file `save` writes for `path` (`path/calibration.json` for a folder).

  Raises:
    FkdError: when that file exists and is not a calibration (`files.check_replaceable`).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, FILENAME)
  files.check_replaceable(path, _is_calibration, 'fkd.tools.calibrate_detector')
  return path


def _is_calibration(path: str) -> bool:
  record = files.json_object(path)
  return record is not None and record.get('format') == FORMAT


def save(calib: Calibration, path: str | os.PathLike) -> str:
  """Writes the JSON (to `path`, or `path/calibration.json` for a folder); returns the file."""
  path = output_path(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.atomic_write(path, json.dumps(calib.to_json(), indent=1) + '\n')
  return path


def load(path: str | os.PathLike) -> Calibration:
  """Reads a calibration file (or `path/calibration.json` for a folder)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, FILENAME)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise FkdError(
      f'no box calibration at {path}; fit one with `python -m '
      'fkd.tools.calibrate_detector --manual_dir=<300-W folder> '
      f'--output={path}`'
    ) from None
  except (OSError, ValueError) as e:
    raise FkdError(f'cannot read box calibration {path}: {e}') from None
  if not isinstance(record, dict):
    raise FkdError(
      f'cannot read box calibration {path}: a JSON {type(record).__name__}; expected the object '
      'fkd.tools.calibrate_detector writes'
    )
  return Calibration.from_json(record, path)


def packaged(dataset: str) -> Calibration | None:
  """The calibration fkd ships for a dataset (its TFDS name, e.g. 'ibug_300w'), else None."""
  path = PACKAGED / f'{dataset}.json'
  return load(path) if path.is_file() else None


def find(
  stage_dir: str | os.PathLike, path: str | os.PathLike | None = None, dataset: str = ''
) -> tuple[Calibration | None, str]:
  """The detector -> landmark box calibration of a model, and where it came from.

  In order: `path` (`--calibration`), `<stage_dir>/calibration.json`, `<workdir>/calibration.json`
  (the stage's parent), the calibration fkd ships for the model's `dataset` (its TFDS name,
  `fkd/serve/calibrations/<name>.json`), else for another dataset with the same mark-up (the
  embedded `synthetic_faces` uses 300-W's 68 points, so it gets `ibug_300w.json`: the landmark box
  of a real face is what a model of that mark-up should be given). (None, reason) when none fits.
  """
  if path:
    path = os.fspath(path)
    return load(path), os.path.abspath(
      path if not os.path.isdir(path) else os.path.join(path, FILENAME)
    )
  stage_dir = os.fspath(stage_dir)
  for d in (stage_dir, os.path.dirname(os.path.abspath(stage_dir))):
    candidate = os.path.join(d, FILENAME)
    if os.path.isfile(candidate):
      return load(candidate), os.path.abspath(candidate)
  for other in _same_markup_datasets(dataset):
    calib = packaged(other)
    if calib is not None:
      note = '' if other == dataset else f' (same mark-up as {dataset})'
      return calib, f'packaged {other}{note}: {PACKAGED / (other + ".json")}'
  return None, f'none for dataset {dataset or "?"}: detector boxes are used uncalibrated'


def _same_markup_datasets(name: str) -> list[str]:
  """TFDS names of the datasets whose mark-up is `name`'s (itself first)."""
  table = list(datasets.DATASETS.values())
  scheme = next((d.scheme for d in table if d.tfds_name == name), None)
  same = [d.tfds_name for d in table if scheme is not None and d.scheme == scheme]
  return list(dict.fromkeys([name, *same]))


# ---- fitting on a 300-W manual download ------------------------------------------------------


@dataclasses.dataclass
class Pairs:
  """Matched faces of one folder: detector and landmark boxes (n, 4), views, names, misses."""

  detector: np.ndarray
  target: np.ndarray
  views: list[str | None]
  names: list[str]
  missed: list[str]


def collect_pairs(
  manual_dir: str | os.PathLike,
  folders: Sequence[str],
  detect: Callable[[np.ndarray], list],
  origin_offset: float = -1.0,
  progress: Callable[[str], None] | None = None,
) -> dict[str, Pairs]:
  """Runs `detect` on every image with a `.pts` in `folders` of a 300-W-style manual download.

  Each image's annotated face (raw `.pts` + `origin_offset`, −1 for 300-W's 1-based values) is
  matched with the detection of highest IoU (at least `MATCH_IOU`); other detections (unannotated
  faces) are ignored, unmatched faces are listed in `missed`. Folders that do not exist are left
  out.
  """
  from fkd.data import formats

  root = pathlib.Path(manual_dir)
  out = {}
  for folder in folders:
    d = root / folder
    if not d.is_dir():
      continue
    det, tgt, views, names, missed = [], [], [], [], []
    for name in sorted(formats.iter_files(d, IMAGE_EXTS)):
      pts_path = d / (name.rsplit('.', 1)[0] + '.pts')
      if not pts_path.exists():
        continue
      points = formats.read_pts(pts_path, allow_bare=True) + origin_offset
      target = landmark_box(points)
      image = np.asarray(formats.open_image(d / name, f'{folder}/{name}').convert('RGB'))
      found = detect(image)
      ious = [float(iou(x.box, target)) for x in found]
      if not ious or max(ious) < MATCH_IOU:
        missed.append(f'{folder}/{name}')
      else:
        best = found[int(np.argmax(ious))]
        det.append(np.asarray(best.box, np.float64))
        views.append(getattr(best, 'view', None))
        tgt.append(target)
        names.append(f'{folder}/{name}')
      if progress is not None:
        progress(f'{folder}/{name}')
    out[folder] = Pairs(np.reshape(det, (-1, 4)), np.reshape(tgt, (-1, 4)), views, names, missed)
  return out


def fit_pairs(pairs: dict[str, Pairs], **info: Any) -> Calibration:
  """Fits on all folders; `validation` holds a leave-one-folder-out check per folder."""
  used = {k: p for k, p in pairs.items() if len(p.names)}
  if not used:
    raise FkdError('no annotated face was detected: nothing to fit a calibration on')
  calib = fit(
    np.concatenate([p.detector for p in used.values()]),
    np.concatenate([p.target for p in used.values()]),
    [v for p in used.values() for v in p.views],
    **info,
  )
  calib.data |= {
    'folders': {k: {'faces': len(p.names), 'missed': len(p.missed)} for k, p in pairs.items()},
    'faces': sum(len(p.names) for p in used.values()),
    'missed': sorted(m for p in pairs.values() for m in p.missed),
  }
  if len(used) >= 2:
    for held, p in used.items():
      rest = [q for k, q in used.items() if k != held]
      if sum(len(q.names) for q in rest) < 2 or not len(p.names):
        continue
      c = fit(
        np.concatenate([q.detector for q in rest]),
        np.concatenate([q.target for q in rest]),
        [v for q in rest for v in q.views],
      )
      calib.validation[held] = {
        'fit_on': [k for k in used if k != held],
        'views': sorted(c.views),
        **evaluate(c, p.detector, p.target, p.views),
      }
  return calib
