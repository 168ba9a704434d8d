"""Input pipeline: TFDS array_record data source -> in-memory crops -> deterministic batches.

Landmark datasets are small (thousands of crops), so each split is decoded once into NumPy arrays at
the model resolution. Training batches are a pure function of (seed, step): a permutation per epoch,
and per-sample augmentation seeded by the step. Resuming at step s therefore replays exactly the
batches an uninterrupted run would have seen, with no iterator state to checkpoint.

Several hosts: the train split is cut into `config.data.num_shards` equal contiguous shards (0 = one
per process, like grain's ShardByJaxProcess / `tfds.split_for_jax_process`) and each process decodes
only its own shards. Every global batch takes batch_size / num_shards examples from each shard (a
permutation per epoch within the shard), in shard order, so a process's slice of the global batch is
exactly what its shards give; one process with the same num_shards sees the same global batches.

Why not grain / tf.data: the whole train split fits in memory (300W at 224² is 0.5 GB, WFLW 1.1 GB),
and a pure function of (seed, step) makes resumption and multi-host sharding exact by construction.
On a TPU / GPU (`config.data.augment_on` 'auto' or 'device') the host only gathers the stored uint8
crops of a batch and the augmentation runs on the devices (`fkd.data.device_augment`); on CPU
('auto') and with 'host' the
per-image KD augmentation runs here on `config.data.num_workers` threads (PIL and NumPy release the
GIL) while the device computes the previous step. benchmarks/input_pipeline.py measures both.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fkd.data import asm, crops, datasets, formats, schemes
from fkd.errors import FkdError


@dataclasses.dataclass
class Split:
  """One split in memory. Landmarks are crop-frame pixels at the model resolution."""

  images: np.ndarray  # (M, S, S, 3) uint8
  landmarks: np.ndarray  # (M, N, 2) float32
  soft_landmarks: np.ndarray | None  # (M, N, 2) float32, ASM targets of the plain crops
  names: list[str]
  attributes: np.ndarray | None = None  # (M, 6) bool WFLW attribute flags, where the data has them
  # (M, N) bool: the points with a position (a folder dataset's COCO v > 0); None: all of them.
  labelled: np.ndarray | None = None
  # The shards of the split this process holds (train split; see the module docstring).
  shards: range = range(1)
  num_shards: int = 1
  # (M, K, K, 3) uint8 context images (a builder's `context`, config.data.augment_fill='context'):
  # the crop's surroundings, K = S (1 + 2 context); context pixel = crop pixel + context x S.
  context: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.images)


@dataclasses.dataclass
class Data:
  """What the trainer needs: splits plus dataset metadata."""

  name: str
  splits: dict[str, Split]
  image_size: int
  num_landmarks: int
  flip_permutation: np.ndarray
  pca: asm.PCAModel | None  # in this resolution's pixel frame
  scheme: str | None = None  # '300w' | 'wflw' | 'cofw': the KD augmentation's per-dataset constants
  can_flip: bool = True  # False: the dataset has no flip permutation (a folder dataset's null)
  # The requested eval splits that were built (config.data.eval_splits minus `dropped`), and the
  # requested ones a partial build left out, with the reason (see `eval_splits`).
  eval_splits: tuple[str, ...] = ()
  dropped: dict[str, str] = dataclasses.field(default_factory=dict)
  # Dataset facts the checkpoints carry for prediction: how the crops were cut around the landmark
  # box, and the point groups to draw (None / (): unknown dataset, points only).
  crop_margin: crops.CropMargin | None = None
  contours: tuple[tuple[int, int, bool], ...] = ()


def _builder(config: Any):
  import tensorflow_datasets as tfds

  datasets.register_builders()
  data_dir = config.data.data_dir
  facts = datasets.by_tfds_name(config.data.name)
  if facts is not None and facts.key == 'folder':  # one TFDS config per folder (dataset.json)
    from fkd.data import build

    return build.make_builder('folder', data_dir, manual_dir=config.data.manual_dir)
  try:
    return tfds.builder(config.data.name, data_dir=data_dir, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FkdError(f'config.data.name: no dataset builder named {config.data.name!r}') from e


def prepare(config: Any) -> Any:
  """Returns a prepared TFDS builder, building the dataset first when that needs no download.

  The embedded `synthetic_faces` builds itself; real datasets build from `config.data.manual_dir`.
  """
  import tensorflow_datasets as tfds

  from fkd.data import build

  builder = check_prepared_or_buildable(config)
  if builder.is_prepared():
    return builder
  manual_dir = config.data.manual_dir
  kwargs = {}
  if manual_dir:
    kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if hasattr(builder, 'allow_partial'):  # the manual-download builders (tfds_builders/*)
    builder.allow_partial = bool(getattr(config.data, 'allow_partial', False))
  print(f'Building dataset {config.data.name} in {builder.data_dir_root} (once) ...', flush=True)
  build.prepare(builder, **kwargs)  # one build at a time; abandoned builds removed
  return builder


def check_prepared_or_buildable(config: Any) -> Any:
  """Validates the data config before anything is written (fails fast, one-line errors)."""
  builder = _builder(config)
  if builder.is_prepared():
    return builder
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None) and not config.data.manual_dir:
    raise FkdError(
      f'dataset {config.data.name!r} is not built in {builder.data_dir_root} and '
      'config.data.manual_dir is not set: download it by hand (see README) and pass '
      '--config.data.manual_dir=<folder>'
    )
  if config.data.manual_dir and not os.path.isdir(config.data.manual_dir):
    raise FkdError(f'config.data.manual_dir {config.data.manual_dir} is not a directory')
  return builder


def _decode(data: bytes | np.ndarray) -> Image.Image:
  if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
    return Image.fromarray(data)
  return formats.open_image(bytes(data))


def _scale_points(points: np.ndarray, s: float) -> np.ndarray:
  """Resampling by s maps x -> s (x + 1/2) - 1/2 (method.md §1.2)."""
  return (s * (points + 0.5) - 0.5).astype(np.float32)


def context_size(size: int, context: float) -> int:
  """Side of the context images at model resolution `size`: size x (1 + 2 context), whole."""
  side = crops.context_side(size, context)
  if side is None:
    raise FkdError(
      f"config.data.image_size={size}: the dataset's context images reach {context} x the crop "
      f'past each side, so image_size x {1 + 2 * context:g} must be a whole number of pixels'
    )
  return side


def load_split(
  source: Any,
  size: int,
  soft_key: str | None,
  limit: int = -1,
  records: range | None = None,
  context: float = 0.0,
) -> Split:
  """Decodes a TFDS data source of square face crops into memory at size x size.

  `records`: which records to read (default: all, or the first `limit`). `context` > 0: also the
  examples' `context_image` (the builder's `context`), at `context_size(size, context)`.
  """
  if records is None:
    records = range(len(source) if limit <= 0 else min(limit, len(source)))
  images = np.empty((len(records), size, size, 3), np.uint8)
  side = context_size(size, context) if context else 0
  context_images = np.empty((len(records), side, side, 3), np.uint8) if context else None
  landmarks, soft, names, attributes, labelled = [], [], [], [], []
  for i, r in enumerate(records):
    ex = source[r]
    img = _decode(ex['image'])
    points = np.asarray(ex['landmarks'], np.float32)
    if img.width != img.height:
      raise FkdError(f'expected square face crops, got {img.size} in {ex.get("filename")}')
    s = size / img.width
    if img.size != (size, size):
      img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    transform = lambda p, s=s: _scale_points(p, s)
    images[i] = np.asarray(img)
    if context_images is not None:
      ctx = _decode(ex['context_image'])
      if ctx.size != (side, side):
        ctx = ctx.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
      context_images[i] = np.asarray(ctx)
    landmarks.append(transform(points))
    if soft_key is not None:
      soft.append(transform(np.asarray(ex['soft_landmarks'][soft_key], np.float32)))
    if 'attributes' in ex:
      attributes.append(np.asarray(ex['attributes'], bool))
    if 'visibility' in ex:
      labelled.append(np.asarray(ex['visibility']) > 0)
    name = ex.get('filename', str(r))
    names.append(name.decode() if isinstance(name, bytes) else str(name))
  return Split(
    images,
    np.stack(landmarks),
    np.stack(soft) if soft else None,
    names,
    np.stack(attributes) if attributes else None,
    labelled=np.stack(labelled) if labelled and not np.all(labelled) else None,
    context=context_images,
  )


def _affine_pca(pca: asm.PCAModel, a: float, c: float) -> asm.PCAModel:
  """The same shape model in coordinates a·x + c (a > 0): μ' = aμ + c, λ' = a²λ, same V_k."""
  return dataclasses.replace(pca, mean=a * pca.mean + c, eigenvalues=a * a * pca.eigenvalues)


def shard_records(
  num_records: int, num_shards: int, process_index: int, process_count: int
) -> range:
  """The records a process reads: its num_shards / process_count of num_shards equal contiguous
  shards (the last num_records % num_shards records are dropped)."""
  if num_shards % process_count:
    raise FkdError(
      f'config.data.num_shards={num_shards} must be a multiple of the {process_count} processes'
    )
  size = num_records // num_shards
  if size == 0:
    raise FkdError(
      f'the train split has {num_records} examples, fewer than the {num_shards} '
      'shards (config.data.num_shards)'
    )
  per_process = num_shards // process_count
  return range(process_index * per_process * size, (process_index + 1) * per_process * size)


def load(
  config: Any,
  splits: tuple[str, ...] | None = None,
  process_index: int = 0,
  process_count: int = 1,
  soft_targets: float | None = None,
) -> Data:
  """Loads this process's shards of the train split and the whole eval splits into memory.

  `soft_targets`: the ASM variance fraction of the soft landmarks (method.md §2.3) that training
  batches carry, for a method whose stages train on them (`Method.soft_targets`); None: none.
  The train split carries its context images when config.data.augment_fill is 'context'.
  """
  builder = prepare(config)
  meta = builder.info.metadata or {}
  context = 0.0
  if config.data.get('augment_fill', 'zeros') == 'context':
    context = float(meta.get('context') or 0.0)
    if context <= 0:
      raise FkdError(
        f"config.data.augment_fill='context' needs a dataset built with context images (e.g. "
        f"config.data.name='ibug_300w/context'); {config.data.name!r} has none"
      )
  if 'nme_normalizer' in meta:
    resolve_from_dataset(config, meta)
  size = config.data.image_size
  native = int(meta.get('image_size', size))
  # Soft landmarks (ASM, method.md §2.3) only for methods that ask for them.
  soft_key = f'p{round(100 * soft_targets)}' if soft_targets is not None else None
  pca = None
  if 'pca' in meta and soft_key is not None:
    if soft_key not in meta['pca']:
      raise FkdError(
        f'soft targets at ASM fraction {soft_targets}: the dataset stores ASM fractions '
        f'{sorted(meta["pca"])}'
      )
    # The PCA lives in the builder's pixel frame; x -> s(x + 1/2) - 1/2 is isotropic, so the ASM
    # operator carries over exactly (method.md §2.3 equivariance).
    pca = _affine_pca(
      asm.PCAModel.from_dict(meta['pca'][soft_key]), size / native, 0.5 * size / native - 0.5
    )
  sources = builder.as_data_source()
  if splits is None:
    kept, dropped = eval_splits(config, sources, meta)
    wanted = (config.data.train_split, *kept)
  else:
    kept, dropped, wanted = tuple(x for x in splits if x != config.data.train_split), {}, splits
  out = {}
  for name in dict.fromkeys(wanted):
    if name not in sources:
      raise FkdError(
        f'dataset {config.data.name!r} has no split {name!r}; it has {sorted(sources)}'
      )
    is_train = name == config.data.train_split
    limit = config.data.max_train_examples if is_train else config.data.max_eval_examples
    if not is_train:
      out[name] = load_split(sources[name], size, None, limit)
      continue
    num_shards = config.data.get('num_shards', 0) or process_count
    n = len(sources[name]) if limit <= 0 else min(limit, len(sources[name]))
    records = shard_records(n, num_shards, process_index, process_count)
    per_process = num_shards // process_count
    if process_count > 1:
      print(
        f'[data] process {process_index} of {process_count} reads train records '
        f'[{records.start}, {records.stop}) of {n} ({per_process} of {num_shards} shards)',
        flush=True,
      )
    out[name] = dataclasses.replace(
      load_split(sources[name], size, soft_key, records=records, context=context),
      shards=range(process_index * per_process, (process_index + 1) * per_process),
      num_shards=num_shards,
    )
  perm = meta.get('flip_permutation', None)
  can_flip = perm is not None or 'flip_permutation' not in meta
  perm = np.asarray(perm if perm is not None else np.arange(config.data.num_landmarks))
  facts = datasets.by_tfds_name(config.data.name)
  scheme = facts.scheme if facts else None  # the augmentation constants of fkd.data.augment
  scheme = meta.get('augment') or scheme
  crop_margin = facts.crop_margin if facts else None
  if 'crop_margin' in meta:  # a folder dataset's own
    crop_margin = crops.CropMargin.from_folder(meta['crop_margin'])
  return Data(
    config.data.name,
    out,
    size,
    config.data.num_landmarks,
    perm,
    pca,
    scheme,
    can_flip,
    tuple(kept),
    dropped,
    crop_margin,
    facts.contours if facts else (),
  )


def eval_splits(config: Any, sources: Any, meta: Any) -> tuple[tuple[str, ...], dict[str, str]]:
  """The requested eval splits that were built, and {split: reason} for those left out.

  A split the dataset defines (its builder's official counts) but that a partial build
  (`allow_partial`) left out because the manual download held none of its faces is dropped with a
  printed note; a split the dataset never has, or a missing split of a complete build, is an
  error. At least one eval split must remain.
  """
  official = dict(meta.get('official_counts') or {})
  kept, dropped = [], {}
  for name in dict.fromkeys(config.data.eval_splits):
    if name in sources:
      kept.append(name)
    elif name in official and meta.get('partial'):
      dropped[name] = (
        f'the manual download holds none of its {official[name]} faces (built with allow_partial)'
      )
    else:
      raise FkdError(
        f'config.data.eval_splits: dataset {config.data.name!r} has no split '
        f'{name!r}; it has {sorted(sources)}'
      )
  for name, why in dropped.items():
    print(f'[data] eval split {name!r} dropped: {why}', flush=True)
  if not kept and config.data.eval_splits:
    raise FkdError(
      f'config.data.eval_splits: none of {list(config.data.eval_splits)} was built '
      f'({"; ".join(f"{k}: {v}" for k, v in dropped.items())}); the dataset has '
      f'{sorted(sources)}'
    )
  return tuple(kept), dropped


def resolve_from_dataset(config: Any, meta: dict[str, Any]) -> None:
  """Fills the config fields a folder dataset defines (its dataset.json, in the metadata).

  `data.num_landmarks` 0 -> N; `data.eval_splits` () -> every split but the train split, in the
  dataset's order; `eval.norm` 'dataset' (or 'inter_ocular' / 'inter_pupil', which a folder
  dataset does not define apart) -> its `nme_normalizer` as JSON ('[36, 45]').
  """
  import json

  n = int(meta['num_landmarks'])
  if config.data.num_landmarks <= 0:
    config.data.num_landmarks = n
  elif config.data.num_landmarks != n:
    raise FkdError(
      f'config.data.num_landmarks={config.data.num_landmarks}; the dataset '
      f'{config.data.name!r} has {n} (leave it 0 to take it from the dataset)'
    )
  if not config.data.eval_splits:
    splits = meta.get('splits') or list(meta.get('counts', {}))
    config.data.eval_splits = tuple(s for s in splits if s != config.data.train_split)
  if config.eval.norm in ('dataset', 'inter_ocular', 'inter_pupil'):
    config.eval.norm = json.dumps(meta['nme_normalizer'])


# ---------------------------------------------------------------------------------------------
# Training batches.


def _flip(images: np.ndarray, points: np.ndarray, perm: np.ndarray, size: int):
  """Horizontal flip of a batch: x -> S − 1 − x and re-index with the dataset's permutation."""
  return images[:, :, ::-1], schemes.flip_points(points, perm, size)


