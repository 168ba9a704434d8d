"""Atomic file writes: readers, and processes killed mid-write, never see half a file.

Every file fkd replaces in place (records, results, metrics, artifacts, compiled kernels) is
written to a temporary file in the same folder (so the rename stays on one filesystem), then
renamed over its target. The temporary name carries the pid and a random suffix, so processes
writing the same file at once (hosts of a multi-host run, concurrent first compiles) never write
into each other's temporary file; the last rename wins, with a whole file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

PathLike = str | os.PathLike


def temp_name(path: PathLike) -> str:
  """A name next to `path` that no other process or call uses."""
  return f'{os.fspath(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}'


@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[str]:
  """Yields a temporary name next to `path` to write (by any means, e.g. a compiler's `-o`);
  renames it to `path` when the block ends, removes it when the block raises."""
  tmp = temp_name(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def atomic_write(path: PathLike, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8) to `path` through a temporary file and a rename."""
  with replacing(path) as tmp, open(tmp, 'wb') as f:
    f.write(data.encode() if isinstance(data, str) else data)
