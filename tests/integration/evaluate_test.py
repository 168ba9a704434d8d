"""Evaluation reports on a finished tiny run: results.json / .md beside published numbers, PNGs."""

import json
import os
import re
import subprocess
import sys

import conftest
import numpy as np
import pytest
from PIL import Image

from fkd.evaluation import evaluate, metrics
from fkd.infra import metric_writer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_run_writes_every_report(run_dir):
  # fkd.training.trainer.run ends with evaluate_workdir + write_results: all four files are there.
  saved = json.loads((run_dir / 'results.json').read_text())
  assert saved['dataset'] == 'synthetic_faces/small'
  assert (saved['method'], saved['published']) == ('kd', 'kd_loss')
  assert list(saved['models']) == ['mean_shape', 'teacher_tolerant', 'teacher_tough', 'student_kd']
  for name, per_split in saved['models'].items():
    record = per_split['test']
    assert set(record) == {'nme', 'fr', 'auc', 'auc_kd', 'count'}
    per_image = np.asarray(saved['nme_per_image'][name]['test'])
    assert len(per_image) == record['count'] == 64
    assert record['nme'] == pytest.approx(100 * per_image.mean(), abs=1e-3)
  assert not any(k.startswith('_') for k in saved)
  assert saved['steps'] == {'teacher_tolerant': 6, 'teacher_tough': 6, 'student_kd': 6}
  # TensorBoard scalars of the evaluation, beside each stage's training curves.
  scalars = metric_writer.read_scalars(str(run_dir / 'student_kd'))
  step, nme = scalars['eval/test/nme'][-1]
  assert step == 6 and nme == pytest.approx(saved['models']['student_kd']['test']['nme'], rel=1e-6)
  md = (run_dir / 'results.md').read_text()
  assert '| model | NME % | FR % | AUC | AUC_KD | published' in md
  assert '| student_kd |' in md and '— |' in md
  assert 'No published numbers for synthetic_faces/small' in md
  assert '![ced.png](ced.png)' in md and '![worst.png](worst.png)' in md
  for name, min_size in (('ced.png', (500, 400)), ('worst.png', (800, 400))):
    with Image.open(run_dir / name) as img:
      assert img.format == 'PNG' and img.size >= min_size, (name, img.size)


def test_overlay_is_best_and_worst_of_the_student(run_dir, data_dir):
  from fkd.data import pipeline as ip

  config = conftest.run_dir_config(data_dir)
  data = ip.load(config)
  results = evaluate.evaluate_workdir(config, str(run_dir), data)
  overlay = results['_overlay']
  assert overlay['model'] == 'student_kd' and overlay['split'] == 'test'
  n = evaluate.OVERLAY_COUNT
  assert overlay['images'].shape == (2 * n, 32, 32, 3) and overlay['pred'].shape == (2 * n, 68, 2)
  nme = np.asarray(results['nme_per_image']['student_kd']['test'])
  np.testing.assert_allclose(overlay['nme'][:n], np.sort(nme)[:n], atol=1e-6)
  np.testing.assert_allclose(overlay['nme'][n:], np.sort(nme)[::-1][:n], atol=1e-6)
  # The stored predictions score what the table says.
  worst = overlay['names'][n]
  i = data.splits['test'].names.index(worst)
  err = np.linalg.norm(overlay['pred'][n] - data.splits['test'].landmarks[i], axis=-1).mean()
  d = np.linalg.norm(data.splits['test'].landmarks[i, 36] - data.splits['test'].landmarks[i, 45])
  assert err / d == pytest.approx(nme.max(), rel=1e-4)


def _fake_results(
  dataset,
  norm='inter_ocular',
  splits=('challenging', 'common', 'full'),
  method=('kd', 'kd_loss'),
  models=('mean_shape', 'teacher_tough', 'student_kd', 'student_baseline'),
):
  rng = np.random.default_rng(0)
  results = {
    'dataset': dataset,
    'method': method[0],
    'published': method[1],
    'norm': norm,
    'frame': 'crop',
    'fr_threshold': 0.1,
    'image_size': 224,
    'models': {},
    'nme_per_image': {},
  }
  for name in models:
    for s in splits:
      nme = rng.uniform(0.01, 0.12, 50)
      results['models'].setdefault(name, {})[s] = metrics.summarize(nme)
      results['nme_per_image'].setdefault(name, {})[s] = nme.tolist()
  return results


def test_table_shows_published_numbers_beside_ours(tmp_path):
  results = _fake_results('ibug_300w')
  md = evaluate.markdown_table(results)
  rows = {
    line.split('|')[1].strip(): line
    for line in md.split('### full')[1].splitlines()
    if line.startswith('| ') and not line.startswith('| model')
  }
  assert rows['mean_shape'].rstrip().endswith('| — |')
  assert (
    '4.06 (paper [' in rows['student_kd'] and '4.06 / 0.87 / 0.7900 (notes [' in rows['student_kd']
  )
  assert '3.82 / 0.72 / 0.8103 (notes' in rows['teacher_tough']
  assert '4.50 / 1.59 / 0.7578 (notes' in rows['student_baseline']
  assert '6.13 (paper' in md.split('### challenging')[1].split('###')[0]
  assert '[published] Fard & Mahoor, CVIU 2022' in md and '[notes]' in md and '†' not in md
  # WFLW in KD-Loss is inter-pupil: an inter-ocular evaluation is flagged.
  wflw = evaluate.markdown_table(_fake_results('wflw', splits=('test', 'pose')))
  assert re.search(r'8\.57 \(paper \[\d\]\) †', wflw) and '15.06 (paper' in wflw
  assert '† published under' in wflw
  evaluate.write_results(results, str(tmp_path))
  assert (tmp_path / 'ced.png').exists() and not (tmp_path / 'worst.png').exists()
  assert json.loads((tmp_path / 'results.json').read_text())['models'] == results['models']


