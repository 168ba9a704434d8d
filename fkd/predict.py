"""Landmarks on photos with a trained model.

  python -m fkd.predict --workdir=DIR --image=face.jpg [--bbox=x,y,w,h] --output=OUT
  python -m fkd.predict --checkpoint=DIR/student_kd --image=photos/ --output=OUT

For every image writes `OUT/<image stem>.json` (landmarks in original-image pixels, 0-based, pixel
centres at integers, plus the model and crop used) and `OUT/<image stem>.png` (the photo with the
box and landmarks drawn). `--image` may be a folder (its images, not recursive).

The face crop follows the training crops (method.md §2.2): the box is widened by `--margin` of its
width / height on each side and resized anisotropically to the model's `image_size`; predictions are
mapped back with the inverse crop affine (`fkd.data.crops`). Without `--bbox` the whole image is the
face crop (it says so): fine for photos that are already face crops.
`--workdir` picks the run's finished student (`student_kd`, `student_distill`, ...), else a teacher
(`fkd.inference.find_stage`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fkd.data import crops, formats
from fkd.errors import FkdError
from fkd.inference import Predictor, find_stage

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
DEFAULT_MARGIN = 0.05  # synthetic_faces' crop margin; 300W's ±5 px is ~2-3 % of a face
# 68-point (300W) face parts for the overlay: (first, last, closed).
PARTS_68 = (
  (0, 16, False),
  (17, 21, False),
  (22, 26, False),
  (27, 30, False),
  (31, 35, False),
  (36, 41, True),
  (42, 47, True),
  (48, 59, True),
  (60, 67, True),
)

__all__ = ['Predictor', 'find_stage', 'predict_image', 'run']


def parse_bbox(text: str) -> tuple[float, float, float, float]:
  try:
    x, y, w, h = (float(v) for v in text.split(','))
  except ValueError:
    raise FkdError(f'--bbox must be x,y,w,h (4 numbers), got {text!r}') from None
  if w <= 0 or h <= 0:
    raise FkdError(f'--bbox width and height must be positive, got {text!r}')
  return x, y, w, h


def face_box(
  image_size: tuple[int, int], bbox: Sequence[float] | None, margin: float
) -> np.ndarray:
  """[L, T, R, B] pixel-edge box (pixel centres at integers) of `bbox` = (x, y, w, h).

  (x, y) is the top-left pixel of the box, which covers pixels x..x+w−1; the box is widened by
  `margin`·w and `margin`·h on each side. None is the whole image, without margin.
  """
  if bbox is None:
    w, h = image_size
    return np.array([-0.5, -0.5, w - 0.5, h - 0.5])
  x, y, w, h = bbox
  return np.array(
    [x - 0.5 - margin * w, y - 0.5 - margin * h, x + w - 0.5 + margin * w, y + h - 0.5 + margin * h]
  )


def crop_face(img: Image.Image, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The size x size anisotropic crop of `box` (uint8) and its 2x3 affine (image -> crop).

  Resampled with an antialiasing resize (like the training crops, which are downsized with PIL's
  resize); areas outside the image are black.
  """
  a = crops.box_transform(box, size)
  lo = box + 0.5  # PIL's box is in pixel-corner coordinates
  pad = [
    max(0, math.ceil(-lo[0])),
    max(0, math.ceil(-lo[1])),
    max(0, math.ceil(lo[2] - img.width)),
    max(0, math.ceil(lo[3] - img.height)),
  ]
  if any(pad):
    canvas = Image.new('RGB', (img.width + pad[0] + pad[2], img.height + pad[1] + pad[3]))
    canvas.paste(img, (pad[0], pad[1]))
    img, lo = canvas, lo + np.array([pad[0], pad[1], pad[0], pad[1]])
  crop = img.resize(
    (size, size), Image.Resampling.BILINEAR, box=tuple(float(v) for v in lo), reducing_gap=2.0
  )  # as input_pipeline.load_split
  return np.asarray(crop, np.uint8), a


