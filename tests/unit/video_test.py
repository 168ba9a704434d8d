"""fkd.serve.video: a tiny synthetic video written with OpenCV and read back; broken and missing
files."""

import sys

import helpers
import numpy as np
import pytest

from fkd.errors import FkdError
from fkd.serve import video

pytest.importorskip('cv2')

W, H, FPS, N = 64, 48, 12.0, 15


def _x(i):
  return 4 + 2 * i % 48


def _frame(i):
  """Frame i: grey level 6 i, a white 8 x 8 square at x = _x(i), red channel 200 (RGB order)."""
  img = np.full((H, W, 3), 6 * i % 200, np.uint8)
  img[..., 0] = 200
  img[10:18, _x(i) : _x(i) + 8] = 255
  return img


def _write(path, fourcc='mp4v', n=N):
  with video.VideoWriter(path, FPS, (W, H), fourcc) as writer:
    for i in range(n):
      writer.write(_frame(i))
  assert writer.frames_written == n
  return path


@pytest.mark.parametrize('ext, fourcc', [('mp4', 'mp4v'), ('avi', 'MJPG')])
def test_write_and_read_back(tmp_path, ext, fourcc):
  path = _write(tmp_path / 'sub' / f'clip.{ext}', fourcc)
  with video.VideoReader(path) as reader:
    assert reader.info.size == (W, H) and reader.info.fps == FPS
    assert reader.info.frame_count == N
    frames = list(reader)
  assert [f.index for f in frames] == list(range(N))
  np.testing.assert_allclose([f.time for f in frames], np.arange(N) / FPS)
  for i, f in enumerate(frames):
    assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
    err = np.abs(f.image.astype(int) - _frame(i).astype(int))
    assert err.mean() < 6  # lossy codecs
    assert f.image[30:40, 40:60, 0].mean() > 180  # red stays red
    square = f.image[10:18, :, 1].mean(axis=0)  # the square is where frame i put it
    assert abs(int(np.argmax(np.convolve(square, np.ones(8), 'valid'))) - _x(i)) <= 1
  assert len(list(helpers.read_frames(path))) == N


def test_truncated_video_yields_what_it_can_then_fails(tmp_path):
  path = _write(tmp_path / 'clip.avi', 'MJPG', n=40)
  data = path.read_bytes()
  cut = tmp_path / 'cut.avi'
  cut.write_bytes(data[: len(data) * 2 // 3])
  seen = []
  out = tmp_path / 'annotated.mp4'
  with pytest.raises(FkdError, match=r'ended after \d+ of its 40 frames'):
    with video.VideoWriter(out, FPS, (W, H)) as writer:
      for frame in helpers.read_frames(cut):
        seen.append(frame.index)
        writer.write(frame.image)
  assert 0 < len(seen) < 40 and seen == list(range(len(seen)))
  assert len(list(helpers.read_frames(out))) == len(seen)  # what was written stays valid
  assert len(list(video.VideoReader(cut, strict=False))) == len(seen)
  # An mp4 cut short loses its index (written last): it cannot be opened at all.
  mp4 = _write(tmp_path / 'clip.mp4')
  (tmp_path / 'cut.mp4').write_bytes(mp4.read_bytes()[:1000])
  with pytest.raises(FkdError, match='cannot open'):
    video.VideoReader(tmp_path / 'cut.mp4')


def test_errors(tmp_path, monkeypatch):
  with pytest.raises(FkdError, match='does not exist'):
    video.VideoReader(tmp_path / 'none.mp4')
  (tmp_path / 'notes.mp4').write_text('not a video')
  with pytest.raises(FkdError, match='cannot open'):
    video.VideoReader(tmp_path / 'notes.mp4')
  with video.VideoWriter(tmp_path / 'w.mp4', FPS, (W, H)) as writer:
    with pytest.raises(ValueError, match='uint8'):
      writer.write(np.zeros((W, H, 3), np.uint8))
  with pytest.raises(FkdError, match='no such camera'):
    video.VideoReader(63)  # /dev/video63: none here
  monkeypatch.setitem(sys.modules, 'cv2', None)
  with pytest.raises(FkdError, match=r'pip install "fkd\[video\]"'):
    video.VideoReader(tmp_path / 'w.mp4')


class _FakeCapture:
  """A cv2.VideoCapture stand-in: the container promises `count` frames, `frames` decode."""

  def __init__(self, count, frames, fps=25.0):
    self.count, self.frames, self.fps, self.read_so_far = count, frames, fps, 0

  def __call__(self, source):
    return self

  def isOpened(self):  # noqa: N802 (OpenCV's name)
    return True

  def get(self, prop):
    import cv2

    return {
      cv2.CAP_PROP_FPS: self.fps,
      cv2.CAP_PROP_FRAME_COUNT: self.count,
      cv2.CAP_PROP_FRAME_WIDTH: 4,
      cv2.CAP_PROP_FRAME_HEIGHT: 2,
    }[prop]

  def read(self):
    if self.read_so_far == self.frames:
      return False, None
    self.read_so_far += 1
    return True, np.zeros((2, 4, 3), np.uint8)

  def release(self):
    pass


@pytest.mark.parametrize(
  'count, frames, ok',
  [(300, 297, True), (300, 296, False), (50, 49, True), (50, 48, False), (250, 248, True)],
)
def test_truncation_tolerance(tmp_path, monkeypatch, count, frames, ok):
  # A shortfall of max(1, count // 100) frames is an estimate's error; one more is a broken file.
  import cv2

  path = tmp_path / 'clip.mp4'
  path.write_bytes(b'')
  monkeypatch.setattr(cv2, 'VideoCapture', _FakeCapture(count, frames))
  reader = video.VideoReader(path)
  assert reader.info.frame_count == count and reader.info.fps == 25.0
  if ok:
    got = list(reader)
    assert [f.index for f in got] == list(range(frames))
    assert [f.time for f in got[:3]] == [0.0, 0.04, 0.08]  # index / fps
  else:
    with pytest.raises(FkdError, match=f'ended after {frames} of its {count} frames'):
      list(reader)