LABELLED = 'labelled'  # the batch key of the per-point mask (float32 (B, N), 1 = labelled)
# The batch key of the context images a device-augmented batch carries (augment_fill 'context').
CONTEXT = 'context'


def _online_margin(data: Data) -> float:
  """The online re-crop margin, host and device alike: method.md's 3 px at 224², scaled to the
  model resolution."""
  return 3.0 * data.image_size / 224.0


def _augment_kd(
  data: Data,
  split: Split,
  idx: np.ndarray,
  images: np.ndarray,
  points: np.ndarray,
  rngs: list[np.random.Generator],
  box_noise: Sequence[float] = (),
  labelled: np.ndarray | None = None,
  fill: str = 'zeros',
  context: np.ndarray | None = None,
):
  """The online KD-Loss augmentation (method.md §2.2) of every image of a batch.

  `labelled` (B, N): the per-point mask, returned re-indexed where a copy was flipped (else
  None). The crop box needs no mask: an unlabelled point's stand-in is the mean of the labelled
  points, inside their extent, under every affine map. `fill`: config.data.augment_fill
  (`augment.FILLS`); `context` (B, K, K, 3): the batch's context images (fill 'context').

  The offline original stores F copies per face: the plain crop and F − 1 augmented ones (F from
  `augment.num_copies`, WFLW adds copies per attribute flag). Online, each draw is the plain crop
  with probability 1/F, so the mix of plain and augmented faces is the same. The re-crop margin is
  method.md's 3 px at 224², scaled to the model resolution.
  """
  from fkd.data import augment

  out_images, out_points = np.empty_like(images), np.empty_like(points)
  out_labelled = None if labelled is None else np.array(labelled, copy=True)
  margin = _online_margin(data)

  def one(i: int) -> None:
    attrs = split.attributes[idx[i]] if split.attributes is not None else None
    copies = augment.num_copies(data.scheme, attrs) if data.scheme else 1
    out_images[i], out_points[i], flipped = augment.augment_kd_flipped(
      images[i],
      points[i],
      rngs[i],
      data.flip_permutation,
      margin=margin,
      plain_prob=1.0 / copies,
      flip_prob=0.5 if data.can_flip else 0.0,
      box_noise=box_noise,
      fill=fill,
      context=None if context is None else context[i],
    )
    if flipped and out_labelled is not None:
      out_labelled[i] = schemes.flip_mask(labelled[i], data.flip_permutation)

  if _POOL.workers > 1 and len(idx) > 1:
    list(_POOL.get().map(one, range(len(idx))))
  else:
    for i in range(len(idx)):
      one(i)
  return out_images, out_points, out_labelled


