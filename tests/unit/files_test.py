"""fkd.infra.files: whole files or the old file, never half a file, and no temporary files left."""

import os

import pytest

from fkd.errors import FkdError
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


def test_json_object_only_of_regular_files_holding_an_object(tmp_path):
  (tmp_path / 'a.json').write_text('{"faces": []}')
  (tmp_path / 'lines.jsonl').write_text('{"frame": 0}\n{"frame": 1}\n')
  (tmp_path / 'list.json').write_text('[1, 2]')
  (tmp_path / 'bad.json').write_bytes(b'\xff{')
  (tmp_path / 'link.json').symlink_to(tmp_path / 'a.json')
  assert files.json_object(tmp_path / 'a.json') == {'faces': []}
  assert files.json_object(tmp_path / 'lines.jsonl', first_line=True) == {'frame': 0}
  assert files.json_object(tmp_path / 'lines.jsonl') is None  # two objects: not one JSON value
  for name in ('list.json', 'bad.json', 'link.json', 'absent.json'):
    assert files.json_object(tmp_path / name) is None, name
  assert files.json_object(tmp_path) is None  # a folder


def test_check_replaceable_refuses_what_the_tool_did_not_write(tmp_path):
  ours = lambda path: files.json_object(path) == {'tool': 1}
  files.check_replaceable(tmp_path / 'new.json', ours, 'fkd.tool')  # absent: fine
  (tmp_path / 'old.json').write_text('{"tool": 1}')
  files.check_replaceable(tmp_path / 'old.json', ours, 'fkd.tool')  # its own: fine
  (tmp_path / 'mine.json').write_text('{"mine": 1}')
  with pytest.raises(FkdError, match=r'mine.json exists and was not written by fkd.tool: choose'):
    files.check_replaceable(tmp_path / 'mine.json', ours, 'fkd.tool')
  (tmp_path / 'link.json').symlink_to(tmp_path / 'old.json')  # even to one of its own files
  with pytest.raises(FkdError, match=r'^the link exists and was not written by fkd.tool: go$'):
    files.check_replaceable(tmp_path / 'link.json', lambda p: True, 'fkd.tool', 'go', 'the link')
  (tmp_path / 'dangling.json').symlink_to(tmp_path / 'absent.json')
  with pytest.raises(FkdError, match='dangling.json exists'):
    files.check_replaceable(tmp_path / 'dangling.json', lambda p: True, 'fkd.tool')
