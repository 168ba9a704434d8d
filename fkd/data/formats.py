"""Readers of the official 300W, WFLW, COFW and COFW-68 annotation files (datasets.md §1–§4).

Every reader returns **raw** values, exactly as stored in the file (MATLAB-style origins are left
alone; the builders record `origin_offset`). Bad input raises `DataFormatError` (an `FkdError` and
a `ValueError`) naming the file and what was expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from fkd.errors import FkdError

PathLike = str | os.PathLike

WFLW_ATTRIBUTES = ('pose', 'expression', 'illumination', 'makeup', 'occlusion', 'blur')
# File names of the official subset lists, in WFLW_ATTRIBUTES order.
WFLW_SUBSET_FILES = tuple(
  f'list_98pt_test_{a}.txt'
  for a in ('largepose', 'expression', 'illumination', 'makeup', 'occlusion', 'blur')
)


class DataFormatError(FkdError, ValueError):
  """An annotation or image file does not have the expected format."""


def _finite(points: np.ndarray, where: str) -> np.ndarray:
  bad = ~np.isfinite(points)
  if bad.any():
    i = int(np.argwhere(bad.reshape(len(points), -1).any(axis=1))[0, 0])
    raise DataFormatError(f'{where}: point {i} is {points[i].tolist()}; expected finite numbers')
  return points


# ---------------------------------------------------------------------------------------------
# 300W


def parse_pts(
  text: str, name: str = '<pts>', expected_points: int | None = None, allow_bare: bool = False
) -> np.ndarray:
  """Parses the text of an iBUG `.pts` file into raw (N, 2) float64 points.

  Accepts CRLF line ends and a missing final newline. The header is `version: 1`, then
  `n_points:  N`, then `{`; pairs follow until `}`.

  Args:
    text: the file's contents.
    name: the file name used in error messages.
    expected_points: if given, N must equal this.
    allow_bare: also accept a header-less file of `x y` lines only (the spinkoo copies).

  Returns:
    (N, 2) float64 raw points.
  """
  lines = [ln.strip() for ln in text.replace('\r\n', '\n').replace('\r', '\n').split('\n')]
  n_points, start = None, None
  for i, ln in enumerate(lines):
    if ln == '{':
      start = i + 1
      break
    m = re.fullmatch(r'n_points\s*:\s*(\S+)', ln)
    if m:
      try:
        n_points = int(m.group(1))
      except ValueError:
        raise DataFormatError(f"{name}: bad header line {ln!r}; expected 'n_points:  68'") from None
  if start is None:
    if not allow_bare:
      raise DataFormatError(
        f"{name}: no '{{' line; expected an iBUG .pts file "
        "('version: 1', 'n_points:  68', '{', x y pairs, '}')"
      )
    body, end_seen = [ln for ln in lines if ln], True
  else:
    if n_points is None:
      raise DataFormatError(f"{name}: no 'n_points:' line before '{{'")
    body, end_seen = [], False
    for ln in lines[start:]:
      if ln == '}':
        end_seen = True
        break
      if ln:
        body.append(ln)
  if not end_seen:
    raise DataFormatError(f"{name}: no closing '}}' (file truncated?)")
  pts = []
  for ln in body:
    fields = ln.split()
    try:
      if len(fields) != 2:
        raise ValueError
      pts.append((float(fields[0]), float(fields[1])))
    except ValueError:
      raise DataFormatError(f"{name}: bad point line {ln!r}; expected 'x y'") from None
  points = np.asarray(pts, np.float64).reshape(-1, 2)
  if n_points is not None and len(points) != n_points:
    raise DataFormatError(f'{name}: {len(points)} points but the header says n_points: {n_points}')
  if expected_points is not None and len(points) != expected_points:
    raise DataFormatError(f'{name}: {len(points)} points; expected {expected_points}')
  return _finite(points, name)


def read_pts(
  path: PathLike, expected_points: int | None = None, allow_bare: bool = False
) -> np.ndarray:
  """Reads an iBUG `.pts` file (see `parse_pts`)."""
  try:
    with open(path, encoding='utf-8', newline='') as f:
      text = f.read()
  except UnicodeDecodeError:
    raise DataFormatError(f'{path}: not a text .pts file') from None
  return parse_pts(text, os.fspath(path), expected_points, allow_bare)


def format_pts(points: np.ndarray, newline: str = '\n', final_newline: bool = True) -> str:
  """The official `.pts` text of (N, 2) points (`n_points:` followed by two spaces)."""
  rows = [f'{float(x):.6f} {float(y):.6f}' for x, y in np.asarray(points, np.float64)]
  text = newline.join(['version: 1', f'n_points:  {len(rows)}', '{', *rows, '}'])
  return text + (newline if final_newline else '')


@dataclasses.dataclass(frozen=True)
class Box300W:
  """One entry of an iBUG `bounding_boxes_<set>.mat` ([x_min, y_min, x_max, y_max], raw)."""

  name: str
  detector: np.ndarray
  ground_truth: np.ndarray


def read_300w_boxes(path: PathLike) -> list[Box300W]:
  """Reads an iBUG box file: every entry in file order (ibug has 202 stale AFW entries)."""
  import scipy.io

  try:
    mat = scipy.io.loadmat(os.fspath(path))
  except Exception as e:  # scipy raises several types for non-MAT input
    raise DataFormatError(f'{path}: cannot read as a MATLAB v5 file ({e})') from None
  if 'bounding_boxes' not in mat:
    raise DataFormatError(
      f"{path}: no variable 'bounding_boxes'; found "
      f'{sorted(k for k in mat if not k.startswith("__"))}'
    )
  out = []
  for i, cell in enumerate(np.asarray(mat['bounding_boxes']).ravel()):
    try:
      e = cell.ravel()[0] if cell.dtype == object else cell
      e = e.ravel()[0]
      name = str(np.asarray(e['imgName']).ravel()[0])
      det = np.asarray(e['bb_detector'], np.float64).reshape(4)
      gt = np.asarray(e['bb_ground_truth'], np.float64).reshape(4)
    except (ValueError, IndexError, KeyError, TypeError) as err:
      raise DataFormatError(
        f'{path}: entry {i} is not a struct with imgName, bb_detector and bb_ground_truth ({err})'
      ) from None
    out.append(Box300W(name, det, gt))
  return out


def spaceless(name: str) -> str:
  """Name key for joins against HRNet CSV names (`image_092 _01.jpg` == `image_092_01.jpg`)."""
  return name.replace(' ', '')


def join_boxes(boxes: Sequence[Box300W], names: Sequence[str]) -> dict[str, Box300W]:
  """Joins box entries to image base names by name (exact, else without spaces); never by index.

  Entries whose name has no image (the stale AFW entries of the ibug file) are ignored.
  """
  exact = {b.name: b for b in boxes}
  loose = {spaceless(b.name): b for b in boxes}
  out = {}
  for n in names:
    b = exact.get(n) or loose.get(spaceless(n))
    if b is not None:
      out[n] = b
  return out


# ---------------------------------------------------------------------------------------------
# WFLW


@dataclasses.dataclass(frozen=True)
class WflwFace:
  """One line of a WFLW list. `rect` and `attributes` are None for the 197-field lists."""

  image_name: str  # relative to WFLW_images/, as in the list
  points: np.ndarray  # (98, 2) raw
  rect: np.ndarray | None  # (4,) x_min, y_min, x_max, y_max
  attributes: np.ndarray | None  # (6,) bool, WFLW_ATTRIBUTES order
  line: int  # 1-based line number in its file
  face_index: int  # position of this face among the faces of its image, in list order


def read_wflw_list(path: PathLike, with_rect_attr: bool = True) -> list[WflwFace]:
  """Reads `list_98pt_rect_attr_*.txt` (207 fields) or `list_98pt_test*.txt` (197 fields).

  The image name is the last field taken verbatim (never split on '--'); blank lines are skipped.
  """
  want = 207 if with_rect_attr else 197
  faces, seen = [], {}
  with open(path, encoding='utf-8', newline='') as f:
    for line_no, ln in enumerate(f, start=1):
      fields = ln.split()
      if not fields:
        continue
      if len(fields) != want:
        raise DataFormatError(
          f'{path}:{line_no}: {len(fields)} fields; expected {want} ('
          + (
            '196 coordinates, 4 rect, 6 attributes, image name)'
            if with_rect_attr
            else '196 coordinates, image name)'
          )
        )
      try:
        nums = np.asarray([float(v) for v in fields[:-1]], np.float64)
      except ValueError:
        raise DataFormatError(
          f'{path}:{line_no}: non-numeric field before the image name'
        ) from None
      where = f'{path}:{line_no}'
      points = _finite(nums[:196].reshape(98, 2), where)
      rect = attrs = None
      if with_rect_attr:
        rect = _finite(nums[196:200].reshape(1, 4), where + ' (rect)')[0]
        a = nums[200:206]
        if not np.all((a == 0) | (a == 1)):
          raise DataFormatError(f'{where}: attributes {a.tolist()}; expected six 0/1 flags')
        attrs = a.astype(bool)
      name = fields[-1]
      faces.append(WflwFace(name, points, rect, attrs, line_no, seen.get(name, 0)))
      seen[name] = seen.get(name, 0) + 1
  return faces


def wflw_face_key(name: str, points: np.ndarray) -> tuple:
  """A key identifying a WFLW test face across lists (name + points rounded to 1e-3)."""
  return (name, tuple(np.round(np.asarray(points, np.float64).ravel(), 3).tolist()))


def wflw_subset_mask(faces: Sequence[WflwFace], attribute: str) -> np.ndarray:
  """The faces of a 207-field list whose flag `attribute` is 1 (datasets.md §2.3)."""
  j = WFLW_ATTRIBUTES.index(attribute)
  return np.array([bool(f.attributes[j]) for f in faces], bool)


# ---------------------------------------------------------------------------------------------
# COFW (MATLAB v7.3 via h5py, older versions via scipy)


def is_mat_v73(path: PathLike) -> bool:
  """True for a MATLAB v7.3 (HDF5) file, from its 128-byte text header or the HDF5 signature."""
  with open(path, 'rb') as f:
    head = f.read(128)
  if b'MATLAB 7.3 MAT-file' in head:
    return True
  import h5py

  return head[:8] != b'MATLAB 5' and h5py.is_hdf5(os.fspath(path))


class CofwMat:
  """The images, points, occlusion flags and boxes of a COFW `.mat` (train or test part).

  Points are raw (MATLAB 1-based); `boxes` are the raw `[x y w h]`. Images are read lazily and
  returned as uint8 (H, W, 3) (grayscale is replicated). Use as a context manager or call close().
  """

  def __init__(self, path: PathLike, part: str):
    if part not in ('train', 'test'):
      raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    self.path = os.fspath(path)
    suffix = 'Tr' if part == 'train' else 'T'
    self.names = (f'Is{suffix}', f'phis{suffix}', f'bboxes{suffix}')
    self._h5 = None
    if is_mat_v73(path):
      import h5py

      try:
        self._h5 = h5py.File(self.path, 'r')
      except OSError as e:
        raise DataFormatError(f'{path}: cannot open as MATLAB v7.3 / HDF5 ({e})') from None
      self._check_vars(self._h5.keys())
      images, phis, boxes = (self._h5[n] for n in self.names)
      # h5py returns MATLAB arrays transposed: (1, N) refs, (87, N), (4, N).
      self._refs = np.asarray(images).ravel()
      phis, boxes = np.asarray(phis, np.float64).T, np.asarray(boxes, np.float64).T
    else:
      import scipy.io

      try:
        mat = scipy.io.loadmat(self.path)
      except Exception as e:
        raise DataFormatError(f'{path}: cannot read as a MATLAB file ({e})') from None
      self._check_vars(mat.keys())
      self._arrays = np.asarray(mat[self.names[0]], dtype=object).ravel()
      phis = np.asarray(mat[self.names[1]], np.float64)
      boxes = np.asarray(mat[self.names[2]], np.float64)
    n = len(self._refs) if self._h5 is not None else len(self._arrays)
    if phis.ndim != 2 or phis.shape[1] != 87 or len(phis) != n:
      raise DataFormatError(
        f'{path}: {self.names[1]} has shape {phis.shape} (after transposing '
        f'HDF5); expected ({n}, 87) = x1..x29, y1..y29, occ1..occ29'
      )
    if boxes.shape != (n, 4):
      raise DataFormatError(f'{path}: {self.names[2]} has shape {boxes.shape}; expected ({n}, 4)')
    self.landmarks = np.stack([phis[:, :29], phis[:, 29:58]], axis=-1)
    _finite(self.landmarks.reshape(-1, 2), f'{path}: {self.names[1]}')
    occ = phis[:, 58:87]
    if not np.all((occ == 0) | (occ == 1)):
      raise DataFormatError(f'{path}: {self.names[1]} occlusion columns 58..86 are not 0/1')
    self.occluded = occ.astype(bool)
    self.boxes = boxes

  def _check_vars(self, keys) -> None:
    keys = set(keys)
    missing = [n for n in self.names if n not in keys]
    if missing:
      raise DataFormatError(
        f'{self.path}: missing variable(s) {missing}; expected {list(self.names)} '
        f'(found {sorted(k for k in keys if not k.startswith("__") and k != "#refs#")})'
      )

  def __len__(self) -> int:
    return len(self.landmarks)

  def image(self, i: int) -> np.ndarray:
    """Image i (0-based) as uint8 (H, W, 3)."""
    if self._h5 is not None:
      a = np.asarray(self._h5[self._refs[i]])
      a = a.T if a.ndim == 2 else np.transpose(a, (2, 1, 0))  # (3, W, H) -> (H, W, 3)
    else:
      a = np.asarray(self._arrays[i])
    if a.ndim == 3 and a.shape[-1] == 1:
      a = a[..., 0]
    if a.ndim == 2:
      a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
      raise DataFormatError(
        f'{self.path}: {self.names[0]}[{i}] has shape {a.shape}; expected '
        'an H x W x 3 or H x W image'
      )
    return np.ascontiguousarray(a.astype(np.uint8))

  def image_size(self, i: int) -> tuple[int, int]:
    """(width, height) of image i without reading its pixels."""
    if self._h5 is not None:
      shape = self._h5[self._refs[i]].shape
      return (shape[-2], shape[-1]) if len(shape) == 3 else (shape[0], shape[1])
    shape = np.asarray(self._arrays[i]).shape
    return shape[1], shape[0]

  def close(self) -> None:
    if self._h5 is not None:
      self._h5.close()
      self._h5 = None

  def __enter__(self) -> CofwMat:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_cofw68_points(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads a COFW-68 `<i>_points.mat`: raw (68, 2) points and (68,) occluded flags."""
  import scipy.io

  try:
    mat = scipy.io.loadmat(os.fspath(path))
  except Exception as e:
    raise DataFormatError(f'{path}: cannot read as a MATLAB v5 file ({e})') from None
  for k in ('Points', 'Occ'):
    if k not in mat:
      raise DataFormatError(f"{path}: no variable {k!r}; expected 'Points' (68x2) and 'Occ' (1x68)")
  points = np.asarray(mat['Points'], np.float64)
  occ = np.asarray(mat['Occ']).ravel()
  if points.shape != (68, 2) or occ.shape != (68,):
    raise DataFormatError(f'{path}: Points {points.shape}, Occ {occ.shape}; expected (68, 2), 68')
  return _finite(points, os.fspath(path)), occ.astype(bool)


