"""Landmarks on any photo, folder of photos or video with a trained model.

  python -m fkd.predict --workdir=DIR --image=photo.jpg --output=OUT     # every face it finds
  python -m fkd.predict --workdir=DIR --image=photos/ --output=OUT       # a folder, in batches
  python -m fkd.predict --workdir=DIR --image=face.png --whole_image --output=OUT  # a face crop
  python -m fkd.predict --workdir=DIR --image=photo.jpg --bbox=x,y,w,h --output=OUT
  python -m fkd.predict --workdir=DIR --video=in.mp4 [--smooth] --output=OUT
  python -m fkd.predict --workdir=DIR --camera=0 --smooth --output=OUT  # a webcam, until Ctrl-C

Photos: writes `OUT/<stem>.json`, one record per photo,

  {"image": "...", "image_size": [w, h], "faces": [{"box": [x, y, w, h], "score": 0.97,
   "landmarks": [[x, y], ...], ...}], ...}

in original-image pixels (0-based, pixel centres at integers; EXIF-rotated photos in their upright
orientation), and `OUT/<stem>.png`, the photo with every face's box and landmarks drawn. No face
found gives `"faces": []` and a `"note"`, and is not an error. Video: `OUT/<stem>.mp4` (the
annotated frames, same count and rate) and `OUT/<stem>.jsonl` (one line per frame:
`{"frame": i, "time": t, "faces": [...]}`).

Where the faces come from (`source` of each face):
- `detector` (default): `fkd.serve.detect` (dlib's HOG detector, the `detect` extra) finds every
  face; its box is mapped to the landmark box the model was trained on by a box calibration
  (`fkd.serve.box_calibration`, found by `box_calibration.find`: the stage dir, the workdir, then
  the one fkd ships for the model's dataset or for another dataset of the same mark-up).
- `bbox`: `--bbox=x,y,w,h`, the face's landmark box (the tight box of its points).
- `whole_image`: `--whole_image`, the photo is the face crop (no margin).
- `track` (video, `--passes` ≥ 2): a face the detector missed on this frame, cropped from its
  landmarks on the last frame it was seen in (at most `TRACK_FRAMES` frames in a row).

Refinement (`--passes`; default `passes_default`): after the first prediction, each face is
re-cropped from the landmark box of its predicted landmarks (the rule its training crops were made
by) and predicted again, `passes` times in all; a face's
`box` is the landmark box of its last crop. A pass whose box overlaps the face's first box less than
`MIN_REFINE_IOU` is not taken (the face keeps its crop). Every pass runs in the same batches.

Flip averaging (`--flip`; default on for a model trained on mirrored faces, `flip_default`): every
crop also goes through the model mirrored, and its landmarks are the mean of the crop's and the
mirrored crop's (mirrored back and re-indexed by the mark-up's flip permutation), in every pass and
for every source. The mirror frames the face the other way round, so the average cancels part of
what a crop's framing adds to the points (a detector box frames a face worse than its landmark
box); it doubles the crops per face through the jitted calls.

The face crop follows the training crops (method.md §2.2): the landmark box is widened by the
crop margin of the model's dataset (the checkpoint's `crop_margin`, from the dataset's record:
`fkd.data.datasets`, a folder dataset's own `crop_margin`; `--margin` overrides) and resized
anisotropically to the model's `image_size`; predictions are mapped back with the inverse crop
affine (`fkd.data.crops`). Faces go through the model in batches of a fixed `--batch_size` (one
jitted call per batch, padded, so it compiles once), across photos and frames.

Nothing the user owns is overwritten: an output that would replace an input file, or any existing
file an earlier `fkd.predict` did not write, is an error, and inputs whose stems collide (`a.jpg`,
`a.png`) get distinct output names (`a_jpg`, `a_png`). `--bbox` must be finite, of positive size
and overlap the photo.
`--workdir` picks the run's finished student (`student_kd`, `student_distill`, ...), else a teacher
(`fkd.inference.find_stage`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fkd import inference
from fkd.data import crops, datasets, formats, schemes
from fkd.errors import FkdError
from fkd.inference import find_stage
from fkd.infra import checkpoint, files, metric_writer
from fkd.infra.workdir import read_record
from fkd.serve import box_calibration

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
DEFAULT_MARGIN = 0.05  # checkpoints of datasets fkd has no crop facts for (per side, of the box)
DEFAULT_BATCH_SIZE = 16
# Landmark passes per detected face: pass 1 crops the calibrated detector box, each further pass
# re-crops the landmark box of the previous pass's landmarks (the box rule the model was trained
# with). Only a model trained on jittered boxes (config.data.box_noise) finds the face's extent
# inside a crop that misses it; one trained on exact landmark-box crops predicts landmarks that
# fill whatever crop it gets, so a second pass learns nothing and drifts. Hence the default: this
# many passes for detected faces of a box-noise model, one otherwise and for a given box.
DEFAULT_PASSES = 2
MAX_PASSES = 10
# A pass whose landmark box overlaps the face's first box (the calibrated detection, the given box)
# less than this is not taken: the model has lost the face (a model that does not know real
# faces drifts), and the face keeps its previous crop.
MIN_REFINE_IOU = 0.5
# Video: a face the detector misses keeps its track for up to this many frames, its crop seeded by
# the landmarks of the last frame it was seen in; after that the detector alone decides.
TRACK_FRAMES = 5
COORDINATES = 'original image pixels, 0-based, pixel centres at integer coordinates'
__all__ = ['Face', 'Predictor', 'find_stage', 'predict_image', 'run']


class UnfinishedModelWarning(UserWarning):
  """The model served is a stage's checkpoint before its final step."""


def parse_bbox(text: str) -> tuple[float, float, float, float]:
  try:
    x, y, w, h = (float(v) for v in text.split(','))
  except ValueError:
    raise FkdError(f'--bbox must be x,y,w,h (4 numbers), got {text!r}') from None
  if not all(math.isfinite(v) for v in (x, y, w, h)):
    raise FkdError(f'--bbox must be 4 finite numbers x,y,w,h, got {text!r}')
  if w <= 0 or h <= 0:
    raise FkdError(f'--bbox width and height must be positive, got {text!r}')
  return x, y, w, h


def check_bbox(bbox: Any, name: str = 'bbox') -> tuple[float, float, float, float]:
  """A box (x, y, w, h) from the API, checked as `--bbox` is."""
  try:
    values = [float(v) for v in bbox]
  except (TypeError, ValueError):
    raise FkdError(f'{name} must be 4 numbers x, y, w, h, got {bbox!r}') from None
  if len(values) != 4:
    raise FkdError(f'{name} must be x, y, w, h (4 numbers), got {bbox!r}')
  return _checked(values, name)


