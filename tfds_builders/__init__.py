"""fkd's TFDS dataset builders; importing this package registers all of them with TFDS."""

from tfds_builders import synthetic_faces  # noqa: F401
