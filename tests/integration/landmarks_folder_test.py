"""Your own landmarks (`landmarks_folder`, fkd/data/folder.py): validation, the three formats on the
real 300W files of ../shared/data against `ibug_300w`, and tiny end-to-end runs (68 and 5 points).
"""

import json
import os
import pathlib

import helpers
import numpy as np
import pytest
from PIL import Image

from fkd import config_lib
from fkd.data import build, folder, formats, schemes
from fkd.errors import FkdError

REPO = pathlib.Path(__file__).resolve().parents[2]
FLIP_68 = list(schemes.SCHEMES['300w'].flip_permutation)
CROP = 48


# ---------------------------------------------------------------------------------------------
# Folder writers (temporary folders only: the 300W files must never be committed).


def spinkoo_faces(shared: pathlib.Path, groups=(('afw', 'afw', 9), ('helen', 'helen/trainset', 4))):
  """[(group, name, image path, raw (68, 2) points)] of the first real 300W images of each group."""
  root = shared / 'spinkoo-face-alignement-300w'
  out = []
  for group, sub, n in groups:
    for img in sorted((root / sub).glob('*.jpg'))[:n]:
      pts = formats.read_pts(img.with_suffix('.pts'), expected_points=68, allow_bare=True)
      out.append((group, img.name, img, pts))
  return out


def write_spec(root: pathlib.Path, **spec) -> None:
  root.mkdir(parents=True, exist_ok=True)
  (root / 'dataset.json').write_text(json.dumps(spec), encoding='utf-8')


def write_pts(root, splits, header=True):
  """Images (symlinked) with a .pts beside each, under <split>/<group>/."""
  for split, faces in splits.items():
    for group, name, img, pts in faces:
      d = root / split / group
      d.mkdir(parents=True, exist_ok=True)
      os.symlink(img, d / name)
      text = (
        formats.format_pts(pts)
        if header
        else ''.join(f'{x!r} {y!r}\n' for x, y in pts.astype(float).tolist())
      )
      (d / name).with_suffix('.pts').write_text(text, encoding='utf-8')


def write_csv(root, splits, transform=lambda p: p, box=False):
  """<split>/landmarks.csv (file,x0,y0,... [,bbox_x,bbox_y,bbox_w,bbox_h]) + symlinked images."""
  for split, faces in splits.items():
    d = root / split
    n = len(transform(faces[0][3]))
    header = ['file'] + [c for i in range(n) for c in (f'x{i}', f'y{i}')]
    header += list(folder.BOX_COLUMNS) if box else []
    rows = [','.join(header)]
    for group, name, img, pts in faces:
      (d / group).mkdir(parents=True, exist_ok=True)
      os.symlink(img, d / group / name)
      p = transform(pts)
      vals = [repr(float(v)) for v in p.reshape(-1)]
      if box:
        lo, hi = p.min(0), p.max(0)
        vals += [repr(float(v)) for v in (*lo, *(hi - lo))]
      rows.append(','.join([f'{group}/{name}', *vals]))
    (d / 'landmarks.csv').write_text('\n'.join(rows) + '\n', encoding='utf-8')


def write_coco(root, splits, offset=-1.0):
  """<split>/annotations.json (COCO keypoints, 0-based: raw + offset, v = 2, bbox = extent)."""
  for split, faces in splits.items():
    d = root / split
    images, anns = [], []
    for k, (group, name, img, pts) in enumerate(faces):
      (d / group).mkdir(parents=True, exist_ok=True)
      os.symlink(img, d / group / name)
      p = pts + offset
      w, h = Image.open(img).size
      images.append({'id': k + 1, 'file_name': f'{group}/{name}', 'width': w, 'height': h})
      kp = np.concatenate([p, np.full((len(p), 1), 2.0)], axis=1).reshape(-1)
      lo, hi = p.min(0), p.max(0)
      anns.append(
        {
          'id': 100 + k,
          'image_id': k + 1,
          'keypoints': kp.tolist(),
          'num_keypoints': len(p),
          'bbox': [*lo.tolist(), *(hi - lo).tolist()],
        }
      )
    (d / 'annotations.json').write_text(
      json.dumps({'images': images, 'annotations': anns}), encoding='utf-8'
    )


def five_points(pts: np.ndarray) -> np.ndarray:
  """Eye centres, nose tip, mouth corners of a 68-point shape."""
  return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