def _checked(values: list[float], name: str) -> tuple[float, float, float, float]:
  x, y, w, h = values
  if not all(math.isfinite(v) for v in values):
    raise FkdError(f'{name} must be 4 finite numbers x, y, w, h, got {values}')
  if w <= 0 or h <= 0:
    raise FkdError(f'{name} width and height must be positive, got {values}')
  return x, y, w, h


def check_bbox_overlaps(bbox: Sequence[float], size: tuple[int, int], path: str) -> None:
  """An FkdError when the box (x, y, w, h) has no pixel in common with the image (w, h)."""
  x, y, w, h = bbox
  if x + w <= 0 or y + h <= 0 or x >= size[0] or y >= size[1]:
    raise FkdError(
      f'--bbox {x:g},{y:g},{w:g},{h:g} lies outside {path} ({size[0]}x{size[1]} pixels)'
    )


# The range of every numeric setting (flag and API argument): (low, high, what it is). The
# detector looks for faces from max(min_face, min_face_fraction x the shorter side) pixels by
# resizing that size to its 80-pixel window: min_face below MIN_FACE would upscale a photo
# more than 4x per side (memory grows with the square).
MIN_FACE = 20.0
RANGES: dict[str, tuple[float, float, str]] = {
  'margin': (0.0, 2.0, 'a fraction of the box per side'),
  'batch_size': (1, 4096, 'faces per jitted call'),
  'min_score': (0.0, 1.0, 'a detector score, exclusive'),
  'min_face': (MIN_FACE, 100_000.0, 'pixels; smaller would upscale the photo more than 4x'),
  'min_face_fraction': (0.0, 1.0, 'a fraction of the shorter image side'),
  'max_faces': (1, 100_000, 'faces per image'),
  'min_cutoff': (1e-6, 1e6, 'Hz'),
  'beta': (0.0, 1e6, 'a rate'),
  'max_megapixels': (1.0, 10_000.0, 'megapixels'),
}
INTEGERS = ('batch_size', 'max_faces')


def check_settings(prefix: str = '--', **values: Any) -> None:
  """An FkdError naming the first setting out of its range (None: the default, not checked)."""
  for name, value in values.items():
    if value is None:
      continue
    if name not in RANGES:
      raise FkdError(f'unknown setting {name!r}; known: {", ".join(sorted(RANGES))}')
    lo, hi, what = RANGES[name]
    exclusive = name == 'min_score'
    number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
      value, bool
    )
    integer = name in INTEGERS
    ok = number and math.isfinite(float(value)) and (not integer or float(value) == int(value))
    ok = ok and (lo < value < hi if exclusive else lo <= value <= hi)
    if not ok and integer and number and float(value) == int(value) and value < lo:
      raise FkdError(f'{prefix}{name} must be at least {lo}, got {value!r}')
    if not ok:
      kind = 'an integer' if integer else 'a number'
      bounds = f'in ({lo:g}, {hi:g})' if exclusive else f'in [{lo:g}, {hi:g}]'
      raise FkdError(f'{prefix}{name} must be {kind} {bounds} ({what}), got {value!r}')


def parse_passes(passes: int | None) -> int | None:
  """`passes` checked: None (the default per source) or an int in 1..MAX_PASSES."""
  if passes is None:
    return None
  if isinstance(passes, bool) or not isinstance(passes, int | np.integer):
    raise FkdError(f'--passes must be a whole number from 1 to {MAX_PASSES}, got {passes!r}')
  if not 1 <= passes <= MAX_PASSES:
    raise FkdError(f'--passes must be from 1 to {MAX_PASSES}, got {passes}')
  return int(passes)


def face_box(
  image_size: tuple[int, int], bbox: Sequence[float] | None, margin: float | crops.CropMargin
) -> np.ndarray:
  """[L, T, R, B] pixel-edge box (pixel centres at integers) of `bbox` = (x, y, w, h).

  (x, y) is the top-left pixel of the box, which covers pixels x..x+w−1; the box is widened on
  each side by `margin` (a number: `margin`·w and `margin`·h; a `crops.CropMargin`: its rule).
  None is the whole image, without margin.
  """
  if bbox is None:
    w, h = image_size
    return np.array([-0.5, -0.5, w - 0.5, h - 0.5])
  x, y, w, h = bbox
  if not isinstance(margin, crops.CropMargin):
    margin = crops.CropMargin(float(margin))
  px, py = margin.pads(w, h)
  return np.array([x - 0.5 - px, y - 0.5 - py, x + w - 0.5 + px, y + h - 0.5 + py])