class _Pool:
  """Threads for the per-image augmentation (PIL and NumPy release the GIL); results don't depend
  on the number of workers, every image has its own random stream."""

  def __init__(self) -> None:
    self.workers = 1
    self._pool = None

  def set(self, workers: int) -> None:
    workers = max(1, int(workers))
    if workers != self.workers and self._pool is not None:
      self._pool.shutdown()
      self._pool = None
    self.workers = workers

  def get(self) -> concurrent.futures.ThreadPoolExecutor:
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, 'fkd-augment')
    return self._pool


_POOL = _Pool()


def set_workers(workers: int) -> None:
  """Number of threads that augment a batch (config.data.num_workers; 0 = os.cpu_count())."""
  _POOL.set(workers or os.cpu_count() or 1)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
  if num_train < batch_size:
    raise FkdError(f'the train split has {num_train} examples, fewer than batch size {batch_size}')
  return num_train // batch_size


def num_examples(split: Split) -> int:
  """Examples of the whole (sharded) split that training draws from."""
  return len(split) // len(split.shards) * split.num_shards


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
  """(kept, held out): `fraction` of the faces of each shard of `split` (at least one), chosen
  with `seed` and held out, in their order; every shard keeps the same size."""
  size = len(split) // len(split.shards)
  count = max(1, round(fraction * size))
  if count >= size:
    raise FkdError(f'a train shard of {size} faces is too small to hold faces out for validation')
  held = []
  for k, shard in enumerate(split.shards):
    chosen = np.random.default_rng([seed, shard]).permutation(size)[:count]
    held.append(k * size + np.sort(chosen))
  held_idx = np.concatenate(held)
  kept_idx = np.setdiff1d(np.arange(len(split)), held_idx)

  return take(split, kept_idx), take(split, held_idx, shards=range(1), num_shards=1)


