"""Temporal smoothing of landmarks for video: a One Euro filter per point, faces tracked by IoU.

  tracker = smoothing.FaceTracker(fps=video_fps)
  for frame in frames:
    boxes, points = ...                       # this frame's faces: (x, y, w, h), (N, 2) landmarks
    for track_id, smooth in tracker.update(boxes, points, t=frame.time):  # in input order
      ...

One Euro filter (Casiez, Roussel & Vogel, CHI 2012), applied to every coordinate independently.
With dt the time since the previous sample:

  alpha(fc) = 1 / (1 + tau / dt),  tau = 1 / (2 pi fc)      (an exponential smoother's weight)
  dx_hat    = alpha(d_cutoff) · (x − x_hat_prev) / dt + (1 − alpha(d_cutoff)) · dx_hat_prev
  fc        = min_cutoff + beta · |dx_hat| / scale
  x_hat     = alpha(fc) · x + (1 − alpha(fc)) · x_hat_prev

The first sample passes through unchanged (dx_hat = 0). Parameters:
- `min_cutoff` (Hz): the cutoff at rest. Lower removes more jitter on a still face but lags more
  when motion starts. Default 1 Hz: at 30 fps alpha = 0.17, which cuts the variance of white jitter
  on a still face ~10x (an exponential smoother's alpha / (2 − alpha)).
- `beta` (Hz per unit of speed): how fast the cutoff rises with speed, so that fast motion is
  followed with little lag. `scale` divides the speed: the tracker passes the face size
  (sqrt(w·h) of its box), so speed is in face sizes per second and one `beta` suits every face
  size. Default 1.0: a face moving 1 face size / s gets fc = 2 Hz.
- `d_cutoff` (Hz): the cutoff of the speed estimate. Default 1 Hz as in the paper.

Pure NumPy, deterministic. `FaceTracker` gives each face a filter that follows it across frames:
faces are matched to the tracks of the previous frames greedily by box IoU (highest first, at
least `iou_threshold`); an unmatched face starts a new track (its landmarks pass through), a track
unmatched for more than `max_missed` frames ends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from fkd.serve.detect import iou


def alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
  """The exponential smoothing weight of a first-order low-pass filter at `cutoff` Hz."""
  tau = 1.0 / (2 * math.pi * np.asarray(cutoff, np.float64))
  return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
  """One Euro filter over arrays of any (fixed) shape; every element filtered on its own."""

  def __init__(
    self, min_cutoff: float = 1.0, beta: float = 1.0, d_cutoff: float = 1.0, fps: float = 30.0
  ):
    if min(min_cutoff, d_cutoff, fps) <= 0 or beta < 0:
      raise ValueError('min_cutoff, d_cutoff and fps must be positive and beta non-negative')
    self.min_cutoff, self.beta, self.d_cutoff, self.fps = min_cutoff, beta, d_cutoff, fps
    self.reset()

  def reset(self) -> None:
    self.x_hat: np.ndarray | None = None
    self.dx_hat: np.ndarray | None = None
    self.t: float | None = None

  def __call__(self, x: np.ndarray, t: float | None = None, scale: float = 1.0) -> np.ndarray:
    """Filters sample `x` taken at time `t` seconds (None: 1 / fps after the previous one)."""
    x = np.asarray(x, np.float64)
    if self.x_hat is None:
      self.x_hat, self.dx_hat, self.t = x.copy(), np.zeros_like(x), t
      return x.copy()
    if x.shape != self.x_hat.shape:
      raise ValueError(f"sample shape {x.shape} differs from the filter's {self.x_hat.shape}")
    dt = 1.0 / self.fps if t is None or self.t is None else t - self.t
    if dt <= 0:  # a repeated or out-of-order timestamp: keep the state
      return self.x_hat.copy()
    a_d = alpha(self.d_cutoff, dt)
    self.dx_hat = a_d * (x - self.x_hat) / dt + (1 - a_d) * self.dx_hat
    cutoff = self.min_cutoff + self.beta * np.abs(self.dx_hat) / scale
    a = alpha(cutoff, dt)
    self.x_hat = a * x + (1 - a) * self.x_hat
    self.t = t
    return self.x_hat.copy()


def mean_motion(landmarks: Sequence[np.ndarray] | np.ndarray) -> float:
  """Mean frame-to-frame displacement of a point, in its units: mean over frames t >= 1 and points
  of |p_t − p_(t−1)| for a (T, N, 2) sequence of one face (the jitter figure of a still face)."""
  seq = np.asarray(landmarks, np.float64)
  if seq.ndim != 3 or seq.shape[-1] != 2 or len(seq) < 2:
    raise ValueError(f'need (T >= 2, N, 2) landmarks, got shape {seq.shape}')
  return float(np.linalg.norm(np.diff(seq, axis=0), axis=-1).mean())


class Motion:
  """`mean_motion` of each track of a video, raw and smoothed, over the frame pairs it was seen in
  back to back; streamed: only each track's last frame is kept."""

  def __init__(self):
    self.last: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    self.sums: dict[int, np.ndarray] = {}  # track -> [raw sum, smooth sum, frame pairs]

  def add(self, frame: int, track: int, raw: np.ndarray, smooth: np.ndarray) -> None:
    prev = self.last.get(track)
    if prev is not None and prev[0] == frame - 1:
      s = self.sums.setdefault(track, np.zeros(3))
      s += [mean_motion([prev[1], raw]), mean_motion([prev[2], smooth]), 1]
    self.last[track] = (frame, raw, smooth)

  def lines(self) -> list[str]:
    return [
      f'track {t}: mean frame-to-frame landmark motion {s[0] / s[2]:.2f} px raw -> '
      f'{s[1] / s[2]:.2f} px smoothed ({int(s[2])} frame pairs)'
      for t, s in sorted(self.sums.items())
    ]


