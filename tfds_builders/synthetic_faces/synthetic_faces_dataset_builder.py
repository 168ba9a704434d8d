"""synthetic_faces: procedurally rendered faces with 68 landmarks in the 300W order.

The embedded default dataset of fkd: no download, no TensorFlow. Images come from
`fkd.data.synthetic_render.render_face`; example i of a split uses
`np.random.default_rng([split_seed, i])`, so every example is reproducible on its own.

Build:
  import tfds_builders.synthetic_faces  # registers the builder
  b = tfds.builder('synthetic_faces', data_dir=D, file_format='array_record')
  b.download_and_prepare()
  ds = b.as_data_source()['train']      # ds[i]['image'] is PNG bytes: decode with PIL

Soft landmarks (method.md §2.3) are ASM projections with a PCA fitted on the train landmarks
only and applied to every split; the PCA models are in `info.metadata['pca']`.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fkd.data import asm, crops, face_builder, schemes, synthetic_render
from fkd.data.face_builder import local_dataset_info

NUM_LANDMARKS = 68
# Variance fractions of the stored soft landmarks (feature / metadata key -> acc).
ASM_ACCS = face_builder.ASM_ACCS  # the stored soft-landmark fractions, as the real datasets'
# 300W horizontal-flip permutation (method.md §3.1) and outer eye corners.
FLIP_PERMUTATION = list(schemes.SCHEMES['300w'].flip_permutation)
INTER_OCULAR = list(schemes.SCHEMES['300w'].inter_ocular)

_DESCRIPTION = """\
Procedurally rendered faces (numpy + PIL) with 68 landmarks in the 300W point order, for fast
end-to-end tests and demos of fkd without any licensed data. Each face is a 3-D landmark template
varied in identity, expression and pose (yaw ±35°, pitch ±20°, roll ±30°), drawn from its
landmarks (jaw silhouette, brows, eyes, nose, lips) over a cluttered background, with random
colours, directional shading, gamma/contrast, blur, noise and occluders.

Features: `image` (PNG bytes, RGB), `landmarks` (68, 2) float32 in 0-based pixel coordinates
(pixel centres at integers), `soft_landmarks/pXX` (ASM soft landmarks, PCA with variance fraction
0.XX fitted on the train split, coefficients clipped to ±3σ) and `filename`.
"""


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """Size and seeds of a synthetic_faces variant."""

  image_size: int = 128  # stored crop size
  scene_size: int = 160  # rendered "photo" size, before the face crop
  crop_margin: float = 0.05  # landmark extent widened by 5 % of its width / height per side
  num_train: int = 3000
  num_test: int = 600
  train_seed: int = 20240601
  test_seed: int = 20240602
  clip_sigmas: float = 3.0

  @property
  def splits(self) -> dict[str, tuple[int, int]]:
    """Split name -> (number of examples, seed)."""
    return {'train': (self.num_train, self.train_seed), 'test': (self.num_test, self.test_seed)}


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
  """Procedurally rendered 68-point faces (embedded, no download)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'Store ground-truth landmark-box face crops (the KD-Loss protocol) with their '
    'crop transform; the PCA is fitted on the cropped train landmarks.',
  }
  BUILDER_CONFIGS = [
    SyntheticFacesConfig(name='default', description='128 px, 3000 train / 600 test.'),
    SyntheticFacesConfig(
      name='small',
      num_train=320,
      num_test=80,
      description='128 px, 320 train / 80 test (runlocal quick looks).',
    ),
    SyntheticFacesConfig(
      name='tiny',
      num_train=40,
      num_test=10,
      description='128 px, 40 train / 10 test (runlocal and unit tests).',
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'

  def _info(self) -> tfds.core.DatasetInfo:
    landmarks = lambda: tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32)
    return local_dataset_info(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          # PNG bytes (tfds.features.Image would need TensorFlow to encode).
          'image': tfds.features.Tensor(shape=(), dtype=np.object_),
          'landmarks': landmarks(),
          'soft_landmarks': tfds.features.FeaturesDict({k: landmarks() for k in ASM_ACCS}),
          # 2x3 affine from the rendered scene's pixels to the crop's (method.md §1.2).
          'crop_transform': tfds.features.Tensor(shape=(2, 3), dtype=np.float32),
          'filename': tfds.features.Text(),
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    n, seed = cfg.splits['train']
    train_lm = np.stack(
      [
        self._crop_points(
          synthetic_render.sample_landmarks(np.random.default_rng([seed, i]), cfg.scene_size)
        )[1]
        for i in range(n)
      ]
    )
    pcas = {k: asm.fit_pca(train_lm, acc=acc) for k, acc in ASM_ACCS.items()}
    self.info.metadata.update(
      {
        'pca': {k: p.to_dict() for k, p in pcas.items()},
        'pca_fit': 'train split landmarks in the crop frame, pixel space, no Procrustes',
        'crop': f'ground-truth landmark extent +- {cfg.crop_margin:g} x size, anisotropic',
        'clip_sigmas': float(cfg.clip_sigmas),
        'image_size': int(cfg.image_size),
        'num_landmarks': NUM_LANDMARKS,
        'flip_permutation': list(FLIP_PERMUTATION),
        'inter_ocular': list(INTER_OCULAR),
        'space': 'pixel',
        'origin_offset': 0.0,
        'seeds': {k: int(s) for k, (_, s) in cfg.splits.items()},
      }
    )
    return {split: self._generate_examples(split, pcas) for split in cfg.splits}

  def _generate_examples(self, split: str, pcas: dict[str, asm.PCAModel]):
    cfg = self.builder_config
    n, seed = cfg.splits[split]
    for i in range(n):
      scene, scene_lm = synthetic_render.render_face(
        np.random.default_rng([seed, i]), cfg.scene_size
      )
      a, lm = self._crop_points(scene_lm)
      image = crops.warp(Image.fromarray(scene), a, cfg.image_size)
      buf = io.BytesIO()
      image.save(buf, format='PNG', compress_level=3)
      filename = f'{split}/{i:06d}.png'
      yield (
        filename,
        {
          'image': buf.getvalue(),
          'landmarks': lm,
          'soft_landmarks': {
            k: asm.asm_project(p, lm, cfg.clip_sigmas).astype(np.float32) for k, p in pcas.items()
          },
          'crop_transform': a.astype(np.float32),
          'filename': filename,
        },
      )

  def _crop_points(self, scene_landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The face-crop affine of a scene and its landmarks in the crop frame."""
    cfg = self.builder_config
    a = crops.box_transform(crops.landmark_box(scene_landmarks, cfg.crop_margin), cfg.image_size)
    return a, crops.apply(a, scene_landmarks)


def decode_image(png: bytes) -> np.ndarray:
  """Decodes the stored `image` feature to uint8 (H, W, 3)."""
  return face_builder.decode_image(png)
