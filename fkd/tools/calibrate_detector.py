"""Fits the detector -> landmark box calibration (`fkd.box_calibration`) on 300-W training photos.

  python -m fkd.tools.calibrate_detector --manual_dir=<300-W folder> --output=DIR/calibration.json

Runs the face detector (`fkd.serve.detect`, needs `pip install "fkd[detect]"`) on every image with a
`.pts` in the training folders (`afw`, `helen/trainset`, `lfpw/trainset`, those present), matches
the annotated face, fits the 4-number calibration on all of them and checks it leave-one-folder-out
(fit on AFW, test on HELEN, ...). Writes the JSON (to `--output`, or `--output`/calibration.json
for a folder; put it beside the model's checkpoint or in the workdir) and prints the fit.
"""

from __future__ import annotations

import os
import sys

from fkd.errors import FkdError
from fkd.serve import box_calibration, detect


def run(
  manual_dir: str,
  output: str,
  folders: list[str] | None = None,
  min_score: float = 0.4,
  min_face: float = 40.0,
  min_face_fraction: float = 0.05,
  description: str = '',
) -> box_calibration.Calibration:
  """Fits and saves the calibration; returns it."""
  from tqdm import tqdm

  from fkd.serve import predict

  predict.check_settings(
    min_score=min_score, min_face=min_face, min_face_fraction=min_face_fraction
  )
  if not os.path.isdir(manual_dir):
    raise FkdError(f'--manual_dir {manual_dir} is not a directory')
  box_calibration.output_path(output)  # refused now, not after the detection pass
  folders = folders or list(box_calibration.FOLDERS_300W)
  detector = detect.FaceDetector(
    min_score=min_score, min_face=min_face, min_face_fraction=min_face_fraction
  )
  with tqdm(desc='detecting', unit=' images', file=sys.stderr, leave=False) as bar:
    pairs = box_calibration.collect_pairs(
      manual_dir, folders, detector, progress=lambda _: bar.update()
    )
  if not pairs:
    raise FkdError(f'none of the folders {", ".join(folders)} is in {manual_dir}')
  calib = box_calibration.fit_pairs(
    pairs,
    detector=detector.config(),
    data={
      'manual_dir': manual_dir,
      'dataset': '300w',
      'origin_offset': -1.0,
      'match_iou': box_calibration.MATCH_IOU,
      **({'description': description} if description else {}),
    },
  )
  path = box_calibration.save(calib, output)
  f = calib.fit
  print(
    f'fkd: {calib.data["faces"]} faces ({len(calib.data["missed"])} not detected) from '
    f'{", ".join(k for k, v in calib.data["folders"].items() if v["faces"])}'
  )
  for name, entry in [
    ('all', {'offset': calib.offset, 'scale': calib.scale, 'faces': calib.data['faces']}),
    *calib.views.items(),
  ]:
    o, s = entry['offset'], entry['scale']
    print(
      f'{name:>6}: offset {o[0]:+.4f} {o[1]:+.4f} (detector widths / heights), scale '
      f'{s[0]:.4f} {s[1]:.4f} ({entry["faces"]} faces)'
    )
  print(
    f'fit: IoU with the landmark box {f["raw_iou_mean"]:.3f} raw -> '
    f'{f["calibrated_iou_mean"]:.3f} calibrated'
  )
  for held, v in calib.validation.items():
    no_views = f' ({v["global_iou_mean"]:.3f} without views)' if 'global_iou_mean' in v else ''
    print(
      f'held out {held} (fit on {", ".join(v["fit_on"])}): IoU {v["raw_iou_mean"]:.3f} -> '
      f'{v["calibrated_iou_mean"]:.3f}{no_views}, centre error {v["raw_centre_error"]:.3f} '
      f'-> {v["calibrated_centre_error"]:.3f}, size error {v["raw_size_error"]:.3f} -> '
      f'{v["calibrated_size_error"]:.3f} ({v["faces"]} faces)'
    )
  print(f'wrote {path}')
  return calib


def _define_flags():
  from absl import flags

  flags.DEFINE_string('manual_dir', None, '300-W manual download (afw/, helen/trainset/, ...).')
  flags.DEFINE_string('output', None, 'calibration.json path, or a folder to write it in.')
  flags.DEFINE_list('folders', list(box_calibration.FOLDERS_300W), 'Training folders to use.')
  flags.DEFINE_float('min_score', 0.4, 'Detector score threshold (fkd.serve.detect.FaceDetector).')
  flags.DEFINE_float('min_face', 40.0, 'Smallest face side looked for, in pixels.')
  flags.DEFINE_float('min_face_fraction', 0.05, '... or this fraction of the shorter side.')
  flags.DEFINE_string('description', '', 'What the data is (recorded in the JSON).')
  flags.mark_flags_as_required(['manual_dir', 'output'])
  return flags.FLAGS


def _main(argv: list[str]) -> None:
  f = _FLAGS
  run(
    f.manual_dir, f.output, f.folders, f.min_score, f.min_face, f.min_face_fraction, f.description
  )


if __name__ == '__main__':
  from fkd import cli

  _FLAGS = _define_flags()
  cli.run(_main)
