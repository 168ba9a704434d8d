"""Box calibrations fkd ships, one `<TFDS dataset name>.json` each (see fkd.box_calibration)."""
