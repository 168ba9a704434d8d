"""cofw dataset, configs `default` (29 points) and `cofw68` (import registers the builder)."""

from tfds_builders.cofw.cofw_dataset_builder import Cofw, CofwConfig

BUILDER_CLASS = 'Cofw'  # for fkd.data.datasets

__all__ = ['Cofw', 'CofwConfig']
