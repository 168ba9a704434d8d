"""The Colab notebooks without running them: valid notebooks, code that compiles, runtime metadata
that matches their install cell, and notebook 02's choice of run on faked TPU and GPU runtimes
(its cells executed with `jax.devices()` and the hardware detection faked, training recorded)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import sys
import types

import jax
import pytest

from fkd import cli
from fkd.infra import accelerator
from fkd.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / 'colab').glob('*.ipynb'))
TPU_RUNTIMES = ('V28', 'V5E1', 'V6E1')  # Colab's `gpuType` of its TPU runtimes


def load(path: pathlib.Path) -> dict:
  try:
    import nbformat
  except ImportError:
    nb = json.loads(path.read_text())
    assert nb['nbformat'] == 4 and isinstance(nb['cells'], list)
    return nb
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  return nb


def source(cell) -> str:
  text = cell['source']
  return text if isinstance(text, str) else ''.join(text)


def python(text: str) -> str:
  """The cell as plain Python: IPython's `!` / `%` lines become `pass` at their indentation."""
  return re.sub(r'^(\s*)[!%].*$', r'\1pass', text, flags=re.M)


def code_cells(nb) -> list[str]:
  return [source(c) for c in nb['cells'] if c['cell_type'] == 'code']


def test_notebooks_are_found():
  assert [p.name for p in NOTEBOOKS][:3] == [
    '01_quickstart.ipynb',
    '02_reproduce_paper.ipynb',
    '03_heatmap_distillation.ipynb',
  ]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_valid_and_compiles(path):
  nb = load(path)
  cells = code_cells(nb)
  assert cells
  for i, text in enumerate(cells):
    compile(python(text), f'{path.name}[{i}]', 'exec')
  assert python('if x:\n  !pip install y\n  %time z\n') == 'if x:\n  pass\n  pass\n'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_marked_runtime_matches_the_install_cell(path):
  """A notebook marked for a TPU asks Colab for a TPU runtime, detects the accelerator from the
  hardware (not one device node) before installing, installs JAX for it and checks JAX uses it."""
  nb = load(path)
  meta = nb['metadata']
  install = code_cells(nb)[0]
  if meta.get('accelerator') == 'TPU':
    assert meta.get('colab', {}).get('gpuType') in TPU_RUNTIMES, meta
  assert meta.get('accelerator') in ('TPU', 'GPU', None)
  assert "spec_from_file_location('fkd_accelerator', 'fkd/infra/accelerator.py')" in install
  assert 'probe.pip_requirement(probe.detect(), INSTALLED_JAX)' in install
  assert re.search(r'^  !pip install -q -e \S+ "\{JAX_REQUIREMENT\}"$', install, re.M)
  assert 'accelerator.confirm(ACCELERATOR, PLATFORM)' in install
  assert '/dev/accel0' not in install and 'nvidia-smi' not in install


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  platform: str
  device_kind: str
  id: int = 0
  compute_capability: str | None = None


def run_notebook_02(monkeypatch, tmp_path, hardware: str, devices: list[FakeDevice]):
  """Notebook 02's cells up to training, on a faked runtime; returns the configs it trained."""
  nb = load(REPO / 'colab' / '02_reproduce_paper.ipynb')
  cells = code_cells(nb)
  train_at = next(i for i, c in enumerate(cells) if 'train.run(' in c)
  trained = []
  monkeypatch.chdir(REPO)
  monkeypatch.delenv('FKD_TINY', raising=False)  # the real (paper) path
  monkeypatch.setattr(cli, 'start', lambda *a, **k: None)  # no process settings in pytest
  monkeypatch.setattr(accelerator, 'detect', lambda *a, **k: hardware)
  monkeypatch.setattr(jax, 'devices', lambda *a, **k: devices)
  monkeypatch.setattr(jax, 'device_count', lambda *a, **k: len(devices))
  monkeypatch.setattr(trainer, 'run', lambda config, workdir: trained.append((config, workdir)))
  colab = types.ModuleType('google.colab')
  colab.drive = types.SimpleNamespace(mount=lambda *a, **k: None)
  monkeypatch.setitem(sys.modules, 'google.colab', colab)
  monkeypatch.setattr(sys.modules['google'], 'colab', colab, raising=False)
  namespace: dict = {'__name__': '__notebook__'}
  for i, text in enumerate(cells[: train_at + 1]):
    exec(compile(python(text), f'02[{i}]', 'exec'), namespace)  # noqa: S102
  return trained, namespace


@pytest.mark.parametrize(
  'hardware,devices,dtype',
  [
    ('tpu', [FakeDevice('tpu', 'TPU v2', i) for i in range(8)], 'bfloat16'),  # Colab v2-8
    ('gpu', [FakeDevice('gpu', 'NVIDIA A100-SXM4-40GB', 0, '8.0')], 'bfloat16'),
    ('gpu', [FakeDevice('gpu', 'Tesla T4', 0, '7.5')], 'float32'),
  ],
  ids=['tpu-v2-8', 'a100', 't4'],
)
def test_notebook_02_picks_the_run_for_the_runtime(
  monkeypatch, tmp_path, capsys, hardware, devices, dtype
):
  pytest.importorskip('google', reason='the fake google.colab needs the google namespace')
  trained, namespace = run_notebook_02(monkeypatch, tmp_path, hardware, devices)
  assert namespace['PLATFORM'] == hardware and namespace['DTYPE'] == dtype
  assert [c.data.name for c, _ in trained] == ['ibug_300w', 'wflw', 'cofw']
  for config, _ in trained:
    assert config.compute_dtype == dtype
    assert config.train.batch_size == 70  # the paper's batch, padded on 8 devices, never refused
  out = capsys.readouterr().out
  assert 'python -m fkd.main --config=configs/kd.py:300w' in out
  assert f'--config.compute_dtype={dtype}' in out


def test_notebook_02_stops_when_jax_misses_the_tpu(monkeypatch, tmp_path):
  """A TPU runtime whose JAX runs on the CPU (no libtpu): the first cell stops with the fix."""
  pytest.importorskip('google', reason='the fake google.colab needs the google namespace')
  with pytest.raises(RuntimeError, match=r'jax\[tpu\]'):
    run_notebook_02(monkeypatch, tmp_path, 'tpu', [FakeDevice('cpu', 'cpu')])
