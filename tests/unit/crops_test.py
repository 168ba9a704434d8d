"""Crop affines: pixels and landmarks move together, and the inverse maps predictions back."""

import numpy as np
import pytest
from PIL import Image

from fkd.data import crops


def test_box_edges_map_to_crop_edges():
  a = crops.box_transform(np.array([10.0, 20.0, 50.0, 100.0]), 8)
  np.testing.assert_allclose(
    crops.apply(a, np.array([[10.0, 20.0], [50.0, 100.0]])), [[-0.5, -0.5], [7.5, 7.5]], atol=1e-6
  )


@pytest.mark.parametrize('point', [(37.0, 21.0), (5.0, 60.0), (70.0, 70.0)])
def test_warped_pixel_lands_on_mapped_landmark(point):
  img = np.zeros((80, 90, 3), np.uint8)
  x, y = int(point[0]), int(point[1])
  img[y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3x3 blob centred on the landmark
  box = crops.landmark_box(np.array([[2.0, 3.0], [85.0, 77.0]]), 0.0)
  a = crops.box_transform(box, 160)  # an (anisotropic) upscale
  out = np.asarray(crops.warp(Image.fromarray(img), a, 160)).astype(float)[..., 0]
  ys, xs = np.mgrid[:160, :160]
  centroid = np.array([(out * xs).sum(), (out * ys).sum()]) / out.sum()
  np.testing.assert_allclose(centroid, crops.apply(a, np.array(point)), atol=0.15)


def test_apply_is_a_times_the_homogeneous_point():
  # method.md §1.2: p' = A·(x, y, 1)ᵀ; a rotation by 90° plus a shift tells A from Aᵀ.
  a = np.array([[0.0, -1.0, 5.0], [1.0, 0.0, 2.0]])
  np.testing.assert_allclose(crops.apply(a, np.array([[1.0, 2.0], [0.0, 0.0]])), [[3, 3], [5, 2]])
  np.testing.assert_allclose(crops.apply(crops.invert(a), np.array([3.0, 3.0])), [1, 2], atol=1e-6)


def test_invert_round_trip():
  a = crops.box_transform(np.array([-3.0, 4.0, 120.0, 90.0]), 224)
  pts = np.random.default_rng(0).uniform(0, 100, (68, 2))
  back = crops.apply(crops.invert(a), crops.apply(a, pts))
  np.testing.assert_allclose(back, pts, atol=1e-3)


def test_landmark_box_margin():
  box = crops.landmark_box(np.array([[0.0, 0.0], [100.0, 50.0]]), 0.05)
  np.testing.assert_allclose(box, [-5.0, -2.5, 105.0, 52.5])
