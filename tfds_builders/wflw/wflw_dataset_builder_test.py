"""TF-free tests of the wflw builder: committed dummy_data, bad input, real mmpose and lists."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fkd.data import crops, formats, schemes, testing
from fkd.data.face_builder import decode_image
from fkd.errors import FkdError
from tfds_builders import wflw

DUMMY = pathlib.Path(__file__).parent / 'dummy_data'
_DEFAULT_SHARED = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data'
SHARED = pathlib.Path(os.environ.get('FKD_SHARED_DATA', _DEFAULT_SHARED))
LISTS = 'WFLW_annotations/list_98pt_rect_attr_train_test'
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f'{SHARED} is absent')


def _build(manual_dir, data_dir, allow_partial=True):
  tfds.disable_progress_bar()
  b = wflw.Wflw(
    config=wflw.WflwConfig(name='t64', crop_size=64),
    data_dir=str(data_dir),
    file_format='array_record',
    allow_partial=allow_partial,
  )
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return b


def _examples(builder, split):
  src = builder.as_data_source()[split]
  return sorted((src[i] for i in range(len(src))), key=lambda e: (e['filename'], e['face_index']))


@pytest.fixture(scope='module')
def dummy(tmp_path_factory):
  return _build(DUMMY, tmp_path_factory.mktemp('wflw'))


def test_splits_subsets_and_metadata(dummy):
  records = formats.read_wflw_list(DUMMY / LISTS / 'list_98pt_rect_attr_test.txt')
  counts = {k: v.num_examples for k, v in dummy.info.splits.items()}
  assert counts['train'] == 4 and counts['test'] == 4
  for attr in formats.WFLW_ATTRIBUTES:
    want = int(formats.wflw_subset_mask(records, attr).sum())
    assert counts.get(attr, 0) == want
    for ex in _examples(dummy, attr) if want else []:
      assert ex['attributes'][formats.WFLW_ATTRIBUTES.index(attr)]
  meta = dummy.info.metadata
  assert meta['subset_lists_agree'] is True
  assert meta['inter_ocular'] == [60, 72] and meta['inter_pupil'] == [96, 97]
  assert meta['origin_offset'] == 0.0 and meta['num_landmarks'] == 98
  assert meta['flip_permutation'][9] == 23 and meta['flip_permutation'][23] == 9


def test_examples_match_the_lists(dummy):
  test = _examples(dummy, 'test')
  records = {
    (r.image_name, r.face_index): r
    for r in formats.read_wflw_list(DUMMY / LISTS / 'list_98pt_rect_attr_test.txt')
  }
  shared = [e for e in test if e['filename'].endswith(b'7_Cheering_test_2.jpg')]
  assert sorted(e['face_index'] for e in shared) == [0, 1]  # two faces, one image
  for ex in test:
    name = ex['filename'].decode()
    assert name.startswith('WFLW_images/')
    r = records[(name.removeprefix('WFLW_images/'), int(ex['face_index']))]
    np.testing.assert_array_equal(ex['landmarks_original'], r.points.astype(np.float32))
    np.testing.assert_array_equal(ex['attributes'], r.attributes)
    np.testing.assert_array_equal(ex['box_rect'], r.rect.astype(np.float32))
    a = ex['crop_transform'].astype(np.float64)
    np.testing.assert_allclose(ex['landmarks'], crops.apply(a, r.points), atol=1e-3)
    # The crop box contains the given rect (union rule), up to the image border.
    h, w = ex['original_size']
    box = ex['crop_box']
    assert np.all(box[:2] <= np.maximum(r.rect[:2], -0.5) + 1e-3)
    assert np.all(box[2:] >= np.minimum(r.rect[2:], [w - 0.5, h - 0.5]) - 1e-3)
    assert decode_image(ex['image']).shape == (64, 64, 3)
    ipd = schemes.SCHEMES['wflw'].distances(ex['landmarks'])[1]
    assert ex['norm']['inter_pupil'] == pytest.approx(ipd, rel=1e-5)


def test_line_with_206_fields_is_a_clear_error(tmp_path):
  m = tmp_path / 'manual'
  shutil.copytree(DUMMY, m)
  path = m / LISTS / 'list_98pt_rect_attr_train.txt'
  lines = path.read_text().splitlines()
  fields = lines[2].split()
  lines[2] = ' '.join(fields[:200] + fields[201:])  # drop one attribute flag
  path.write_text('\n'.join(lines) + '\n')
  data_dir = tmp_path / 'tfds'
  with pytest.raises(FkdError, match=r'list_98pt_rect_attr_train.txt:3: 206 fields; expected 207'):
    _build(m, data_dir)
  assert not data_dir.exists() or not any(p.is_file() for p in data_dir.rglob('*'))


def test_missing_images_are_named(tmp_path):
  m = tmp_path / 'manual'
  shutil.copytree(DUMMY, m)
  os.remove(m / 'WFLW_images' / '0--Parade' / '0_Parade_train_0.jpg')
  with pytest.raises(FkdError, match=r'train: 1 images missing: WFLW_images/0--Parade/0_Par'):
    _build(m, tmp_path / 'tfds', allow_partial=False)
  b = _build(m, tmp_path / 'tfds2')
  assert b.info.splits['train'].num_examples == 3


# ---------------------------------------------------------------------------------------------
# Real files.


@needs_shared
def test_real_mmpose_images_end_to_end(tmp_path):
  """mmpose's two WFLW images with 207-field lines from its JSON (4 faces, 3 in one image)."""
  src = SHARED / 'mmpose-tests-data' / 'wflw'
  ann = json.loads((src / 'test_wflw.json').read_text())
  events = {'36_': '36--Football', '7_C': '7--Cheering'}
  names = {}
  for im in ann['images']:
    d = tmp_path / 'manual' / 'WFLW_images' / events[im['file_name'][:3]]
    d.mkdir(parents=True, exist_ok=True)
    os.symlink(src / im['file_name'], d / im['file_name'])
    names[im['id']] = f'{d.name}/{im["file_name"]}'
  lines = []
  for a in ann['annotations']:
    pts = np.asarray(a['keypoints'], np.float64).reshape(98, 3)[:, :2]
    rect = formats.xywh_to_xyxy(np.asarray(a['bbox']))
    lines.append(testing.wflw_line(pts, rect, [0] * 6, names[a['image_id']]))
  lists = tmp_path / 'manual' / LISTS
  lists.mkdir(parents=True)
  (lists / 'list_98pt_rect_attr_test.txt').write_text('\n'.join(lines))  # no final newline
  b = _build(tmp_path / 'manual', tmp_path / 'tfds')
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {'test': 4}
  test = _examples(b, 'test')
  by_image = {}
  for ex in test:
    by_image.setdefault(ex['filename'].decode(), []).append(int(ex['face_index']))
    assert decode_image(ex['image']).std() > 10
  assert sorted(map(sorted, by_image.values())) == [[0], [0, 1, 2]]
  sizes = {tuple(ex['original_size']) for ex in test}
  assert sizes == {(661, 1024), (1024, 1024)}


