"""fkd's TFDS dataset builders; importing this package registers all of them with TFDS."""

from tfds_builders import cofw, ibug_300w, synthetic_faces, wflw  # noqa: F401