def crop_face(img: Image.Image, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The size x size anisotropic crop of `box` (uint8) and its 2x3 affine (image -> crop).

  Resampled with an antialiasing resize (like the training crops, which are downsized with PIL's
  resize); areas outside the image are black.
  """
  a = crops.box_transform(box, size)
  lo = box + 0.5  # PIL's box is in pixel-corner coordinates
  pad = [
    max(0, math.ceil(-lo[0])),
    max(0, math.ceil(-lo[1])),
    max(0, math.ceil(lo[2] - img.width)),
    max(0, math.ceil(lo[3] - img.height)),
  ]
  if any(pad):
    canvas = Image.new('RGB', (img.width + pad[0] + pad[2], img.height + pad[1] + pad[3]))
    canvas.paste(img, (pad[0], pad[1]))
    img, lo = canvas, lo + np.array([pad[0], pad[1], pad[0], pad[1]])
  crop = img.resize(
    (size, size), Image.Resampling.BILINEAR, box=tuple(float(v) for v in lo), reducing_gap=2.0
  )  # as input_pipeline.load_split
  return np.asarray(crop, np.uint8), a


def open_photo(path: str) -> Image.Image:
  """The photo as RGB, upright (EXIF orientation applied, as photo viewers show it)."""
  return formats.open_image(path)


# ---- where the box calibration and the crop margin come from ---------------------------------


def dataset_name(meta: dict[str, Any]) -> str:
  """The TFDS name of a checkpoint's dataset ('synthetic_faces/small' -> 'synthetic_faces')."""
  return str(meta.get('dataset', '')).split('/')[0]


def training_crop_margin(meta: dict[str, Any]) -> crops.CropMargin:
  """The crop margin a model was trained with: its checkpoint's `crop_margin` (the dataset's
  record); for checkpoints written before they carried it, the dataset table's margin of its TFDS
  name (`fkd.data.datasets`), else `DEFAULT_MARGIN`."""
  if meta.get('crop_margin'):
    return crops.CropMargin.from_json(meta['crop_margin'])
  facts = datasets.by_tfds_name(dataset_name(meta)) if dataset_name(meta) else None
  return facts.crop_margin if facts else crops.CropMargin(DEFAULT_MARGIN)


def training_margin(meta: dict[str, Any]) -> float:
  """The value of `training_crop_margin` (a fraction of the box for fkd's own datasets)."""
  return training_crop_margin(meta).value


def flip_permutation(meta: dict[str, Any]) -> tuple[int, ...] | None:
  """The flip permutation of a model's mark-up: its checkpoint's `flip_permutation`, else the
  mark-up of its dataset (`fkd.data.schemes`); None when unknown (a folder dataset)."""
  if meta.get('flip_permutation'):
    return tuple(int(i) for i in meta['flip_permutation'])
  facts = datasets.by_tfds_name(dataset_name(meta)) if dataset_name(meta) else None
  scheme = schemes.SCHEMES.get(facts.scheme) if facts and facts.scheme else None
  return scheme.flip_permutation if scheme else None


def default_flip(perm: Sequence[int] | None, record: dict[str, Any]) -> bool:
  """Flip averaging by default: when the mark-up has a flip permutation and the stage's config
  (`record`) trained it on mirrored faces (augment 'flip' and 'kd' both mirror half the crops; a
  model that never saw a mirrored face may not be mirror-symmetric)."""
  return perm is not None and record.get('data.augment') in ('flip', 'kd')


def flip_average(
  landmarks: np.ndarray, mirrored: np.ndarray, perm: Sequence[int], size: int
) -> np.ndarray:
  """The mean of crop-frame landmarks (k, N, 2) and those of the mirrored crops, mirrored back
  (x ↦ size − 1 − x, pixel centres at integers) and re-indexed by the flip permutation."""
  back = schemes.flip_points(mirrored, perm, size)
  return ((np.asarray(landmarks, np.float64) + back) / 2).astype(np.float32)


def contours(meta: dict[str, Any], num_landmarks: int) -> tuple[tuple[int, int, bool], ...]:
  """The point groups drawn for a model: its checkpoint's `contours` (the dataset's record); for
  checkpoints written before they carried them, the 68-point parts for 68 points."""
  if 'contours' in meta:
    return tuple((int(a), int(b), bool(c)) for a, b, c in meta['contours'])
  return schemes.PARTS_68 if num_landmarks == 68 else ()


# ---- the Python API ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Face:
  """One face of a photo: `box` (x, y, w, h) the landmark box the crop was made from, `score`
  (the detector's, None for a given box), `landmarks` (N, 2) in original-image pixels.

  `source` is 'detector', 'bbox' or 'whole_image'; detector faces also keep the detector's own
  box (`detection_box`) and `view`; `crop_box` is the [L, T, R, B] pixel-edge box that was cropped.
  """

  box: tuple[float, float, float, float]
  score: float | None
  landmarks: np.ndarray
  source: str = 'detector'
  view: str | None = None
  detection_box: tuple[float, float, float, float] | None = None
  crop_box: tuple[float, float, float, float] | None = None
  track: int | None = None

  def to_json(self) -> dict[str, Any]:
    r3 = lambda v: round(float(v), 3)
    out = {
      'box': [r3(v) for v in self.box],
      'score': None if self.score is None else round(float(self.score), 4),
      'landmarks': [[r3(x), r3(y)] for x, y in np.asarray(self.landmarks)],
      'source': self.source,
    }
    if self.track is not None:
      out['track'] = int(self.track)
    if self.view is not None:
      out['view'] = self.view
    if self.detection_box is not None:
      out['detection_box'] = [r3(v) for v in self.detection_box]
    if self.crop_box is not None:
      out['crop_box'] = [r3(v) for v in self.crop_box]
    return out


@dataclasses.dataclass(frozen=True)
class _Box:
  """A face to crop: its landmark box and where it came from (no landmarks yet)."""

  box: tuple[float, float, float, float] | None  # None: the whole image
  score: float | None
  source: str
  view: str | None = None
  detection_box: tuple[float, float, float, float] | None = None
  first: tuple[float, float, float, float] | None = None  # the box of pass 1 (refinement's anchor)


class Predictor(inference.Predictor):
  """A model with face detection: `faces(image) -> list[Face]` on any photo.

    predictor = predict.Predictor.from_workdir('runs/kd')
    for face in predictor.faces('photo.jpg'):   # a path, a PIL image or a uint8 RGB array
      print(face.box, face.score, face.landmarks.shape)

  Still the `fkd.inference.Predictor` of its stage (`predictor(crops)` -> crop-frame landmarks).
  Args beyond the stage: `calibration` (a calibration.json path; default `box_calibration.find`),
  `margin` (default: the model's training margin), `batch_size` (faces per jitted call, fixed),
  `passes` (landmark passes per face; None: `passes_default`), `flip` (flip averaging; None:
  `flip_default`) and the detector's `min_score`, `min_face`, `min_face_fraction`, `max_faces`
  (`fkd.serve.detect`).
  """

  def __init__(
    self,
    stage_dir: str,
    calibration: str | None = None,
    margin: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    passes: int | None = None,
    flip: bool | None = None,
    **detector_kwargs: Any,
  ):
    check_settings('', margin=margin, batch_size=batch_size, **detector_kwargs)
    if flip is not None and not isinstance(flip, bool | np.bool_):
      raise FkdError(f'--flip must be true or false, got {flip!r}')
    super().__init__(stage_dir)
    self.passes = parse_passes(passes)
    record = read_record(stage_dir) or {}
    self.box_noise = tuple(float(v) for v in record.get('data.box_noise') or ())
    self.flip_permutation = flip_permutation(self.meta)
    self.flip_default = default_flip(self.flip_permutation, record)
    if flip and self.flip_permutation is None:
      raise FkdError(
        f"--flip needs the model's flip permutation, which {stage_dir} does not name (a folder "
        'dataset without one): pass --noflip'
      )
    self.flip = self.flip_default if flip is None else bool(flip)
    # The training crops' margin, or `margin` as a fraction of the box (`--margin`).
    self.crop_margin = (
      training_crop_margin(self.meta) if margin is None else crops.CropMargin(float(margin))
    )
    self.margin = self.crop_margin.value
    self.contours = contours(self.meta, self.num_landmarks)
    self.batch_size = int(batch_size)
    self.calibration, self.calibration_source = box_calibration.find(
      stage_dir, calibration, dataset_name(self.meta)
    )
    self.detector_kwargs = {k: v for k, v in detector_kwargs.items() if v is not None}
    self._detector = None
    if not self.info()['finished']:  # the command line says it in its first line instead
      warnings.warn(f'fkd: {inference.status(self.info())}', UnfinishedModelWarning, stacklevel=2)

  @classmethod
  def from_workdir(cls, workdir: str, **kwargs: Any) -> Predictor:
    """The workdir's finished student (else a teacher; `fkd.inference.find_stage`)."""
    return cls(find_stage(workdir), **kwargs)

  @classmethod
  def from_checkpoint(cls, stage_dir: str, **kwargs: Any) -> Predictor:
    """A stage directory (e.g. runs/kd/student_kd)."""
    if checkpoint_meta(stage_dir) is None:
      raise FkdError(f'no checkpoint in {stage_dir}')
    return cls(stage_dir, **kwargs)

  @property
  def detector(self) -> Any:
    if self._detector is None:
      from fkd.serve import detect

      self._detector = detect.FaceDetector(**self.detector_kwargs)
    return self._detector

  def locate(
    self,
    image: np.ndarray,
    bbox: Sequence[float] | None = None,
    whole_image: bool = False,
  ) -> list[_Box]:
    """The faces to crop in a uint8 RGB image: the given box, the whole image or detections."""
    if whole_image:
      return [_Box(None, None, 'whole_image')]
    if bbox is not None:
      return [_Box(tuple(float(v) for v in bbox), None, 'bbox')]
    out = []
    for d in self.detector(image):
      if self.calibration is not None:
        box = tuple(float(v) for v in box_calibration.apply(self.calibration, d.box, d.view))
      else:
        box = d.box
      out.append(_Box(box, d.score, 'detector', d.view, d.box))
    return out

  def crop(self, img: Image.Image, boxes: Sequence[_Box]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(k, S, S, 3) uint8 crops of `boxes` and their crop boxes [L, T, R, B]."""
    size = self.image_size
    out, edges = np.zeros((len(boxes), size, size, 3), np.uint8), []
    for i, b in enumerate(boxes):
      e = face_box(img.size, b.box, self.crop_margin)
      out[i], _ = crop_face(img, e, size)
      edges.append(e)
    return out, edges

  def passes_for(self, source: str, passes: int | None = None) -> int:
    """The landmark passes of faces from `source`: `passes`, else the predictor's, else
    `passes_default`; a whole image is the crop itself, so always one."""
    chosen = parse_passes(passes) if passes is not None else self.passes
    if source == 'whole_image':
      return 1
    return self.passes_default(source) if chosen is None else chosen

  def passes_default(self, source: str) -> int:
    """`DEFAULT_PASSES` for detected (or tracked) faces when the model was trained on jittered
    boxes (`config.data.box_noise` in its stage's config.json), else one pass."""
    return DEFAULT_PASSES if self.box_noise and source in ('detector', 'track') else 1

  def recrop(
    self,
    img: Image.Image,
    boxes: Sequence[_Box],
    edges: Sequence[np.ndarray],
    crop_landmarks: np.ndarray,
  ) -> tuple[list[_Box], np.ndarray, list[np.ndarray]]:
    """The next pass: each face's landmark box from its crop-frame landmarks, and its crop.

    A face whose new box strays from its first box (IoU < `MIN_REFINE_IOU`) keeps its box.
    """
    from fkd.serve import detect

    refined = []
    for b, f in zip(boxes, self.to_faces(boxes, edges, crop_landmarks), strict=True):
      if b.box is None:  # the whole image is the crop
        refined.append(b)
        continue
      first = b.first or b.box
      box = tuple(float(v) for v in box_calibration.landmark_box(f.landmarks))
      if float(detect.iou(box, first)) < MIN_REFINE_IOU:
        box = b.box
      refined.append(dataclasses.replace(b, box=box, first=first))
    face_crops, new_edges = self.crop(img, refined)
    return refined, face_crops, new_edges

  def predict_crops(self, face_crops: np.ndarray) -> np.ndarray:
    """Crop-frame landmarks (k, N, 2) of k crops, in jitted calls of exactly `batch_size`; with
    `flip`, each the average of the crop's and its mirror's (`flip_average`), in the same calls."""
    if self.flip and len(face_crops):
      both = self._predict(np.concatenate([face_crops, face_crops[:, :, ::-1]]))
      k = len(face_crops)
      return flip_average(both[:k], both[k:], self.flip_permutation, self.image_size)
    return self._predict(face_crops)

  def _predict(self, face_crops: np.ndarray) -> np.ndarray:
    k, b = len(face_crops), self.batch_size
    out = np.zeros((k, self.num_landmarks, 2), np.float32)
    for start in range(0, k, b):
      chunk = face_crops[start : start + b]
      padded = np.zeros((b, *face_crops.shape[1:]), np.uint8)
      padded[: len(chunk)] = chunk
      out[start : start + len(chunk)] = self(padded)[: len(chunk)]
    return out

  def to_faces(
    self, boxes: Sequence[_Box], edges: Sequence[np.ndarray], crop_landmarks: np.ndarray
  ) -> list[Face]:
    """Faces in original pixels from crop-frame landmarks."""
    faces = []
    for b, e, pts in zip(boxes, edges, crop_landmarks, strict=True):
      a = crops.box_transform(e, self.image_size)
      points = crops.apply(crops.invert(a), pts)
      box = b.box if b.box is not None else (0.0, 0.0, e[2] - e[0], e[3] - e[1])
      faces.append(
        Face(box, b.score, points, b.source, b.view, b.detection_box, tuple(float(v) for v in e))
      )
    return faces

  def faces(
    self,
    image: str | os.PathLike | Image.Image | np.ndarray,
    bbox: Sequence[float] | None = None,
    whole_image: bool = False,
    passes: int | None = None,
  ) -> list[Face]:
    """Every face of a photo with its landmarks (original pixels), best detector score first.

    `passes` overrides the predictor's landmark passes (module docstring, refinement).
    """
    img = as_image(image)
    if bbox is not None:
      if whole_image:
        raise FkdError('give at most one of bbox and whole_image')
      bbox = check_bbox(bbox)
      check_bbox_overlaps(bbox, img.size, 'the image')
    n = self.passes_for(_source(bbox, whole_image), passes)
    boxes = self.locate(np.asarray(img), bbox, whole_image)
    face_crops, edges = self.crop(img, boxes)
    landmarks = self.predict_crops(face_crops)
    for _ in range(n - 1):
      boxes, face_crops, edges = self.recrop(img, boxes, edges, landmarks)
      landmarks = self.predict_crops(face_crops)
    return self.to_faces(boxes, edges, landmarks)


def checkpoint_meta(stage_dir: str) -> dict[str, Any] | None:
  return checkpoint.read_meta(stage_dir) if os.path.isdir(stage_dir) else None


def as_image(image: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
  """An RGB PIL image of a path (upright), a PIL image or a uint8 / uint16 (H, W[, 1|3|4]) array
  (16 bits are scaled to 8, never clipped)."""
  if isinstance(image, str | os.PathLike):
    if not os.path.isfile(image):
      raise FkdError(f'image {os.fspath(image)} does not exist (or is not a file)')
    return open_photo(os.fspath(image))
  if isinstance(image, Image.Image):
    if image.width < 1 or image.height < 1:
      raise FkdError(f'the image is empty ({image.width}x{image.height} pixels)')
    return formats.to_rgb(image)
  if not isinstance(image, np.ndarray | list | tuple):
    raise FkdError(
      f'an image must be a path, a PIL image or a numpy array, got {type(image).__name__}'
    )
  arr = np.asarray(image)
  shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))
  if arr.dtype not in (np.uint8, np.uint16) or not shape_ok:
    raise FkdError(
      'an image must be a uint8 or uint16 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, '
      f'got {arr.dtype} {arr.shape}'
    )
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise FkdError(f'the image is empty ({arr.shape[1]}x{arr.shape[0]} pixels)')
  if arr.ndim == 3:
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
  if arr.dtype == np.uint16:
    arr = np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
  return Image.fromarray(np.ascontiguousarray(arr)).convert('RGB')


def in_batches(
  predictor: Predictor, items: Iterable[tuple[Any, np.ndarray]]
) -> Iterator[tuple[Any, np.ndarray]]:
  """(key, crops (k, S, S, 3)) -> (key, crop-frame landmarks (k, N, 2)), in order.

  Crops of consecutive items share jitted calls of exactly `predictor.batch_size` faces (the last
  one padded), so a folder of photos or a video compiles once and fills every batch.
  """
  b = predictor.batch_size
  pending: list[tuple[Any, int]] = []  # keys waiting for their landmarks, and their face counts
  queued: list[np.ndarray] = []  # crops not yet run
  done: list[np.ndarray] = []  # landmarks run but not yet handed out

  def run(n: int) -> None:
    rows = np.concatenate(queued) if queued else np.zeros((0,), np.uint8)
    done.append(predictor.predict_crops(rows[:n]))
    queued[:] = [rows[n:]] if len(rows) > n else []

  def ready() -> Iterator[tuple[Any, np.ndarray]]:
    nonlocal done
    out = np.concatenate(done) if done else None
    while pending and (pending[0][1] == 0 or (out is not None and len(out) >= pending[0][1])):
      key, n = pending.pop(0)
      if n == 0:
        yield key, np.zeros((0, predictor.num_landmarks, 2), np.float32)
        continue
      yield key, out[:n]
      out = out[n:]
    done = [out] if out is not None and len(out) else []

  for key, face_crops in items:
    pending.append((key, len(face_crops)))
    if len(face_crops):
      queued.append(face_crops)
    n_queued = sum(len(q) for q in queued)
    if n_queued >= b:
      run(n_queued - n_queued % b)
    yield from ready()
  if queued:
    run(sum(len(q) for q in queued))
  yield from ready()


def refined(
  predictor: Predictor,
  batches: Iterator[tuple[Any, np.ndarray]],
  passes: int,
  batching: Callable[[Predictor, Iterable[tuple[Any, np.ndarray]]], Iterator] | None = None,
  seed: Callable[[Any, list[_Box]], list[_Box]] | None = None,
) -> Iterator[tuple[Any, np.ndarray]]:
  """Passes 2..`passes` over a stream of first-pass results, each batched like the first.

  Keys end in (img, boxes, edges) and are handed on with the last pass's boxes and crop boxes, so
  callers read the faces with `to_faces` as after one pass. `seed(key, boxes)` (video) may add
  faces before the second pass (`_Tracks`).
  """
  batching = batching or in_batches

  def recropped(items: Iterator[tuple[Any, np.ndarray]], first: bool) -> Iterator:
    for (*ctx, img, boxes, edges), landmarks in items:
      new, face_crops, new_edges = predictor.recrop(img, boxes, edges, landmarks)
      if first and seed is not None:
        extra = seed((*ctx, img, new, new_edges), new)
        if extra:
          more, extra_edges = predictor.crop(img, extra)
          new, new_edges = [*new, *extra], [*new_edges, *extra_edges]
          face_crops = np.concatenate([face_crops, more])
      yield (*ctx, img, new, new_edges), face_crops

  for k in range(passes - 1):
    batches = batching(predictor, recropped(batches, k == 0))
  return batches


class _Tracks:
  """Video: faces the detector missed on a frame, seeded from their last landmarks.

  Called once per frame, in order, with the frame's refined boxes (the landmark boxes of its
  first-pass landmarks); returns the boxes of remembered faces that no box of this frame overlaps,
  for at most `TRACK_FRAMES` frames after a face was last detected.
  """

  def __init__(self, image_size: tuple[int, int]):
    self.image_size = image_size
    self.faces: list[tuple[_Box, int]] = []  # (last detected box, frames since)
    self.frames = 0  # frames that got a face this way

  def __call__(self, key: Any, boxes: list[_Box]) -> list[_Box]:
    from fkd.serve import detect

    seen = [(b, 0) for b in boxes]
    extra = []
    for b, age in self.faces:
      if age >= TRACK_FRAMES or any(
        detect.iou(b.box, s.box) >= box_calibration.MATCH_IOU for s, _ in seen
      ):
        continue
      x, y, w, h = b.box
      if x + w <= 0 or y + h <= 0 or x >= self.image_size[0] or y >= self.image_size[1]:
        continue  # left the frame: lost
      extra.append(dataclasses.replace(b, score=None, source='track', first=None))
      seen.append((b, age + 1))
    self.frames += bool(extra)
    self.faces = seen
    return extra


# ---- records and overlays ----------------------------------------------------------------------


def no_face_note(predictor: Predictor) -> str:
  d = predictor.detector
  return (
    f'no face found (detector min_score {d.min_score:g}, faces from '
    f'max({d.min_face:g} px, {d.min_face_fraction:g} x the shorter side)): pass --bbox=x,y,w,h, '
    'or --whole_image if the photo is a face crop'
  )


def image_record(
  predictor: Predictor, path: str, img: Image.Image, faces: Sequence[Face], source: str
) -> dict[str, Any]:
  """The JSON record of one photo (module docstring)."""
  record: dict[str, Any] = {
    'image': os.path.abspath(path),
    'image_size': list(img.size),
    'faces': [f.to_json() for f in faces],
    'num_landmarks': predictor.num_landmarks,
    'coordinates': COORDINATES,
    'source': source,
  }
  if source == 'detector':
    if not faces:
      record['note'] = no_face_note(predictor)
    record['detector'] = predictor.detector.config()
    record['calibration'] = predictor.calibration_source
  record['margin'] = 0.0 if source == 'whole_image' else predictor.margin
  if source != 'whole_image' and predictor.crop_margin.unit != 'box':
    record['margin_unit'] = predictor.crop_margin.unit  # 'longer_side' | 'pixels' (folder data)
  record['model'] = predictor.info()
  return record


def draw_faces(
  img: Image.Image,
  faces: Sequence[Face],
  parts: Sequence[tuple[int, int, bool]] | None = None,
) -> Image.Image:
  """`img` (a copy) with each face's landmark box (yellow), contours (cyan: `parts`, the model's
  point groups, `Predictor.contours`; None: the 68-point parts for 68 points), landmarks (red)
  and score."""
  img = img.copy()
  draw = ImageDraw.Draw(img)
  for face in faces:
    pts = np.asarray(face.landmarks, np.float64) + 0.5
    x, y, w, h = face.box
    box = [x, y, x + w, y + h]  # pixel edges x−½ .. x+w−½, in PIL's corner coordinates
    scale = max(w, h)
    r = max(1.0, scale / 100)
    width = max(1, round(scale / 150))
    draw.rectangle(box, outline=(255, 220, 0), width=width)
    if face.score is not None:
      size = max(10, round(scale / 8))
      draw.text(
        (box[0], max(0, box[1] - 1.2 * size)),
        f'{face.score:.2f}',
        fill=(255, 220, 0),
        font=_font(size),
      )
    groups = parts if parts is not None else contours({}, len(pts))
    if all(last < len(pts) for _, last, _ in groups):
      for first, last, closed in groups:
        line = [tuple(p) for p in pts[first : last + 1]]
        draw.line(line + line[:1] if closed else line, fill=(0, 220, 255), width=width)
    for px, py in pts:
      draw.ellipse([px - r, py - r, px + r, py + r], fill=(255, 40, 40))
  return img


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)  # Pillow >= 10.1
  except TypeError:
    return ImageFont.load_default()


def predict_image(
  predictor: Predictor,
  path: str,
  bbox: Sequence[float] | None = None,
  whole_image: bool = False,
) -> dict[str, Any]:
  """The JSON record of one photo (one image, unbatched; `run` batches folders)."""
  img = open_photo(path)
  faces = predictor.faces(img, bbox, whole_image)
  return image_record(predictor, path, img, faces, _source(bbox, whole_image))


def _source(bbox: Sequence[float] | None, whole_image: bool) -> str:
  return 'whole_image' if whole_image else 'bbox' if bbox is not None else 'detector'


# ---- inputs and outputs ------------------------------------------------------------------------


# Image types people keep in photo folders that fkd does not read: said once each, not skipped
# in silence.
UNSUPPORTED = ('.gif', '.heic', '.heif', '.avif', '.jp2', '.svg', '.dng', '.cr2', '.nef', '.arw')


def image_paths(image: str) -> list[str]:
  if os.path.isdir(image):
    paths = []
    for f in sorted(os.listdir(image)):
      path = os.path.join(image, f)
      ext = os.path.splitext(f)[1].lower()
      if ext in IMAGE_EXTENSIONS:
        if os.path.isfile(path):
          paths.append(path)
        elif os.path.islink(path):
          metric_writer.write(
            f'fkd: warning: skipping {path}: a symbolic link to nothing readable (a broken link '
            'or a loop)'
          )
      elif ext in UNSUPPORTED:
        metric_writer.write(
          f'fkd: warning: skipping {path}: {ext} is not read (expected one of '
          f'{", ".join(IMAGE_EXTENSIONS)})'
        )
    if not paths:
      raise FkdError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in folder {image}')
    return paths
  if not os.path.isfile(image):
    raise FkdError(f'--image {image} does not exist')
  return [image]


def output_stems(paths: Sequence[str], output: str) -> list[str]:
  """`OUT/<stem>` per input; inputs sharing a stem get `OUT/<stem>_<ext>` (a.jpg, a.png)."""
  stems = [os.path.splitext(os.path.basename(p)) for p in paths]
  count: dict[str, int] = {}
  for stem, _ in stems:
    count[stem] = count.get(stem, 0) + 1
  names = [s if count[s] == 1 else f'{s}_{e.lstrip(".").lower()}' for s, e in stems]
  seen: dict[str, int] = {}
  out = []
  for name in names:  # still colliding (a.JPG, a.jpg in one folder): number them
    k = seen.get(name, 0)
    seen[name] = k + 1
    out.append(os.path.join(output, name if k == 0 else f'{name}_{k}'))
  return out


def check_no_overwrite(inputs: Sequence[str], outputs: Sequence[str]) -> None:
  """An FkdError when an output file would replace an input file, or an existing file that an
  earlier `fkd.predict` did not write (`is_predict_output`)."""
  real = {os.path.realpath(p): p for p in inputs}
  for out in outputs:
    hit = real.get(os.path.realpath(out))
    if hit is not None:
      raise FkdError(
        f'{out} would overwrite the input {hit}: choose an --output folder that does not hold '
        'the inputs'
      )
    files.check_replaceable(out, is_predict_output, 'fkd.predict', 'choose another --output folder')


def is_predict_output(path: str) -> bool:
  """Whether `path` is a file an earlier `fkd.predict` wrote (it may then be replaced): a photo's
  JSON record or its overlay, a video's JSON lines or its overlay video."""
  stem, ext = os.path.splitext(path)
  if os.path.islink(path) or not os.path.isfile(path):
    return False
  if ext in ('.png', '.mp4'):
    return is_predict_output(stem + ('.json' if ext == '.png' else '.jsonl'))
  first = files.json_object(path, first_line=ext == '.jsonl')
  keys = {'frame', 'faces'} if ext == '.jsonl' else {'image', 'faces', 'coordinates'}
  return first is not None and keys <= set(first)


def _check_output(output: str) -> None:
  """The output folder must be a folder (it is made when the first result is written)."""
  if os.path.exists(output) and not os.path.isdir(output):
    raise FkdError(f'--output {output} is a file, not a folder')


def _check_args(
  workdir: str | None, checkpoint_dir: str | None, bbox: Any, whole_image: bool
) -> None:
  """The flag combinations photos and videos share."""
  if bool(workdir) == bool(checkpoint_dir):
    raise FkdError('give exactly one of --workdir and --checkpoint')
  if bbox is not None and whole_image:
    raise FkdError('give at most one of --bbox and --whole_image')


def _load_predictor(workdir: str | None, checkpoint_dir: str | None, **kwargs: Any) -> Predictor:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UnfinishedModelWarning)
    predictor = (
      Predictor.from_workdir(workdir, **kwargs)
      if workdir
      else Predictor.from_checkpoint(checkpoint_dir, **kwargs)
    )
  info = predictor.info()
  print(
    f'fkd: {info["stage"]} ({info["model"]}, step {info["step"]}) from {info["checkpoint"]}',
    flush=True,
  )
  if not info['finished']:
    print(f'fkd: warning: {inference.status(info)}', flush=True)
  if workdir:
    for note in inference.passed_over(workdir, predictor.stage_dir):
      print(f'fkd: note: {note} (--checkpoint=DIR/<stage> picks one)', flush=True)
  return predictor


