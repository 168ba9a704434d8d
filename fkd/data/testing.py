"""Fake manual downloads for tests: tiny synthetic images in the official 300W/WFLW/COFW layouts.

Faces come from `fkd.data.synthetic_render` (68 points, 300W order); `to_wflw98` and `to_cofw29`
derive shapes with the right point meanings for the other mark-ups. Nothing here contains real data.

`python -m fkd.data.testing` rewrites the builders' committed `dummy_data/` folders.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

from fkd.data import formats, synthetic_render

PathLike = str | os.PathLike


def to_wflw98(p: np.ndarray) -> np.ndarray:
  """A 98-point WFLW-ordered shape from a 68-point 300W shape (same meanings, interpolated)."""
  p = np.asarray(p, np.float64)
  jaw = np.stack([np.interp(np.arange(33) / 2, np.arange(17), p[:17, k]) for k in (0, 1)], 1)
  down = 0.15 * (p[36:48].mean(0) - p[17:27].mean(0))  # brow thickness (mirror-symmetric)
  lower_l = [(p[21] + p[20]) / 2, (p[20] + p[19]) / 2, (p[19] + p[18]) / 2, (p[18] + p[17]) / 2]
  lower_r = [(p[25] + p[26]) / 2, (p[24] + p[25]) / 2, (p[23] + p[24]) / 2, (p[22] + p[23]) / 2]
  eye_l = [p[36], p[37], (p[37] + p[38]) / 2, p[38], p[39], p[40], (p[40] + p[41]) / 2, p[41]]
  eye_r = [p[42], p[43], (p[43] + p[44]) / 2, p[44], p[45], p[46], (p[46] + p[47]) / 2, p[47]]
  return np.concatenate(
    [
      jaw,
      p[17:22],
      np.asarray(lower_l) + down,
      p[22:27],
      np.asarray(lower_r) + down,
      p[27:31],
      p[31:36],
      np.asarray(eye_l),
      np.asarray(eye_r),
      p[48:68],
      p[36:42].mean(0, keepdims=True),
      p[42:48].mean(0, keepdims=True),
    ]
  )


def to_cofw29(p: np.ndarray) -> np.ndarray:
  """A 29-point COFW-ordered shape from a 68-point 300W shape (datasets.md §3.3 meanings)."""
  p = np.asarray(p, np.float64)
  down = 0.15 * (p[36:48].mean(0) - p[17:27].mean(0))
  m = lambda *i: p[list(i)].mean(0)
  return np.stack(
    [
      p[17],
      p[26],
      p[21],
      p[22],
      p[19],
      p[19] + down,
      p[24],
      p[24] + down,
      p[36],
      p[45],
      p[39],
      p[42],
      m(37, 38),
      m(40, 41),
      m(43, 44),
      m(46, 47),
      m(*range(36, 42)),
      m(*range(42, 48)),
      p[31],
      p[35],
      p[30],
      p[33],
      p[48],
      p[54],
      p[51],
      p[62],
      p[66],
      p[57],
      p[8],
    ]
  )


def render(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic face photo (uint8 (size, size, 3)) and its 0-based 68 points."""
  return synthetic_render.render_face(np.random.default_rng([7, seed]), size)


def _save(img: np.ndarray, path: pathlib.Path, mode: str = 'RGB') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  im = Image.fromarray(img)
  if mode == 'L':
    im = im.convert('L')
  elif mode == 'P':
    im = im.convert('P', palette=Image.Palette.ADAPTIVE)
  kw = {'quality': 90} if path.suffix == '.jpg' else {}
  im.save(path, **kw)


# ---------------------------------------------------------------------------------------------
# 300W

W300_LAYOUT = (  # folder, box set, extension, default number of faces
  ('afw', 'afw', '.jpg', 3),
  ('helen/trainset', 'helen_trainset', '.jpg', 2),
  ('lfpw/trainset', 'lfpw_trainset', '.png', 2),
  ('helen/testset', 'helen_testset', '.jpg', 2),
  ('lfpw/testset', 'lfpw_testset', '.png', 1),
  ('ibug', 'ibug', '.jpg', 2),
)


