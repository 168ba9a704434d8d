"""TF-free tests of the synthetic_faces builder and its renderer."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fkd.data import asm, crops, synthetic_render
from tfds_builders import synthetic_faces as sf

_TINY = dict(name='unittest', image_size=128, num_train=40, num_test=10)


def _build(data_dir, **overrides):
  cfg = sf.SyntheticFacesConfig(**{**_TINY, **overrides})
  builder = sf.SyntheticFaces(config=cfg, data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare()
  return builder


def _read(builder, split):
  """All examples of a split, sorted by filename (= generation index)."""
  src = builder.as_data_source()[split]
  return sorted((src[i] for i in range(len(src))), key=lambda ex: ex['filename'])


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  tfds.disable_progress_bar()
  return _build(tmp_path_factory.mktemp('synthetic_faces'))


def test_shapes_dtypes_and_metadata(built):
  meta = built.info.metadata
  assert meta['num_landmarks'] == 68 and meta['image_size'] == 128
  assert meta['inter_ocular'] == [36, 45] and meta['space'] == 'pixel'
  perm = np.asarray(meta['flip_permutation'])
  assert sorted(perm) == list(range(68)) and np.all(perm[perm] == np.arange(68))
  assert set(meta['pca']) == set(sf.ASM_ACCS)
  for split, n in (('train', 40), ('test', 10)):
    examples = _read(built, split)
    assert len(examples) == n
    ex = examples[3]
    assert ex['filename'] == f'{split}/000003.png'.encode()
    img = sf.decode_image(ex['image'])
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8 and img.std() > 5
    assert ex['landmarks'].shape == (68, 2) and ex['landmarks'].dtype == np.float32
    assert set(ex['soft_landmarks']) == set(sf.ASM_ACCS)
    for v in ex['soft_landmarks'].values():
      assert v.shape == (68, 2) and v.dtype == np.float32


def test_soft_landmarks_match_metadata_pca(built):
  pcas = {k: asm.PCAModel.from_dict(d) for k, d in built.info.metadata['pca'].items()}
  ks = [pcas[k].k for k in sorted(sf.ASM_ACCS)]
  assert ks == sorted(ks) and ks[0] < ks[-1]
  for split in ('train', 'test'):
    for ex in _read(built, split):
      for key, pca in pcas.items():
        np.testing.assert_allclose(
          ex['soft_landmarks'][key], asm.asm_project(pca, ex['landmarks']), atol=1e-4
        )
      np.testing.assert_array_equal(
        ex['soft_landmarks']['p90'], asm.asm_project(pcas['p90'], ex['landmarks'])
      )


def test_pca_fitted_on_train_only(built):
  train = np.stack([ex['landmarks'] for ex in _read(built, 'train')])
  test = np.stack([ex['landmarks'] for ex in _read(built, 'test')])
  pca = asm.PCAModel.from_dict(built.info.metadata['pca']['p90'])
  assert pca.num_shapes == len(train)
  np.testing.assert_allclose(pca.mean, asm.fit_pca(train).mean, atol=1e-9)
  both = asm.fit_pca(np.concatenate([train, test]))
  assert np.abs(both.mean - pca.mean).max() > 1e-3


def test_examples_are_reproducible_per_index(built):
  seed = built.info.metadata['seeds']['test']
  for i, ex in enumerate(_read(built, 'test')):
    scene, scene_lm = synthetic_render.render_face(np.random.default_rng([seed, i]), 160)
    a = ex['crop_transform']
    np.testing.assert_allclose(ex['landmarks'], crops.apply(a, scene_lm), atol=1e-4)
    rewarped = np.asarray(crops.warp(Image.fromarray(scene), a.astype(np.float64), 128))
    diff = np.abs(sf.decode_image(ex['image']).astype(int) - rewarped.astype(int))
    assert diff.max() <= 1, diff.max()  # the stored transform is float32
    np.testing.assert_array_equal(
      synthetic_render.sample_landmarks(np.random.default_rng([seed, i]), 160), scene_lm
    )
    # The crop is the landmark box: extreme landmarks sit just inside the crop's edges.
    assert ex['landmarks'].min() > -0.5 and ex['landmarks'].max() < 127.5


def test_two_builds_are_identical(built, tmp_path):
  other = _build(tmp_path)
  assert other.info.metadata['pca'] == built.info.metadata['pca']
  for split in ('train', 'test'):
    for a, b in zip(_read(built, split), _read(other, split), strict=True):
      assert a['filename'] == b['filename'] and a['image'] == b['image']
      np.testing.assert_array_equal(a['landmarks'], b['landmarks'])
      for k in sf.ASM_ACCS:
        np.testing.assert_array_equal(a['soft_landmarks'][k], b['soft_landmarks'][k])


def test_mean_shape_nme_and_orientation(built):
  train = np.stack([ex['landmarks'] for ex in _read(built, 'train')])
  test = np.stack([ex['landmarks'] for ex in _read(built, 'test')])
  iod = np.linalg.norm(test[:, 36] - test[:, 45], axis=-1)
  nme = np.linalg.norm(test - train.mean(0), axis=-1).mean(-1) / iod
  assert nme.mean() > 0.10, nme.mean()
  for lm in (train, test):
    x = lm[..., 0]
    assert np.mean(x[:, 36] < x[:, 45]) > 0.95
    assert np.mean((x[:, 36] < x[:, 39]) & (x[:, 39] < x[:, 42]) & (x[:, 42] < x[:, 45])) > 0.9
    assert np.mean(lm[:, 8, 1] > lm[:, 27, 1]) > 0.95  # chin below the nose root (y down)
    assert np.mean(lm[:, 19, 1] < lm[:, 37, 1]) > 0.95  # brow above the eye


def test_flip_permutation_keeps_the_point_meaning(built):
  w = built.info.metadata['image_size']
  perm = np.asarray(built.info.metadata['flip_permutation'])
  lm = np.stack([ex['landmarks'] for ex in _read(built, 'train')])
  flipped = lm[:, perm] * [-1, 1] + [w - 1, 0]
  x = flipped[..., 0]
  assert np.mean((x[:, 36] < x[:, 39]) & (x[:, 42] < x[:, 45]) & (x[:, 0] < x[:, 16])) > 0.9
  assert np.mean(x[:, 48] < x[:, 54]) > 0.95


def test_appearance_follows_landmarks():
  """Pixels sampled at landmark-defined spots show the part drawn there (majority of faces)."""
  stats = []
  for i in range(40):
    img, lm = synthetic_render.render_face(np.random.default_rng([7, i]), 128)
    f = img.astype(np.float32)

    def at(p, f=f):
      x, y = np.clip(np.round(p).astype(int), 0, 127)
      return f[y, x]

    lip, cheek = at((lm[57] + lm[66]) / 2), at((lm[2] + lm[31]) / 2)
    sclera, pupil = at(0.75 * lm[36] + 0.25 * lm[39]), at((lm[36] + lm[39]) / 2)
    brow, forehead = at(lm[19]), at(1.6 * lm[19] - 0.6 * lm[37])
    stats.append(
      [
        (lip[0] - lip[1]) - (cheek[0] - cheek[1]),  # lips are redder than the cheek
        sclera.mean() - pupil.mean(),  # the iris/pupil is darker than the sclera
        forehead.mean() - brow.mean(),
      ]
    )  # the brow is darker than the skin above it
  frac = (np.array(stats) > 0).mean(0)
  assert np.all(frac >= [0.85, 0.65, 0.75]), frac


def test_render_is_deterministic_and_sized():
  a = synthetic_render.render_face(np.random.default_rng(3), 96)
  b = synthetic_render.render_face(np.random.default_rng(3), 96)
  assert a[0].shape == (96, 96, 3) and a[0].dtype == np.uint8
  assert a[1].shape == (68, 2) and a[1].dtype == np.float32
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_drawing_is_pixel_aligned():
  """A disc drawn at c (output pixels, centres at integers) has its centroid at c."""
  from PIL import Image, ImageDraw

  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:48, :48]
  ss = synthetic_render._SS
  ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
  for _ in range(20):
    c, r = rng.uniform(16, 32, 2), rng.uniform(3, 8)
    canvas = Image.new('L', (48 * ss, 48 * ss))
    ImageDraw.Draw(canvas).polygon(
      synthetic_render._cv(c + r * np.stack([np.cos(ang), np.sin(ang)], 1)), fill=255
    )
    a = np.asarray(canvas.reduce(ss), np.float64)
    np.testing.assert_allclose([(a * xx).sum() / a.sum(), (a * yy).sum() / a.sum()], c, atol=0.1)
