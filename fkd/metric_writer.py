"""Scalar logging without TensorFlow: JSON lines + TensorBoard event files, and progress bars.

`MetricWriter(logdir).write_scalars(step, {'loss': ..., 'lr': ...})` appends one JSON line to
`logdir/metrics.jsonl` and one `Event` record to `logdir/events.out.tfevents.*`, which TensorBoard
reads (`tensorboard --logdir runs/`). The event file is written by hand: TFRecord framing (length,
masked CRC-32C of the length, payload, masked CRC-32C of the payload) around a minimal protobuf
encoding of `Event{wall_time, step, summary{value{tag, simple_value}}}`. `read_events` parses them
back (and checks every CRC); tests use it, and so can notebooks.

`progress(iterable, total=...)` is a tqdm bar with rate and ETA for long loops; it disables itself
when stderr is not a terminal (logs) unless `FKD_PROGRESS=1`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tqdm

# ---------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), table driven; records are a few hundred bytes.


def _crc_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's CRC: rotate right by 15 and add a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
  length = struct.pack('<Q', len(payload))
  return (length + struct.pack('<I', masked_crc32c(length)) + payload +
          struct.pack('<I', masked_crc32c(payload)))


# ---------------------------------------------------------------------------------------------
# Protobuf wire format: just what tensorflow/core/util/event.proto and summary.proto need.


def _varint(n: int) -> bytes:
  n &= 0xFFFFFFFFFFFFFFFF  # int64 negatives are 10-byte two's complement
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def encode_event(wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """Event{1: wall_time double, 2: step int64, 3: file_version, 5: Summary{1: Value{1: tag,
  2: simple_value float}}}."""
  out = _key(1, 1) + struct.pack('<d', wall_time)
  if step:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    values = b''.join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack('<f', value))
        for tag, value in scalars.items())
    out += _bytes_field(5, values)
  return out


def _fields(data: bytes) -> Iterator[tuple[int, Any]]:
  """(field number, value) pairs of a protobuf message; length-delimited values stay bytes."""
  i = 0
  while i < len(data):
    key, i = _read_varint(data, i)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _read_varint(data, i)
    elif wire == 1:
      value, i = data[i:i + 8], i + 8
    elif wire == 5:
      value, i = data[i:i + 4], i + 4
    elif wire == 2:
      n, i = _read_varint(data, i)
      value, i = data[i:i + n], i + n
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')
    yield field, value


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
  n = shift = 0
  while True:
    b = data[i]
    n |= (b & 0x7F) << shift
    i += 1
    shift += 7
    if not b & 0x80:
      return n, i


def decode_event(data: bytes) -> dict[str, Any]:
  """{'wall_time', 'step', 'file_version'?, 'scalars': {tag: value}} of an encoded Event."""
  event: dict[str, Any] = {'wall_time': 0.0, 'step': 0, 'scalars': {}}
  for field, value in _fields(data):
    if field == 1:
      event['wall_time'] = struct.unpack('<d', value)[0]
    elif field == 2:
      event['step'] = value - (1 << 64) if value >= 1 << 63 else value
    elif field == 3:
      event['file_version'] = value.decode()
    elif field == 5:
      for f, v in _fields(value):
        if f == 1:
          tag, simple = None, None
          for vf, vv in _fields(v):
            if vf == 1:
              tag = vv.decode()
            elif vf == 2:
              simple = struct.unpack('<f', vv)[0]
          if tag is not None and simple is not None:
            event['scalars'][tag] = simple
  return event


def read_records(path: str) -> Iterator[bytes]:
  """Payloads of a TFRecord file, checking both CRCs of every record."""
  with open(path, 'rb') as f:
    data = f.read()
  i = 0
  while i < len(data):
    if i + 12 > len(data):
      raise ValueError(f'{path}: truncated record header at byte {i}')
    header = data[i:i + 8]
    (n,) = struct.unpack('<Q', header)
    (crc,) = struct.unpack('<I', data[i + 8:i + 12])
    if crc != masked_crc32c(header):
      raise ValueError(f'{path}: bad length CRC at byte {i}')
    payload = data[i + 12:i + 12 + n]
    if len(payload) < n or i + 16 + n > len(data):
      raise ValueError(f'{path}: truncated record at byte {i}')
    (crc,) = struct.unpack('<I', data[i + 12 + n:i + 16 + n])
    if crc != masked_crc32c(payload):
      raise ValueError(f'{path}: bad payload CRC at byte {i}')
    yield payload
    i += 16 + n


def read_events(path: str) -> list[dict[str, Any]]:
  """Every event of a tfevents file (the first one carries 'file_version')."""
  return [decode_event(r) for r in read_records(path)]


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} over every tfevents file of a directory, in file order."""
  out: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if 'tfevents' in name:
      for event in read_events(os.path.join(logdir, name)):
        for tag, value in event['scalars'].items():
          out.setdefault(tag, []).append((event['step'], value))
  return out


# ---------------------------------------------------------------------------------------------
# The writer.


class MetricWriter:
  """Appends scalars to `logdir/metrics.jsonl` and to a TensorBoard event file.

  Args:
    logdir: directory for both files (created on first write).
    active: False makes every call a no-op (e.g. `jax.process_index() != 0`).
    jsonl: file name of the JSON-lines log; None writes only the event file.
    flush_secs: flush the event file at most this often (and on `flush`/`close`).
  """

  def __init__(self, logdir: str, active: bool = True, jsonl: str | None = 'metrics.jsonl',
               flush_secs: float = 10.0):
    self.logdir = logdir
    self.active = active
    self.jsonl = jsonl
    self.flush_secs = flush_secs
    self._events = None
    self._last_flush = 0.0

  @property
  def events_path(self) -> str | None:
    return self._events.name if self._events is not None else None

  def _open(self) -> None:
    os.makedirs(self.logdir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.fkd'
    self._events = open(os.path.join(self.logdir, name), 'ab')
    self._events.write(tfrecord(encode_event(time.time(), file_version='brain.Event:2')))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs finite-or-not numeric scalars (numpy / jax scalars are converted with float())."""
    if not self.active or not scalars:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    if self._events is None:
      self._open()
    now = time.time()
    self._events.write(tfrecord(encode_event(now, int(step), values)))
    if self.jsonl:
      with open(os.path.join(self.logdir, self.jsonl), 'a') as f:
        f.write(json.dumps({'step': int(step), **values}) + '\n')
    if now - self._last_flush >= self.flush_secs:
      self.flush()

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()
      self._last_flush = time.time()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


# ---------------------------------------------------------------------------------------------
# Progress bars.


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
             initial: int = 0, unit: str = 'it', enabled: bool = True, **kwargs: Any) -> tqdm.tqdm:
  """A tqdm bar with rate and ETA; off when `enabled` is False or stderr is not a terminal.

  `FKD_PROGRESS=1` forces it on (e.g. in a notebook log), `FKD_PROGRESS=0` off.
  """
  env = os.environ.get('FKD_PROGRESS')
  disable = (not enabled) or env == '0' or (None if env != '1' else False)
  options = {'dynamic_ncols': True, 'mininterval': 1.0, 'leave': False, **kwargs}
  return tqdm.tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, disable=disable,
                   **options)


def write(message: str) -> None:
  """Prints a line (flushed, for logs) without breaking an active progress bar."""
  tqdm.tqdm.write(message)
  sys.stdout.flush()
