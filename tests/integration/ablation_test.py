"""fkd.ablation: every row over 2 seeds on tiny configs, the JSON keys, reruns skip, bad input."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_kd_config

from configs import efficientfan, mobilefan
from configs import kd as kd_config
from fkd import ablation, inference, methods
from fkd.errors import FkdError
from fkd.training import trainer as train

KD_ROWS = (
  'teacher_tough',
  'teacher_tolerant',
  'baseline_mse',
  'main_only',
  'tough_only',
  'tolerant_only',
  'output_kd',
  'output_kd_l1',
  'kd',
)


def _check(record, rows, seeds):
  assert record['split'] == 'test' and record['seeds'] == seeds and record['dataset']
  assert tuple(record['rows']) == rows
  for r in record['rows'].values():
    assert {'nme_mean', 'nme_std', 'fr_mean', 'auc_mean'} <= set(r)
    assert len(r['nme_per_seed']) == seeds and r['nme_std'] >= 0


def _fake_training(monkeypatch, calls):
  """train.run replaced by a results.json writer (NME = 10 + seed + number of overrides set)."""

  def fake_run(config, workdir):
    calls.append((workdir, tuple(config.stages), config.seed))
    os.makedirs(workdir, exist_ok=True)
    kd = sum(v is not None for k, v in (config.kd.items() if 'kd' in config else ()) if k != 'mode')
    models = {'mean_shape': {'test': {'nme': 20.0, 'fr': 90.0, 'auc': 0.0}}}
    for s in config.stages:
      models[s] = {'test': {'nme': 10.0 + config.seed + kd, 'fr': 1.0, 'auc': 0.5}}
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump({'dataset': config.data.name, 'models': models}, f)

  monkeypatch.setattr(train, 'run', fake_run)
  monkeypatch.setattr(
    inference,
    'is_finished',
    lambda d: os.path.exists(os.path.join(os.path.dirname(d), 'results.json')),
  )


@pytest.mark.parametrize('name', ['kd', 'mobilefan', 'efficientfan'])
def test_every_row_keys_and_rerun(tmp_path, monkeypatch, name):
  """Every row over 2 seeds, the JSON / markdown keys and the rerun skip (training stubbed)."""
  calls = []
  _fake_training(monkeypatch, calls)
  config = (
    kd_config if name == 'kd' else mobilefan if name == 'mobilefan' else efficientfan
  ).get_config('runlocal')
  rows = ablation.rows_for(config)
  want = (
    KD_ROWS
    if name == 'kd'
    else (
      'teacher',
      'baseline',
      'fa_only',
      'fs_only' if name == 'mobilefan' else 'ps_only',
      'distill',
    )
  )
  assert tuple(rows) == want
  want = tuple(k for k in want if not rows[k].extra)  # extras run only when --rows names them
  rows = {k: r for k, r in rows.items() if not r.extra}
  record = ablation.run(config, str(tmp_path), seeds=2)
  _check(record, want, 2)
  on_disk = json.loads((tmp_path / 'ablation.json').read_text())
  assert on_disk['rows'] == record['rows'] and on_disk['seeds'] == 2
  md = (tmp_path / 'ablation.md').read_text()
  assert all(f'`{r}`' in md for r in want)
  # Teachers once per seed (one run), then one run per student row.
  teachers = [c for c in calls if c[0].endswith('teachers')]
  assert len(teachers) == 2 and len(calls) == 2 * (1 + sum(not r.teacher for r in rows.values()))
  assert sorted(os.listdir(tmp_path / 'seed_1')) == sorted(
    ['teachers', *(k for k, r in rows.items() if not r.teacher)]
  )
  # Every student row shares one stage seed, and no config seed is negative.
  for seed in (0, 1):
    cs = [ablation.run_config(config, seed, r, rows, 'T') for r in rows.values() if not r.teacher]
    assert min(c.seed for c in cs) >= seed
    assert len({c.seed + methods.get(c).seed_offset(c.stages[0]) for c in cs}) == 1
  ref = record['rows'][record['reference_row']]
  assert ref['nme_std'] > 0 and ref['nme_per_seed'][1] == ref['nme_per_seed'][0] + 1
  # A rerun trains nothing and gives the same table.
  n = len(calls)
  assert ablation.run(config, str(tmp_path), seeds=2)['rows'] == record['rows']
  assert len(calls) == n
  # ... but never reuses a run made with another config.
  config.train.lr *= 2
  with pytest.raises(FkdError, match='another config'):
    ablation.run(config, str(tmp_path), seeds=2)


def test_rows_train_only_the_teachers_they_read(tmp_path, monkeypatch):
  """--rows=tough_only trains the Tough teacher alone, main_only none; --rows=kd later adds the
  Tolerant teacher to the same teachers run (nothing retrained)."""
  calls = []
  _fake_training(monkeypatch, calls)
  monkeypatch.setattr(inference, 'is_finished', lambda d: os.path.isdir(d))
  real_fake = train.run

  def fake_run(config, workdir):
    real_fake(config, workdir)
    for s in config.stages:
      os.makedirs(os.path.join(workdir, s), exist_ok=True)

  monkeypatch.setattr(train, 'run', fake_run)
  config = kd_config.get_config('runlocal')
  record = ablation.run(config, str(tmp_path), seeds=1, only=['tough_only'])
  assert tuple(record['rows']) == ('teacher_tough', 'tough_only')
  assert calls[0][:2] == (str(tmp_path / 'seed_0' / 'teachers'), ('teacher_tough',))
  assert len(calls) == 2 and record['mean_shape']['nme_mean'] == 20.0
  record = ablation.run(config, str(tmp_path), seeds=1, only=['main_only'])
  assert tuple(record['rows']) == ('main_only',) and len(calls) == 3  # no teacher run
  record = ablation.run(config, str(tmp_path), seeds=1, only=['kd'])
  assert tuple(record['rows']) == ('teacher_tough', 'teacher_tolerant', 'kd')
  teacher_calls = [c[1] for c in calls if c[0].endswith('teachers')]
  assert teacher_calls == [('teacher_tough',), ('teacher_tough', 'teacher_tolerant')]


def test_pre_stage_once_per_seed(tmp_path, monkeypatch):
  """With the synthetic pre-stage of the `300w,cpu` preset, each seed trains it once (at that
  seed) and every run of the seed, teachers and student rows, starts from it."""
  calls = []
  _fake_training(monkeypatch, calls)
  seen = {}
  real_fake = train.run

  def fake_run(config, workdir):
    real_fake(config, workdir)
    seen[workdir] = (config.teacher.get('init_from'), config.student.get('init_from'))

  monkeypatch.setattr(train, 'run', fake_run)
  config = kd_config.get_config('runlocal')
  with config.unlocked():
    config.pretrain = kd_config.get_config('300w,cpu,runlocal').pretrain
  rows = ['baseline_mse', 'output_kd', 'kd']
  ablation.run(config, str(tmp_path), seeds=2, only=rows)
  for seed in (0, 1):
    pre = str(tmp_path / f'seed_{seed}' / 'pretrain')
    assert [c for c in calls if c[0] == pre] == [(pre, ('teacher_tough', 'student_baseline'), seed)]
    teacher, student = f'{pre}/teacher_tough', f'{pre}/student_baseline'
    for run in ['teachers', *rows]:
      assert seen[str(tmp_path / f'seed_{seed}' / run)] == (teacher, student), run
  assert len(calls) == 2 * (1 + 1 + len(rows))  # no pre-stage inside a row's run
  assert not any(os.path.isdir(tmp_path / 'seed_0' / r / 'pretrain') for r in rows)


def test_row_overrides():
  config = kd_config.get_config('runlocal')
  rows = ablation.rows_for(config)
  c = ablation.run_config(config, 0, rows['main_only'], rows, 'T')
  assert (tuple(c.kd.teachers), c.kd.lambda_source) == ((), 'constant')
  assert methods.get(c).stage('student_kd', c).teachers == ()  # no teacher information at all
  assert c.teacher_tough_ckpt == os.path.join('T', 'teacher_tough') and c.stages == ('student_kd',)
  c = ablation.run_config(config, 0, rows['tough_only'], rows, 'T')
  assert (tuple(c.kd.teachers), c.kd.lambda_source) == (('teacher_tough',), 'tough')
  assert methods.get(c).stage('student_kd', c).teachers == ('teacher_tough',)
  c = ablation.run_config(config, 0, rows['tolerant_only'], rows, 'T')
  assert methods.get(c).stage('student_kd', c).teachers == ('teacher_tolerant',)
  # The output-distillation row: another method, the same student stage seed as kd.
  c = ablation.run_config(config, 0, rows['output_kd'], rows, 'T')
  kd = ablation.run_config(config, 0, rows['kd'], rows, 'T')
  assert c.method == 'output_kd' and c.output_kd.alpha == 0.5 and c.stages == ('student_output_kd',)
  assert methods.get(c).stage('student_output_kd', c).teachers == ('teacher_tough',)
  assert c.seed + methods.get(c).seed_offset('student_output_kd') == kd.seed + 2
  assert c.output_kd.get('loss', 'mse') == 'mse'
  c = ablation.run_config(config, 0, rows['output_kd_l1'], rows, 'T')
  assert c.method == 'output_kd' and c.output_kd.loss == 'l1' and c.output_kd.alpha == 0.5
  assert c.seed + methods.get(c).seed_offset('student_output_kd') == kd.seed + 2
  assert ablation.run_config(config, 0, rows['baseline_mse'], rows, 'T').stages == (
    'student_baseline',
  )
  for mod, sim in ((mobilefan, 'fs'), (efficientfan, 'ps')):
    config = mod.get_config('tiny')
    rows = ablation.rows_for(config)
    c = ablation.run_config(config, 0, rows['fa_only'], rows, 'T')
    assert c.fan.lambda_fa > 0 and c.fan[f'lambda_{sim}'] == 0 and c.teacher_ckpt == 'T/teacher'
    c = ablation.run_config(config, 0, rows[f'{sim}_only'], rows, 'T')
    assert c.fan.lambda_fa == 0 and c.fan[f'lambda_{sim}'] > 0


@pytest.mark.slow  # 2 seeds of three tiny stages: `pytest -m slow`, run by .ci/run
def test_kd_ablation_trains(tmp_path, data_dir):
  """The real thing, tiny: 2 seeds of the teachers and the `kd` row, a few steps each."""
  config = tiny_kd_config(data_dir)
  record = ablation.run(config, str(tmp_path), seeds=2, only=['kd'])
  _check(record, ('teacher_tough', 'teacher_tolerant', 'kd'), 2)
  assert inference.is_finished(str(tmp_path / 'seed_1' / 'kd' / 'student_kd'))
  assert not os.path.exists(tmp_path / 'seed_1' / 'kd' / 'teacher_tough')  # read from teachers/


def test_bad_input():
  with pytest.raises(FkdError, match='--seeds'):
    ablation.run(mobilefan.get_config('tiny'), '/tmp/x', seeds=0)
  with pytest.raises(FkdError, match='--rows'):
    ablation.run(mobilefan.get_config('tiny'), '/tmp/x', seeds=1, only=['nope'])
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.ablation',
      '--config=configs/kd.py:runlocal',
      '--workdir=/tmp/x',
      '--seeds=0',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
    'fkd: error: --seeds must be >= 1, got 0'
  ]


def test_absent_teacher_is_a_zero_weight_teacher():
  """kd.teachers leaves a teacher out (not even run): the same loss as its term weighted 0."""
  import jax
  import jax.numpy as jnp

  from fkd.losses import kd_loss as losses

  p, g, a, s = jax.random.normal(jax.random.key(0), (4, 2, 12)) * 0.1
  for kw, tough, tolerant in (
    (dict(w_tou=0.0, w_tol=0.0, lambda_source='constant'), None, None),
    (dict(w_tol=0.0, lambda_source='tough'), a, None),
    (dict(w_tou=0.0, lambda_source='tolerant'), None, s),
  ):
    params = losses.KDParams.code(**kw)
    full = losses.kd_loss(p, g, a, s, params)[0]
    assert jnp.allclose(losses.kd_loss(p, g, tough, tolerant, params)[0], full)


def test_teacher_sweep_gains_are_paired_differences(tmp_path, monkeypatch):
  """benchmarks/teacher_sweep.py: one teacher budget per point, gain = main_only − row per seed."""
  import importlib.util

  spec = importlib.util.spec_from_file_location('sweep', REPO / 'benchmarks' / 'teacher_sweep.py')
  sweep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sweep)
  calls = []
  _fake_training(monkeypatch, calls)
  fake = train.run

  def fake_run(config, workdir):  # the teacher's NME falls with its epochs
    fake(config, workdir)
    path = os.path.join(workdir, 'results.json')
    res = json.load(open(path))
    if 'teacher_tough' in res['models']:
      res['models']['teacher_tough']['test']['nme'] = 30.0 / config.teacher_train.num_epochs
      json.dump(res, open(path, 'w'))

  monkeypatch.setattr(train, 'run', fake_run)
  config = kd_config.get_config('runlocal')
  record = sweep.sweep(config, str(tmp_path), [1, 3], 2, ['tough_only', 'output_kd'])
  points = {(p['epochs'], p['row']): p for p in record['points']}
  assert sorted(points) == [
    (1, 'output_kd'),
    (1, 'tough_only'),
    (3, 'output_kd'),
    (3, 'tough_only'),
  ]
  assert (
    points[(1, 'tough_only')]['teacher_nme'] == 30.0
    and points[(3, 'output_kd')]['teacher_nme'] == 10.0
  )
  ref = record['reference']['nme_per_seed']
  for p in points.values():  # the fake NME: 10 + seed + number of kd keys set (see _fake_training)
    nme = json.load(
      open(tmp_path / f'teacher_epochs_{p["epochs"]}' / 'seed_1' / p['row'] / 'results.json')
    )
    stage = 'student_output_kd' if p['row'] == 'output_kd' else 'student_kd'
    assert p['gain_per_seed'][1] == pytest.approx(ref[1] - nme['models'][stage]['test']['nme'])
  teacher_runs = [c for c in calls if c[0].endswith('teachers')]
  assert [c[1] for c in teacher_runs] == [('teacher_tough',)] * 4  # 2 budgets x 2 seeds, Tough only
  sweep.plot(record, str(tmp_path / 'sweep.png'))
  assert (tmp_path / 'sweep.png').stat().st_size > 0


def test_a_moved_ablation_is_reused(tmp_path, monkeypatch):
  """The run stamps leave out the teachers' checkpoint paths: a moved workdir trains nothing."""
  import shutil

  calls = []
  _fake_training(monkeypatch, calls)
  config = kd_config.get_config('runlocal')
  record = ablation.run(config, str(tmp_path / 'a'), seeds=1, only=['kd'])
  n = len(calls)
  shutil.move(tmp_path / 'a', tmp_path / 'b')
  assert ablation.run(config, str(tmp_path / 'b'), seeds=1, only=['kd'])['rows'] == record['rows']
  assert len(calls) == n
  stamp = json.loads((tmp_path / 'b' / 'seed_0' / 'kd' / 'ablation_run.json').read_text())
  assert stamp['teacher_tough_ckpt'].startswith(str(tmp_path / 'a'))  # the stamp keeps the old path


