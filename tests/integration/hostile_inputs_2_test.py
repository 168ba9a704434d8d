"""Hostile input, second round: folder datasets, `fkd.predict` on odd photos, export, the tools,
`fkd.ablation`, the `--config.*` fields and the Python API.

The rows run exactly as the first table's (`hostile_inputs_test.test_hostile_input`: no
traceback, one `fkd: error:` line naming the file or flag, nothing lost, nothing left behind); each
passes alone (`pytest -k`). The tests after the table check what a row cannot see: the pixels and
points a build writes, the Python API's errors, and the masks of unlabelled points.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import helpers
import hostile_inputs_test as table
import numpy as np
import pytest
from hostile_inputs_test import MAIN_NEW, PREDICT, B, C, Case, E, M, P, S, W, X, copy_run, files
from PIL import Image

A = 'fkd.ablation'
FOLDER = '--dataset=folder --manual_dir={tmp}/faces --data_dir={tmp}/tfds --crop_size=16'
BUILT = ('tfds', 'tfds/*')  # what a folder build that succeeds writes
OUT = ('out', 'out/*')
N = 5  # points per face of the folder datasets below


# ---- setups -------------------------------------------------------------------------------------


def _image(path: pathlib.Path, size=(40, 40), seed=0) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)


def _points(seed: int) -> np.ndarray:
  return np.random.default_rng(100 + seed).uniform(10, 30, (N, 2))


def folder_dataset(fmt: str, edit=None, spec: dict | None = None):
  """{tmp}/faces: a dataset.json and train/, test/ with two 40x40 images each, N points per face;
  `edit(root)` then spoils it."""

  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    root = tmp / 'faces'
    for s, split in enumerate(('train', 'test')):
      d = root / split
      names = [f'{split}{i}.png' for i in range(2)]
      for i, name in enumerate(names):
        _image(d / name, seed=10 * s + i)
      pts = [_points(10 * s + i) for i in range(2)]
      if fmt == 'pts':
        from fkd.data import formats

        for name, p in zip(names, pts, strict=True):
          (d / name).with_suffix('.pts').write_text(formats.format_pts(p + 1))
      elif fmt == 'csv':
        header = ['file'] + [c for i in range(N) for c in (f'x{i}', f'y{i}')]
        rows = [','.join(header)] + [
          ','.join([name, *(repr(float(v)) for v in p.reshape(-1))])
          for name, p in zip(names, pts, strict=True)
        ]
        (d / 'landmarks.csv').write_text('\n'.join(rows) + '\n')
      else:
        images = [{'id': i + 1, 'file_name': name} for i, name in enumerate(names)]
        anns = [
          {
            'id': 10 + i,
            'image_id': i + 1,
            'keypoints': np.concatenate([p, np.full((N, 1), 2.0)], 1).reshape(-1).tolist(),
          }
          for i, p in enumerate(pts)
        ]
        (d / 'annotations.json').write_text(json.dumps({'images': images, 'annotations': anns}))
    base = {'format': fmt, 'num_landmarks': N, 'flip_permutation': None, 'nme_normalizer': [0, 1]}
    (root / 'dataset.json').write_text(json.dumps({**base, **(spec or {})}))
    if edit:
      edit(root)

  return setup


def coco(fn, split: str = 'train'):
  """An edit of <split>/annotations.json: fn(the parsed object) changes it in place."""

  def edit(root: pathlib.Path) -> None:
    p = root / split / 'annotations.json'
    data = json.loads(p.read_text())
    fn(data)
    p.write_text(json.dumps(data))

  return edit


def ann(key, value, k=0):
  return coco(lambda d: d['annotations'][k].__setitem__(key, value))


def img(key, value, k=0):
  return coco(lambda d: d['images'][k].__setitem__(key, value))


def unlabel(k: int, points=range(N), split: str = 'train'):
  def fn(d):
    for i in points:
      d['annotations'][k]['keypoints'][3 * i + 2] = 0
      d['annotations'][k]['keypoints'][3 * i : 3 * i + 2] = [0, 0]

  return coco(fn, split)


def pts_line(name: str, point: int, text: str = '-1 -1', split: str = 'train'):
  """An edit of <split>/<name>.pts: its line of `point` becomes `text` (as some tools mark a
  missing point)."""

  def edit(root: pathlib.Path) -> None:
    p = root / split / f'{name}.pts'
    lines = p.read_text().splitlines()
    first = lines.index('{') + 1
    for i in [point] if isinstance(point, int) else point:
      lines[first + i] = text
    p.write_text('\n'.join(lines) + '\n')

  return edit


def csv_edit(fn):
  def edit(root: pathlib.Path) -> None:
    p = root / 'train' / 'landmarks.csv'
    p.write_bytes(fn(p.read_bytes()))

  return edit


def csv_first_file(name: str):
  return csv_edit(lambda b: b.replace(b'\ntrain0.png,', f'\n{name},'.encode(), 1))


def raw_spec(text: str):
  def edit(root: pathlib.Path) -> None:
    (root / 'dataset.json').write_text(text)

  return edit


def huge_png(path: pathlib.Path, w: int = 20000, h: int = 10000) -> None:
  """A PNG whose header says w x h (RGB) but whose pixel data is a few bytes: what a
  decompression bomb looks like to a guard that reads the header."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  ihdr = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
  body = chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b'')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + body)


def big_photo(name: str):
  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    huge_png(tmp / name)

  return setup


def photo_of(name: str, make):
  """{tmp}/name made by make() -> PIL image (saved with its own mode)."""

  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    im, kwargs = make()
    im.save(tmp / name, **kwargs)

  return setup


def _gray16():
  a = (np.arange(48 * 64).reshape(48, 64) * 20 + 1000).astype(np.uint16)
  return Image.fromarray(a), {}


def _exif_rotated():
  exif = Image.Exif()
  exif[0x0112] = 6  # shown rotated 90° clockwise: the upright photo is 48 wide, 64 high
  return Image.new('RGB', (64, 48), (120, 90, 60)), {'exif': exif}


def _cmyk():
  return Image.new('CMYK', (64, 48), (10, 200, 30, 0)), {}


def _palette():
  return Image.new('RGB', (64, 48), (200, 30, 30)).convert('P'), {}