def _start(
  output: str,
  workdir: str | None,
  checkpoint_dir: str | None,
  bbox: Sequence[float] | None,
  whole_image: bool,
  calibration: str | None,
  margin: float | None,
  batch_size: int,
  detector_kwargs: dict[str, Any],
  passes: int | None = None,
  flip: bool | None = None,
) -> tuple[Predictor, str]:
  """What photos and videos share once their inputs are checked: the predictor, where the boxes
  come from (a missing detector fails here, with the install hint) and the output folder."""
  predictor = _load_predictor(
    workdir,
    checkpoint_dir,
    calibration=calibration,
    margin=margin,
    batch_size=batch_size,
    passes=passes,
    flip=flip,
    **detector_kwargs,
  )
  source = _source(bbox, whole_image)
  if source == 'detector':
    predictor.detector  # noqa: B018  (fails now, with the install hint, if dlib is missing)
    print(f'fkd: box calibration: {predictor.calibration_source}', flush=True)
  _check_output(output)
  return predictor, source


# ---- photos ------------------------------------------------------------------------------------


def run(
  image: str,
  output: str,
  workdir: str | None = None,
  checkpoint_dir: str | None = None,
  bbox: Sequence[float] | None = None,
  margin: float | None = None,
  whole_image: bool = False,
  batch_size: int = DEFAULT_BATCH_SIZE,
  calibration: str | None = None,
  passes: int | None = None,
  flip: bool | None = None,
  **detector_kwargs: Any,
) -> list[str]:
  """Predicts every image of `image` (a file or folder); returns the JSON paths written."""
  _check_args(workdir, checkpoint_dir, bbox, whole_image)
  parse_passes(passes)
  paths = image_paths(image)
  stems = output_stems(paths, output)
  check_no_overwrite(paths, [s + ext for s in stems for ext in ('.json', '.png')])
  folder = os.path.isdir(image)
  if bbox is not None and not folder:  # before anything is written
    check_bbox_overlaps(bbox, open_photo(paths[0]).size, paths[0])
  predictor, source = _start(
    output,
    workdir,
    checkpoint_dir,
    bbox,
    whole_image,
    calibration,
    margin,
    batch_size,
    detector_kwargs,
    passes,
    flip,
  )

  def located() -> Iterator[tuple[Any, np.ndarray]]:
    bar = metric_writer.progress(total=len(paths), desc='photos', unit=' photos')
    for path, stem in zip(paths, stems, strict=True):
      bar.update()
      try:
        img = open_photo(path)
      except FkdError as e:
        if not folder:
          raise
        metric_writer.write(f'fkd: warning: skipping {path}: {e}')
        continue
      if bbox is not None:
        try:
          check_bbox_overlaps(bbox, img.size, path)
        except FkdError as e:
          if not folder:
            raise
          metric_writer.write(f'fkd: warning: skipping {path}: {e}')
          continue
      boxes = predictor.locate(np.asarray(img), bbox, whole_image)
      face_crops, edges = predictor.crop(img, boxes)
      yield (path, stem, img, boxes, edges), face_crops
    bar.close()

  written = []
  batches = refined(predictor, in_batches(predictor, located()), predictor.passes_for(source))
  for (path, stem, img, boxes, edges), landmarks in batches:
    faces = predictor.to_faces(boxes, edges, landmarks)
    record = image_record(predictor, path, img, faces, source)
    os.makedirs(output, exist_ok=True)
    files.atomic_write(stem + '.json', json.dumps(record, indent=1))
    draw_faces(img, faces, predictor.contours).save(stem + '.png')
    if whole_image:
      what = f'whole image ({img.width}x{img.height}) as the face crop'
    elif bbox is not None:
      what = '1 face (--bbox)'
    else:
      what = f'{len(faces)} face{"s" if len(faces) != 1 else ""}'
    metric_writer.write(
      f'{path}: {what}, {predictor.num_landmarks} landmarks -> {stem}.json, {stem}.png'
    )
    if 'note' in record:
      metric_writer.write(f'{path}: {record["note"]}')
    written.append(stem + '.json')
  return written