def predict_image(
  predictor: Predictor,
  path: str,
  bbox: Sequence[float] | None = None,
  margin: float = DEFAULT_MARGIN,
) -> dict[str, Any]:
  """The JSON record of one photo: landmarks in original pixels, box, crop affine, model."""
  img = formats.open_image(path)
  box = face_box(img.size, bbox, margin)
  crop, a = crop_face(img, box, predictor.image_size)
  points = crops.apply(crops.invert(a), predictor(crop[None])[0])
  return {
    'image': os.path.abspath(path),
    'image_size': list(img.size),
    'num_landmarks': predictor.num_landmarks,
    'landmarks': [[round(float(x), 3), round(float(y), 3)] for x, y in points],
    'coordinates': 'original image pixels, 0-based, pixel centres at integer coordinates',
    'box': {
      'source': 'bbox' if bbox is not None else 'whole_image',
      'bbox': list(bbox) if bbox is not None else [0, 0, *img.size],
      'margin': margin if bbox is not None else 0.0,
      'crop_box': [round(float(v), 3) for v in box],
    },
    'crop_transform': np.round(a, 6).tolist(),
    'model': predictor.info(),
  }


def draw_overlay(path: str, record: dict[str, Any]) -> Image.Image:
  """The photo with the crop box (yellow), face contours (cyan, 68 points) and landmarks (red)."""
  img = formats.open_image(path)
  draw = ImageDraw.Draw(img)
  pts = np.asarray(record['landmarks'])
  box = np.asarray(record['box']['crop_box']) + 0.5
  scale = max(box[2] - box[0], box[3] - box[1])
  r = max(1.0, scale / 150)
  width = max(1, round(scale / 300))
  draw.rectangle([float(v) for v in box], outline=(255, 220, 0), width=width)
  if len(pts) == 68:
    for first, last, closed in PARTS_68:
      line = [tuple(p) for p in pts[first : last + 1] + 0.5]
      draw.line(line + line[:1] if closed else line, fill=(0, 220, 255), width=width)
  for x, y in pts + 0.5:
    draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 40, 40))
  return img


def image_paths(image: str) -> list[str]:
  if os.path.isdir(image):
    paths = sorted(
      os.path.join(image, f) for f in os.listdir(image) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
      raise FkdError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in folder {image}')
    return paths
  if not os.path.isfile(image):
    raise FkdError(f'--image {image} does not exist')
  return [image]


def run(
  image: str,
  output: str,
  workdir: str | None = None,
  checkpoint_dir: str | None = None,
  bbox: Sequence[float] | None = None,
  margin: float = DEFAULT_MARGIN,
) -> list[str]:
  """Predicts every image of `image` (a file or folder); returns the JSON paths written."""
  if bool(workdir) == bool(checkpoint_dir):
    raise FkdError('give exactly one of --workdir and --checkpoint')
  paths = image_paths(image)
  predictor = Predictor(checkpoint_dir or find_stage(workdir))
  info = predictor.info()
  print(
    f'fkd: {info["stage"]} ({info["model"]}, step {info["step"]}) from {info["checkpoint"]}',
    flush=True,
  )
  os.makedirs(output, exist_ok=True)
  written = []
  for path in paths:
    record = predict_image(predictor, path, bbox, margin)
    if bbox is None:
      w, h = record['image_size']
      print(f'{path}: no --bbox, using the whole image ({w}x{h}) as the face crop', flush=True)
    stem = os.path.join(output, os.path.splitext(os.path.basename(path))[0])
    with open(stem + '.json', 'w') as f:
      json.dump(record, f, indent=1)
    draw_overlay(path, record).save(stem + '.png')
    print(f'{path}: {record["num_landmarks"]} landmarks -> {stem}.json, {stem}.png', flush=True)
    written.append(stem + '.json')
  return written


def _define_flags():
  from absl import flags

  flags.DEFINE_string(
    'workdir', None, 'Run directory: uses its student_kd (else baseline, else a teacher).'
  )
  flags.DEFINE_string('checkpoint', None, 'A stage directory (e.g. DIR/student_kd) instead.')
  flags.DEFINE_string('image', None, 'An image file or a folder of images.')
  flags.DEFINE_string(
    'bbox', None, 'Face box x,y,w,h in pixels (top-left pixel, size); default: the whole image.'
  )
  flags.DEFINE_float(
    'margin',
    DEFAULT_MARGIN,
    'Widening of --bbox per side, as a fraction of its width / height (like the training crops).',
  )
  flags.DEFINE_string('output', None, 'Output folder for <stem>.json and <stem>.png.')
  flags.mark_flags_as_required(['image', 'output'])
  return flags.FLAGS


def _main(argv: list[str]) -> None:
  f = _FLAGS
  run(f.image, f.output, f.workdir, f.checkpoint, parse_bbox(f.bbox) if f.bbox else None, f.margin)


if __name__ == '__main__':
  from fkd import cli

  _FLAGS = _define_flags()
  cli.run(_main)
