"""TF-free tests of the ibug_300w builder: committed dummy_data, bad input, real AFW/HELEN files."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fkd.data import asm, crops, formats, schemes, testing
from fkd.data.face_builder import decode_image
from fkd.errors import FkdError
from tfds_builders import ibug_300w

DUMMY = pathlib.Path(__file__).parent / 'dummy_data'
_DEFAULT_SHARED = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data'
SHARED = pathlib.Path(os.environ.get('FKD_SHARED_DATA', _DEFAULT_SHARED))


def _build(manual_dir, data_dir, allow_partial=True, name='t64', **cfg):
  tfds.disable_progress_bar()
  config = ibug_300w.Ibug300wConfig(name=name, crop_size=64, **cfg)
  b = ibug_300w.Ibug300w(
    config=config, data_dir=str(data_dir), file_format='array_record', allow_partial=allow_partial
  )
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return b


def _examples(builder, split):
  src = builder.as_data_source()[split]
  return sorted((src[i] for i in range(len(src))), key=lambda e: e['filename'])


def _leftovers(data_dir):
  return (
    sorted(str(p.relative_to(data_dir)) for p in pathlib.Path(data_dir).rglob('*') if p.is_file())
    if pathlib.Path(data_dir).exists()
    else []
  )


@pytest.fixture(scope='module')
def dummy(tmp_path_factory):
  return _build(DUMMY, tmp_path_factory.mktemp('ibug_300w'))


def test_splits_features_and_metadata(dummy):
  counts = {k: v.num_examples for k, v in dummy.info.splits.items()}
  assert counts == {'train': 7, 'common': 3, 'challenging': 2, 'full': 5, 'private': 2}
  meta = dummy.info.metadata
  assert meta['image_size'] == 64 and meta['num_landmarks'] == 68
  assert meta['inter_ocular'] == [36, 45]
  assert meta['inter_pupil'] == [list(range(36, 42)), list(range(42, 48))]
  assert meta['origin_offset'] == -1.0 and meta['space'] == 'pixel'
  assert meta['flip_permutation'] == list(schemes.SCHEMES['300w'].flip_permutation)
  assert set(meta['pca']) == {'p80', 'p85', 'p90', 'p95', 'p97'} and meta['partial']
  # F = 6 shapes per train face (plain + 5 augmented), method.md §2.3.
  assert asm.PCAModel.from_dict(meta['pca']['p90']).num_shapes == 7 * 6
  names = [e['filename'].decode() for e in _examples(dummy, 'challenging')]
  assert 'ibug/image_092 _01.jpg' in names
  full = {e['filename'] for e in _examples(dummy, 'full')}
  assert full == (
    {e['filename'] for e in _examples(dummy, 'common')}
    | {e['filename'] for e in _examples(dummy, 'challenging')}
  )


def test_examples_match_the_files(dummy):
  for split in ('train', 'challenging', 'private'):
    for ex in _examples(dummy, split):
      rel = ex['filename'].decode()
      raw = formats.read_pts(DUMMY / (rel.rsplit('.', 1)[0] + '.pts'))
      np.testing.assert_array_equal(ex['landmarks_original'], raw.astype(np.float32))
      a = ex['crop_transform'].astype(np.float64)
      np.testing.assert_allclose(ex['landmarks'], crops.apply(a, raw - 1), atol=1e-3)
      # Crop = extent ± 5 px, clamped: extreme landmarks sit inside the crop.
      assert ex['landmarks'].min() > -0.5 and ex['landmarks'].max() < 63.5
      img = decode_image(ex['image'])
      assert img.shape == (64, 64, 3) and img.dtype == np.uint8
      # Pixels: the stored crop equals a direct warp of the original (JPEG tolerance).
      src = Image.open(DUMMY / rel).convert('RGB')
      ref = np.asarray(crops.warp(src, a, 64)).astype(int)
      assert np.abs(img.astype(int) - ref).mean() < 6
      assert tuple(ex['original_size']) == src.size[::-1]
      iod, ipd = schemes.SCHEMES['300w'].distances(ex['landmarks'])
      assert ex['norm']['inter_ocular'] == pytest.approx(iod, rel=1e-5)
      assert ex['norm']['inter_pupil_original'] == pytest.approx(
        schemes.SCHEMES['300w'].distances(raw)[1], rel=1e-5
      )


def test_boxes_joined_by_name(dummy):
  boxes = formats.read_300w_boxes(DUMMY / 'Bounding Boxes' / 'bounding_boxes_ibug.mat')
  assert len(boxes) == 2 + 3  # ibug entries + stale AFW entries
  by_name = {b.name: b for b in boxes}
  for ex in _examples(dummy, 'challenging'):
    b = by_name[ex['filename'].decode().split('/', 1)[1]]
    np.testing.assert_allclose(ex['box_detector'], b.detector, atol=1e-4)
    np.testing.assert_allclose(ex['box_ground_truth'], b.ground_truth, atol=1e-4)
  for ex in _examples(dummy, 'private'):  # no box file for the competition set
    assert np.isnan(ex['box_detector']).all()
    lm = ex['landmarks_original']
    np.testing.assert_allclose(ex['box_ground_truth'], np.r_[lm.min(0), lm.max(0)])


def test_soft_landmarks_use_the_train_pca_on_every_split(dummy):
  pcas = {k: asm.PCAModel.from_dict(d) for k, d in dummy.info.metadata['pca'].items()}
  for split in ('train', 'full'):
    for ex in _examples(dummy, split):
      for k, p in pcas.items():
        np.testing.assert_allclose(
          ex['soft_landmarks'][k], asm.asm_project(p, ex['landmarks']), atol=1e-3
        )


def test_incomplete_download_names_missing_files(tmp_path):
  data_dir = tmp_path / 'tfds'
  with pytest.raises(FkdError) as e:
    _build(DUMMY, data_dir, allow_partial=False)
  msg = str(e.value)
  assert 'indoor_002.png' in msg and "'train': 7 faces; the official count is 3148" in msg
  assert '--allow_partial' in msg
  assert _leftovers(data_dir) == []


def _copy_dummy(tmp_path):
  m = tmp_path / 'manual'
  shutil.copytree(DUMMY, m)
  return m


def _corrupt(kind, m):
  if kind == '67_points':
    p = m / 'afw' / '1001_1.pts'
    p.write_text(
      formats.format_pts(formats.read_pts(p)[:67]).replace('n_points:  67', 'n_points:  68')
    )
    return 'afw/1001_1.pts', '67 points'
  if kind == 'nan':
    p = m / 'helen' / 'testset' / '1008_1.pts'
    pts = formats.read_pts(p)
    pts[5, 1] = np.nan
    p.write_text(formats.format_pts(pts))
    return '1008_1.pts', 'point 5'
  if kind == 'truncated_jpeg':
    p = m / 'ibug' / 'image_092 _01.jpg'
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return 'image_092 _01.jpg', 'cannot decode'
  if kind == 'missing_folder':
    shutil.rmtree(m / 'lfpw' / 'testset')
    return 'lfpw/testset/', 'folder not found'
  raise ValueError(kind)


@pytest.mark.parametrize('kind', ['67_points', 'nan', 'truncated_jpeg', 'missing_folder'])
def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, kind):
  m = _copy_dummy(tmp_path)
  name, what = _corrupt(kind, m)
  data_dir = tmp_path / 'tfds'
  with pytest.raises(FkdError) as e:  # formats.DataFormatError is an FkdError too
    _build(m, data_dir, allow_partial=kind != 'missing_folder')
  assert name in str(e.value) and what in str(e.value), str(e.value)
  assert _leftovers(data_dir) == []
  assert not ibug_300w.Ibug300w(
    config=ibug_300w.Ibug300wConfig(name='t64', crop_size=64), data_dir=str(data_dir)
  ).is_prepared()


def test_allow_partial_leaves_out_empty_splits(tmp_path, capsys):
  m = _copy_dummy(tmp_path)
  for d in ('ibug', '01_Indoor', '02_Outdoor'):
    shutil.rmtree(m / d)
  b = _build(m, tmp_path / 'tfds')
  assert set(b.info.splits) == {'train', 'common', 'full'}
  assert 'ibug_300w/t64: train 7, common 3, full 3' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Real files (../shared/data), skipped when absent.

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f'{SHARED} is absent')


@needs_shared
def test_real_afw_and_helen_images(tmp_path):
  """A 300W-layout tree of the 120 real AFW + HELEN train images, .pts wrapped in the header."""
  src = SHARED / 'spinkoo-face-alignement-300w'
  m = tmp_path / 'manual'
  raw = {}
  for folder in ('afw', 'helen/trainset'):
    (m / folder).mkdir(parents=True)
    for img in sorted((src / folder).glob('*.jpg')):
      os.symlink(img, m / folder / img.name)
      raw[f'{folder}/{img.name}'] = testing.wrap_bare_pts(
        img.with_suffix('.pts'), m / folder / f'{img.stem}.pts'
      )
  os.symlink(SHARED / 'luvli-300w-bounding-boxes' / 'Bounding Boxes', m / 'Bounding Boxes')
  with pytest.raises(FkdError) as e:  # not the full official download
    _build(m, tmp_path / 'strict', allow_partial=False)
  assert 'afw/: 277 of 337 faces missing' in str(e.value)
  assert 'lfpw/trainset/: folder not found' in str(e.value)
  b = _build(m, tmp_path / 'tfds', asm_fit_set='plain_plus_flips')
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {'train': 120}
  examples = _examples(b, 'train')
  assert {e['filename'].decode() for e in examples} == set(raw)
  for ex in examples:
    pts = raw[ex['filename'].decode()]
    np.testing.assert_array_equal(ex['landmarks_original'], pts.astype(np.float32))
    # The official boxes' ground truth is the landmark extent (datasets.md §1.5).
    np.testing.assert_allclose(ex['box_ground_truth'], np.r_[pts.min(0), pts.max(0)], atol=1e-3)
    assert np.isfinite(ex['box_detector']).all()
    x = ex['landmarks'][:, 0]
    assert x[36] < x[45]
  img = decode_image(examples[0]['image'])
  assert img.shape == (64, 64, 3) and img.std() > 10


@needs_shared
def test_real_private_palette_pngs(tmp_path):
  """The two mmpose private-test PNGs (palette mode) under 01_Indoor with .pts from the JSON."""
  src = SHARED / 'mmpose-tests-data' / '300w'
  ann = json.loads((src / 'test_300w.json').read_text())
  m = tmp_path / 'manual' / '01_Indoor'
  m.mkdir(parents=True)
  files = {im['id']: im['file_name'] for im in ann['images']}
  for a in ann['annotations']:
    name = files[a['image_id']]
    os.symlink(src / name, m / name)
    pts = np.asarray(a['keypoints'], np.float64).reshape(68, 3)[:, :2]
    (m / name.replace('.png', '.pts')).write_text(formats.format_pts(pts, final_newline=False))
  assert Image.open(src / 'indoor_020.png').mode == 'P'
  b = _build(m.parent, tmp_path / 'tfds')
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {'private': 2}
  for ex in _examples(b, 'private'):
    img = decode_image(ex['image'])
    assert img.shape == (64, 64, 3) and img.std() > 10
  assert 'pca' not in b.info.metadata  # no train split: soft landmarks are NaN
  assert np.isnan(_examples(b, 'private')[0]['soft_landmarks']['p90']).all()
