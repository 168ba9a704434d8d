"""wflw dataset (importing this package registers the TFDS builder)."""

from tfds_builders.wflw.wflw_dataset_builder import Wflw, WflwConfig

BUILDER_CLASS = 'Wflw'  # for fkd.data.datasets

__all__ = ['Wflw', 'WflwConfig']