def write_300w(
  root: PathLike, size: int = 96, private: int = 2, boxes: bool = True, crlf: bool = False
) -> dict[str, np.ndarray]:
  """Writes a tiny 300W manual directory; returns {relative image path: raw points}.

  Includes the ibug name with a space (`image_092 _01.jpg`), a grayscale JPEG, a palette PNG in
  `01_Indoor/`, `.pts` files without a final newline, and box files whose ibug file also holds
  stale AFW entries (as the official one does).
  """
  root = pathlib.Path(root)
  out, seed, box_sets = {}, 0, {}
  for folder, box_set, ext, n in W300_LAYOUT:
    entries = []
    for i in range(n):
      seed += 1
      if folder == 'ibug':
        stem = 'image_092 _01' if i == 0 else f'image_{100 + i:03d}'
      elif folder.startswith('lfpw'):
        stem = f'image_{i + 1:04d}'
      else:
        stem = f'{1000 + seed}_{i % 2 + 1}'
      img, lm = render(seed, size)
      raw = lm.astype(np.float64) + 1.0  # MATLAB-style .pts
      _save(img, root / folder / f'{stem}{ext}', 'L' if seed == 2 else 'RGB')
      (root / folder / f'{stem}.pts').write_text(
        formats.format_pts(raw, '\r\n' if crlf else '\n', final_newline=seed % 2 == 0), newline=''
      )
      out[f'{folder}/{stem}{ext}'] = raw
      ext_box = np.concatenate([raw.min(0), raw.max(0)])
      entries.append((f'{stem}{ext}', ext_box + [-3, -4, 2, 5], ext_box))
    box_sets[box_set] = entries
  if boxes:
    box_sets['ibug'] = box_sets['ibug'] + box_sets['afw']  # stale AFW entries
    for s, entries in box_sets.items():
      write_300w_boxes(root / 'Bounding Boxes' / f'bounding_boxes_{s}.mat', entries)
  for i in range(private):
    seed += 1
    img, lm = render(seed, size)
    folder, name = (
      ('01_Indoor', f'indoor_{i + 1:03d}') if i % 2 == 0 else ('02_Outdoor', f'outdoor_{i + 1:03d}')
    )
    _save(img, root / folder / f'{name}.png', 'P')
    raw = lm.astype(np.float64) + 1.0
    (root / folder / f'{name}.pts').write_text(formats.format_pts(raw))
    out[f'{folder}/{name}.png'] = raw
  return out


def write_300w_boxes(path: PathLike, entries) -> None:
  """Writes an iBUG box file: entries of (imgName, bb_detector, bb_ground_truth)."""
  import scipy.io

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  cells = np.empty((1, len(entries)), dtype=object)
  for i, (name, det, gt) in enumerate(entries):
    cells[0, i] = {
      'imgName': name,
      'bb_detector': np.asarray(det, np.float64)[None],
      'bb_ground_truth': np.asarray(gt, np.float64)[None],
    }
  scipy.io.savemat(path, {'bounding_boxes': cells})


def wrap_bare_pts(src: PathLike, dst: PathLike) -> np.ndarray:
  """Writes a header-less `.pts` (the spinkoo copies) with the official header; returns points."""
  points = formats.read_pts(src, expected_points=68, allow_bare=True)
  text = pathlib.Path(src).read_text(encoding='utf-8').strip('\n')
  pathlib.Path(dst).write_text(f'version: 1\nn_points:  68\n{{\n{text}\n}}\n', encoding='utf-8')
  return points


# ---------------------------------------------------------------------------------------------
# WFLW

WFLW_EVENTS = ('0--Parade', '59--people--driving--car', '7--Cheering')


