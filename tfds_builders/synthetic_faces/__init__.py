"""synthetic_faces dataset (importing this package registers the TFDS builder)."""

from tfds_builders.synthetic_faces.synthetic_faces_dataset_builder import (
  ASM_ACCS,
  FLIP_PERMUTATION,
  INTER_OCULAR,
  SyntheticFaces,
  SyntheticFacesConfig,
  decode_image,
)

BUILDER_CLASS = 'SyntheticFaces'  # for fkd.data.datasets

__all__ = [
  'ASM_ACCS',
  'FLIP_PERMUTATION',
  'INTER_OCULAR',
  'SyntheticFaces',
  'SyntheticFacesConfig',
  'decode_image',
]
