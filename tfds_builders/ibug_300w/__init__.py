"""ibug_300w dataset (importing this package registers the TFDS builder)."""

from tfds_builders.ibug_300w.ibug_300w_dataset_builder import Ibug300w, Ibug300wConfig

BUILDER_CLASS = 'Ibug300w'  # for fkd.data.datasets

__all__ = ['Ibug300w', 'Ibug300wConfig']