def wflw_line(points: np.ndarray, rect, attributes, name: str, with_rect_attr: bool = True) -> str:
  """One list line: 98 x y pairs [+ rect + 6 flags] + image name."""
  fields = [f'{v:.6f}' for v in np.asarray(points, np.float64).ravel()]
  if with_rect_attr:
    fields += [f'{int(round(v))}' for v in rect] + [str(int(a)) for a in attributes]
  return ' '.join(fields + [name])


def write_wflw(
  root: PathLike, size: int = 96, num_train: int = 4, num_test_images: int = 3, subsets: bool = True
) -> dict[str, list]:
  """Writes a tiny WFLW manual directory; the last test image holds two faces.

  Returns:
    {'train': [...], 'test': [...]} of (image name, face index, points, rect, attributes).
  """
  root = pathlib.Path(root)
  recs: dict[str, list] = {'train': [], 'test': []}
  seed = 100
  for split, n in (('train', num_train), ('test', num_test_images)):
    for i in range(n):
      seed += 1
      event = WFLW_EVENTS[i % len(WFLW_EVENTS)]
      name = f'{event}/{event.split("--")[0]}_{event.split("--")[1]}_{split}_{i}.jpg'
      img, lm = render(seed, size)
      _save(img, root / 'WFLW_images' / name)
      shapes = [to_wflw98(lm)]
      if split == 'test' and i == n - 1:
        shapes.append(to_wflw98(lm) * 0.5 + 2.0)  # a second (smaller) face in the same image
      for j, pts in enumerate(shapes):
        attrs = np.array([(i + j + k) % 3 == 0 for k in range(6)])
        rect = np.concatenate([pts.min(0) - 2, pts.max(0) + 2]).round()
        recs[split].append((name, j, pts, rect, attrs))
  ann = root / 'WFLW_annotations'
  for split, rows in recs.items():
    path = ann / 'list_98pt_rect_attr_train_test' / f'list_98pt_rect_attr_{split}.txt'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(wflw_line(p, r, a, n) for n, _, p, r, a in rows) + '\n')
  if subsets:
    sub = ann / 'list_98pt_test'
    sub.mkdir(parents=True, exist_ok=True)
    for k, fname in enumerate(formats.WFLW_SUBSET_FILES):
      rows = [wflw_line(p, r, a, n, False) for n, _, p, r, a in recs['test'] if a[k]]
      (sub / fname).write_text(''.join(r + '\n' for r in rows))
  return recs


# ---------------------------------------------------------------------------------------------
# COFW

_MAT73_HEADER = (
  b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fkd test fixture HDF5 schema 1.00 .'
)


def write_cofw_mat_v73(
  path: PathLike, part: str, images, points, occluded, boxes_xywh, drop: tuple[str, ...] = ()
) -> None:
  """Writes a COFW part in the MATLAB v7.3 (HDF5) layout, arrays transposed as MATLAB does.

  Args:
    path: output file.
    part: 'train' (IsTr, phisTr, bboxesTr) or 'test' (IsT, phisT, bboxesT).
    images: uint8 (H, W, 3) or (H, W) arrays.
    points: (M, 29, 2) raw (1-based) points.
    occluded: (M, 29) 0/1.
    boxes_xywh: (M, 4).
    drop: variable names to leave out (for error tests).
  """
  import h5py

  s = 'Tr' if part == 'train' else 'T'
  phis = np.concatenate(
    [np.asarray(points)[..., 0], np.asarray(points)[..., 1], np.asarray(occluded, np.float64)],
    axis=1,
  )  # (M, 87)
  with h5py.File(path, 'w', userblock_size=512) as f:
    refs = f.create_group('#refs#')
    ref_arr = np.empty((1, len(images)), dtype=h5py.ref_dtype)
    for i, img in enumerate(images):
      a = np.asarray(img, np.uint8)
      a = a.T if a.ndim == 2 else np.transpose(a, (2, 1, 0))  # MATLAB (H, W, 3) -> (3, W, H)
      ref_arr[0, i] = refs.create_dataset(f'i{i}', data=a).ref
    if f'Is{s}' not in drop:
      f.create_dataset(f'Is{s}', data=ref_arr)
    if f'phis{s}' not in drop:
      f.create_dataset(f'phis{s}', data=phis.T)
    if f'bboxes{s}' not in drop:
      f.create_dataset(f'bboxes{s}', data=np.asarray(boxes_xywh, np.float64).T)
  with open(path, 'r+b') as f:
    f.write(_MAT73_HEADER.ljust(128, b' '))