def _published_cells(md):
  """model -> its published cell, over every split's table."""
  return {
    (split, line.split('|')[1].strip()): line.split('|')[-2].strip()
    for split, table in zip(re.findall(r'### (\w+)', md), md.split('### ')[1:], strict=True)
    for line in table.splitlines()
    if line.startswith('| ') and not line.startswith('| model')
  }


@pytest.mark.parametrize(
  'method, published',
  [(('fan', 'mobilefan'), False), (('output_kd', None), False), (('kd', 'kd_loss'), True)],
)
def test_published_rows_follow_the_method(method, published):
  """A MobileFAN or output-distillation run on 300W never shows KD-Loss's published rows (same
  stage names: `student_baseline`, `teacher_tough`); a KD-Loss run does."""
  models = ('mean_shape', 'teacher', 'student_distill', 'student_baseline', 'teacher_tough')
  md = evaluate.markdown_table(_fake_results('ibug_300w', method=method, models=models))
  cells = _published_cells(md)
  assert len(cells) == 3 * len(models)
  shown = {k for k, v in cells.items() if v != '—'}
  # KD-Loss's 300W table (published.json, its authors' notes) has student_baseline and
  # teacher_tough on all three splits.
  want = {(s, m) for s in ('challenging', 'common', 'full') for m in models[3:]}
  assert shown == (want if published else set())
  assert ('[notes]' in md) == published
  if method[0] == 'fan':
    assert 'No published numbers for ibug_300w: MobileFAN reports no numbers' in md
  if method[0] == 'output_kd':
    assert 'method output_kd has no published table' in md


def test_published_key_of_each_config():
  from fkd import config_lib

  keys = {
    path: evaluate.published_key(config_lib.load(f'configs/{path}.py', 'tiny'))
    for path in ('kd', 'baseline', 'output_kd', 'mobilefan', 'efficientfan')
  }
  assert keys == {
    'kd': 'kd_loss',
    'baseline': 'kd_loss',
    'output_kd': None,
    'mobilefan': 'mobilefan',
    'efficientfan': 'efficientfan',
  }


def test_published_data_file():
  data = evaluate.published()
  kd = data['methods']['kd_loss']
  assert (
    data['methods']['mobilefan']['results'] == []
    and 'No numeric' in data['methods']['mobilefan']['note']
  )
  assert data['methods']['efficientfan']['results'] == []
  for r in kd['results']:
    assert r['source'].startswith(('[published]', '[notes]')) and r['frame'] == 'crop'
    assert r['norm'] == ('inter_pupil' if r['dataset'] == 'wflw' else 'inter_ocular')
  paper = {
    (r['dataset'], r['split'], r['model']): r['nme'] for r in kd['results'] if r['label'] == 'paper'
  }
  assert paper == {
    ('ibug_300w', 'challenging', 'student_kd'): 6.13,
    ('ibug_300w', 'common', 'student_kd'): 3.56,
    ('ibug_300w', 'full', 'student_kd'): 4.06,
    ('cofw', 'test', 'student_kd'): 4.11,
    ('cofw', 'test', 'teacher_tough'): 3.81,
    ('wflw', 'test', 'student_kd'): 8.57,
    ('wflw', 'pose', 'student_kd'): 15.06,
  }
  # results.md §2.5: 300W Full = Common ∪ Challenging, so failures add up and the Full NME is the
  # image-weighted mean of the subsets, for every model of the authors' notes.
  notes = {}
  for r in kd['results']:
    if r['dataset'] == 'ibug_300w' and r['label'] == 'notes' and 'fr' in r:
      notes.setdefault(r['model'], {})[r['split']] = r
  assert len(notes) == 6
  for model, s in notes.items():
    fails = {k: round(v['fr'] * v['count'] / 100) for k, v in s.items()}
    assert fails['full'] == fails['challenging'] + fails['common'], model
    weighted = (135 * s['challenging']['nme'] + 554 * s['common']['nme']) / 689
    assert weighted == pytest.approx(s['full']['nme'], abs=0.011), model


def test_cli(run_dir, data_dir, tmp_path):
  for name in ('results.json', 'results.md', 'ced.png', 'worst.png'):
    (run_dir / name).unlink(missing_ok=True)
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.evaluate',
      '--config=configs/kd.py:tiny',
      f'--workdir={run_dir}',
      f'--config.data.data_dir={data_dir}',
      *conftest.RUN_DIR_FLAGS,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '| student_kd |' in proc.stdout
  for name in ('results.json', 'results.md', 'ced.png', 'worst.png'):
    assert (run_dir / name).exists(), name
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.evaluate',
      '--config=configs/kd.py:runlocal',
      f'--workdir={tmp_path / "nope"}',
      f'--config.data.data_dir={data_dir}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    f'fkd: error: workdir {tmp_path / "nope"} does not exist'
  ]
