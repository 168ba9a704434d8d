"""`benchmarks/dlib_baseline.py`'s figures (issue 34's measure): the median per-face ratio of a
no-box row to the true box, like for like (same flip setting) and to one crop, missed faces left
out; `--pool` puts several runs' faces into one table. Expected values are worked by hand."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def bench():
  spec = importlib.util.spec_from_file_location(
    'bench_dlib', REPO / 'benchmarks' / 'dlib_baseline.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ROW = 'fkd detector, 2 passes, flip'


def faces() -> list[dict]:
  # (true box one crop, true box flip, detector 2 passes flip)
  values = [(10.0, 8.0, 8.8), (5.0, 4.0, None), (6.0, 5.0, 6.0), (4.0, 2.0, 3.0)]
  return [
    {'set': s, 'photo': f'p{i}', 'fkd true box': a, 'fkd true box, flip': b, ROW: c}
    for i, ((a, b, c), s) in enumerate(zip(values, ['x', 'x', 'y', 'y'], strict=True))
  ]


def test_ratios_by_hand(bench):
  r = bench.summarize(faces(), ROW)
  # found: faces 0, 2, 3; NMEs 8.8, 6.0, 3.0
  assert (r['found'], r['faces']) == (3, 4)
  assert r['mean'] == pytest.approx(17.8 / 3)
  assert r['median'] == pytest.approx(6.0)
  # like for like: 8.8/8 = 1.1, 6/5 = 1.2, 3/2 = 1.5 -> 1.2; one crop: .88, 1.0, .75 -> .88
  assert r['ratio_same'] == pytest.approx(1.2)
  assert r['ratio'] == pytest.approx(0.88)


def test_true_box_row_is_compared_with_itself(bench):
  r = bench.summarize(faces(), 'fkd true box, flip')
  assert r['ratio_same'] == pytest.approx(1.0)
  assert r['ratio'] == pytest.approx(0.8)  # 0.8, 0.8, 0.8333, 0.5 -> (0.8 + 0.8) / 2
  assert bench.truth_of('dlib (own detector)') == 'fkd true box'


def test_pool_reads_every_run(bench, tmp_path, capsys):
  a, b = faces()[:2], faces()[2:]
  for name, part in (('a', a), ('b', b)):
    for e in part:
      e['workdir'] = f'/runs/{name}'
    (tmp_path / f'{name}.json').write_text(json.dumps(part))
  bench.pool([str(tmp_path / 'a.json'), str(tmp_path / 'b.json')])
  out = capsys.readouterr().out
  assert '4 faces of 2 runs: /runs/a, /runs/b' in out
  all_faces = out.split('\nx\n')[0]
  assert f'| {ROW} | 3/4 | 5.93 | 6.00 | 0.880× | 1.200× |' in all_faces
  assert '| fkd detector, 2 passes, flip | 1/2 | 8.80 | 8.80 | 0.880× | 1.100× |' in out  # set x


def test_flip_only_runs_have_no_one_crop_ratio(bench):
  flip_only = [{k: v for k, v in e.items() if k != 'fkd true box'} for e in faces()]
  r = bench.summarize(flip_only, ROW)
  assert r['ratio_same'] == pytest.approx(1.2)
  assert r['ratio'] != r['ratio']  # NaN: no one-crop row to compare with
