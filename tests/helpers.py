"""Helpers the tests share (not fixtures: those are in conftest.py), kept out of fkd because only
tests use them: readers of reference files fkd itself never reads, and test set-ups.

Importable as `helpers` from every test folder (pytest puts tests/, conftest.py's folder, on
sys.path).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import numpy as np

from fkd.infra import checkpoint

# ---- reference files of ../shared/data ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CsvRow:
  """One row of HRNet's 300W CSV."""

  image_name: str
  scale: float
  center: np.ndarray  # (2,) center_w, center_h
  points: np.ndarray  # (68, 2) raw


def read_hrnet_csv(path: str | os.PathLike, num_points: int = 68) -> list[CsvRow]:
  """Reads HRNet's `face_landmarks_300w_*.csv` (header + 4 + 2N columns)."""
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = next(reader)
    assert header[0] == 'image_name' and len(header) == 4 + 2 * num_points, header[:4]
    rows = []
    for r in reader:
      if r:
        vals = np.asarray([float(v) for v in r[1:]], np.float64)
        rows.append(CsvRow(r[0], float(vals[0]), vals[1:3], vals[3:].reshape(num_points, 2)))
  return rows


def read_meanface(path: str | os.PathLike) -> np.ndarray:
  """Reads a PIPNet `meanface.txt` (one line of 2N floats) into (N, 2)."""
  with open(path, encoding='utf-8') as f:
    vals = np.asarray([float(v) for v in f.read().split()], np.float64)
  assert vals.size % 2 == 0, f'{path}: {vals.size} values'
  return vals.reshape(-1, 2)


# ---- videos -----------------------------------------------------------------------------------


def read_frames(source: str | os.PathLike, strict: bool = True) -> Iterator:
  """The `fkd.serve.video.Frame`s of a video file (closing the capture when done)."""
  from fkd.serve import video

  with video.VideoReader(source, strict=strict) as reader:
    yield from reader


# ---- checkpoints ------------------------------------------------------------------------------

# The meta keys fkd wrote before heads (no 'head', 'method').
OLD_KEYS = (
  'stage',
  'model',
  'model_kwargs',
  'num_landmarks',
  'image_size',
  'dataset',
  'total_steps',
)


def old_style_copy(stage_dir: str, dst: str, **old: object) -> dict:
  """The stage's variables under the meta layout fkd wrote before heads (no 'head', 'method')."""
  variables, meta = checkpoint.load_model(stage_dir)
  old_meta = {**{k: meta[k] for k in OLD_KEYS}, **old}
  checkpoint.save_model(dst, variables, old_meta)
  return meta


def flip_averaged(landmarks_of, crops: np.ndarray, perm, size: int) -> np.ndarray:
  """What flip averaging should give, derived without fkd.predict: the model's crop-frame
  landmarks (`landmarks_of`(crops)) of the crops and of their mirrors, the mirrors' taken back
  by hand (point i of the face is point perm[i] of its mirror, at x = size − 1 − x)."""
  crops = np.asarray(crops)
  plain = np.asarray(landmarks_of(crops), np.float64)
  mirror = np.asarray(landmarks_of(np.ascontiguousarray(crops[:, :, ::-1])), np.float64)
  back = np.empty_like(mirror)
  for i, j in enumerate(perm):
    back[:, i, 0] = size - 1 - mirror[:, j, 0]
    back[:, i, 1] = mirror[:, j, 1]
  return (plain + back) / 2


# ---- dataset builders and forced-device subprocesses -------------------------------------------


def examples_by_file(builder, split: str) -> dict[str, dict]:
  """A built TFDS split's examples by their image's file name."""
  src = builder.as_data_source()[split]
  out = {}
  for i in range(len(src)):
    e = src[i]
    name = e['filename']
    out[os.path.basename(name.decode() if isinstance(name, bytes) else name)] = e
  return out


def run_on_cpu_devices(script: str, *args: str, devices: int = 8, timeout: float = 600) -> dict:
  """`python -c script *args` in a process of `devices` forced CPU devices, from the repository;
  its last stdout line, read as JSON (the process must succeed)."""
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  env = {
    **os.environ,
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    'JAX_PLATFORMS': 'cpu',
    'PYTHONPATH': repo,
  }
  done = subprocess.run(
    [sys.executable, '-c', script, *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=repo,
    timeout=timeout,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])