def read_cofw68_boxes(path: PathLike) -> np.ndarray:
  """Reads `cofw68_test_bboxes.mat`: (507, 4) float64 raw `[x y w h]`."""
  import scipy.io

  try:
    boxes = scipy.io.loadmat(os.fspath(path)).get('bboxes')
  except Exception as e:
    raise DataFormatError(f'{path}: cannot read as a MATLAB v5 file ({e})') from None
  if boxes is None or np.ndim(boxes) != 2 or np.shape(boxes)[1] != 4:
    raise DataFormatError(f"{path}: expected a variable 'bboxes' of shape (507, 4)")
  return np.asarray(boxes, np.float64)


def xywh_to_xyxy(box: np.ndarray) -> np.ndarray:
  """[x y w h] -> [x_min, y_min, x_max, y_max]."""
  b = np.asarray(box, np.float64)
  return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


# ---------------------------------------------------------------------------------------------
# Images and mean shapes


# Pixels an image may have before it is refused as a possible decompression bomb (PIL's own
# error threshold); `fkd.predict --max_megapixels` and `set_max_pixels` raise it.
MAX_PIXELS = 2 * 89_478_485
EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
  2: Image.Transpose.FLIP_LEFT_RIGHT,
  3: Image.Transpose.ROTATE_180,
  4: Image.Transpose.FLIP_TOP_BOTTOM,
  5: Image.Transpose.TRANSPOSE,
  6: Image.Transpose.ROTATE_270,
  7: Image.Transpose.TRANSVERSE,
  8: Image.Transpose.ROTATE_90,
}