@pytest.mark.slow
def test_ctrl_c_stops_an_ablation_with_exit_130_and_keeps_the_table(tmp_path, data_dir):
  """A real `fkd.ablation` process, Ctrl-C (SIGINT) while its first run trains: exit 130 (as
  documented in fkd/cli.py), one line saying where it stopped and no traceback; the table of an
  earlier ablation in the workdir is untouched (the table is written whole at the end only); the
  interrupted stage holds a readable checkpoint at the step it reached, which a rerun resumes
  from, and no lock is left."""
  import signal
  import time

  from fkd.infra import checkpoint

  workdir = tmp_path / 'w'
  workdir.mkdir()
  earlier = {'dataset': 'synthetic_faces/tiny', 'split': 'test', 'seeds': 1, 'rows': {}}
  (workdir / 'ablation.json').write_text(json.dumps(earlier))
  (workdir / 'ablation.md').write_text('# an earlier table\n')
  command = [
    sys.executable, '-m', 'fkd.ablation', '--config=configs/kd.py:tiny', f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}', '--seeds=1',
    '--config.teacher_train.num_steps=1000000', '--config.teacher_train.log_every_steps=1',
    '--config.teacher_train.checkpoint_every_steps=1000',
  ]  # fmt: skip
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  proc = subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  try:
    deadline = time.time() + 600
    for line in proc.stdout:
      if 'step 2/1000000' in line:
        break
      assert time.time() < deadline, 'no step 2 in time'
    else:
      raise AssertionError(f'ended before step 2: {proc.stderr.read()[-3000:]}')
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err, err[-4000:]
  assert 'stopped by SIGINT at step' in err.strip().splitlines()[-1], err[-2000:]
  assert json.loads((workdir / 'ablation.json').read_text()) == earlier
  assert (workdir / 'ablation.md').read_text() == '# an earlier table\n'
  stages = [p.parent for p in workdir.rglob('metrics.jsonl')]
  assert len(stages) == 1, stages  # the first run's first stage, nothing after it
  step = checkpoint.latest_step(str(stages[0]))
  assert step is not None and step >= 2
  assert checkpoint.last_good_step(str(stages[0]), rename=False) == step
  assert not list(workdir.rglob('.lock'))
