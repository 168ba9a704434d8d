"""MetricWriter: JSON lines + TensorBoard event files (tensorboardX); progress bars."""

import io
import json

import numpy as np
import pytest

from fkd.infra import metric_writer as mw


def test_writes_jsonl_and_events_tensorboard_reads(tmp_path):
  with mw.MetricWriter(str(tmp_path)) as w:
    for step in (1, 2, 3):
      w.write_scalars(
        step, {'loss': 1.0 / step, 'loss/main': np.float32(2.5 * step), 'lr': np.asarray(1e-3)}
      )
    w.write_scalars(2**40 + 7, {'nme/test': 12.5})
  assert len(w.event_files) == 1
  scalars = mw.read_scalars(str(tmp_path))  # TensorBoard's own reader
  steps, values = zip(*scalars['loss'], strict=True)
  assert steps == (1, 2, 3) and values == pytest.approx([1.0, 0.5, 1 / 3])
  assert [v for _, v in scalars['loss/main']] == pytest.approx([2.5, 5.0, 7.5])
  assert scalars['nme/test'] == [(2**40 + 7, 12.5)]
  lines = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines[0] == {'step': 1, 'loss': 1.0, 'loss/main': 2.5, 'lr': pytest.approx(1e-3)}
  assert len(lines) == 4


def test_inactive_writer_writes_nothing(tmp_path):
  w = mw.MetricWriter(str(tmp_path / 'logs'), active=False)
  w.write_scalars(1, {'loss': 1.0})
  w.close()
  assert not (tmp_path / 'logs').exists()


def test_progress_bar_with_eta(monkeypatch):
  monkeypatch.setenv('FKD_PROGRESS', '1')
  out = io.StringIO()
  items = list(mw.progress(range(5), total=5, desc='eval', file=out, mininterval=0))
  assert items == list(range(5))
  text = out.getvalue()
  assert 'eval' in text and '5/5' in text and '<' in text  # elapsed<remaining is the ETA
  monkeypatch.setenv('FKD_PROGRESS', '0')
  out = io.StringIO()
  assert list(mw.progress(range(3), file=out)) == [0, 1, 2] and out.getvalue() == ''
  monkeypatch.delenv('FKD_PROGRESS')
  out = io.StringIO()
  assert list(mw.progress(range(3), enabled=False, file=out)) == [0, 1, 2]
  assert out.getvalue() == ''