def folder_of(*names: str, links: dict[str, str] | None = None, big: str | None = None):
  """{tmp}/in with photos `names` (a .gif too, if named), symlinks name -> target, and one
  400x300 photo `big`."""

  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    d = tmp / 'in'
    for i, name in enumerate(names):
      if name.endswith('.gif'):
        d.mkdir(parents=True, exist_ok=True)
        Image.new('P', (32, 32)).save(d / name)
      else:
        _image(d / name, (64, 48), seed=i)
    for name, target in (links or {}).items():
      os.symlink(target, d / name)
    if big:
      _image(d / big, (400, 300), seed=9)

  return setup


def linked_folder(tmp: pathlib.Path, run: pathlib.Path) -> None:
  """{tmp}/../links: a photo, a symlink loop and a broken symlink."""
  d = tmp.parent / 'links'
  _image(d / 'a.png', (64, 48))
  os.symlink('loop.png', d / 'loop.png')
  os.symlink('nowhere.jpg', d / 'gone.jpg')


def _stage_meta_files(stage_dir: pathlib.Path) -> list[pathlib.Path]:
  step = max(int(p.name) for p in stage_dir.iterdir() if p.name.isdigit())
  return [
    p
    for p in (stage_dir / str(step)).rglob('*')
    if p.is_file() and b'total_steps' in p.read_bytes()
  ]


def unfinished_copy(tmp: pathlib.Path, run: pathlib.Path) -> None:
  """A copy of the finished run whose student's record says 200000 steps (it stopped at 6)."""
  copy_run(tmp, run)
  paths = _stage_meta_files(tmp / 'w' / 'student_kd')
  assert paths
  for p in paths:
    meta = json.loads(p.read_text())
    meta['total_steps'] = 200000
    p.write_text(json.dumps(meta))


def ablation_table(seeds: int):
  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    (tmp / 'w').mkdir(parents=True)
    (tmp / 'w' / 'ablation.json').write_text(json.dumps({'seeds': seeds, 'rows': {}}))

  return setup


# ---- checks of the sandbox afterwards ----------------------------------------------------------


def built_points(split: str, name: str, visibility: list[int], same_as_labelled_mean=()):
  """The folder build in {tmp}/tfds holds face `name` of `split` with this `visibility`; the
  points of `same_as_labelled_mean` (and no others) sit at the labelled points' mean."""

  def check(tmp: pathlib.Path) -> None:
    from fkd.data import build

    root, faces = str(tmp / 'tfds'), str(tmp / 'faces')
    src = build.make_builder('folder', root, manual_dir=faces, crop_size=16).as_data_source()[split]
    named = lambda e: os.path.basename(np.asarray(e['filename']).item().decode()) == name
    ex = next(e for e in (src[i] for i in range(len(src))) if named(e))
    assert np.asarray(ex['visibility']).tolist() == visibility
    lm = np.asarray(ex['landmarks'], np.float64)
    mean = lm[np.asarray(visibility) > 0].mean(axis=0)
    at_mean = [i for i in range(N) if np.allclose(lm[i], mean, atol=1e-3)]
    assert at_mean == list(same_as_labelled_mean), (at_mean, lm)

  return check


def trained_on_labelled_points(workdir: pathlib.Path) -> None:
  """A run on a folder with unlabelled points: finite losses every step, and the test face
  without a normaliser left out of the scores (one face scored)."""
  rows = [json.loads(line) for line in open(workdir / 'student_baseline' / 'metrics.jsonl')]
  assert rows and all(np.isfinite(r['loss']) and np.isfinite(r['mae']) for r in rows), rows
  results = json.loads((workdir / 'results.json').read_text())
  assert results['models']['student_baseline']['test']['count'] == 1
  assert len(results['nme_per_image']['student_baseline']['test']) == 1


def record_of(name: str, **want):
  def check(tmp: pathlib.Path) -> None:
    record = json.loads((tmp / name).read_text())
    for key, value in want.items():
      got = record
      for part in key.split('__'):
        got = got[part]
      assert got == value, (key, got, value)

  return check


def pixel_means(name: str, low: float, high: float):
  """The photo's record: the whole-image face crop was read, with its size as the 16-bit photo."""

  def check(tmp: pathlib.Path) -> None:
    record = json.loads((tmp / 'out' / f'{name}.json').read_text())
    assert record['image_size'] == [64, 48]
    drawn = np.asarray(Image.open(tmp / 'out' / f'{name}.png').convert('L'), np.float64)
    assert low < np.median(drawn) < high, np.median(drawn)

  return check


def only_outputs(*names: str):
  def check(tmp: pathlib.Path) -> None:
    assert sorted(p.name for p in (tmp / 'out').iterdir()) == sorted(names)

  return check


# ---- the table --------------------------------------------------------------------------------

PHOTO = PREDICT + ' --image={tmp}/a.png --whole_image'
CALIB = PREDICT + ' --image={tmp}/a.png --calibration={tmp}/c.json'
EXPORT_TO = '--workdir={run} --output={tmp}/m.stablehlo'
ABL = '--config=configs/kd.py:tiny --config.data.data_dir={data} --workdir={tmp}/w'

