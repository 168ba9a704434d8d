"""fkd.data.folder: the crop box of a folder dataset (visibility, origin offset, margins)."""

import pathlib
import types

import numpy as np
import pytest

from fkd.data import folder
from fkd.errors import FkdError

SPEC = {'format': 'coco', 'num_landmarks': 4, 'flip_permutation': None, 'nme_normalizer': [0, 1]}


def _record(points, visibility, box=None):
  return folder.Record(
    'train/a.png',
    pathlib.Path('a.png'),
    'annotations[0]',
    np.asarray(points, np.float64),
    np.asarray(visibility, np.int32),
    None if box is None else np.asarray(box, np.float64),
  )


def test_unlabelled_points_are_left_out_of_the_extent():
  spec = folder.parse_spec(SPEC | {'box': 'points'})
  # Point 3 (v = 0: not labelled, COCO writes 0, 0) would stretch the box to the origin;
  # point 2 (v = 1: labelled, occluded) counts.
  r = _record([[40, 50], [60, 52], [50, 80], [0, 0]], [2, 2, 1, 0])
  np.testing.assert_allclose(folder.face_box(r, spec), [40, 50, 60, 80])
  # No labelled point at all: every point.
  r = _record([[40, 50], [60, 52], [50, 80], [0, 0]], [0, 0, 0, 0])
  np.testing.assert_allclose(folder.face_box(r, spec), [0, 0, 60, 80])


def test_annotation_box_and_origin_offset():
  spec = folder.parse_spec(SPEC | {'origin_offset': -1})
  r = _record([[40, 50], [60, 52], [50, 80], [45, 60]], [2] * 4, box=[30, 40, 70, 90])
  np.testing.assert_allclose(folder.face_box(r, spec), [29, 39, 69, 89])
  spec = folder.parse_spec(SPEC | {'origin_offset': -1, 'box': 'points'})
  np.testing.assert_allclose(folder.face_box(r, spec), [39, 49, 59, 79])


def test_percentage_margin_of_the_longer_side():
  spec = folder.parse_spec(SPEC | {'crop_margin': '10%'})
  assert spec.crop_margin == pytest.approx(-0.1) and spec.to_json()['crop_margin'] == '10%'
  box = np.array([10.0, 20.0, 50.0, 120.0])  # 40 wide, 100 tall
  assert spec.margin(box) == pytest.approx(10.0)
  assert spec.margin(box[[1, 0, 3, 2]]) == pytest.approx(10.0)  # the longer side, either axis
  assert folder.parse_spec(SPEC | {'crop_margin': '2.5%'}).margin(box) == pytest.approx(2.5)
  assert folder.parse_spec(SPEC | {'crop_margin': 7}).margin(box) == 7.0
  with pytest.raises(FkdError, match='crop_margin'):
    folder.parse_spec(SPEC | {'crop_margin': -3})


def test_the_builder_crop_box_adds_the_margin_on_every_side():
  from tfds_builders.landmarks_folder import landmarks_folder_dataset_builder as lf

  spec = folder.parse_spec(SPEC | {'crop_margin': '10%'})
  box = np.array([10.0, 20.0, 50.0, 120.0])
  fake = types.SimpleNamespace(_spec=lambda: spec)
  face = types.SimpleNamespace(extras={'_box': box})
  got = lf.LandmarksFolder._crop_box(fake, face, None)
  np.testing.assert_allclose(got, [0.0, 10.0, 60.0, 130.0])  # ± 10 % of 100
