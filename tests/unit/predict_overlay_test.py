"""fkd.serve.predict's drawing and jitter report: pixels read back where the landmarks are, and
the printed motion figures against a hand count."""

import numpy as np
from PIL import Image

from fkd.serve import predict, smoothing

RED = (255, 40, 40)


def test_landmarks_are_drawn_at_x_y():
  img = Image.new('RGB', (64, 48))
  points = np.array([[10.0, 30.0], [40.0, 12.0], [52.0, 20.0]])
  face = predict.Face(box=(5.0, 5.0, 55.0, 38.0), score=None, landmarks=points)
  out = np.asarray(predict.draw_faces(img, [face]))
  assert out.shape == (48, 64, 3)
  for x, y in points.astype(int):
    assert tuple(out[y, x]) == RED, (x, y)  # row y, column x
  # Nothing red where (y, x) would put the first two.
  assert tuple(out[10, 30]) != RED and tuple(out[40, 12]) != RED
  assert np.asarray(img).max() == 0  # the input stays as it was
  # The landmark box (x, y, w, h) = (5, 5, 55, 38) is drawn at columns 5 and 60, rows 5 and 43.
  yellow = np.all(out == (255, 220, 0), axis=-1)
  assert np.nonzero(yellow[20])[0].tolist() == [5, 60]
  assert np.nonzero(yellow[:, 20])[0].tolist() == [5, 43]


def test_motion_lines_raw_then_smoothed():
  motion = smoothing.Motion()
  raw = [np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[3.0, 4.0], [10.0, 2.0]])]
  smooth = [np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[0.0, 1.0], [10.0, 1.0]])]
  raw.append(raw[1] + [[0.0, 6.0], [0.0, 0.0]])
  smooth.append(smooth[1])
  for k in range(3):
    motion.add(k, 7, raw[k], smooth[k])
  motion.add(5, 7, raw[0], smooth[0])  # after a gap: no frame pair
  # Raw: frame 1 (|(3, 4)| + |(0, 2)|) / 2 = 3.5, frame 2 (6 + 0) / 2 = 3 -> mean 3.25.
  # Smoothed: frame 1 (1 + 1) / 2 = 1, frame 2 0 -> mean 0.5.
  assert motion.lines() == [
    'track 7: mean frame-to-frame landmark motion 3.25 px raw -> 0.50 px smoothed (2 frame pairs)'
  ]
