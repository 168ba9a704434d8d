"""Serving: landmarks on photos, folders and video (detector, box calibration, smoothing), and
export."""