def take(split: Split, idx: np.ndarray, **kw: Any) -> Split:
  """The faces `idx` of `split`, every per-face array with them (`kw`: other fields)."""
  pick = lambda a: None if a is None else a[idx]
  return dataclasses.replace(
    split,
    images=split.images[idx],
    landmarks=split.landmarks[idx],
    soft_landmarks=pick(split.soft_landmarks),
    names=[split.names[i] for i in idx],
    attributes=pick(split.attributes),
    labelled=pick(split.labelled),
    context=pick(split.context),
    **kw,
  )


def _batch_indices(split: Split, batch_size: int, seed: int, epoch: int, offset: int) -> np.ndarray:
  """Indices into `split` of this process's slice of a global batch: batch_size / num_shards from
  a per-epoch permutation of each of its shards, in shard order."""
  if batch_size % split.num_shards:
    raise FkdError(
      f'batch size {batch_size} is not divisible by the {split.num_shards} data '
      'shards (config.data.num_shards)'
    )
  size = len(split) // len(split.shards)
  per_shard = batch_size // split.num_shards
  idx = []
  for k, shard in enumerate(split.shards):
    rng = np.random.default_rng([seed, epoch] if split.num_shards == 1 else [seed, epoch, shard])
    idx.append(k * size + rng.permutation(size)[offset * per_shard : (offset + 1) * per_shard])
  return np.concatenate(idx)