# ---- video -------------------------------------------------------------------------------------


def parse_camera(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise FkdError(
      f'--camera must be a camera index (0 for the first webcam), got {text!r}'
    ) from None


def run_video(
  source: str | int,
  output: str,
  workdir: str | None = None,
  checkpoint_dir: str | None = None,
  smooth: bool = False,
  bbox: Sequence[float] | None = None,
  margin: float | None = None,
  whole_image: bool = False,
  batch_size: int = DEFAULT_BATCH_SIZE,
  calibration: str | None = None,
  min_cutoff: float = 1.0,
  beta: float = 1.0,
  passes: int | None = None,
  flip: bool | None = None,
  **detector_kwargs: Any,
) -> tuple[str, str]:
  """Landmarks on every frame of a video file (or camera index): (OUT/<stem>.mp4, .jsonl).

  Frames go through the model in batches across frames (one frame at a time for a camera). A
  video that breaks off ends with an FkdError after the frames read so far are written (a valid,
  shorter video and JSON lines); a camera runs until Ctrl-C. With two passes or more, a face the
  detector misses keeps its track from its last landmarks (`_Tracks`; a printed note says on how
  many frames).
  """
  from fkd.serve import smoothing, video

  _check_args(workdir, checkpoint_dir, bbox, whole_image)
  parse_passes(passes)
  camera = isinstance(source, int)
  if not camera and not os.path.isfile(source):
    raise FkdError(f'--video {source} does not exist')
  stem = os.path.join(
    output, f'camera{source}' if camera else os.path.splitext(os.path.basename(source))[0]
  )
  paths = (stem + '.mp4', stem + '.jsonl')
  if not camera:
    check_no_overwrite([source], paths)
  predictor, src = _start(
    output,
    workdir,
    checkpoint_dir,
    bbox,
    whole_image,
    calibration,
    margin,
    batch_size,
    detector_kwargs,
    passes,
    flip,
  )
  reader = video.VideoReader(source)
  info = reader.info
  if bbox is not None:
    check_bbox_overlaps(bbox, info.size, str(source))
  tracker = (
    smoothing.FaceTracker(min_cutoff=min_cutoff, beta=beta, fps=info.fps) if smooth else None
  )
  motion = smoothing.Motion()
  broken: list[FkdError] = []
  stats = {'frames': 0, 'faces': 0}

  def located() -> Iterator[tuple[Any, np.ndarray]]:
    try:
      for frame in reader:
        img = Image.fromarray(frame.image)
        boxes = predictor.locate(frame.image, bbox, whole_image)
        face_crops, edges = predictor.crop(img, boxes)
        yield (frame, img, boxes, edges), face_crops
    except FkdError as e:  # a broken or truncated file: finish what was read, then say so
      broken.append(e)

  batching = _one_at_a_time if camera else in_batches
  tracks = _Tracks(info.size) if src == 'detector' else None
  batches = refined(
    predictor, batching(predictor, located()), predictor.passes_for(src), batching, tracks
  )
  os.makedirs(output, exist_ok=True)
  bar = metric_writer.progress(total=info.frame_count, desc='frames', unit=' frames')
  with reader, video.VideoWriter(paths[0], info.fps, info.size) as writer, open(paths[1], 'w') as f:
    try:
      for (frame, img, boxes, edges), landmarks in batches:
        faces = predictor.to_faces(boxes, edges, landmarks)
        if tracker is not None:
          tracked = tracker.update(
            [fc.box for fc in faces], [fc.landmarks for fc in faces], frame.time
          )
          for fc, (track, pts) in zip(faces, tracked, strict=True):
            motion.add(frame.index, track, fc.landmarks, pts)
          faces = [
            dataclasses.replace(fc, landmarks=pts, track=track)
            for fc, (track, pts) in zip(faces, tracked, strict=True)
          ]
        line = {
          'frame': frame.index,
          'time': round(frame.time, 4),
          'faces': [fc.to_json() for fc in faces],
        }
        f.write(json.dumps(line) + '\n')
        f.flush()
        writer.write(np.asarray(draw_faces(img, faces, predictor.contours)))
        stats['frames'] += 1
        stats['faces'] += len(faces)
        bar.update()
    except KeyboardInterrupt:
      if not camera:
        raise
      metric_writer.write('fkd: stopped (Ctrl-C)')
  bar.close()
  print(
    f'{source}: {stats["frames"]} frames at {info.fps:g} fps, {stats["faces"]} faces'
    f'{" (smoothed)" if smooth else ""} -> {paths[0]}, {paths[1]}',
    flush=True,
  )
  if tracks is not None and tracks.frames:
    print(
      f'fkd: note: on {tracks.frames} frames a face the detector missed was cropped from its '
      f'landmarks on an earlier frame (tracking, at most {TRACK_FRAMES} frames in a row)',
      flush=True,
    )
  for line in motion.lines():
    print(line, flush=True)
  if broken:
    raise FkdError(
      f'{broken[0]}; the {stats["frames"]} frames before it are in {paths[0]} and {paths[1]}'
    )
  return paths


def _one_at_a_time(
  predictor: Predictor, items: Iterable[tuple[Any, np.ndarray]]
) -> Iterator[tuple[Any, np.ndarray]]:
  """Like `in_batches`, but every item runs at once (live video: no waiting for a full batch)."""
  for key, face_crops in items:
    yield key, predictor.predict_crops(face_crops)


def _define_flags():
  from absl import flags

  flags.DEFINE_string(
    'workdir', None, 'Run directory: uses its student_kd (else baseline, else a teacher).'
  )
  flags.DEFINE_string('checkpoint', None, 'A stage directory (e.g. DIR/student_kd) instead.')
  flags.DEFINE_string('image', None, 'An image file or a folder of images.')
  flags.DEFINE_string('video', None, 'A video file: writes OUT/<stem>.mp4 and OUT/<stem>.jsonl.')
  flags.DEFINE_string('camera', None, 'A camera index (0: the first webcam), until Ctrl-C.')
  flags.DEFINE_string('output', None, 'Output folder.')
  flags.DEFINE_string(
    'bbox', None, 'Face box x,y,w,h in pixels (top-left pixel, size) instead of face detection.'
  )
  flags.DEFINE_boolean(
    'whole_image', False, 'The whole image is the face crop (pre-cropped faces; no detection).'
  )
  flags.DEFINE_float(
    'margin',
    None,
    'Widening of the face box per side, as a fraction of its width / height; default: the '
    "model's training crops (0.05 synthetic_faces, 0.013 300-W).",
  )
  flags.DEFINE_integer(
    'batch_size',
    DEFAULT_BATCH_SIZE,
    'Faces per jitted call (fixed: compiled once; 1 for --camera).',
  )
  flags.DEFINE_string(
    'calibration', None, 'A detector box calibration.json; default: found with the model.'
  )
  flags.DEFINE_float('min_score', None, 'Detector score threshold (fkd.serve.detect default 0.4).')
  flags.DEFINE_float('min_face', None, 'Smallest face side looked for, in pixels (default 40).')
  flags.DEFINE_float(
    'min_face_fraction', None, '... or this fraction of the shorter image side (default 0.05).'
  )
  flags.DEFINE_integer('max_faces', None, 'Keep at most this many faces per image (best first).')
  flags.DEFINE_float(
    'max_megapixels',
    None,
    'Decode photos up to this many megapixels (default 179: larger ones are refused as possible '
    'decompression bombs).',
  )
  flags.DEFINE_integer(
    'passes',
    None,
    f'Landmark passes per face (1..{MAX_PASSES}): each pass after the first re-crops the face '
    f"from the previous pass's landmarks; default {DEFAULT_PASSES} for detected faces of a model "
    'trained with config.data.box_noise, else 1 (--whole_image: always 1).',
  )
  flags.DEFINE_boolean(
    'flip',
    None,
    'Flip averaging: each crop also runs mirrored and the two landmark sets are averaged (twice '
    'the model calls); default on for a model trained on mirrored faces (config.data.augment '
    "'flip' or 'kd') whose mark-up has a flip permutation; --noflip turns it off.",
  )
  flags.DEFINE_boolean('smooth', False, 'Video: One Euro smoothing of landmarks across frames.')
  flags.DEFINE_float('min_cutoff', 1.0, '--smooth: cutoff at rest in Hz (lower: smoother).')
  flags.DEFINE_float('beta', 1.0, '--smooth: cutoff rise with speed (higher: less lag).')
  flags.mark_flags_as_required(['output'])
  return flags.FLAGS


def _main(argv: list[str]) -> None:
  f = _FLAGS
  check_settings(
    **{
      name: getattr(f, name)
      for name in (
        'margin', 'batch_size', 'min_score', 'min_face', 'min_face_fraction', 'max_faces',
        'min_cutoff', 'beta', 'max_megapixels',
      )
    }
  )  # fmt: skip
  with formats.max_pixels(round(f.max_megapixels * 1e6) if f.max_megapixels else None):
    _predict(f)


def _predict(f: Any) -> None:
  inputs = [name for name in ('image', 'video', 'camera') if getattr(f, name) is not None]
  if len(inputs) != 1:
    raise FkdError('give exactly one of --image, --video and --camera')
  common = dict(
    workdir=f.workdir,
    checkpoint_dir=f.checkpoint,
    bbox=parse_bbox(f.bbox) if f.bbox else None,
    margin=f.margin,
    whole_image=f.whole_image,
    batch_size=f.batch_size,
    calibration=f.calibration,
    min_score=f.min_score,
    min_face=f.min_face,
    min_face_fraction=f.min_face_fraction,
    max_faces=f.max_faces,
    passes=f.passes,
    flip=f.flip,
  )
  if f.image is not None:
    if f.smooth:
      raise FkdError('--smooth is for --video and --camera')
    run(f.image, f.output, **common)
    return
  source = f.video if f.video is not None else parse_camera(f.camera)
  if f.camera is not None and not f['batch_size'].present:
    common['batch_size'] = 1  # live: one frame at a time, so no padding to a large batch
  run_video(source, f.output, smooth=f.smooth, min_cutoff=f.min_cutoff, beta=f.beta, **common)


def main() -> None:
  """`python -m fkd.predict` (fkd/predict.py runs this)."""
  global _FLAGS
  from fkd import cli

  _FLAGS = _define_flags()
  cli.run(_main)