@dataclasses.dataclass
class Track:
  """One face followed across frames."""

  id: int
  box: np.ndarray  # (x, y, w, h) of its last detection
  filter: OneEuroFilter
  missed: int = 0  # frames since it was last matched


def match(track_boxes: np.ndarray, boxes: np.ndarray, threshold: float) -> list[tuple[int, int]]:
  """Greedy IoU matching: (track index, box index) pairs, highest IoU first, IoU >= threshold."""
  if not len(track_boxes) or not len(boxes):
    return []
  ious = iou(np.asarray(track_boxes)[:, None], np.asarray(boxes)[None, :])
  pairs = []
  used_t, used_b = set(), set()
  order = np.argsort(-ious, axis=None, kind='stable')
  for flat in order:
    i, j = divmod(int(flat), ious.shape[1])
    if ious[i, j] < threshold:
      break
    if i not in used_t and j not in used_b:
      pairs.append((i, j))
      used_t.add(i)
      used_b.add(j)
  return pairs


class FaceTracker:
  """Per-face One Euro smoothing of landmarks across video frames (see the module docstring)."""

  def __init__(
    self,
    min_cutoff: float = 1.0,
    beta: float = 1.0,
    d_cutoff: float = 1.0,
    fps: float = 30.0,
    iou_threshold: float = 0.3,
    max_missed: int = 5,
  ):
    self.params = dict(min_cutoff=min_cutoff, beta=beta, d_cutoff=d_cutoff, fps=fps)
    OneEuroFilter(**self.params)  # validates
    self.iou_threshold = iou_threshold
    self.max_missed = max_missed
    self.tracks: list[Track] = []
    self._next_id = 0

  def update(
    self,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    landmarks: Sequence[np.ndarray],
    t: float | None = None,
  ) -> list[tuple[int, np.ndarray]]:
    """This frame's faces -> [(track id, smoothed (N, 2) landmarks)], in the order given."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(landmarks):
      raise ValueError(f'{len(boxes)} boxes but {len(landmarks)} landmark arrays')
    pairs = dict(
      (j, i)
      for i, j in match(
        np.array([tr.box for tr in self.tracks]).reshape(-1, 4), boxes, self.iou_threshold
      )
    )
    out = []
    matched = set()
    for j, (box, points) in enumerate(zip(boxes, landmarks, strict=True)):
      if j in pairs and np.shape(points) == self.tracks[pairs[j]].filter.x_hat.shape:
        track = self.tracks[pairs[j]]
        matched.add(pairs[j])
      else:  # a new face (or a model with another point count): a fresh filter
        track = Track(self._next_id, box, OneEuroFilter(**self.params))
        self._next_id += 1
        self.tracks.append(track)
        matched.add(len(self.tracks) - 1)
      track.box, track.missed = box, 0
      scale = max(float(np.sqrt(box[2] * box[3])), 1e-6)
      out.append((track.id, track.filter(points, t, scale)))
    for i, track in enumerate(self.tracks):
      if i not in matched:
        track.missed += 1
    self.tracks = [tr for tr in self.tracks if tr.missed <= self.max_missed]
    return out

  def reset(self) -> None:
    self.tracks = []
