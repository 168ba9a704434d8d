"""fkd.infra.files: whole files or the old file, never half a file, and no temporary files left."""

import os

import pytest

from fkd.infra import files


def test_atomic_write_text_and_bytes(tmp_path):
  path = tmp_path / 'record.json'
  files.atomic_write(path, 'première\n')
  assert path.read_bytes() == 'première\n'.encode()
  files.atomic_write(str(path), b'\x00\x01')
  assert path.read_bytes() == b'\x00\x01'
  assert os.listdir(tmp_path) == ['record.json']


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'artifact.bin'
  path.write_bytes(b'old')
  with pytest.raises(TypeError):
    files.atomic_write(path, 42)  # not str nor bytes: fails inside the write
  assert path.read_bytes() == b'old'
  with pytest.raises(RuntimeError), files.replacing(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(b'half')
    raise RuntimeError('killed mid-write')
  assert path.read_bytes() == b'old'
  assert os.listdir(tmp_path) == ['artifact.bin']


def test_replacing_renames_what_the_block_wrote(tmp_path):
  path = tmp_path / 'lib.so'
  with files.replacing(path) as tmp:
    assert os.path.dirname(tmp) == str(tmp_path)  # same folder: the rename stays on one disk
    assert not os.path.exists(path)
    with open(tmp, 'w') as f:  # e.g. a compiler's -o
      f.write('built')
  assert path.read_text() == 'built'
  assert os.listdir(tmp_path) == ['lib.so']


def test_temporary_names_differ_per_call_and_name_the_process(tmp_path):
  names = {files.temp_name(tmp_path / 'x') for _ in range(50)}
  assert len(names) == 50
  assert all(f'.tmp-{os.getpid()}-' in n for n in names)