def set_max_pixels(pixels: int | None) -> None:
  """Images up to `pixels` pixels are decoded (None: the default guard)."""
  global MAX_PIXELS
  MAX_PIXELS = 2 * 89_478_485 if pixels is None else int(pixels)


@contextlib.contextmanager
def max_pixels(pixels: int | None) -> Iterator[None]:
  """`set_max_pixels` for the length of a command (the guard is back afterwards)."""
  before = MAX_PIXELS
  set_max_pixels(pixels)
  try:
    yield
  finally:
    set_max_pixels(before)


def orientation(img: Image.Image) -> int:
  """The EXIF orientation (1..8; 1 when absent or unreadable)."""
  try:
    value = img.getexif().get(EXIF_ORIENTATION, 1)
  except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation
    return 1
  return value if isinstance(value, int) and value in range(1, 9) else 1


def open_header(source: PathLike | bytes, name: str) -> Image.Image:
  """Opens an image (its header only), with the pixel-count guard said in one line."""
  limit = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None  # the guard below names the way to allow a large photo
  try:
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
  finally:
    Image.MAX_IMAGE_PIXELS = limit
  w, h = img.size
  if w * h > MAX_PIXELS:
    img.close()
    raise DataFormatError(
      f'{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the '
      f'{MAX_PIXELS / 1e6:.0f} decoded safely (a decompression-bomb guard); pass '
      '--max_megapixels to allow it'
    )
  return img


