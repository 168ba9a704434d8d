"""fkd.export: the exported student computes what JAX computes (max abs diff ≤ 1e-4)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fkd import inference
from fkd.errors import FkdError
from fkd.serve import export, predict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_TF = importlib.util.find_spec('tensorflow') is not None


def _images(n, size=32, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def test_stablehlo_parity(run_dir, tmp_path):
  path = tmp_path / 'student.stablehlo'
  record = export.export(str(run_dir), 'stablehlo', str(path))
  assert record['model']['stage'] == 'student_kd' and record['input']['shape'] == ['b', 32, 32, 3]
  # synthetic_faces crops: 5 % of the landmark box's width / height per side (its builder's).
  assert record['model']['crop_margin'] == {'value': 0.05, 'unit': 'box'}
  assert record['parity_max_abs_diff'] <= 1e-4
  assert json.loads((tmp_path / 'student.json').read_text()) == record
  exported = export.load_stablehlo(str(path))
  fn, meta = export.inference_fn(str(run_dir / 'student_kd'))
  for batch in (1, 5):  # symbolic batch: any size
    images = _images(batch)
    got = np.asarray(exported.call(images))
    want = np.asarray(jax.jit(fn)(images))
    assert got.shape == want.shape == (batch, 68, 2)
    assert np.max(np.abs(got - want)) <= 1e-4
    if batch > 1:  # parity on a model whose output depends on the image
      assert np.abs(want[1:] - want[:1]).max() > 0.1
  # The exported function is the predictor's: landmarks in crop pixels.
  predictor = predict.Predictor(str(run_dir / 'student_kd'))
  np.testing.assert_allclose(got, predictor(images), atol=1e-4)
  # The artifact is the folded model (no BatchNorm statistics among its constants) and computes
  # what the checkpoint's unfolded model computes.
  assert predictor.module.folded and set(predictor.variables) == {'params'}
  unfolded = inference.Predictor(str(run_dir / 'student_kd'), fold=False)
  assert not unfolded.module.folded
  np.testing.assert_allclose(got, unfolded(images), atol=2e-3)


def test_fixed_batch_and_stage(run_dir, tmp_path):
  path = tmp_path / 'tough.stablehlo'
  record = export.export(str(run_dir), 'stablehlo', str(path), stage='teacher_tough', batch=2)
  assert record['model']['stage'] == 'teacher_tough' and record['input']['shape'] == [2, 32, 32, 3]
  exported = export.load_stablehlo(str(path))
  assert exported.call(_images(2)).shape == (2, 68, 2)
  with pytest.raises(ValueError, match='Shape mismatch'):
    exported.call(_images(3))


@pytest.mark.skipif(not HAS_TF, reason='TensorFlow is not installed')
def test_tflite_parity(run_dir, tmp_path):
  record = export.export(str(run_dir), 'tflite', str(tmp_path / 'student.tflite'))
  assert record['parity_max_abs_diff'] <= 1e-4
  fn, _ = export.inference_fn(str(run_dir / 'student_kd'))
  images = _images(1, seed=3)
  got = export.run_tflite((tmp_path / 'student.tflite').read_bytes(), images)
  assert np.max(np.abs(got - np.asarray(jax.jit(fn)(images)))) <= 1e-4
  unfolded = inference.Predictor(str(run_dir / 'student_kd'), fold=False)  # the checkpoint's model
  np.testing.assert_allclose(got, unfolded(images), atol=2e-3)


@pytest.mark.skipif(HAS_TF, reason='TensorFlow is installed')
def test_tflite_without_tensorflow_is_a_clear_error(run_dir, tmp_path):
  with pytest.raises(FkdError, match='needs TensorFlow'):
    export.export(str(run_dir), 'tflite', str(tmp_path / 'student.tflite'))
  with pytest.raises(FkdError, match='--format must be one of'):
    export.export(str(run_dir), 'onnx')


def test_cli(run_dir, tmp_path):
  out = tmp_path / 'cli' / 'model.stablehlo'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'fkd.export',
      f'--workdir={run_dir}',
      '--format=stablehlo',
      f'--output={out}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'student_kd ->' in proc.stdout and 'max |exported − JAX|' in proc.stdout
  assert out.exists() and (tmp_path / 'cli' / 'model.json').exists()
  proc = subprocess.run(
    [sys.executable, '-m', 'fkd.export', f'--workdir={tmp_path / "none"}'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2 and proc.stderr.strip().startswith('fkd: error: workdir')