@needs_shared
def test_real_subset_lists_match_the_attribute_filters(tmp_path):
  """Rebuild the six flags of the 1966 listed faces, write 207-field lines, filter (§8.5)."""
  base = SHARED / 'wflw-annotations-pfld-amrelsersy' / 'WFLW_annotations' / 'list_98pt_test'
  flags, points = {}, {}
  for j, fname in enumerate(formats.WFLW_SUBSET_FILES):
    for r in formats.read_wflw_list(base / fname, with_rect_attr=False):
      key = formats.wflw_face_key(r.image_name, r.points)
      flags.setdefault(key, np.zeros(6, bool))[j] = True
      points[key] = r
  assert len(flags) == 1966 and len({k[0] for k in flags}) == 1666
  path = tmp_path / 'list_98pt_rect_attr_test.txt'
  path.write_text(
    '\n'.join(
      testing.wflw_line(r.points, np.r_[r.points.min(0), r.points.max(0)], flags[k], r.image_name)
      for k, r in points.items()
    )
    + '\n'
  )
  records = formats.read_wflw_list(path)
  for attr, fname in zip(formats.WFLW_ATTRIBUTES, formats.WFLW_SUBSET_FILES, strict=True):
    mask = formats.wflw_subset_mask(records, attr)
    got = sorted(
      formats.wflw_face_key(r.image_name, r.points) for r, m in zip(records, mask, strict=True) if m
    )
    want = sorted(
      formats.wflw_face_key(r.image_name, r.points)
      for r in formats.read_wflw_list(base / fname, with_rect_attr=False)
    )
    assert got == want, attr
    assert len(got) == wflw.wflw_dataset_builder.OFFICIAL[attr]


def test_crop_box_is_the_union_of_rect_and_extent_plus_margin():
  import types

  points = np.array([[40.0, 30.0], [90.0, 35.0], [60.0, 120.0]])
  # The rect covers the top left; the points reach past it right and down, and it past them.
  face = types.SimpleNamespace(extras={'box_rect': np.array([20.0, 10.0, 80.0, 100.0])})
  got = wflw.Wflw._crop_box(None, face, points)
  # min(extent − 3, rect) and max(extent + 3, rect), by hand.
  np.testing.assert_allclose(got, [20.0, 10.0, 93.0, 123.0])
  face = types.SimpleNamespace(extras={'box_rect': np.array([50.0, 40.0, 70.0, 60.0])})
  np.testing.assert_allclose(wflw.Wflw._crop_box(None, face, points), [37.0, 27.0, 93.0, 123.0])