def image_size(source: PathLike | bytes, name: str | None = None) -> tuple[int, int]:
  """(width, height) of an image as `open_image` returns it (upright), from its header."""
  name = name or (os.fspath(source) if not isinstance(source, bytes) else '<image bytes>')
  try:
    with open_header(source, name) as img:
      w, h = img.size
      return (h, w) if orientation(img) in (5, 6, 7, 8) else (w, h)
  except (OSError, SyntaxError, ValueError) as e:
    if isinstance(e, DataFormatError):
      raise
    raise DataFormatError(f'{name}: not a readable image ({e})') from None


def to_rgb(img: Image.Image) -> Image.Image:
  """RGB of any mode; more than 8 bits per sample is scaled to 0..255, never clipped."""
  if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
    a = np.asarray(img, np.float64)
    if img.mode.startswith('I;16'):
      top = 65535.0
    elif img.mode == 'F':
      top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 65535.0
    else:  # 32-bit ints: PNG and TIFF 16-bit grayscale decode to this
      top = 255.0 if np.nanmax(a, initial=0.0) <= 255 else 65535.0
    a = np.clip(np.nan_to_num(a) * (255.0 / top), 0, 255)
    return Image.fromarray(np.round(a).astype(np.uint8)).convert('RGB')
  return img.convert('RGB')


