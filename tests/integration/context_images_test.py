"""Context images end to end: the ibug_300w builder's `context` (the crop box doubled, stored
beside each crop) and `config.data.augment_fill='context'`, which loads them with the train split.
"""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fkd.data import pipeline as input_pipeline
from fkd.data.face_builder import decode_image
from fkd.errors import FkdError
from fkd.methods.kd import recipe as kd_recipe
from tfds_builders import ibug_300w

DUMMY = pathlib.Path(__file__).resolve().parents[2] / 'tfds_builders' / 'ibug_300w' / 'dummy_data'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def _build(data_dir, name, **cfg):
  tfds.disable_progress_bar()
  b = ibug_300w.Ibug300w(
    config=ibug_300w.Ibug300wConfig(name=name, crop_size=64, **cfg),
    data_dir=str(data_dir),
    file_format='array_record',
    allow_partial=True,
  )
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY)))
  return b


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """img sampled at (x, y), pixel centres at integers, black outside [−½, W − ½), edge pixels
  repeated within that band."""
  h, w = img.shape[:2]
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  at = lambda yy, xx: img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(float)
  out = (at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx) * (1 - fy) + (
    at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
  ) * fy
  inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
  return np.where(inside[..., None], out, 0.0)


def test_context_images_are_the_doubled_crop_box_of_the_photo(data_dir):
  b = _build(data_dir, 'ctx64', context=0.5)
  assert b.info.metadata['context'] == 0.5
  src = b.as_data_source()['train']
  outside_seen = 0
  for i in range(len(src)):
    ex = src[i]
    crop = np.asarray(decode_image(ex['image']), float)
    ctx = np.asarray(decode_image(ex['context_image']), float)
    assert crop.shape == (64, 64, 3) and ctx.shape == (128, 128, 3)
    # The crop is the context's centre, pixel for pixel (JPEG apart).
    assert np.abs(ctx[32:96, 32:96] - crop).mean() < 2.0
    # Each context pixel u is the photo at L − W / 2 + (u + ½) · 2W / 128 − ½ ... by hand from
    # the crop box [L, T, R, B] (edges onto the outer pixel edges), black past the photo.
    left, top, right, bottom = ex['crop_box'].astype(float)
    w, h = right - left, bottom - top
    u = np.arange(128) + 0.5
    x = (left - w / 2) + u * 2 * w / 128
    y = (top - h / 2) + u * 2 * h / 128
    rel = ex['filename'].decode()
    photo = np.asarray(decode_image((DUMMY / rel).read_bytes()))
    want = _bilinear(photo, x[None, :], y[:, None])
    assert np.abs(ctx - want).mean() < 3.0, rel
    past = ((x[None, :] < -1.5) | (x[None, :] > photo.shape[1] + 0.5)) | (
      (y[:, None] < -1.5) | (y[:, None] > photo.shape[0] + 0.5)
    )
    outside_seen += past.sum()
    if past.any():  # black (JPEG ringing apart), not clamped nor mirrored
      assert ctx[past].mean() < 1.0 and np.percentile(ctx[past], 99) < 12
  assert outside_seen > 0  # the dummy faces' context reaches past their photos


def test_the_default_config_stores_no_context(data_dir):
  b = _build(data_dir, 'plain64')
  assert 'context_image' not in b.info.features and b.info.metadata['context'] == 0.0


def _config(data_dir, name):
  c = kd_recipe.kd_base('300w', runlocal=True)
  c.data.manual_dir, c.data.data_dir, c.data.allow_partial = str(DUMMY), str(data_dir), True
  c.data.name, c.data.augment, c.data.augment_fill = name, 'kd', 'context'
  return c


def test_load_carries_the_train_split_context_at_the_model_resolution(data_dir):
  c = _config(data_dir, 'ibug_300w/context')
  data = input_pipeline.load(c)
  train, s = data.splits['train'], c.data.image_size
  assert train.context.shape == (len(train), 2 * s, 2 * s, 3)
  centre = train.context[:, s // 2 : s // 2 + s, s // 2 : s // 2 + s].astype(float)
  assert np.abs(centre - train.images).mean() < 3.0
  assert all(data.splits[k].context is None for k in data.eval_splits)
  batch = input_pipeline.train_batch(data, 'train', 4, 0, 0, 'kd', augment_fill='context')
  assert batch['image'].shape == (4, s, s, 3)
  kept = input_pipeline.take(train, np.array([0, 2]))  # e.g. a validation hold-out
  np.testing.assert_array_equal(kept.context, train.context[[0, 2]])
  c.data.augment_fill = 'reflect'
  assert input_pipeline.load(c).splits['train'].context is None  # loaded only when asked for


def test_context_fill_needs_a_dataset_with_context_images(data_dir):
  c = _config(data_dir, 'ibug_300w')
  with pytest.raises(FkdError, match=r"augment_fill='context' needs a dataset built with context"):
    input_pipeline.load(c)


def test_a_context_that_gives_no_whole_pixel_size_is_an_error(data_dir):
  assert input_pipeline.context_size(33, 0.5) == 66 and input_pipeline.context_size(40, 0.25) == 60
  with pytest.raises(FkdError, match=r'image_size=33: .* x 1.5 must be a whole number'):
    input_pipeline.context_size(33, 0.25)
  b = ibug_300w.Ibug300w(
    config=ibug_300w.Ibug300wConfig(name='odd', crop_size=64, context=0.3), data_dir=str(data_dir)
  )
  with pytest.raises(FkdError, match=r'context=0.3 needs crop_size x \(1 \+ 2 context\)'):
    b._context_size()
