"""Face detection that ships inside a pip wheel: dlib's HOG + linear SVM frontal-face detector.

  from fkd.serve import detect
  faces = detect.detect_faces(image_rgb)  # [Detection(box, score, view), ...], best first

Backend: `dlib-bin` (the `detect` extra, `pip install "fkd[detect]"`; Boost Software License 1.0,
a small wheel). The detector's weights are compiled into the library, so nothing is read or
downloaded at run time. On real photos with one annotated face each it finds nearly every face at
the default settings (IoU > 0.3 with the landmark box), more than OpenCV 4's bundled Haar cascade
(`haarcascade_frontalface_default`).

Boxes are `(x, y, w, h)` in original-image pixels with the convention of `fkd.predict --bbox`:
(x, y) is the top-left pixel and the box covers pixels x..x+w−1, i.e. its edges are
x−½ .. x+w−½ with pixel centres at integers. A detector box is *not* the box a landmark model was
trained on: map it with `fkd.box_calibration.apply` first.

Score: `sigmoid(margin)` of the SVM margin dlib reports (`fhog_object_detector.run`); 0.5 is
dlib's own decision threshold (margin 0). It orders detections and is monotone in confidence, but
it is not a calibrated probability. The default `min_score` 0.4 (margin −0.41) keeps faces dlib
scores just below its threshold: on real photos it finds annotated faces that 0.5 misses, for a few
detections that match no annotated face (lower thresholds add many more). Some of those are not
faces (objects in a photo's background); the landmark model sees them as faces unless the caller
raises `min_score`.

Scale: the image is resized (bilinear, anti-aliased) so that the smallest face looked for,
`max(min_face, min_face_fraction × the image's shorter side)` pixels, becomes dlib's 80-pixel
window; one pass then finds faces from that size up. Small images are upsampled, large photos
downsampled. Time grows with the resized area, i.e. with (80 / min_face)², so video wants a
larger `min_face` than photos.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from PIL import Image

from fkd.errors import FkdError

BACKEND = 'dlib_hog'
# dlib's detector is 5 HOG filters; which one fired is the detection's `view`.
VIEWS = ('front', 'left', 'right', 'front_rotated_left', 'front_rotated_right')
INSTALL_HINT = 'pip install "fkd[detect]"'
WINDOW = 80  # dlib's frontal face detector scans 80 x 80 windows


@dataclasses.dataclass(frozen=True)
class Detection:
  """One face: `box` (x, y, w, h) in original pixels (module docstring), `score` in [0, 1].

  `view` names the HOG filter that fired (`VIEWS`): a coarse head pose, which the box
  calibration uses (a turned face's landmarks sit off-centre in its box). 'left' is a face turned
  towards the image's left side (breakingbad.jpg's Walter White), 'right' the other way.
  """

  box: tuple[float, float, float, float]
  score: float
  view: str = 'front'

  def to_json(self) -> dict[str, Any]:
    return {
      'box': [round(float(v), 3) for v in self.box],
      'score': round(float(self.score), 4),
      'view': self.view,
    }


def require_dlib() -> Any:
  """The `dlib` module, or an FkdError naming the install command."""
  try:
    import dlib
  except ImportError:
    raise FkdError(
      'face detection needs dlib, which is not installed; install it with '
      f'`{INSTALL_HINT}` (or pass a face box with --bbox, or --whole_image for '
      'photos that are already face crops)'
    ) from None
  return dlib


def _as_uint8_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 4:
    image = image[..., :3]
  if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
    raise FkdError(
      f'detect_faces needs a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}'
    )
  return np.ascontiguousarray(image)


class FaceDetector:
  """dlib's HOG frontal-face detector with fkd's scale and score conventions (deterministic).

  Args:
    min_score: detections scoring below it are dropped (score = sigmoid(SVM margin)).
    min_face: smallest face side looked for, in original pixels.
    min_face_fraction: ... or this fraction of the image's shorter side, if larger.
    max_faces: keep at most this many (the best); None keeps all.
  """

  def __init__(
    self,
    min_score: float = 0.4,
    min_face: float = 40.0,
    min_face_fraction: float = 0.05,
    max_faces: int | None = None,
  ):
    if not 0.0 < min_score < 1.0:
      raise FkdError(f'min_score must be in (0, 1), got {min_score}')
    if min_face <= 0 or min_face_fraction < 0:
      raise FkdError('min_face must be positive and min_face_fraction non-negative')
    self.min_score = float(min_score)
    self.min_face = float(min_face)
    self.min_face_fraction = float(min_face_fraction)
    self.max_faces = max_faces
    require_dlib()
    self._detector = _dlib_detector()  # slow to build, so shared

  def config(self) -> dict[str, Any]:
    """What a calibration records about the detector that produced its boxes."""
    import dlib

    return {
      'backend': BACKEND,
      'dlib_version': dlib.__version__,
      'min_score': self.min_score,
      'min_face': self.min_face,
      'min_face_fraction': self.min_face_fraction,
    }

  def scale(self, width: int, height: int) -> float:
    """The resize factor applied before detection (see the module docstring)."""
    smallest = max(self.min_face, self.min_face_fraction * min(width, height))
    return WINDOW / smallest

  def __call__(self, image: np.ndarray) -> list[Detection]:
    image = _as_uint8_image(image)
    h, w = image.shape[:2]
    s = self.scale(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size != (w, h):
      image = np.asarray(
        Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
      )
    sx, sy = size[0] / w, size[1] / h
    margin = math.log(self.min_score / (1 - self.min_score))
    rects, margins, filters = self._detector.run(image, 0, margin)
    out = []
    for r, m, k in zip(rects, margins, filters, strict=True):
      # Pixels left..right of the resized image span edges left−½..right+½, i.e. original edges
      # left/sx−½ .. (right+1)/sx−½: x = left/sx, w = (right+1−left)/sx.
      box = (
        r.left() / sx,
        r.top() / sy,
        (r.right() + 1 - r.left()) / sx,
        (r.bottom() + 1 - r.top()) / sy,
      )
      view = VIEWS[int(k)] if 0 <= int(k) < len(VIEWS) else str(int(k))
      out.append(Detection(tuple(float(v) for v in box), float(1 / (1 + math.exp(-m))), view))
    out.sort(key=lambda d: (-d.score, d.box))
    return out[: self.max_faces] if self.max_faces is not None else out


@functools.cache
def _dlib_detector() -> Any:
  return require_dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=8)
def _detector(**kwargs: Any) -> FaceDetector:
  return FaceDetector(**kwargs)


def detect_faces(image_rgb: np.ndarray, **kwargs: Any) -> list[Detection]:
  """Every face of a uint8 RGB (or grayscale) image, best score first (`FaceDetector` args)."""
  return _detector(**kwargs)(image_rgb)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of (x, y, w, h) boxes, broadcast: (..., 4) x (..., 4) -> (...)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  lo = np.maximum(a[..., :2], b[..., :2])
  hi = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
  union = np.prod(a[..., 2:], axis=-1) + np.prod(b[..., 2:], axis=-1) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