CASES = [
  # fkd.data.build --dataset=folder: malformed dataset.json
  Case(
    'folder_spec_nan',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      raw_spec(
        '{"format": "pts", "num_landmarks": 5, "nme_normalizer": [0, 1], "origin_offset": NaN}'
      ),
    ),
    message='not valid JSON (NaN is not a JSON number',
  ),
  Case(
    'folder_spec_infinite_margin',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      raw_spec(
        '{"format": "pts", "num_landmarks": 5, "nme_normalizer": [0, 1], "crop_margin": Infinity}'
      ),
    ),
    message='Infinity is not a JSON number',
  ),
  Case(
    'folder_spec_num_landmarks_text',
    B,
    FOLDER,
    setup=folder_dataset('pts', spec={'num_landmarks': '5'}),
    message="num_landmarks '5'; expected a positive int",
  ),
  Case(
    'folder_spec_with_bom',
    B,
    FOLDER,
    setup=folder_dataset(
      'csv',
      lambda root: (root / 'dataset.json').write_bytes(
        b'\xef\xbb\xbf' + (root / 'dataset.json').read_bytes()
      ),
    ),
    code=0,
    message='train',
    may_change=BUILT,
  ),
  # COCO fields of the wrong type or null
  Case(
    'coco_images_null',
    B,
    FOLDER,
    setup=folder_dataset('coco', coco(lambda d: d.__setitem__('images', None))),
    message='"images" is null; expected a list',
  ),
  Case(
    'coco_annotations_object',
    B,
    FOLDER,
    setup=folder_dataset('coco', coco(lambda d: d.__setitem__('annotations', {}))),
    message='"annotations" is an object; expected a list',
  ),
  Case(
    'coco_keypoints_null',
    B,
    FOLDER,
    setup=folder_dataset('coco', ann('keypoints', None)),
    message='keypoints is null; expected a list of 15 numbers',
  ),
  Case(
    'coco_keypoints_text',
    B,
    FOLDER,
    setup=folder_dataset('coco', ann('keypoints', ['1'] * 15)),
    message="keypoints must be numbers; found the text '1'",
  ),
  Case(
    'coco_keypoints_null_value',
    B,
    FOLDER,
    setup=folder_dataset(
      'coco', coco(lambda d: d['annotations'][1]['keypoints'].__setitem__(4, None))
    ),
    message='annotations[1] (id 11) (train1.png): keypoints must be numbers; found null',
  ),
  Case(
    'coco_visibility_three',
    B,
    FOLDER,
    setup=folder_dataset(
      'coco', coco(lambda d: d['annotations'][0]['keypoints'].__setitem__(5, 3))
    ),
    message='point 1 has v = 3; expected 0, 1 or 2',
  ),
  Case(
    'coco_bbox_text',
    B,
    FOLDER,
    setup=folder_dataset('coco', ann('bbox', 'wide')),
    message="bbox 'wide'; expected [x, y, w, h]",
  ),
  Case(
    'coco_bbox_nulls',
    B,
    FOLDER,
    setup=folder_dataset('coco', ann('bbox', [None, 1, 2, 3])),
    message='bbox [None, 1, 2, 3]; expected [x, y, w, h]',
  ),
  Case(
    'coco_image_id_list',
    B,
    FOLDER,
    setup=folder_dataset('coco', ann('image_id', [1])),
    message='image_id is a list; expected an integer',
  ),
  Case(
    'coco_images_id_null',
    B,
    FOLDER,
    setup=folder_dataset('coco', img('id', None)),
    message='images[0]: id is null; expected an integer',
  ),
  Case(
    'coco_file_name_null',
    B,
    FOLDER,
    setup=folder_dataset('coco', img('file_name', None)),
    message='images[0]: file_name is null; expected a path',
  ),
  Case(
    'coco_file_name_absolute',
    B,
    FOLDER,
    setup=folder_dataset('coco', img('file_name', '/etc/passwd')),
    message="image path '/etc/passwd'; expected a path relative to",
  ),
  Case(
    'coco_file_name_parent',
    B,
    FOLDER,
    setup=folder_dataset('coco', img('file_name', '../test/test0.png')),
    message="no '..'",
  ),
  Case(
    'coco_face_without_labelled_points',
    B,
    FOLDER,
    setup=folder_dataset('coco', unlabel(1, split='test')),
    code=0,
    message='annotations[1] (id 11) (test1.png): no labelled point (every v is 0); left out',
    may_change=BUILT,
  ),
  Case(
    'coco_split_without_labelled_points',
    B,
    FOLDER,
    setup=folder_dataset(
      'coco',
      coco(
        lambda d: [
          kp.__setitem__(slice(2, None, 3), [0] * N)
          for kp in (a['keypoints'] for a in d['annotations'])
        ]
      ),
    ),
    message="split 'train' has no annotated faces",
  ),
  # points without a position, hidden points, the NME normaliser
  Case(
    'pts_minus_one_marks_a_point_missing',
    B,
    FOLDER,
    setup=folder_dataset('pts', pts_line('train0', 2)),
    code=0,
    message='train',
    may_change=BUILT,
    check=built_points('train', 'train0.png', [2, 2, 0, 2, 2], same_as_labelled_mean=[2]),
  ),
  Case(
    'pts_every_point_missing',
    B,
    FOLDER,
    setup=folder_dataset('pts', pts_line('test1', range(N), split='test')),
    code=0,
    message='test1.pts: no labelled point (every point is -1 -1); left out',
    may_change=BUILT,
  ),
  Case(
    'pts_minus_one_in_a_bare_file',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      lambda root: (root / 'train' / 'train1.pts').write_text(
        '\n'.join(['-1 -1', *(f'{x + 1:.3f} {y + 1:.3f}' for x, y in _points(1)[1:])]) + '\n'
      ),
    ),
    code=0,
    message='train',
    may_change=BUILT,
    check=built_points('train', 'train1.png', [0, 2, 2, 2, 2], same_as_labelled_mean=[0]),
  ),
  Case(
    'coco_occluded_point_keeps_its_position',
    B,
    FOLDER,
    setup=folder_dataset(
      'coco', coco(lambda d: d['annotations'][0]['keypoints'].__setitem__(3 * 2 + 2, 1))
    ),
    code=0,
    message='train',
    may_change=BUILT,
    check=built_points('train', 'train0.png', [2, 2, 1, 2, 2]),
  ),
  Case(
    'coco_normaliser_point_unlabelled',
    B,
    FOLDER,
    setup=folder_dataset('coco', unlabel(1, points=(0,), split='test')),
    code=0,
    message=(
      '(test1.png): point 0 of the NME normaliser [0, 1] is unlabelled; the face is built but '
      'left out of the metrics'
    ),
    may_change=BUILT,
    check=built_points('test', 'test1.png', [0, 2, 2, 2, 2], same_as_labelled_mean=[0]),
  ),
  Case(
    'folder_training_masks_unlabelled_points',
    M,
    '--config=configs/baseline.py:folder,tiny --config.data.manual_dir={tmp}/faces '
    '--config.data.data_dir={tmp}/tfds --workdir={tmp}/w --config.train.batch_size=2',
    setup=folder_dataset(
      'coco',
      lambda root: (unlabel(0, points=(2, 3))(root), unlabel(1, points=(0,), split='test')(root)),
    ),
    code=0,
    message=(
      'fkd: note: test: 1 face(s) left out of the metrics, a point of the NME normaliser '
      '[0, 1] is unlabelled: test/test1.png'
    ),
    may_change=(*BUILT, 'w', 'w/*'),
    check=lambda tmp: trained_on_labelled_points(tmp / 'w'),
  ),
  # landmarks.csv
  Case(
    'csv_excel_bom',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_edit(lambda b: b'\xef\xbb\xbf' + b)),
    code=0,
    message='train',
    may_change=BUILT,
  ),
  Case(
    'csv_absolute_path',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_first_file('/tmp/train0.png')),
    message="image path '/tmp/train0.png'; expected a path relative to",
  ),
  Case(
    'csv_parent_path',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_first_file('../test/test0.png')),
    message='row 2 (../test/test0.png): image path',
  ),
  Case(
    'csv_windows_drive',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_first_file('C:/faces/train0.png')),
    message="image path 'C:/faces/train0.png'",
  ),
  Case(
    'csv_not_utf8',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_edit(lambda b: b.replace(b'train0', b'tr\xe9in0', 1))),
    message='landmarks.csv: not a UTF-8 CSV file',
  ),
  Case(
    'csv_duplicate_row',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_edit(lambda b: b + b.splitlines(keepends=True)[1])),
    code=0,
    message='row 4 (train0.png): the same face as row 2; left out (a duplicate row)',
    may_change=BUILT,
  ),
  Case(
    'csv_row_without_points',
    B,
    FOLDER,
    setup=folder_dataset('csv', csv_edit(lambda b: b + b'train1.png' + b',' * (2 * N) + b'\n')),
    code=0,
    message='row 4 (train1.png): no labelled point (every x, y is empty); left out',
    may_change=BUILT,
  ),
  Case(
    'csv_point_text',
    B,
    FOLDER,
    setup=folder_dataset(
      'csv', csv_edit(lambda b: b.replace(b'\ntrain0.png,', b'\ntrain0.png,x', 1))
    ),
    message="(train0.png): 'x",
  ),
  # .pts points far outside their image
  Case(
    'pts_point_far_outside',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      lambda root: (root / 'train' / 'train1.pts').write_text(
        'version: 1\nn_points: 5\n{\n11 11\n21 21\n15 15\n400 12\n12 30\n}\n'
      ),
    ),
    message='point 3 (400, 12) lies far outside the 40x40 image train/train1.png',
  ),
  Case(
    'pts_swapped_coordinates',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      lambda root: (root / 'train' / 'train0.pts').write_text(
        'version: 1\nn_points: 5\n{\n11 -90\n21 21\n15 15\n14 12\n12 30\n}\n'
      ),
    ),
    message='point 0 (11, -90) lies far outside',
  ),
  # images too large to decode safely, and rotated phone photos
  Case(
    'folder_image_decompression_bomb',
    B,
    FOLDER,
    setup=folder_dataset('pts', lambda root: huge_png(root / 'train' / 'train0.png')),
    message='20000x10000 is 200 megapixels, more than the 179 decoded safely',
  ),
  # fkd.predict: numeric flags, each checked before any work
  Case(
    'predict_min_face_tiny',
    P,
    PHOTO + ' --min_face=0.5',
    message='--min_face must be a number in [20, 100000]',
  ),
  Case('predict_min_face_nan', P, PHOTO + ' --min_face=nan', message='--min_face must be a number'),
  Case(
    'predict_min_face_fraction_above_one',
    P,
    PHOTO + ' --min_face_fraction=5',
    message='--min_face_fraction must be a number in [0, 1]',
  ),
  Case(
    'predict_min_face_fraction_negative',
    P,
    PHOTO + ' --min_face_fraction=-0.1',
    message='--min_face_fraction must be a number in [0, 1]',
  ),
  Case(
    'predict_min_score_one',
    P,
    PHOTO + ' --min_score=1',
    message='--min_score must be a number in (0, 1)',
  ),
  Case('predict_min_score_negative', P, PHOTO + ' --min_score=-0.5', message='--min_score'),
  Case(
    'predict_margin_negative',
    P,
    PHOTO + ' --margin=-0.2',
    message='--margin must be a number in [0, 2]',
  ),
  Case(
    'predict_margin_nan', P, PHOTO + ' --margin=nan', message='--margin must be a number in [0, 2]'
  ),
  Case(
    'predict_max_faces_zero', P, PHOTO + ' --max_faces=0', message='--max_faces must be at least 1'
  ),
  Case(
    'predict_batch_huge',
    P,
    PHOTO + ' --batch_size=100000',
    message='--batch_size must be an integer in [1, 4096]',
  ),
  Case(
    'predict_min_cutoff_zero',
    P,
    PREDICT + ' --video={tmp}/v.mp4 --smooth --min_cutoff=0',
    message='--min_cutoff must be a number in',
  ),
  Case(
    'predict_beta_negative',
    P,
    PREDICT + ' --video={tmp}/v.mp4 --smooth --beta=-1',
    message='--beta must be a number in [0,',
  ),
  Case(
    'predict_max_megapixels_zero',
    P,
    PHOTO + ' --max_megapixels=0',
    message='--max_megapixels must be a number in [1,',
  ),
  # fkd.predict: photos
  Case(
    'predict_decompression_bomb_refused',
    P,
    PREDICT + ' --image={tmp}/big.png --whole_image',
    setup=big_photo('big.png'),
    message='big.png: 20000x10000 is 200 megapixels, more than the 179 decoded safely (a '
    'decompression-bomb guard); pass --max_megapixels to allow it',
  ),
  Case(
    'predict_decompression_bomb_allowed',
    P,
    PREDICT + ' --image={tmp}/big.png --whole_image --max_megapixels=250',
    setup=big_photo('big.png'),
    message='big.png: cannot decode the image',  # past the guard: the fake pixels fail to decode
  ),
  Case(
    'predict_gray16_scaled_not_clipped',
    P,
    PREDICT + ' --image={tmp}/g.png --whole_image',
    setup=photo_of('g.png', _gray16),
    code=0,
    message='whole image (64x48)',
    may_change=OUT,
    check=pixel_means('g', 10, 200),
  ),
  Case(
    'predict_exif_upright',
    P,
    PREDICT + ' --image={tmp}/r.jpg --whole_image',
    setup=photo_of('r.jpg', _exif_rotated),
    code=0,
    message='whole image (48x64)',
    may_change=OUT,
    check=record_of('out/r.json', image_size=[48, 64]),
  ),
  Case(
    'predict_cmyk',
    P,
    PREDICT + ' --image={tmp}/c.jpg --whole_image',
    setup=photo_of('c.jpg', _cmyk),
    code=0,
    message='whole image (64x48)',
    may_change=OUT,
  ),
  Case(
    'predict_palette',
    P,
    PREDICT + ' --image={tmp}/p.png --whole_image',
    setup=photo_of('p.png', _palette),
    code=0,
    message='whole image (64x48)',
    may_change=OUT,
  ),
  Case(
    'predict_gif_in_folder_is_named',
    P,
    PREDICT + ' --image={tmp}/in --whole_image',
    setup=folder_of('a.png', 'b.gif'),
    code=0,
    message='b.gif: .gif is not read',
    may_change=OUT,
  ),
  Case(
    'predict_symlink_loop_is_named',
    P,
    PREDICT + ' --image={tmp}/../links --whole_image',  # beside the sandbox, which holds no links
    setup=linked_folder,
    code=0,
    message='loop.png: a symbolic link to nothing readable',
    may_change=OUT,
  ),
  Case(
    'predict_bbox_misses_one_photo_of_a_folder',
    P,
    PREDICT + ' --image={tmp}/in --bbox=200,150,40,40',
    setup=folder_of('a.png', big='z.png'),
    code=0,
    message='fkd: warning: skipping',
    may_change=OUT,
    check=only_outputs('z.json', 'z.png'),
  ),
  Case(
    'predict_unfinished_says_so',
    P,
    '--checkpoint={tmp}/w/student_kd --image={tmp}/a.png --output={tmp}/out --whole_image',
    setup=table.both(unfinished_copy, table.photos('a.png')),
    code=0,
    message='student_kd step 6 of 200000: UNFINISHED',
    may_change=OUT,
    check=record_of('out/a.json', model__finished=False, model__total_steps=200000),
  ),
  Case(
    'predict_finished_says_so',
    P,
    PHOTO,
    setup=table.photos('a.png'),
    code=0,
    message='(mobilenet_v2, step 6)',
    may_change=OUT,
    check=record_of('out/a.json', model__finished=True, model__step=6),
  ),
  Case(
    'predict_other_runs_temp_file_kept',
    P,
    PHOTO,
    setup=table.both(table.photos('a.png'), files({'out/a.json.tmp': 'another run, half way'})),
    code=0,
    message='-> ',
    may_change=('out', 'out/a.json', 'out/a.png'),
  ),
  # calibration files
  Case(
    'calibration_not_json',
    P,
    CALIB,
    setup=table.both(table.photos('a.png'), files({'c.json': '{oops'})),
    message='c.json',
  ),
  Case(
    'calibration_a_list',
    P,
    CALIB,
    setup=table.both(table.photos('a.png'), files({'c.json': '[1, 2]'})),
    message='c.json',
  ),
  Case(
    'calibration_nan_scale',
    P,
    CALIB,
    setup=table.both(
      table.photos('a.png'), files({'c.json': '{"offset": [0, 0], "scale": [NaN, 1]}'})
    ),
    message='c.json',
  ),
  # fkd.export
  Case(
    'export_unfinished_refused',
    X,
    '--workdir={tmp}/w --stage=student_kd',
    setup=unfinished_copy,
    message='student_kd is unfinished (step 6 of 200000); finish its training, or pass '
    '--allow_unfinished',
  ),
  Case(
    'export_passes_over_an_unfinished_student_with_a_note',
    X,
    '--workdir={tmp}/w --output={tmp}/m.stablehlo',
    setup=unfinished_copy,
    code=0,
    message='student_kd is unfinished (step 6 of 200000): serving the finished teacher_tough',
    may_change=('m.stablehlo', 'm.json'),
  ),
  Case(
    'predict_passes_over_an_unfinished_student_with_a_note',
    P,
    '--workdir={tmp}/w --image={tmp}/a.png --output={tmp}/out --whole_image',
    setup=table.both(unfinished_copy, table.photos('a.png')),
    code=0,
    message='student_kd is unfinished (step 6 of 200000): serving the finished teacher_tough',
    may_change=OUT,
  ),
  Case(
    'export_unfinished_allowed',
    X,
    '--workdir={tmp}/w --stage=student_kd --allow_unfinished --output={tmp}/m.stablehlo',
    setup=unfinished_copy,
    code=0,
    message='UNFINISHED',
    may_change=('m.stablehlo', 'm.json'),
    check=record_of('m.json', model__step=6, model__total_steps=200000, model__finished=False),
  ),
  Case(
    'export_records_the_step',
    X,
    EXPORT_TO,
    code=0,
    message='step 6 of 6',
    may_change=('m.stablehlo', 'm.json'),
    check=record_of('m.json', model__step=6, model__finished=True),
  ),
  Case(
    'export_for_tpu_on_cpu',
    X,
    EXPORT_TO + ' --platforms=tpu',
    code=0,
    message='not checked against JAX: lowered for tpu, and this machine runs cpu',
    may_change=('m.stablehlo', 'm.json'),
    check=record_of('m.json', parity_max_abs_diff=None, platforms=['tpu']),
  ),
  Case(
    'export_platform_unknown',
    X,
    EXPORT_TO + ' --platforms=gpu',
    message="--platforms: 'gpu' is not one of cpu, cuda, rocm, tpu",
  ),
  Case(
    'export_batch_negative',
    X,
    EXPORT_TO + ' --batch=-1',
    message='--batch must be an integer in [0, 4096]',
  ),
  Case(
    'export_batch_huge',
    X,
    EXPORT_TO + ' --batch=1000000',
    message='--batch must be an integer in [0, 4096]',
  ),
  Case(
    'export_platforms_for_tflite',
    X,
    '--workdir={run} --format=tflite --output={tmp}/m.tflite --platforms=cpu',
    message='--platforms is for --format=stablehlo',
  ),
  # the tools
  Case(
    'summary_resolution_zero',
    S,
    'mobilenet_v2 --resolution=0',
    message='--resolution must be an integer in [32, 4096]',
  ),
  Case(
    'summary_classes_negative',
    S,
    'mobilenet_v2 --num_classes=-5',
    message='--num_classes must be an integer in [0,',
  ),
  Case(
    'import_width_zero',
    W,
    '--from=keras --arch=mobilenet_v2 --width=0 {tmp}/w.keras {tmp}/ckpt',
    setup=files({'w.keras': 'x'}),
    message='--width must be a number in (0, 4]',
  ),
  Case(
    'import_torch_file_of_text',
    W,
    '--from=torch --arch=resnet50 {tmp}/w.pth {tmp}/ckpt',
    setup=files({'w.pth': 'not a checkpoint'}),
    message='w.pth',
  ),
  Case(
    'import_keras_file_of_text',
    W,
    '--from=keras --arch=mobilenet_v2 {tmp}/w.keras {tmp}/ckpt',
    setup=files({'w.keras': 'not a keras file'}),
    message='w.keras',
  ),
  Case(
    'import_keras_h5_of_text',
    W,
    '--from=keras --arch=mobilenet_v2 {tmp}/w.h5 {tmp}/ckpt',
    setup=files({'w.h5': 'not an HDF5 file'}),
    message='w.h5',
  ),
  Case(
    'import_torch_empty_file',
    W,
    '--from=torch --arch=resnet50 {tmp}/w.pth {tmp}/ckpt',
    setup=files({'w.pth': ''}),
    message='w.pth',
  ),
  Case(
    'calibrate_min_face_tiny',
    C,
    '--manual_dir={tmp} --output={tmp}/c.json --min_face=1',
    message='--min_face must be a number in [20,',
  ),
  Case(
    'calibrate_min_score_two',
    C,
    '--manual_dir={tmp} --output={tmp}/c.json --min_score=2',
    message='--min_score must be a number in (0, 1)',
  ),
  Case(
    'pts_point_text',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      lambda root: (root / 'train' / 'train1.pts').write_text(
        'version: 1\nn_points: 5\n{\n11 11\n21 x\n15 15\n14 12\n12 30\n}\n'
      ),
    ),
    message="train1.pts: bad point line '21 x'; expected 'x y'",
  ),  # fmt: skip
  Case(
    'pts_cut_short',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      lambda root: (root / 'train' / 'train1.pts').write_text(
        'version: 1\nn_points: 5\n{\n11 11\n21 21\n'
      ),
    ),
    message="train1.pts: no closing '}' (file truncated?)",
  ),  # fmt: skip
  Case(
    'folder_image_cut_short',
    B,
    FOLDER,
    setup=folder_dataset(
      'pts',
      lambda root: (root / 'train' / 'train1.png').write_bytes(
        (root / 'train' / 'train1.png').read_bytes()[:60]
      ),
    ),
    message='train1.png is not a readable image',
  ),  # fmt: skip
  Case(
    'import_safetensors_of_text',
    W,
    '--from=torch --arch=resnet50 {tmp}/w.safetensors {tmp}/ckpt',
    setup=files({'w.safetensors': 'not tensors'}),
    message='w.safetensors',
  ),
  Case(
    'export_for_cpu_and_tpu_is_checked_here',
    X,
    EXPORT_TO + ' --platforms=cpu,tpu',
    code=0,
    message='max |exported − JAX|',
    may_change=('m.stablehlo', 'm.json'),
    check=record_of('m.json', platforms=['cpu', 'tpu']),
  ),
  Case(
    'folder_image_allowed_past_the_guard',
    B,
    FOLDER + ' --max_megapixels=250',
    setup=folder_dataset('pts', lambda root: huge_png(root / 'train' / 'train0.png')),
    message='train/train0.png: cannot decode the image',  # past the guard: fake pixels fail
  ),
  Case(
    'build_max_megapixels_nan',
    B,
    FOLDER + ' --max_megapixels=nan',
    setup=folder_dataset('pts'),
    message='--max_megapixels must be a number in [1, 10000], got nan',
  ),
  Case(
    'folder_one_train_face',
    B,
    FOLDER,
    setup=folder_dataset('coco', unlabel(1)),
    message='the train split has 1 face shape(s); the shape model (ASM targets) needs at least 2',
  ),
  Case(
    'build_crop_size_zero',
    B,
    '--dataset=300w --manual_dir={tmp} --crop_size=0',
    message='--crop_size must be an integer in [8, 2048]',
  ),
  # fkd.ablation
  Case(
    'ablation_seeds_zero',
    A,
    ABL + ' --seeds=0',
    message='--seeds must be >= 1, got 0',
  ),
  Case(
    'ablation_seeds_huge',
    A,
    ABL + ' --seeds=5000',
    message='--seeds must be at most 100 (a run per row and seed), got 5000',
  ),
  Case(
    'ablation_fewer_seeds_keeps_the_table',
    A,
    ABL + ' --seeds=1',
    setup=ablation_table(3),
    message='holds a 3-seed table; --seeds=1 would replace it with a 1-seed one',
  ),
  # --config.* fields beyond the first table
  Case(
    'config_width_zero',
    M,
    MAIN_NEW + ' --config.student.kwargs.width=0',
    message='config.student.kwargs.width must be a positive number',
  ),
  Case(
    'config_depth_negative',
    M,
    MAIN_NEW + ' --config.teacher.kwargs.depth=-1',
    message='config.teacher.kwargs.depth must be a positive number',
  ),
  Case(
    'config_bn_momentum_one',
    M,
    MAIN_NEW + ' --config.student.kwargs.bn_momentum=1',
    message='config.student.kwargs.bn_momentum must be a number in [0, 1)',
  ),
  Case(
    'config_image_size_huge',
    M,
    MAIN_NEW + ' --config.data.image_size=100000',
    message='config.data.image_size must be at most 1024',
  ),
  Case(
    'config_fr_threshold_above_one',
    M,
    MAIN_NEW + ' --config.eval.fr_threshold=5',
    message='config.eval.fr_threshold must be a number in [0, 1]',
  ),
  Case(
    'config_asm_acc_zero',
    M,
    MAIN_NEW + ' --config.asm.acc=0',
    message='config.asm.acc must be a number in (0, 1]',
  ),
  Case(
    'evaluate_width_nan',
    E,
    table.RUN + ' --workdir={run} --config.student.kwargs.width=nan',
    message='config.student.kwargs.width',
  ),
]