def train_batch(
  data: Data,
  split: str,
  batch_size: int,
  step: int,
  seed: int,
  augment: str,
  process_index: int = 0,
  process_count: int = 1,
  box_noise: Sequence[float] = (),
  augment_on: str = 'host',
  augment_fill: str = 'zeros',
) -> dict[str, np.ndarray]:
  """This process's share of global batch `step`, a pure function of (seed, step).

  `box_noise` (config.data.box_noise, `augment='kd'` only): the box jitter of `augment.augment_kd`.
  `augment_fill` (config.data.augment_fill, `augment.FILLS`; not 'zeros' with `augment='kd'`
  only): what an augmented crop shows past the stored crop; 'context' samples the whole crop from
  the split's context images (`Split.context`), which a device-augmented batch carries as
  `CONTEXT`.

  Returns uint8 'image' and crop-pixel 'landmarks' (ground truth) and 'soft_landmarks' (the ASM
  operator applied to the augmented ground truth, method.md §2.3, from the labelled points only
  when some are not: `asm.asm_project(..., labelled=)`); the trainer makes the targets.
  When the split has unlabelled points (`Split.labelled`), every batch also holds `LABELLED`:
  float32 (B, N), 1 for a labelled point and 0 for one without a position, re-indexed with the
  points by every flip (`schemes.flip_mask`); the losses leave the 0 points out. Splits without
  it (the paper datasets) give batches without the key, so their programs are unchanged.

  `augment_on='device'` (config.data.augment_on): the stored crops and landmarks as they are,
  with what `fkd.data.device_augment.augment_batch` needs to augment them on the device (and
  compute the soft landmarks there): 'plain_prob' (1/F per face, `augment.num_copies`) and
  'index' (the face's place in the global batch, which keys its randomness); `LABELLED` as it is
  stored (the device flip re-indexes it).
  """
  box_noise = tuple(float(v) for v in box_noise)
  if box_noise and (augment != 'kd' or len(box_noise) != 4 or min(box_noise) < 0):
    raise FkdError(
      "config.data.box_noise needs config.data.augment='kd' and 4 standard deviations >= 0 "
      f'(dx, dy, log sx, log sy), got {box_noise} with augment {augment!r}'
    )
  from fkd.data import augment as augment_lib

  augment_lib.check_fill(augment_fill)
  if augment_fill != 'zeros' and augment != 'kd':
    raise FkdError(
      f"config.data.augment_fill={augment_fill!r} needs config.data.augment='kd' (only its warp "
      f'reaches past the stored crop), got augment {augment!r}'
    )
  train = data.splits[split]
  per_epoch = steps_per_epoch(num_examples(train), batch_size)
  epoch, offset = divmod(step, per_epoch)
  idx = _batch_indices(train, batch_size, seed, epoch, offset)
  local = batch_size // process_count
  if len(idx) != local:
    raise FkdError(
      f'{split} holds {len(train.shards)} of {train.num_shards} shards, not the '
      f'share of process {process_index} of {process_count}'
    )
  images = train.images[idx]
  points = train.landmarks[idx]
  labelled = None if train.labelled is None else train.labelled[idx].astype(np.float32)
  context = None
  if augment_fill == 'context':
    if train.context is None:
      raise FkdError(
        f"config.data.augment_fill='context': split {split!r} was loaded without context images"
      )
    context = train.context[idx]
  if augment_on == 'device':
    if augment not in ('kd', 'flip', 'none'):
      raise FkdError(f"config.data.augment must be 'kd', 'flip' or 'none', got {augment!r}")
    batch = _device_inputs(data, train, idx, images, points, augment, process_index * local)
    if labelled is not None:
      batch[LABELLED] = labelled
    if context is not None:
      batch[CONTEXT] = context
    return batch
  if augment_on != 'host':
    raise FkdError(f"config.data.augment_on must be 'device' or 'host', got {augment_on!r}")
  if augment == 'flip':
    flip = np.random.default_rng([seed, epoch, offset, 1]).random(batch_size) < 0.5
    flip = flip[process_index * local : (process_index + 1) * local] & data.can_flip
    if flip.any():
      images = images.copy()
      points = points.copy()
      images[flip], points[flip] = _flip(
        images[flip], points[flip], data.flip_permutation, data.image_size
      )
      if labelled is not None:
        labelled[flip] = schemes.flip_mask(labelled[flip], data.flip_permutation)
  elif augment == 'kd':
    first = process_index * local
    rngs = [np.random.default_rng([seed, epoch, offset, first + i, 2]) for i in range(len(idx))]
    images, points, labelled = _augment_kd(
      data, train, idx, images, points, rngs, box_noise, labelled, augment_fill, context
    )
  elif augment != 'none':
    raise FkdError(f"config.data.augment must be 'kd', 'flip' or 'none', got {augment!r}")
  batch = {'image': images, 'landmarks': points}
  if labelled is not None:
    batch[LABELLED] = labelled
  if data.pca is not None:  # unlabelled points: projected from the labelled ones only
    mask = None if labelled is None else labelled > 0
    batch['soft_landmarks'] = asm.asm_project(data.pca, points, labelled=mask).astype(np.float32)
  elif train.soft_landmarks is not None and augment == 'none':
    batch['soft_landmarks'] = train.soft_landmarks[idx]
  return batch


