"""wflw dataset (importing this package registers the TFDS builder)."""

from tfds_builders.wflw.wflw_dataset_builder import Wflw, WflwConfig

__all__ = ["Wflw", "WflwConfig"]