# Rows that train (tens of seconds): `pytest -m slow` (CI) runs them.
SLOW = {'folder_training_masks_unlabelled_points'}


@pytest.mark.parametrize(
  'case',
  [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW else c for c in CASES],
  ids=[c.id for c in CASES],
)
def test_hostile_input(case: Case, run_dir, data_dir, tmp_path, monkeypatch):
  table.test_hostile_input(case, run_dir, data_dir, tmp_path, monkeypatch)


def test_the_second_table_is_big_and_apart_from_the_first():
  assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
  assert not {c.id for c in CASES} & {c.id for c in table.CASES}


# ---- what a row cannot see ----------------------------------------------------------------------


def _built(root: pathlib.Path, tmp: pathlib.Path, split: str = 'train') -> dict[str, dict]:
  from fkd.data import build

  build.build('folder', str(root), str(tmp / 'tfds'), crop_size=16)
  b = build.make_builder('folder', str(tmp / 'tfds'), manual_dir=str(root), crop_size=16)
  return helpers.examples_by_file(b, split)


def test_folder_build_turns_phone_photos_upright(tmp_path):
  """A photo stored sideways with EXIF orientation 6, annotated upright (as every viewer shows
  it): the crop around its points is the white patch they were put on, not the black rest."""
  from fkd.data import face_builder

  folder_dataset('pts')(tmp_path, tmp_path)
  root = tmp_path / 'faces'
  upright = np.zeros((60, 40, 3), np.uint8)
  upright[35:56, 5:36] = 255  # the face: x 5..35, y 35..55 of the upright photo
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise to show": stored turned counter-clockwise
  Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
    root / 'train' / 'train0.png', exif=exif
  )
  pts = np.array([[8.0, 38], [32, 38], [20, 45], [10, 52], [30, 52]])
  from fkd.data import formats

  (root / 'train' / 'train0.pts').write_text(formats.format_pts(pts + 1))
  crop = face_builder.decode_image(_built(root, tmp_path)['train0.png']['image'])
  assert crop[3:13, 3:13].mean() > 240, crop.mean()  # sideways, the box would be mostly black
  assert formats.image_size(root / 'train' / 'train0.png') == (40, 60)


