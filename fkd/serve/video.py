"""Video and webcam frames in, annotated video out: a thin layer over OpenCV's FFmpeg I/O.

  with video.VideoReader('in.mp4') as reader:               # or VideoReader(0): the first webcam
    with video.VideoWriter('out.mp4', reader.info.fps, reader.info.size) as writer:
      for frame in reader:                                  # Frame(index, time, image)
        writer.write(annotate(frame.image))

Frames are uint8 RGB (H, W, 3) like the rest of fkd (OpenCV's BGR stays inside this module).
`Frame.time` is index / fps for a file (deterministic) and seconds since opening for a camera.
Needs OpenCV: the `video` extra, `pip install "fkd[video]"` (opencv-python-headless, Apache-2.0,
a large wheel with FFmpeg inside; pinned below 5).

A file that cannot be opened raises FkdError at once. A file that stops decoding before the frame
count its container promises (truncated or broken) yields every frame it can, then raises FkdError
naming how many frames were read (`strict=True`, the default): what the caller wrote so far stays
valid as long as it closes its writer (use `with`). Containers whose count is an estimate may be
off by a frame or two, so a shortfall of at most max(1, 1 %) frames is accepted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from fkd.errors import FkdError

INSTALL_HINT = 'pip install "fkd[video]"'
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv')


def require_cv2() -> Any:
  """The `cv2` module, or an FkdError naming the install command."""
  try:
    import cv2
  except ImportError:
    raise FkdError(
      f'video needs OpenCV, which is not installed; install it with `{INSTALL_HINT}`'
    ) from None
  return cv2


@dataclasses.dataclass(frozen=True)
class Frame:
  index: int  # 0-based
  time: float  # seconds
  image: np.ndarray  # uint8 RGB (H, W, 3)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  source: str
  fps: float
  frame_count: int | None  # as the container says (None for a camera or when unknown)
  width: int
  height: int

  @property
  def size(self) -> tuple[int, int]:
    return self.width, self.height


class VideoReader:
  """Iterates over the frames of a video file or a camera (an int index); see the module doc."""

  def __init__(
    self, source: str | os.PathLike | int, strict: bool = True, default_fps: float = 30.0
  ):
    cv2 = require_cv2()
    self.camera = isinstance(source, int)
    name = f'camera {source}' if self.camera else os.fspath(source)
    if not self.camera and not os.path.isfile(name):
      raise FkdError(f'video {name} does not exist')
    self._cap = cv2.VideoCapture(source if self.camera else name)
    if not self._cap.isOpened():
      self._cap.release()
      if self.camera:
        raise FkdError(f'cannot open {name} (no such camera, in use, or no access)')
      raise FkdError(
        f'cannot open {name} as a video (not a video, broken, or a codec FFmpeg in OpenCV lacks)'
      )
    fps = self._cap.get(cv2.CAP_PROP_FPS)
    count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
    self.info = VideoInfo(
      name,
      float(fps) if fps and np.isfinite(fps) and fps > 0 else default_fps,
      count if count > 0 and not self.camera else None,
      int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
      int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    self.strict = strict
    self.frames_read = 0

  def __iter__(self) -> Iterator[Frame]:
    cv2 = require_cv2()
    start = time.monotonic()
    while True:
      ok, bgr = self._cap.read()
      if not ok or bgr is None:
        break
      t = time.monotonic() - start if self.camera else self.frames_read / self.info.fps
      rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else np.stack([bgr] * 3, -1)
      yield Frame(self.frames_read, t, rgb)
      self.frames_read += 1
    count = self.info.frame_count
    if self.strict and count is not None and count - self.frames_read > max(1, count // 100):
      raise FkdError(
        f'{self.info.source}: the video ended after {self.frames_read} of its '
        f'{count} frames (truncated or broken)'
      )

  def close(self) -> None:
    self._cap.release()

  def __enter__(self) -> VideoReader:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class VideoWriter:
  """Writes uint8 RGB frames of one size to a video file (MPEG-4 Part 2 'mp4v' by default)."""

  def __init__(
    self, path: str | os.PathLike, fps: float, size: tuple[int, int], fourcc: str = 'mp4v'
  ):
    cv2 = require_cv2()
    self.path = os.fspath(path)
    self.size = (int(size[0]), int(size[1]))
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._writer = cv2.VideoWriter(
      self.path, cv2.VideoWriter_fourcc(*fourcc), float(fps), self.size
    )
    if not self._writer.isOpened():
      raise FkdError(
        f'cannot write video {self.path} (codec {fourcc!r}, {fps} fps, '
        f'{self.size[0]}x{self.size[1]})'
      )
    self.frames_written = 0

  def write(self, image: np.ndarray) -> None:
    cv2 = require_cv2()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (self.size[1], self.size[0], 3):
      raise ValueError(
        f'frame must be uint8 {(self.size[1], self.size[0], 3)}, got {image.dtype} {image.shape}'
      )
    self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    self.frames_written += 1

  def close(self) -> None:
    self._writer.release()

  def __enter__(self) -> VideoWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
