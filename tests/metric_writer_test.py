"""MetricWriter: JSON lines + TensorBoard event files without TensorFlow; progress bars."""

import io
import json
import os

import numpy as np
import pytest

from fkd import metric_writer as mw


def test_crc32c_known_values():
  assert mw.crc32c(b'123456789') == 0xE3069283  # the standard CRC-32C check value
  assert mw.crc32c(b'') == 0
  assert mw.masked_crc32c(b'') == 0xA282EAD8


def test_writes_jsonl_and_events(tmp_path):
  with mw.MetricWriter(str(tmp_path)) as w:
    for step in (1, 2, 3):
      w.write_scalars(step, {'loss': 1.0 / step, 'loss/main': np.float32(2.5 * step),
                             'lr': np.asarray(1e-3)})
    w.write_scalars(10, {'nme/test': 12.5})
    events_path = w.events_path
  assert os.path.basename(events_path).startswith('events.out.tfevents.')
  events = mw.read_events(events_path)
  assert events[0]['file_version'] == 'brain.Event:2' and not events[0]['scalars']
  assert [e['step'] for e in events[1:]] == [1, 2, 3, 10]
  assert events[2]['scalars'] == pytest.approx({'loss': 0.5, 'loss/main': 5.0, 'lr': 1e-3})
  assert all(e['wall_time'] > 1e9 for e in events)
  scalars = mw.read_scalars(str(tmp_path))
  steps, values = zip(*scalars['loss'], strict=True)
  assert steps == (1, 2, 3) and values == pytest.approx([1.0, 0.5, 1 / 3])
  assert scalars['nme/test'] == [(10, 12.5)]
  lines = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines[0] == {'step': 1, 'loss': 1.0, 'loss/main': 2.5, 'lr': pytest.approx(1e-3)}
  assert len(lines) == 4


def test_large_step_and_corruption_detected(tmp_path):
  w = mw.MetricWriter(str(tmp_path), jsonl=None)
  w.write_scalars(2**40 + 7, {'x': 1.0})
  w.close()
  (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
  assert mw.read_events(str(path))[1]['step'] == 2**40 + 7
  data = bytearray(path.read_bytes())
  data[-6] ^= 0xFF  # inside the last payload
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='CRC'):
    mw.read_events(str(path))


def test_inactive_writer_writes_nothing(tmp_path):
  w = mw.MetricWriter(str(tmp_path / 'logs'), active=False)
  w.write_scalars(1, {'loss': 1.0})
  w.close()
  assert not (tmp_path / 'logs').exists()


def test_tensorboard_reads_the_events(tmp_path):
  accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  with mw.MetricWriter(str(tmp_path)) as w:
    w.write_scalars(5, {'loss': 0.25, 'lr': 0.5})
  acc = accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()['scalars']) == ['loss', 'lr']
  (event,) = acc.Scalars('loss')
  assert event.step == 5 and event.value == pytest.approx(0.25)


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