# ---------------------------------------------------------------------------------------------
# Validation: one line naming the file and the row; nothing left in data_dir.


def tiny_folder(root: pathlib.Path, fmt='pts', n=5, **spec) -> pathlib.Path:
  """Two 40x40 images per split with n points each, in `fmt`."""
  rng = np.random.default_rng(0)
  faces = {}
  for split in ('train', 'test'):
    faces[split] = []
    for i in range(2):
      img = root / 'src' / f'{split}{i}.png'
      img.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(img)
      faces[split].append(('g', img.name, img, rng.uniform(10, 30, (n, 2))))
  data = root / 'data'
  {'pts': write_pts, 'csv': write_csv, 'coco': write_coco}[fmt](data, faces)
  base = dict(format=fmt, num_landmarks=n, flip_permutation=None, nme_normalizer=[0, 1])
  write_spec(data, **{**base, **spec})
  return data


def build_error(data: pathlib.Path, tmp_path, capsys) -> str:
  out = tmp_path / 'tfds'
  code = build.main(['--dataset=folder', f'--manual_dir={data}', f'--data_dir={out}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2  # a user error (fkd.cli.report)
  assert not out.exists() or not any(out.iterdir()), list(out.rglob('*'))
  assert len(err) == 1 and err[0].startswith('fkd: error: '), err
  return err[0]


@pytest.mark.parametrize('fmt', ['pts', 'csv', 'coco'])
def test_wrong_point_count_names_file_and_row(tmp_path, capsys, fmt):
  data = tiny_folder(tmp_path, fmt, n=5, num_landmarks=5 if fmt == 'csv' else 6)
  if fmt == 'csv':  # one row short of a point (the header is right)
    p = data / 'train' / 'landmarks.csv'
    rows = p.read_text().splitlines()
    rows[2] = rows[2].rsplit(',', 2)[0]
    p.write_text('\n'.join(rows) + '\n')
  err = build_error(data, tmp_path, capsys)
  where = {
    'pts': 'train/g/train0.pts: 5 points; expected 6',
    'csv': 'train/landmarks.csv row 3 (g/train1.png): 9 columns (4 points); expected 11 (5 points)',
    'coco': 'train/annotations.json annotations[0] (id 100) (g/train0.png): 15 keypoint values',
  }[fmt]
  assert where in err


def test_csv_header_must_match(tmp_path, capsys):
  data = tiny_folder(tmp_path, 'csv', n=5)
  p = data / 'train' / 'landmarks.csv'
  p.write_text(p.read_text().replace('file,x0', 'image,x0', 1))
  assert 'train/landmarks.csv: header row' in build_error(data, tmp_path, capsys)


def test_flip_permutation_not_an_involution(tmp_path, capsys):
  data = tiny_folder(tmp_path, n=5, flip_permutation=[1, 2, 0, 3, 4])
  err = build_error(data, tmp_path, capsys)
  assert 'dataset.json: flip_permutation is not an involution: flip_permutation[0] = 1' in err


@pytest.mark.parametrize(
  'norm, msg',
  [
    ([0, 5], 'nme_normalizer[1]: index 5 out of range for num_landmarks=5'),
    ([[0, 1], [2, 7]], 'nme_normalizer[1][1]: index 7'),
  ],
)
def test_normaliser_index_out_of_range(tmp_path, capsys, norm, msg):
  data = tiny_folder(tmp_path, n=5, nme_normalizer=norm)
  assert msg in build_error(data, tmp_path, capsys)


def test_missing_and_unreadable_images(tmp_path, capsys):
  data = tiny_folder(tmp_path / 'a', 'csv', n=5)
  (data / 'test' / 'g' / 'test1.png').unlink()
  err = build_error(data, tmp_path / 'a', capsys)
  assert 'test/landmarks.csv row 3 (g/test1.png): image test/g/test1.png not found' in err
  data = tiny_folder(tmp_path / 'b', 'coco', n=5)
  img = data / 'train' / 'g' / 'train1.png'
  img.unlink()
  img.write_bytes(b'\x89PNG\r\n\x1a\n broken')
  err = build_error(data, tmp_path / 'b', capsys)
  assert 'annotations[1] (id 101) (g/train1.png): image train/g/train1.png is not a readable' in err
  data = tiny_folder(tmp_path / 'c', 'pts', n=5)
  (data / 'train' / 'g' / 'train1.png').unlink()
  err = build_error(data, tmp_path / 'c', capsys)
  assert 'train/g/train1.pts: no image beside it' in err


def test_box_outside_the_image(tmp_path, capsys):
  data = tiny_folder(tmp_path, 'coco', n=5)
  p = data / 'test' / 'annotations.json'
  coco = json.loads(p.read_text())
  coco['annotations'][1]['bbox'] = [100.0, 5.0, 20.0, 20.0]
  p.write_text(json.dumps(coco))
  err = build_error(data, tmp_path, capsys)
  assert 'test/annotations.json annotations[1] (id 101) (g/test1.png): face box' in err
  assert 'lies outside the 40x40 image test/g/test1.png' in err


def test_spec_errors_before_anything_is_written(tmp_path):
  data = tiny_folder(tmp_path, n=5)
  (data / 'dataset.json').write_text('{"format": "pts", "num_landmarks": 5,')
  with pytest.raises(FkdError, match='dataset.json: not valid JSON'):
    build.make_builder('folder', str(tmp_path / 'tfds'), manual_dir=str(data))
  write_spec(data, format='xml', num_landmarks=5, nme_normalizer=[0, 1])
  with pytest.raises(FkdError, match="format 'xml'"):
    build.make_builder('folder', str(tmp_path / 'tfds'), manual_dir=str(data))
  with pytest.raises(FkdError, match='needs its folder'):
    build.make_builder('folder', str(tmp_path / 'tfds'))
  assert not (tmp_path / 'tfds').exists()


def test_no_flip_and_visibility(tmp_path):
  data = tiny_folder(tmp_path, 'coco', n=5)
  p = data / 'train' / 'annotations.json'
  coco = json.loads(p.read_text())
  coco['annotations'][0]['keypoints'][2] = 1  # point 0 labelled but occluded
  p.write_text(json.dumps(coco))
  build.build('folder', str(data), str(tmp_path / 'tfds'), crop_size=16)
  b = build.make_builder('folder', str(tmp_path / 'tfds'), manual_dir=str(data), crop_size=16)
  meta = b.info.metadata
  assert meta['flip_permutation'] is None and meta['nme_normalizer'] == [0, 1]
  assert meta['splits'] == ['train', 'test'] and meta['num_landmarks'] == 5
  vis = helpers.examples_by_file(b, 'train')['train0.png']['visibility']
  assert vis.tolist() == [1, 2, 2, 2, 2]
  assert 'plain (no flip_permutation' in meta['pca_fit']


@pytest.mark.parametrize('flip', [[1, 0, 2, 4, 3], None])
def test_unlabelled_points_in_the_asm(tmp_path, monkeypatch, flip):
  """COCO v = 0 on point 0 of train0 and point 3 of test1: every ASM fit shape (plain and
  augmented copies, flipped ones re-indexed by π = (1 0 2 4 3); without π the plain faces only)
  is passed with its mask (the masked index holds the stand-in, the labelled points' mean, which
  every affine map keeps), the fit imputes them, and the stored soft landmarks are the masked
  projection."""
  from fkd.data import asm, face_builder

  data = tiny_folder(tmp_path, 'coco', n=5, flip_permutation=flip)
  for split, face, point in (('train', 0, 0), ('test', 1, 3)):
    p = data / split / 'annotations.json'
    coco = json.loads(p.read_text())
    coco['annotations'][face]['keypoints'][3 * point + 2] = 0
    p.write_text(json.dumps(coco))
  seen = []
  fit_pcas = face_builder.fit_pcas
  monkeypatch.setattr(
    face_builder, 'fit_pcas', lambda s, a, m=None: seen.append((s, m)) or fit_pcas(s, a, m)
  )
  build.build('folder', str(data), str(tmp_path / 'tfds'), crop_size=32)
  ((shapes, mask),) = seen
  copies = 6 if flip else 1  # F = 6 shapes per face (300W's augmentation constants)
  assert shapes.shape == (2 * copies, 5, 2) and mask.shape == (2 * copies, 5)
  assert (~mask).sum() == copies and np.all((~mask).sum(axis=1) <= 1)
  flipped = 0
  for pts, m in zip(shapes, mask, strict=True):
    if not m.all():
      np.testing.assert_allclose(pts[~m][0], pts[m].mean(axis=0), atol=1e-3)
      flipped += int(not m[1])
  assert flipped == (3 if flip else 0)  # copies 0, 2, 4 of the augmented five are flipped
  b = build.make_builder('folder', str(tmp_path / 'tfds'), manual_dir=str(data), crop_size=32)
  meta = b.info.metadata
  assert f'the unlabelled points of {copies} of the {2 * copies} shapes imputed' in meta['pca_fit']
  for split in ('train', 'test'):
    for e in helpers.examples_by_file(b, split).values():
      labelled = np.asarray(e['visibility']) > 0
      for key, d in meta['pca'].items():
        pca = asm.PCAModel.from_dict(d)
        want = asm.asm_project(pca, np.asarray(e['landmarks'], np.float64), labelled=labelled)
        np.testing.assert_allclose(e['soft_landmarks'][key], want, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Real 300W files: every format gives ibug_300w's crops, landmarks and soft landmarks.


@pytest.fixture(scope='module')
def real(shared_data, tmp_path_factory):
  """The same real 300W faces as an ibug_300w manual dir and as folders in the three formats."""
  faces = spinkoo_faces(shared_data)
  train, test = faces[:6] + faces[9:], faces[6:9]  # 6 afw + 4 helen train, 3 afw test
  tmp = tmp_path_factory.mktemp('folder300w')
  ibug = tmp / 'ibug'
  for group, name, img, pts in train:
    d = ibug / ('afw' if group == 'afw' else 'helen/trainset')
    d.mkdir(parents=True, exist_ok=True)
    os.symlink(img, d / name)
    (d / name).with_suffix('.pts').write_text(formats.format_pts(pts))
  splits = {'train': train, 'test': test}
  common = dict(num_landmarks=68, flip_permutation=FLIP_68, nme_normalizer=[36, 45])
  write_pts(tmp / 'pts', splits, header=False)  # the header-less spinkoo form
  write_spec(tmp / 'pts', format='pts', **common)
  write_csv(tmp / 'csv', splits)  # raw values, as HRNet's CSVs
  write_spec(tmp / 'csv', format='csv', origin_offset=-1, **common)
  write_coco(tmp / 'coco', splits)  # 0-based (raw − 1, as mmpose converts), bbox = extent
  write_spec(tmp / 'coco', format='coco', **common)
  return tmp, splits


@pytest.fixture(scope='module')
def ibug_reference(real):
  tmp, _ = real
  out = str(tmp / 'tfds_ibug')
  build.build('300w', str(tmp / 'ibug'), out, crop_size=CROP, allow_partial=True)
  return helpers.examples_by_file(build.make_builder('300w', out, crop_size=CROP), 'train')


@pytest.mark.parametrize('fmt', ['pts', 'csv', 'coco'])
def test_real_300w_same_as_ibug_300w(real, ibug_reference, fmt):
  tmp, splits = real
  data_dir = str(tmp / f'tfds_{fmt}')
  counts = build.build('folder', str(tmp / fmt), data_dir, crop_size=CROP)
  assert counts == {'train': 10, 'test': 3}
  b = build.make_builder('folder', data_dir, manual_dir=str(tmp / fmt), crop_size=CROP)
  got = helpers.examples_by_file(b, 'train')
  assert sorted(got) == sorted(ibug_reference)
  for name, ref in ibug_reference.items():
    e = got[name]
    np.testing.assert_array_equal(formats.open_image(e['image']), formats.open_image(ref['image']))
    for key in ('landmarks', 'crop_transform', 'crop_box'):
      np.testing.assert_allclose(e[key], ref[key], atol=1e-4, err_msg=f'{name} {key}')
    for k in ref['soft_landmarks']:
      np.testing.assert_allclose(e['soft_landmarks'][k], ref['soft_landmarks'][k], atol=1e-3)
    np.testing.assert_allclose(e['norm']['inter_ocular'], ref['norm']['inter_ocular'], rtol=1e-5)
  meta = b.info.metadata
  assert meta['nme_normalizer'] == [36, 45] and meta['flip_permutation'] == FLIP_68
  assert meta['format'] == fmt and meta['counts'] == {'train': 10, 'test': 3}


def test_real_300w_list_files(real):
  """Splits from list files (annotations at the top level) equal the subfolder build."""
  tmp, splits = real
  root = tmp / 'lists'
  write_pts(root, {'all': splits['train'] + splits['test']})
  names = {s: [f'all/{g}/{n}' for g, n, _, _ in f] for s, f in splits.items()}
  for s, files in names.items():
    (root / f'{s}.txt').write_text('\n'.join(files) + '\n')
  write_spec(
    root,
    format='pts',
    num_landmarks=68,
    flip_permutation=FLIP_68,
    nme_normalizer=[36, 45],
    splits={'train': 'train.txt', 'test': 'test.txt'},
  )
  spec = folder.read_spec(root)
  records = folder.read_records(root, spec)
  assert {s: len(r) for s, r in records.items()} == {'train': 10, 'test': 3}
  counts = build.build('folder', str(root), str(tmp / 'tfds_lists'), crop_size=CROP)
  assert counts == {'train': 10, 'test': 3}
  ref = folder.read_records(tmp / 'pts', folder.read_spec(tmp / 'pts'))
  for s in records:
    for a, b in zip(records[s], ref[s], strict=True):
      np.testing.assert_allclose(a.points, b.points, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# End to end: tiny train + eval on a folder (68 points, and a 5-point set with its own flip).


def tiny_config(path: str, manual_dir, data_dir):
  c = config_lib.load(str(REPO / path), 'folder,tiny')
  c.data.manual_dir = str(manual_dir)
  c.data.data_dir = str(data_dir)
  for t in ('train', 'teacher_train'):
    if t in c:
      c[t].batch_size = 4
  return c


def test_train_and_evaluate_68_points(real, tmp_path):
  from fkd.training import trainer as train

  tmp, _ = real
  config = tiny_config('configs/baseline.py', tmp / 'pts', tmp / 'tfds_e2e')
  results = train.run(config, str(tmp_path / 'run'))
  assert config.data.num_landmarks == 68 and config.data.eval_splits == ('test',)
  assert results['norm'] == '[36, 45]'
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(saved['models']) == {'mean_shape', 'student_baseline'}
  assert saved['models']['student_baseline']['test']['count'] == 3


@pytest.mark.slow  # tens of seconds; CI runs it with -m slow (the default suite's time budget)
def test_train_and_evaluate_5_points(real, tmp_path):
  """Eye centres, nose tip, mouth corners (CSV), flip [1, 0, 2, 4, 3], inter-eye-centre NME; a
  heatmap method (MobileFAN) on it."""
  from fkd import inference
  from fkd.training import trainer as train

  tmp, splits = real
  root = tmp_path / 'five'
  write_csv(root, splits, transform=five_points, box=True)
  write_spec(
    root,
    format='csv',
    num_landmarks=5,
    landmark_names=['left_eye', 'right_eye', 'nose_tip', 'mouth_left', 'mouth_right'],
    flip_permutation=[1, 0, 2, 4, 3],
    nme_normalizer=[0, 1],
    origin_offset=-1,
    crop_margin='10%',
  )
  config = tiny_config('configs/mobilefan.py', root, tmp_path / 'tfds')
  results = train.run(config, str(tmp_path / 'run'))
  assert config.data.num_landmarks == 5 and results['norm'] == '[0, 1]'
  assert set(results['models']) >= {'mean_shape', 'teacher', 'student_distill'}
  predictor = inference.Predictor(str(tmp_path / 'run' / 'student_distill'))
  assert predictor.num_landmarks == 5


def test_cofw_29_points_coco(shared_data, tmp_path):
  """mmpose's real COFW test faces (COCO keypoints, 29 points, v = 1 occluded) as a folder with
  COFW's flip and inter-ocular normaliser: builds, keeps v, trains a tiny baseline."""
  from fkd.training import trainer as train

  src = shared_data / 'mmpose-tests-data' / 'cofw'
  root = tmp_path / 'cofw'
  for split in ('train', 'test'):
    (root / split).mkdir(parents=True)
    os.symlink(src / 'test_cofw.json', root / split / 'annotations.json')
    for img in ('001766.jpg', '001805.jpg'):
      os.symlink(src / img, root / split / img)
  cofw = schemes.SCHEMES['cofw']
  write_spec(
    root,
    format='coco',
    num_landmarks=29,
    flip_permutation=list(cofw.flip_permutation),
    nme_normalizer=list(cofw.inter_ocular),
    crop_margin='10%',
  )
  assert build.build('folder', str(root), str(tmp_path / 'tfds')) == {'train': 2, 'test': 2}
  b = build.make_builder('folder', str(tmp_path / 'tfds'), manual_dir=str(root))
  coco = json.loads((src / 'test_cofw.json').read_text())
  for ann in coco['annotations']:
    name = next(i['file_name'] for i in coco['images'] if i['id'] == ann['image_id'])
    e = helpers.examples_by_file(b, 'test')[name]
    kp = np.asarray(ann['keypoints']).reshape(29, 3)
    assert e['visibility'].tolist() == kp[:, 2].astype(int).tolist()
    np.testing.assert_allclose(e['landmarks_original'], kp[:, :2], atol=1e-4)
    x, y, w, h = ann['bbox']
    np.testing.assert_allclose(e['box_annotation'], [x, y, x + w, y + h])
  assert (
    helpers.examples_by_file(b, 'test')['001766.jpg']['visibility'] == 1
  ).any()  # occluded points kept
  config = tiny_config('configs/baseline.py', root, tmp_path / 'tfds')
  config.train.batch_size = 2
  results = train.run(config, str(tmp_path / 'run'))
  assert config.data.num_landmarks == 29 and results['norm'] == '[8, 9]'
  assert results['models']['student_baseline']['test']['count'] == 2


def test_config_from_dataset_and_no_flip(tmp_path):
  """A `folder` config takes N, the eval splits and the normaliser from the built dataset; a
  null flip_permutation turns the flip augmentation off."""
  from fkd.data import pipeline as ip

  data = tiny_folder(tmp_path, 'pts', n=5, nme_normalizer=[[0, 1], 2])
  config = tiny_config('configs/kd.py', data, tmp_path / 'tfds')
  assert config.data.num_landmarks == 0 and config.eval.norm == 'dataset'
  config.data.image_size = 16
  d = ip.load(config)
  assert config.data.num_landmarks == 5 and config.data.eval_splits == ('test',)
  assert config.eval.norm == '[[0, 1], 2]' and not d.can_flip
  stored = {tuple(p.reshape(-1).round(3)) for p in d.splits['train'].landmarks}
  for step in range(4):
    batch = ip.train_batch(d, 'train', 2, step, 0, 'flip')
    assert {tuple(p.reshape(-1).round(3)) for p in batch['landmarks']} <= stored


def test_predict_crops_as_the_folder_dataset_was_cropped(tmp_path):
  """A folder dataset with its own crop margin (30 % of the box's longer side, where fkd's own
  datasets use 5 % of each side): the checkpoint carries it, and `fkd.predict`, given a face's
  landmark box, cuts the crop the builder cut (its stored `crop_box`) — not the 0.05 default."""
  from fkd.serve import predict
  from fkd.training import trainer as train

  data = tiny_folder(tmp_path, 'pts', n=5, crop_margin='30%')
  config = tiny_config('configs/baseline.py', data, tmp_path / 'tfds')
  config.train.batch_size = 2
  train.run(config, str(tmp_path / 'run'))
  predictor = predict.Predictor.from_workdir(str(tmp_path / 'run'))
  assert predictor.meta['crop_margin'] == {'value': 0.3, 'unit': 'longer_side'}
  assert predictor.meta['contours'] == [] and predictor.contours == ()  # 5 points: none to draw
  builder = build.make_builder('folder', str(tmp_path / 'tfds'), manual_dir=str(data))
  for name, e in helpers.examples_by_file(builder, 'test').items():
    pts = e['landmarks_original'].astype(np.float64) - 1  # .pts: 1-based (origin_offset −1)
    lo, hi = pts.min(0), pts.max(0)
    # By hand: the points' extent ± 0.3 × its longer side (the random points stay well inside
    # the 40² images, so the builder did not clamp).
    pad = 0.3 * (hi - lo).max()
    np.testing.assert_allclose(e['crop_box'], [*(lo - pad), *(hi + pad)], atol=1e-4)
    # The landmark box as `--bbox` takes it: (x, y) the pixel whose left / top edge is the box's.
    bbox = (lo[0] + 0.5, lo[1] + 0.5, hi[0] - lo[0], hi[1] - lo[1])
    with Image.open(data / 'test' / 'g' / name) as img:
      img = img.convert('RGB')
      _, edges = predictor.crop(img, predictor.locate(np.asarray(img), bbox))
    np.testing.assert_allclose(edges[0], e['crop_box'], atol=1e-4)
  # A checkpoint from before the meta carried the margin: today's rule for its dataset (0.05).
  old = {k: v for k, v in predictor.meta.items() if k not in ('crop_margin', 'contours')}
  assert predict.training_crop_margin(old).to_json() == {'value': 0.05, 'unit': 'box'}
