"""Shared machinery of the manual-download TFDS builders `ibug_300w`, `wflw` and `cofw`.

A dataset builder lists its faces (`Face`: raw landmarks, image size, a lazy image loader, the
per-dataset features) per split in `_collect`, and gives each face its crop box in `_crop_box`.
This base class then

* checks the split counts against the official ones and names what is missing (or, with
  `allow_partial`, prints the counts and leaves out empty splits);
* crops every face with the KD-Loss protocol (method.md §2.2): the box (original pixels, after the
  origin offset, clamped to the image) is resized anisotropically to `crop_size`², anti-aliased;
* fits the ASM PCA models on the train split only (method.md §2.3, fit set below) and stores the
  soft landmarks of every example of every split, and the models in `info.metadata['pca']`;
* writes the common features (see `FaceLandmarkBuilder._info`) and metadata.

ASM fit set (config `asm_fit_set`): 'augmented' (default, method.md §2.3): for every train face
its plain crop plus F − 1 landmark-only augmented copies (flip on copies 0, 2, …, rotation
U(−0.5, 0.5) rad about the landmark-box centre, re-crop to the extent ± the dataset's augmentation
margin, `fkd.data.augment.augment_shape`), drawn with `np.random.default_rng([asm_seed, i])` for the
i-th train face in key order; F = 6 (300W), 10 (COFW), 5 + attribute extras (WFLW). Options:
'plain_plus_flips' and 'plain'. The PCA lives in the crop's pixel frame (`space='pixel'`).

Unlabelled points (`_labelled`, a folder dataset's `visibility` 0): the fit set's are imputed
from the model (`fit_pcas`, `asm.complete_shapes`), and a face's soft landmarks are the ASM
projection of its labelled points only (`asm.asm_project(..., labelled=)`).

No TensorFlow is needed: images are stored as encoded bytes in a `Tensor(shape=(), object)`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fkd.data import asm, augment, crops, schemes
from fkd.errors import FkdError

ASM_ACCS = {'p80': 0.80, 'p85': 0.85, 'p90': 0.90, 'p95': 0.95, 'p97': 0.97}
LICENCE = (
  'Research use only: fkd ships builders, never data. 300-W annotations are for research '
  'purposes only (no commercial products); WFLW images are WIDER FACE images '
  '(CC BY-NC-ND 4.0); no licence text is known for COFW.'
)


@dataclasses.dataclass
class Face:
  """One face before cropping.

  Attributes:
    filename: the image path relative to the manual directory, exactly as on disk.
    face_index: position of the face within its image (WFLW); 0 elsewhere.
    landmarks: raw (N, 2) values as in the annotation file.
    size: (width, height) of the original image.
    load: returns the decoded RGB image; takes an optional JPEG draft size (W, H).
    extras: values of the dataset's extra features.
    copies: F, the number of ASM fit shapes of a train face (plain + augmented).
  """

  filename: str
  face_index: int
  landmarks: np.ndarray
  size: tuple[int, int]
  load: Callable[[tuple[int, int] | None], Image.Image]
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)
  copies: int = 1

  @property
  def key(self) -> str:
    return f'{self.filename}#{self.face_index}'


def local_dataset_info(**kwargs) -> tfds.core.DatasetInfo:
  """`tfds.core.DatasetInfo` of a dataset that is only ever built locally (manual or embedded).

  TFDS' `initialize_from_bucket`, called when a builder is made for a dataset not yet prepared,
  creates a `/tmp/tmp…tfds` directory it never removes and queries the public GCS bucket; these
  datasets are never there, so both are skipped.
  """
  info = tfds.core.DatasetInfo(**kwargs)
  info.initialize_from_bucket = lambda: None
  return info


@dataclasses.dataclass(eq=False)
class FaceBuilderConfig(tfds.core.BuilderConfig):
  """Options shared by the real-dataset builders (a new option value needs a new config name)."""

  crop_size: int = 224  # method.md §2.2: 224 x 224 crops
  image_format: str = 'jpeg'  # 'jpeg' (as the original stores its crops) or 'png'
  jpeg_quality: int = 95
  clip_sigmas: float = 3.0  # method.md §2.3
  asm_fit_set: str = 'augmented'  # 'augmented' | 'plain_plus_flips' | 'plain'
  asm_seed: int = 0
  # > 0: every example also stores `context_image`, the crop box widened by `context` x its width
  # and height on each side (not clamped: black past the image), at crop_size x (1 + 2 context)
  # pixels, so a context pixel is the crop pixel shifted by context x crop_size. Training crops
  # jittered the way a face detector misses the landmark box then show the face's real
  # surroundings (config.data.augment_fill='context'), as prediction's crops of a photo do.
  context: float = 0.0


class FaceLandmarkBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class; subclasses set SCHEME, ORIGIN_OFFSET, TARGET_SPACE and the hooks."""

  SCHEME = '300w'  # key of fkd.data.schemes.SCHEMES (a config may override via `_scheme`)
  AUGMENT = '300w'  # key of fkd.data.augment.COPIES / margin_fn
  ORIGIN_OFFSET = 0.0  # method.md §1.3: added to raw values to get 0-based pixel centres
  TARGET_SPACE = 'normalized'  # method.md §2.2 regression space recommended for this dataset
  CROP_PROTOCOL = ''
  allow_partial = False

  def __init__(self, *, allow_partial: bool | None = None, **kwargs):
    super().__init__(**kwargs)
    if allow_partial is not None:
      self.allow_partial = bool(allow_partial)
    self._cleanups: list[Callable[[], None]] = []

  # ---- hooks -------------------------------------------------------------------------------

  def _scheme(self) -> schemes.Scheme:
    return schemes.SCHEMES[self.SCHEME]

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {}

  def _collect(self, root: pathlib.Path) -> tuple[dict[str, list[Face]], list[str]]:
    """Lists the faces per split and describes every missing / incomplete part."""
    raise NotImplementedError

  def _official_counts(self, splits: dict[str, list[Face]]) -> dict[str, int]:
    raise NotImplementedError

  def _crop_box(self, face: Face, points: np.ndarray) -> np.ndarray:
    """[L, T, R, B] of the face crop from 0-based points (before clamping to the image)."""
    raise NotImplementedError

  def _extra_metadata(self) -> dict[str, Any]:
    return {}

  # ---- TFDS --------------------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    n = self._scheme().num_landmarks
    points = lambda: tfds.features.Tensor(shape=(n, 2), dtype=np.float32)
    scalar = lambda: tfds.features.Tensor(shape=(), dtype=np.float32)
    here = pathlib.Path(sys.modules[type(self).__module__].__file__).parent
    readme, bib = here / 'README.md', here / 'CITATIONS.bib'
    return local_dataset_info(
      builder=self,
      description=readme.read_text(encoding='utf-8') if readme.exists() else self.__doc__,
      citation=bib.read_text(encoding='utf-8') if bib.exists() else None,
      features=tfds.features.FeaturesDict(
        {
          # Encoded JPEG/PNG of the crop_size² RGB face crop (tfds Image would need TF).
          'image': tfds.features.Tensor(shape=(), dtype=np.object_),
          'landmarks': points(),  # crop frame, pixel centres at integers
          'landmarks_original': points(),  # raw values as in the annotation file
          'soft_landmarks': tfds.features.FeaturesDict({k: points() for k in ASM_ACCS}),
          # 2x3 affine: original pixels (raw + origin_offset) -> crop pixels.
          'crop_transform': tfds.features.Tensor(shape=(2, 3), dtype=np.float32),
          'crop_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
          'original_size': tfds.features.Tensor(shape=(2,), dtype=np.int32),  # (height, width)
          'filename': tfds.features.Text(),
          'face_index': tfds.features.Tensor(shape=(), dtype=np.int32),
          'norm': tfds.features.FeaturesDict(
            {
              'inter_ocular': scalar(),
              'inter_pupil': scalar(),  # crop frame
              'inter_ocular_original': scalar(),
              'inter_pupil_original': scalar(),
            }
          ),
          **self._extra_features(),
          **(
            {'context_image': tfds.features.Tensor(shape=(), dtype=np.object_)}
            if self.builder_config.context
            else {}
          ),
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's, plus: on failure nothing this call created is left in data_dir."""
    root = pathlib.Path(os.fspath(self.data_dir_root))
    candidates = [
      root / self.name / self.builder_config.name,
      root / self.name,
      root / 'downloads',
      root,
    ]
    created = [p for p in candidates if not p.exists()]
    try:
      return super().download_and_prepare(*args, **kwargs)
    except BaseException:
      for p in created[:-1] if root in created else created:
        shutil.rmtree(p, ignore_errors=True)
      if root in created and root.is_dir() and not any(root.iterdir()):
        root.rmdir()
      raise
    finally:
      while self._cleanups:
        self._cleanups.pop()()

  def _split_generators(self, dl_manager):
    try:
      root = pathlib.Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:
      raise FkdError(f'{self.name}: {e}') from None
    cfg = self.builder_config
    splits, problems = self._collect(root)
    official = self._official_counts(splits)
    for split, want in official.items():
      have = len(splits.get(split, []))
      if have != want:
        problems.append(f'split {split!r}: {have} faces; the official count is {want}')
    counts = ', '.join(
      f'{s} {len(f)}' + (f'/{official[s]}' if s in official else '') for s, f in splits.items()
    )
    if problems and not self.allow_partial:
      raise FkdError(
        f'{self.name}: the manual download in {root} is incomplete or not in the expected '
        'layout:\n  - ' + '\n  - '.join(problems) + f'\nfound: {counts}\n'
        'Pass --allow_partial (fkd.main: --config.data.allow_partial=True) to build the files '
        f'that are present. Expected layout:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    for p in problems:
      print(f'{self.name}: warning: {p}', flush=True)
    splits = {s: sorted(f, key=lambda x: x.key) for s, f in splits.items() if f}
    if not splits:
      raise FkdError(
        f'{self.name}: no faces found in {root}; expected layout:\n'
        f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    print(
      f'{self.name}/{cfg.name}: ' + ', '.join(f'{s} {len(f)}' for s, f in splits.items()),
      flush=True,
    )

    scheme = self._scheme()
    prepared = {s: [self._prepare(f) for f in faces] for s, faces in splits.items()}
    pcas, fit_note = None, 'no train split: soft landmarks are NaN'
    if 'train' in prepared:
      pcas, fit_note = self._fit_pcas(prepared['train'])
    meta = {
      'image_size': int(cfg.crop_size),
      **scheme.metadata(),
      'origin_offset': float(self.ORIGIN_OFFSET),
      'space': 'pixel',  # landmarks, soft landmarks and PCA are crop-frame pixels
      'target_space': self.TARGET_SPACE,
      'crop': self.CROP_PROTOCOL,
      'pca_fit': fit_note,
      'clip_sigmas': float(cfg.clip_sigmas),
      'counts': {s: len(f) for s, f in prepared.items()},
      'official_counts': official,
      'partial': bool(problems),
      'licence': LICENCE,
      'context': float(cfg.context),
      **self._extra_metadata(),
    }
    if pcas is not None:
      meta['pca'] = {k: p.to_dict() for k, p in pcas.items()}
    self.info.metadata.update(meta)
    return {s: self._generate_examples(items, pcas) for s, items in prepared.items()}

  # ---- internals ---------------------------------------------------------------------------

  def _prepare(self, face: Face) -> tuple[Face, np.ndarray, np.ndarray, np.ndarray]:
    """(face, box, A, crop landmarks) of a face."""
    points = face.landmarks + self.ORIGIN_OFFSET
    box = np.asarray(self._crop_box(face, points), np.float64)
    w, h = face.size
    box = np.clip(box, [-0.5, -0.5, -0.5, -0.5], [w - 0.5, h - 0.5, w - 0.5, h - 0.5])
    for lo, hi in ((0, 2), (1, 3)):  # keep at least one pixel
      if box[hi] - box[lo] < 1:
        c = (box[hi] + box[lo]) / 2
        box[lo], box[hi] = c - 0.5, c + 0.5
    a = crops.box_transform(box, self.builder_config.crop_size)
    return face, box, a, crops.apply(a, points)

  def _labelled(self, face: Face) -> np.ndarray | None:
    """(N,) bool: the face's points with a position, or None when all have one (the paper
    datasets). A folder dataset's unlabelled points hold a stand-in (`fkd.data.folder`)."""
    return None

  def _fit_pcas(self, train) -> tuple[dict[str, asm.PCAModel], str]:
    cfg = self.builder_config
    scheme = self._scheme()
    n = scheme.num_landmarks
    shapes = [np.stack([lm for _, _, _, lm in train])]
    masks = [np.stack([self._face_mask(face, n) for face, _, _, _ in train])]
    if cfg.asm_fit_set == 'plain_plus_flips':
      shapes.append(schemes.flip_points(shapes[0], scheme.flip_permutation, cfg.crop_size))
      masks.append(schemes.flip_mask(masks[0], scheme.flip_permutation))
    elif cfg.asm_fit_set == 'augmented':
      for i, (face, _, _, _) in enumerate(train):
        rng = np.random.default_rng([cfg.asm_seed, i])
        shapes.append(
          augment.augment_shape(
            face.landmarks + self.ORIGIN_OFFSET,
            rng,
            copies=face.copies - 1,
            width=face.size[0],
            size=cfg.crop_size,
            flip_permutation=scheme.flip_permutation,
            margin=augment.margin_fn(self.AUGMENT, face.size[1]),
          )
        )
        # augment_shape flips copies 0, 2, 4, …: their masks are re-indexed as their points.
        m = self._face_mask(face, n)
        flipped = schemes.flip_mask(m, scheme.flip_permutation)
        masks.append(np.array([flipped if j % 2 == 0 else m for j in range(face.copies - 1)]))
    elif cfg.asm_fit_set != 'plain':
      raise FkdError(
        f"asm_fit_set={cfg.asm_fit_set!r}; expected 'augmented', 'plain_plus_flips' or 'plain'"
      )
    fit = np.concatenate(shapes)
    labelled = np.concatenate([m.reshape(-1, n) for m in masks])
    pcas = fit_pcas(fit, ASM_ACCS, labelled)
    note = (
      f'{cfg.asm_fit_set}: {len(fit)} shapes from the {len(train)} train faces, crop frame '
      f'({cfg.crop_size} px), pixel space, no Procrustes, seed {cfg.asm_seed}'
      f'{imputed_note(labelled)}'
    )
    return pcas, note

  def _face_mask(self, face: Face, n: int) -> np.ndarray:
    m = self._labelled(face)
    return np.ones(n, bool) if m is None else np.asarray(m, bool)

  def _context_size(self) -> int:
    """Side of `context_image`: crop_size x (1 + 2 context), which must be a whole number."""
    cfg = self.builder_config
    side = crops.context_side(cfg.crop_size, cfg.context)
    if cfg.context < 0 or side is None:
      raise FkdError(
        f'{self.name}/{cfg.name}: context={cfg.context} needs crop_size x (1 + 2 context) to be '
        f'a whole number of pixels >= crop_size; crop_size is {cfg.crop_size}'
      )
    return side

  def _context_transform(self, box: np.ndarray) -> np.ndarray:
    """The 2x3 map original pixels -> `context_image` pixels of a face with crop box `box`."""
    c = self.builder_config.context
    pad = c * np.array([box[2] - box[0], box[3] - box[1]])
    return crops.box_transform(np.concatenate([box[:2] - pad, box[2:] + pad]), self._context_size())

  def _crop_image(self, face: Face, a: np.ndarray, size: int | None = None) -> Image.Image:
    """Anti-aliased crop: JPEG draft and box reduction to within 2x, then bilinear warp."""
    size = size or self.builder_config.crop_size
    w, h = face.size
    ratio = min(1 / abs(a[0, 0]), 1 / abs(a[1, 1]))  # source pixels per crop pixel
    r = max(1, int(math.floor(ratio)))
    img = face.load((math.ceil(w / r), math.ceil(h / r)) if r >= 2 else None)
    d = int(img.info.get('draft_scale', 1))
    if (math.ceil(w / d), math.ceil(h / d)) != img.size and (w, h) != img.size:
      raise FkdError(f'{face.filename}: decoded size {img.size}; expected {(w, h)}')
    a = a.copy()
    if d > 1:  # reduced pixel j <- source pixel centres d j .. d j + d − 1
      a[:, 2] += a[:, :2] @ np.full(2, (d - 1) / 2)
      a[:, :2] *= d
    f = max(1, r // d)
    if f > 1:
      inv = crops.invert(a)
      corners = (
        np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
        @ inv[:, :2].T
        + inv[:, 2]
      )
      lo = np.floor(corners.min(0) - 2 * f).astype(int).clip(0, img.size)
      hi = np.ceil(corners.max(0) + 2 * f).astype(int).clip(0, img.size)
      if np.all(hi - lo >= f):
        img = img.reduce(f, box=(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])))
        a[:, 2] += a[:, :2] @ (lo + (f - 1) / 2)
        a[:, :2] *= f
    return crops.warp(img, a, size)

  def _encode(self, img: Image.Image) -> bytes:
    cfg = self.builder_config
    buf = io.BytesIO()
    if cfg.image_format == 'jpeg':
      img.save(buf, format='JPEG', quality=cfg.jpeg_quality)
    elif cfg.image_format == 'png':
      img.save(buf, format='PNG', compress_level=3)
    else:
      raise FkdError(f"image_format={cfg.image_format!r}; expected 'jpeg' or 'png'")
    return buf.getvalue()

  def _generate_examples(self, items, pcas):
    cfg = self.builder_config
    scheme = self._scheme()
    n = scheme.num_landmarks
    for face, box, a, lm in items:
      iod, ipd = scheme.distances(lm)
      iod0, ipd0 = scheme.distances(face.landmarks)
      mask = self._labelled(face)
      soft = (
        {
          k: asm.asm_project(p, lm, cfg.clip_sigmas, labelled=mask).astype(np.float32)
          for k, p in pcas.items()
        }
        if pcas is not None
        else {k: np.full((n, 2), np.nan, np.float32) for k in ASM_ACCS}
      )
      yield (
        face.key,
        {
          'image': self._encode(self._crop_image(face, a)),
          'landmarks': lm.astype(np.float32),
          'landmarks_original': face.landmarks.astype(np.float32),
          'soft_landmarks': soft,
          'crop_transform': a.astype(np.float32),
          'crop_box': box.astype(np.float32),
          'original_size': np.array(face.size[::-1], np.int32),
          'filename': face.filename,
          'face_index': np.int32(face.face_index),
          'norm': {
            'inter_ocular': np.float32(iod),
            'inter_pupil': np.float32(ipd),
            'inter_ocular_original': np.float32(iod0),
            'inter_pupil_original': np.float32(ipd0),
          },
          **face.extras,
          **(
            {
              'context_image': self._encode(
                self._crop_image(face, self._context_transform(box), self._context_size())
              )
            }
            if cfg.context
            else {}
          ),
        },
      )


def fit_pcas(
  shapes: np.ndarray, accs: dict[str, float], labelled: np.ndarray | None = None
) -> dict[str, asm.PCAModel]:
  """`asm.fit_pca` for several variance fractions from one SVD (identical models: each keeps
  the first k components of the largest-acc fit, k chosen by the same strict rule).

  `labelled` (M, N) bool: shapes with unlabelled points are first completed by
  `asm.complete_shapes` (EM-style, at the largest acc), so the stand-ins are not learnt as shape
  variation (`imputed_note` says so in the metadata).
  """
  if len(shapes) < 2:
    raise FkdError(
      f'the train split has {len(shapes)} face shape(s); the shape model (ASM targets) needs at '
      'least 2: annotate more train faces'
    )
  if labelled is not None and not np.all(labelled):
    shapes, _ = asm.complete_shapes(shapes, labelled, acc=max(accs.values()))
  top = asm.fit_pca(shapes, acc=max(accs.values()))
  cum = np.cumsum(top.ratio)
  out = {}
  for key, acc in accs.items():
    k = min(int(np.searchsorted(cum, acc, side='right')) + 1, top.k)
    out[key] = dataclasses.replace(
      top,
      components=np.ascontiguousarray(top.components[:, :k]),
      eigenvalues=top.eigenvalues[:k],
      acc=float(acc),
      k=k,
      ratio=top.ratio[:k],
    )
  return out


def imputed_note(labelled: np.ndarray) -> str:
  """The `pca_fit` metadata's words on the imputed shapes of `fit_pcas` ('' when none)."""
  count = int((~np.asarray(labelled, bool)).any(axis=1).sum())
  if not count:
    return ''
  return (
    f'; the unlabelled points of {count} of the {len(labelled)} shapes imputed from the model '
    '(EM, fkd.data.asm.complete_shapes)'
  )


def file_loader(path: pathlib.Path, name: str) -> Callable[[tuple[int, int] | None], Image.Image]:
  """A `Face.load` for an image file (decoded fully, clear error on a broken file)."""
  from fkd.data import formats

  return lambda draft=None: formats.open_image(path, name, draft)


def image_size(path: pathlib.Path, name: str) -> tuple[int, int]:
  """(width, height) from the image header (upright), with a clear error for a non-image."""
  from fkd.data import formats

  return formats.image_size(path, name)


def missing_list(names, limit: int = 8) -> str:
  """'a, b, c, … (+N more)' for diagnostics."""
  names = sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', n)])
  more = f', … (+{len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def decode_image(data: bytes) -> np.ndarray:
  """Decodes a stored `image` feature to uint8 (H, W, 3) (`formats.open_image`, the one decoder)."""
  from fkd.data import formats

  return np.asarray(formats.open_image(data))