def test_unlabelled_points_have_no_position(tmp_path):
  """COCO v = 0: kept as unlabelled (`visibility` 0), out of the crop box, at a finite stand-in
  inside the face rather than at (0, 0); the metrics score the labelled points only."""
  from fkd.evaluation import metrics

  folder_dataset('coco', unlabel(0, points=(1, 2)))(tmp_path, tmp_path)
  ex = _built(tmp_path / 'faces', tmp_path)['train0.png']
  assert np.asarray(ex['visibility']).tolist() == [2, 0, 0, 2, 2]
  lm = np.asarray(ex['landmarks'], np.float64)
  labelled = lm[[0, 3, 4]]
  np.testing.assert_allclose(lm[1], labelled.mean(0), atol=1e-4)
  np.testing.assert_allclose(lm[2], labelled.mean(0), atol=1e-4)
  # The crop box is the labelled points' extent ± 5 px (no clamping: points in 10..30 of 40 px):
  # the crop is centred on them, pixel centres 0..15 about 7.5. With (0, 0) in, it would not be.
  np.testing.assert_allclose(labelled.min(0) + labelled.max(0), 15.0, atol=0.05)

  gt = np.array([[[0.0, 0], [10, 0], [5, 5]]])
  pred = gt + np.array([[[1.0, 0], [0, 0], [30, 40]]])  # point 2 is 50 px off, but unlabelled
  mask = np.array([[True, True, False]])
  # By hand: errors 1 and 0 over 2 labelled points, normaliser |p0 - p1| = 10.
  assert metrics.nme_per_image(pred, gt, (0, 1), mask)[0] == pytest.approx(0.05)
  assert metrics.nme_per_image(pred, gt, (0, 1))[0] == pytest.approx((1 + 0 + 50) / 3 / 10)


