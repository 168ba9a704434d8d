"""Builds a real dataset from its manual download into a TFDS data_dir (array_record, no TF).

  python -m fkd.data.build --dataset=300w --manual_dir=M --data_dir=D [--allow_partial]
  python -m fkd.data.build --dataset=wflw --manual_dir=M --data_dir=D
  python -m fkd.data.build --dataset=cofw --manual_dir=M --data_dir=D [--config=cofw68]
  python -m fkd.data.build --dataset=folder --manual_dir=DIR --data_dir=D

`--dataset=folder` is your own landmarks: DIR holds a dataset.json (fkd/data/folder.py).

`--dataset` takes the names of `fkd.data.datasets.DATASETS` (300w, wflw, cofw, cofw68, folder). The
layout each one expects is printed by `--help_layout`. `--crop_size` other than 224 builds a
separate config named `<config>_<size>px`. Prints the number of faces per split.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import math
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

from fkd.data import datasets
from fkd.errors import FkdError

MANUAL = tuple(k for k, d in datasets.DATASETS.items() if k != 'synthetic')


def builder_class(dataset: str):
  """The builder class of `dataset` (a `fkd.data.datasets` key or a TFDS name)."""
  info = datasets.DATASETS.get(dataset) or datasets.by_tfds_name(dataset)
  if info is None or info.key == 'synthetic':
    raise FkdError(f'--dataset={dataset!r}; expected one of {sorted(MANUAL)}')
  return info.builder_class()


def make_builder(
  dataset: str,
  data_dir: str | None,
  config: str | None = None,
  crop_size: int | None = None,
  allow_partial: bool = False,
  manual_dir: str | None = None,
  **options,
):
  """The TFDS builder of `dataset`; options other than None make a derived config.

  `folder` (your own landmarks) needs `manual_dir`: its config is made from DIR/dataset.json.
  """
  cls = builder_class(dataset)
  name = cls.name
  info = datasets.DATASETS.get(dataset) or datasets.by_tfds_name(dataset)
  if info is not None and info.builder_config:
    config = config or info.builder_config
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  config = config or cls.DEFAULT_BUILDER_CONFIG_NAME
  if config not in configs:
    raise FkdError(f'--config={config!r}; {name} has configs {sorted(configs)}')
  cfg = configs[config]
  if info is not None and info.key == 'folder':
    cfg = _folder_config(cfg, manual_dir)
  changes = {k: v for k, v in options.items() if v is not None}
  if crop_size is not None and crop_size != cfg.crop_size:
    changes['crop_size'] = crop_size
  if changes:
    suffix = f'_{changes["crop_size"]}px' if 'crop_size' in changes else ''
    extra = '_'.join(f'{k}-{v}' for k, v in sorted(changes.items()) if k != 'crop_size')
    desc = ', '.join(f'{k}={v}' for k, v in sorted(changes.items()))
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + suffix + (f'_{extra}' if extra else ''),
      description=f'{cfg.name} with {desc}',
      **changes,
    )
  return cls(config=cfg, data_dir=data_dir, file_format='array_record', allow_partial=allow_partial)


def _folder_config(cfg, manual_dir: str | None):
  """The config of the folder dataset in `manual_dir` (validates its dataset.json)."""
  import json

  from fkd.data import folder

  if not manual_dir:
    raise FkdError(
      'the folder dataset needs its folder: --manual_dir=DIR (fkd.main: '
      '--config.data.manual_dir=DIR)'
    )
  if not os.path.isdir(manual_dir):
    raise FkdError(f'--manual_dir={manual_dir} is not a directory')
  spec = folder.read_spec(manual_dir)
  return dataclasses.replace(
    cfg,
    name=folder.config_name(manual_dir),
    description=f'landmarks_folder of {os.path.abspath(manual_dir)}',
    num_landmarks=spec.num_landmarks,
    spec=json.dumps(spec.to_json()),
  )


@contextlib.contextmanager
def _exclusive(directory: str) -> Iterator[None]:
  """An advisory lock (`flock`) on `directory`, or on its nearest existing ancestor; the kernel
  releases it when the process ends, however it ends."""
  probe = os.path.abspath(directory)
  while not os.path.isdir(probe):
    probe = os.path.dirname(probe)
  fd = os.open(probe, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def prepare(builder: Any, **kwargs: Any) -> None:
  """`builder.download_and_prepare(**kwargs)`, one build of a data_dir at a time.

  Under the lock no other build runs, so TFDS `incomplete.*` directories left in the dataset's
  folder are from builds that were killed: they are removed first (a killed build would otherwise
  leave them behind forever).
  """
  with _exclusive(os.fspath(builder.data_dir_root)):
    if builder.is_prepared():  # built by another process while this one waited
      return
    config_dir = os.path.dirname(os.fspath(builder.data_dir))
    if os.path.isdir(config_dir):
      for name in os.listdir(config_dir):
        if name.startswith('incomplete.'):
          print(f'fkd: removing the abandoned build {os.path.join(config_dir, name)}', flush=True)
          shutil.rmtree(os.path.join(config_dir, name), ignore_errors=True)
    builder.download_and_prepare(**kwargs)


def build(dataset: str, manual_dir: str, data_dir: str | None, **kwargs) -> dict[str, int]:
  """Builds (or reuses) the dataset; returns the number of faces per split."""
  import tensorflow_datasets as tfds

  if not os.path.isdir(manual_dir):
    raise FkdError(f'--manual_dir={manual_dir} is not a directory')
  if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise FkdError(f'--data_dir={data_dir} is a file, not a folder')
  builder = make_builder(dataset, data_dir, manual_dir=manual_dir, **kwargs)
  if builder.is_prepared():
    print(f'{builder.info.full_name} is already built in {builder.data_dir}')
  else:
    prepare(builder, download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  counts = {s: int(v.num_examples) for s, v in builder.info.splits.items()}
  print(f'{builder.info.full_name} in {builder.data_dir}:')
  for split, n in counts.items():
    print(f'  {split:14s} {n:6d}')
  return counts


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # fkd's one-line usage error, exit 2 (argparse: usage + line)
    print(f'fkd: error: {message} (see --help)', file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
  """The command line; returns the exit code (`fkd.cli.report`: 0, 2 user error, 130, 1 bug)."""
  from fkd import cli

  p = _Parser(
    prog='python -m fkd.data.build',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--dataset', required=True, help='300w, wflw, cofw, cofw68 or folder')
  p.add_argument('--manual_dir', help='the folder with the manual download')
  p.add_argument('--data_dir', default=None, help="TFDS data_dir (default: TFDS's)")
  p.add_argument(
    '--config',
    default=None,
    help='builder config (300w: default or context; cofw: default or cofw68)',
  )
  p.add_argument('--crop_size', type=int, default=None, help='face crop size (default 224)')
  p.add_argument('--image_format', choices=('jpeg', 'png'), default=None)
  p.add_argument('--asm_fit_set', choices=('augmented', 'plain_plus_flips', 'plain'), default=None)
  p.add_argument(
    '--allow_partial',
    action='store_true',
    help='build whatever official files are present; leave out empty splits',
  )
  p.add_argument(
    '--max_megapixels',
    type=float,
    default=None,
    help='decode images up to this many megapixels (default 179: larger ones are refused as '
    'possible decompression bombs)',
  )
  p.add_argument('--help_layout', action='store_true', help='print the expected layout')
  args = p.parse_args(argv)
  try:
    if args.help_layout:
      print(builder_class(args.dataset).MANUAL_DOWNLOAD_INSTRUCTIONS)
      return 0
    if not args.manual_dir:
      p.error('--manual_dir is required')
    if args.crop_size is not None and not 8 <= args.crop_size <= 2048:
      p.error(f'--crop_size must be an integer in [8, 2048] (pixels), got {args.crop_size}')
    mp = args.max_megapixels
    if mp is not None and not (math.isfinite(mp) and 1 <= mp <= 10_000):
      p.error(f'--max_megapixels must be a number in [1, 10000], got {mp}')
    from fkd.data import formats

    with formats.max_pixels(round(mp * 1e6) if mp else None):
      build(
        args.dataset,
        args.manual_dir,
        args.data_dir,
        config=args.config,
        crop_size=args.crop_size,
        allow_partial=args.allow_partial,
        image_format=args.image_format,
        asm_fit_set=args.asm_fit_set,
      )
  except SystemExit:
    raise
  except BaseException as e:  # noqa: BLE001  (one exit convention for every tool)
    return cli.report(e)
  return 0


if __name__ == '__main__':
  sys.exit(main())
