"""Writing files safely: atomically, and only over files fkd wrote.

Atomic writes: readers, and processes killed mid-write, never see half a file.

Every file fkd replaces in place (records, results, metrics, artifacts, compiled kernels) is
written to a temporary file in the same folder (so the rename stays on one filesystem), then
renamed over its target. The temporary name carries the pid and a random suffix, so processes
writing the same file at once (hosts of a multi-host run, concurrent first compiles) never write
into each other's temporary file; the last rename wins, with a whole file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from fkd.errors import FkdError

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


def json_object(path: PathLike, first_line: bool = False) -> dict[str, Any] | None:
  """The JSON object a regular file holds (its first line's, for JSON lines); None when `path`
  is absent, a link, not a file, unreadable, not JSON or not an object."""
  if os.path.islink(path) or not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      value = json.loads(f.readline() if first_line else f.read())
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return value if isinstance(value, dict) else None


def check_replaceable(
  path: PathLike,
  ours: Callable[[str], bool],
  writer: str,
  hint: str = 'choose another --output',
  name: str | None = None,
) -> None:
  """An FkdError when `path` exists and `ours` does not know it for a file `writer` wrote: fkd
  replaces its own earlier outputs, never a file of the user's (nor a link: fkd writes none).

  Args:
    path: the file about to be written.
    ours: whether an existing `path` is one of `writer`'s outputs.
    writer: the tool named in the error (`fkd.predict`).
    hint: what to do instead.
    name: how the error names `path` (default: the path).
  """
  path = os.fspath(path)
  if os.path.lexists(path) and (os.path.islink(path) or not ours(path)):
    raise FkdError(f'{name or path} exists and was not written by {writer}: {hint}')