def test_an_occluded_point_keeps_its_position_and_is_scored(tmp_path):
  """COCO v = 1 (labelled, hidden): built exactly as the same point with v = 2 (same crop, same
  position), marked labelled, so it trains and is scored, as COFW's protocol scores occluded
  points; only v = 0 is masked."""
  from fkd.data import pipeline

  built = {}
  for v in (2, 1):
    tmp = tmp_path / f'v{v}'
    edit = coco(lambda d, v=v: d['annotations'][0]['keypoints'].__setitem__(3 * 2 + 2, v))
    folder_dataset('coco', edit)(tmp, tmp)
    built[v] = _built(tmp / 'faces', tmp)['train0.png']
  assert np.asarray(built[1]['visibility']).tolist() == [2, 2, 1, 2, 2]
  np.testing.assert_array_equal(built[1]['landmarks'], built[2]['landmarks'])
  np.testing.assert_array_equal(built[1]['image'], built[2]['image'])
  split = pipeline.load_split([built[1], built[2]], 16, None)
  assert split.labelled is None  # every point labelled: no mask, every point in loss and metrics


def test_images_of_more_than_eight_bits_are_scaled(tmp_path):
  from fkd.data import formats

  path = tmp_path / 'g16.png'
  Image.fromarray(np.full((4, 6), 32768, np.uint16)).save(path)
  got = np.asarray(formats.open_image(path))
  assert got.shape == (4, 6, 3) and np.all(got == 128), got[0, 0]  # clipped, it was 255
  i16 = Image.fromarray(np.full((4, 6), 65535 // 4, np.uint16)).convert('I;16')
  assert np.all(np.asarray(formats.to_rgb(i16)) == 64)


def test_the_pixel_guard_names_the_way_to_allow_a_photo(tmp_path):
  from fkd.data import formats

  huge_png(tmp_path / 'h.png', 20000, 10000)
  with pytest.raises(formats.DataFormatError, match='pass --max_megapixels'):
    formats.image_size(tmp_path / 'h.png')
  try:
    formats.set_max_pixels(250_000_000)
    assert formats.image_size(tmp_path / 'h.png') == (20000, 10000)
  finally:
    formats.set_max_pixels(None)


@pytest.fixture(scope='module')
def api(run_dir):
  from fkd.serve import predict

  return predict.Predictor.from_checkpoint(str(run_dir / 'student_kd'), batch_size=2)


@pytest.mark.parametrize(
  'bbox, message',
  [
    ((5000, 5000, 40, 40), 'lies outside the image'),
    ((-500, 0, 40, 40), 'lies outside the image'),
    ((float('nan'), 0, 10, 10), 'bbox must be 4 finite numbers'),
    ((0, 0, -10, 10), 'width and height must be positive'),
    ((0, 0, 10), 'bbox must be x, y, w, h (4 numbers)'),
    ('0,0,10,10', 'bbox must be 4 numbers'),
    (None, None),
  ],
)
def test_the_api_checks_boxes_as_the_cli(api, bbox, message):
  from fkd.errors import FkdError

  image = np.zeros((48, 64, 3), np.uint8)
  if message is None:
    assert len(api.faces(image, bbox=(10, 10, 20, 20))) == 1
    return
  with pytest.raises(FkdError, match=message.replace('(', r'\(').replace(')', r'\)')):
    api.faces(image, bbox=bbox)


@pytest.mark.parametrize(
  'image, message',
  [
    (np.zeros((48, 64, 3), np.float64), 'uint8 or uint16'),
    (np.zeros((48, 64, 2), np.uint8), 'uint8 or uint16'),
    (np.zeros((2, 48, 64, 3), np.uint8), 'uint8 or uint16'),
    (np.zeros((0, 64, 3), np.uint8), 'the image is empty'),
    (np.zeros((48, 64), bool), 'uint8 or uint16'),
    (42, 'a path, a PIL image or a numpy array'),
  ],
)
def test_the_api_checks_arrays(api, image, message):
  from fkd.errors import FkdError

  with pytest.raises(FkdError, match=message):
    api.faces(image, whole_image=True)


def test_the_api_checks_paths_and_crops(api, tmp_path):
  from fkd.errors import FkdError

  with pytest.raises(FkdError, match='nope.png does not exist'):
    api.faces(tmp_path / 'nope.png', whole_image=True)
  size = api.image_size
  for bad in (
    np.zeros((2, size, size), np.uint8),
    np.zeros((2, size + 1, size, 3), np.uint8),
    np.zeros((2, size, size, 3), np.float32),
  ):
    with pytest.raises(FkdError, match=f'face crops must be a uint8 \\(B, {size}, {size}, 3\\)'):
      api(bad)
  assert api(np.zeros((0, size, size, 3), np.uint8)).shape == (0, api.num_landmarks, 2)


def test_the_api_scales_16_bit_arrays(api):
  rng = np.random.default_rng(0)
  eight = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
  sixteen = eight.astype(np.uint16) * 257  # the same picture in 16 bits
  a = api.faces(eight, whole_image=True)[0].landmarks
  b = api.faces(sixteen, whole_image=True)[0].landmarks
  np.testing.assert_allclose(a, b, atol=1e-5)
  gray16 = Image.fromarray(eight[..., 0].astype(np.uint16) * 257)  # PIL 'I;16' (or 'I')
  c = api.faces(gray16, whole_image=True)[0].landmarks
  d = api.faces(Image.fromarray(eight[..., 0]), whole_image=True)[0].landmarks
  np.testing.assert_allclose(c, d, atol=1e-5)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'min_face': 0.5}, 'min_face must be a number in'),
    ({'min_face_fraction': 3}, 'min_face_fraction must be a number in'),
    ({'margin': float('nan')}, 'margin must be a number in'),
    ({'batch_size': 0}, 'batch_size must be at least 1'),
    ({'min_scor': 0.5}, "unknown setting 'min_scor'"),
  ],
)
def test_the_api_checks_settings_as_the_cli(run_dir, kwargs, message):
  from fkd.errors import FkdError
  from fkd.serve import predict

  with pytest.raises(FkdError, match=message):
    predict.Predictor.from_checkpoint(str(run_dir / 'student_kd'), **kwargs)


