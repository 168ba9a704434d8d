"""fkd.serve.export's output rules without a model: what may be replaced, and the record's name."""

import json

import pytest

from fkd.errors import FkdError
from fkd.serve import export


def _record(path, artifact, **extra):
  record = {'artifact': str(artifact), 'format': 'stablehlo', 'input': {}, 'output': {}} | extra
  path.write_text(json.dumps(record))


def test_record_path():
  assert export.record_path('out/model.stablehlo') == 'out/model.json'
  assert export.record_path('model.v2.tflite') == 'model.v2.json'


def test_new_files_and_an_earlier_export_may_be_written(tmp_path):
  export.check_output(str(tmp_path / 'model.stablehlo'))  # nothing there yet
  artifact = tmp_path / 'model.stablehlo'
  artifact.write_bytes(b'x')
  _record(tmp_path / 'model.json', artifact)
  export.check_output(str(artifact))  # our own artifact and record: replaced


def test_files_fkd_did_not_write_are_never_replaced(tmp_path):
  artifact = tmp_path / 'model.stablehlo'
  artifact.write_bytes(b'user data')
  with pytest.raises(FkdError, match='exists and was not written by fkd.export'):
    export.check_output(str(artifact))  # no record
  # A record of another export (its artifact elsewhere) does not make this file ours.
  _record(tmp_path / 'model.json', tmp_path / 'other.stablehlo')
  with pytest.raises(FkdError, match='--output .* exists and was not written'):
    export.check_output(str(artifact))
  # A JSON that only looks a little like a record is the user's.
  (tmp_path / 'b.json').write_text(json.dumps({'format': 'stablehlo', 'artifact': 'b'}))
  with pytest.raises(FkdError, match=r'b.json \(the record of --output'):
    export.check_output(str(tmp_path / 'b.stablehlo'))
  with pytest.raises(FkdError, match='cannot be a .json file'):
    export.check_output(str(tmp_path / 'c.json'))
  with pytest.raises(FkdError, match='is a folder'):
    export.check_output(str(tmp_path))
