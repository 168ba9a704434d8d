"""landmarks_folder dataset (importing this package registers the TFDS builder)."""

from tfds_builders.landmarks_folder.landmarks_folder_dataset_builder import (
  LandmarksFolder,
  LandmarksFolderConfig,
)

BUILDER_CLASS = 'LandmarksFolder'  # for fkd.data.datasets

__all__ = ['LandmarksFolder', 'LandmarksFolderConfig']