def test_the_api_says_unfinished_and_keeps_orbax_quiet(run_dir, tmp_path, caplog):
  from fkd.serve import predict

  unfinished_copy(tmp_path, run_dir)
  with caplog.at_level('INFO'), pytest.warns(predict.UnfinishedModelWarning, match='of 200000'):
    p = predict.Predictor.from_checkpoint(str(tmp_path / 'w' / 'student_kd'))
  assert p.info()['finished'] is False and p.info()['step'] == 6
  assert not [r for r in caplog.records if 'could not be restored' in r.getMessage()]


def test_temporary_files_are_unique_per_process(tmp_path):
  """Two processes writing the same file (two fkd.predict into one folder) never share a
  temporary name: each write lands whole, none fails."""
  script = (
    'import sys\nfrom fkd.infra import files\n'
    'for i in range(300): files.atomic_write(sys.argv[1], sys.argv[2] * 1000)\n'
  )
  target = tmp_path / 'a.json'
  env = {**os.environ, 'PYTHONPATH': str(table.REPO)}
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', script, str(target), tag], env=env, stderr=subprocess.PIPE
    )
    for tag in 'xy'
  ]
  errs = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs
  assert target.read_text() in ('x' * 1000, 'y' * 1000)
  assert [p.name for p in tmp_path.iterdir()] == ['a.json']


def test_a_signal_during_the_final_save_stops_the_next_stage(monkeypatch):
  """A signal that lands after the loop's last look (in the stage's final checkpoint save) is
  kept: the job (and fkd.ablation's run loop) stops before the next stage with its exit code."""
  import signal

  from fkd.training import trainer

  with trainer._preemption_guard() as preempted:
    assert preempted(1) == 0
    os.kill(os.getpid(), signal.SIGTERM)  # as if during checkpoint.save, after the last look
  with pytest.raises(trainer.Preempted, match='stopped by SIGTERM after its final checkpoint') as e:
    trainer.stop_if_signalled('student_kd')
  assert e.value.signum == signal.SIGTERM
  trainer.stop_if_signalled('student_kd')  # said once
  with pytest.raises(RuntimeError), trainer._preemption_guard():
    os.kill(os.getpid(), signal.SIGTERM)
    raise RuntimeError('the stage failed: its own error wins')
  trainer.stop_if_signalled('student_kd')  # nothing kept from a stage that raised