def write_cofw_mat_v5(path: PathLike, part: str, images, points, occluded, boxes_xywh) -> None:
  """The same content as a MATLAB v5 file (as the grayscale release may be)."""
  import scipy.io

  s = 'Tr' if part == 'train' else 'T'
  cells = np.empty((len(images), 1), dtype=object)
  for i, img in enumerate(images):
    cells[i, 0] = np.asarray(img, np.uint8)
  phis = np.concatenate(
    [np.asarray(points)[..., 0], np.asarray(points)[..., 1], np.asarray(occluded, np.float64)],
    axis=1,
  )
  scipy.io.savemat(
    path, {f'Is{s}': cells, f'phis{s}': phis, f'bboxes{s}': np.asarray(boxes_xywh, np.float64)}
  )


def cofw_part(num: int, seed: int, size: int = 80, gray: int = 1):
  """Synthetic COFW content: images (the first `gray` grayscale; W < H), raw points, occ, boxes."""
  images, points, occ, boxes = [], [], [], []
  rng = np.random.default_rng(seed)
  for i in range(num):
    img, lm = render(seed * 100 + i, size)
    img = img[:, : size - 7 * (i % 3)]  # non-square: W < H
    images.append(img.mean(-1).astype(np.uint8) if i < gray else img)
    raw = to_cofw29(lm) + 1.0
    points.append(raw)
    occ.append(rng.random(29) < 0.2)
    lo, hi = raw.min(0), raw.max(0)
    boxes.append(np.concatenate([lo - 2, hi - lo + 4]).round())
  return images, np.stack(points), np.stack(occ), np.stack(boxes)


def write_cofw(
  root: PathLike, num_train: int = 4, num_test: int = 3, cofw68: bool = True, v73: bool = True
) -> dict[str, tuple]:
  """Writes a tiny COFW manual directory (+ COFW68_Data for the test faces)."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  parts = {'train': cofw_part(num_train, 1), 'test': cofw_part(num_test, 2)}
  write = write_cofw_mat_v73 if v73 else write_cofw_mat_v5
  for part, content in parts.items():
    write(root / f'COFW_{part}_color.mat', part, *content)
  if cofw68:
    import scipy.io

    ann = root / 'COFW68_Data' / 'test_annotations'
    ann.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    boxes = []
    for i in range(num_test):
      _, lm = render(200 + i, 80)
      pts = lm.astype(np.float64) + 1.0
      scipy.io.savemat(
        ann / f'{i + 1}_points.mat',
        {'Points': pts, 'Occ': (rng.random((1, 68)) < 0.2).astype(np.uint8)},
      )
      boxes.append(np.concatenate([pts.min(0), pts.max(0) - pts.min(0)]).round())
    scipy.io.savemat(
      root / 'COFW68_Data' / 'cofw68_test_bboxes.mat', {'bboxes': np.asarray(boxes, np.int16)}
    )
  return parts


def main() -> None:
  """Regenerates tfds_builders/*/dummy_data (small synthetic manual directories)."""
  import shutil

  base = pathlib.Path(__file__).resolve().parents[2] / 'tfds_builders'
  for name, fn in (
    ('ibug_300w', lambda d: write_300w(d, size=64)),
    ('wflw', lambda d: write_wflw(d, size=64)),
    ('cofw', lambda d: write_cofw(d)),
  ):
    d = base / name / 'dummy_data'
    shutil.rmtree(d, ignore_errors=True)
    fn(d)
    print(d, sum(f.stat().st_size for f in d.rglob('*') if f.is_file()), 'bytes')


if __name__ == '__main__':
  main()