def open_image(
  source: PathLike | bytes,
  name: str | None = None,
  draft_size: tuple[int, int] | None = None,
  upright: bool = True,
) -> Image.Image:
  """Decodes an image fully into RGB (grayscale, palette, RGBA and 16-bit are converted).

  Args:
    source: a path or the encoded bytes.
    name: the name used in errors (defaults to the path).
    draft_size: for JPEGs, let libjpeg decode at a reduced scale of at least this (W, H), upright.
    upright: apply the EXIF orientation (as photo viewers show the photo, and as people
      annotate it).

  Returns:
    The RGB image; `img.info['draft_scale']` holds the integer reduction (1 without draft).
  """
  name = name or (os.fspath(source) if not isinstance(source, bytes) else '<image bytes>')
  try:
    img = open_header(source, name)
    turn = orientation(img) if upright else 1
    full = img.size
    if draft_size is not None and img.format == 'JPEG':
      img.draft('RGB', draft_size[::-1] if turn in (5, 6, 7, 8) else draft_size)
    img.load()
  except DataFormatError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DataFormatError(
      f'{name}: cannot decode the image ({e}); expected a complete JPEG / PNG / PPM file'
    ) from None
  scale = max(1, round(full[0] / img.size[0]))
  out = to_rgb(img)
  if turn in _TRANSPOSE:
    out = out.transpose(_TRANSPOSE[turn])
  out.info['draft_scale'] = scale
  return out


def iter_files(root: PathLike, exts: Sequence[str]) -> Iterator[str]:
  """Base names of the regular files in `root` whose lower-cased extension is in `exts`."""
  for entry in sorted(os.scandir(root), key=lambda e: e.name):
    if entry.is_file() and os.path.splitext(entry.name)[1].lower() in exts:
      yield entry.name