def _device_inputs(
  data: Data,
  train: Split,
  idx: np.ndarray,
  images: np.ndarray,
  points: np.ndarray,
  augment: str,
  first: int,
) -> dict[str, np.ndarray]:
  """The host's part of a device-augmented batch: gathered crops, landmarks, per-face 1/F and
  global batch index (see `train_batch`)."""
  from fkd.data import augment as augment_lib

  if augment == 'kd' and data.scheme:
    attrs = train.attributes[idx] if train.attributes is not None else None
    plain_prob = 1.0 / augment_lib.num_copies_each(data.scheme, attrs, len(idx))
  else:  # no dataset constants: every face plain (as the host path)
    plain_prob = (
      np.ones(len(idx), np.float32) if augment == 'kd' else np.zeros(len(idx), np.float32)
    )
  batch = {
    'image': images,
    'landmarks': points,
    'plain_prob': plain_prob.astype(np.float32),
    'index': np.arange(first, first + len(idx), dtype=np.int32),
  }
  if data.pca is None and train.soft_landmarks is not None and augment == 'none':
    batch['soft_landmarks'] = train.soft_landmarks[idx]
  return batch


def device_augmentation(
  data: Data, augment: str, box_noise: Sequence[float] = (), augment_fill: str = 'zeros'
) -> Any:
  """The `fkd.data.device_augment.Augmentation` of `train_batch(augment_on='device')`'s batches:
  the host path's constants (the 3 px re-crop margin at 224², scaled to the resolution)."""
  from fkd.data import device_augment

  return device_augment.Augmentation(
    augment,
    tuple(int(i) for i in data.flip_permutation),
    can_flip=bool(data.can_flip),
    margin=_online_margin(data),
    box_noise=tuple(float(v) for v in box_noise),
    fill=augment_fill,
  )


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Fixed-size batches over a split (the last one zero-padded) and how many rows are real."""
  for start in range(0, len(split), batch_size):
    images = split.images[start : start + batch_size]
    n = len(images)
    if n < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), np.uint8)])
    yield images, n
