"""Shared fixtures: a TFDS data_dir with the small synthetic dataset built once per session."""

import os
import pathlib
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Many tests compile the same tiny programs (in this process and in the subprocesses they start):
# a persistent compilation cache shared by all of them makes every compile after the first cheap.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), f'fkd-jax-cache-{os.getuid()}')
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# After the cache settings (JAX reads them once): the entry points' process settings, as
# `python -m fkd.*` applies them (fkd.cli.start: CPU tuning, and the compilation cache, which
# keeps the directory above; importing fkd changes nothing).
from fkd import cli  # noqa: E402

cli.start()

from configs import kd as kd_config  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp('tfds')
  return str(path)


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """The real fixture files of ../shared/data (or $FKD_SHARED_DATA); skips when absent."""
  path = pathlib.Path(os.environ.get('FKD_SHARED_DATA', REPO.parent / 'shared' / 'data'))
  if not path.is_dir():
    pytest.skip(f'shared data folder {path} is absent')
  return path


def tiny_kd_config(data_dir: str):
  """configs/kd.py:tiny (runlocal cut to a few steps per stage) on the session's data_dir."""
  config = kd_config.get_config('tiny')
  config.data.data_dir = data_dir
  return config


# `run_dir`'s config beyond tiny_kd_config, as command-line flags: commands on that workdir pass
# them, since a workdir refuses a config other than the one that trained it (fkd.infra.workdir).
RUN_DIR_FLAGS = (
  '--config.teacher.kwargs.bn_momentum=0.5',
  '--config.student.kwargs.bn_momentum=0.5',
)


def run_dir_config(data_dir: str):
  """The config that trained `run_dir` (see its docstring for the BatchNorm momentum)."""
  config = tiny_kd_config(data_dir)
  for role in ('teacher', 'student'):
    config[role].kwargs.bn_momentum = 0.5
  return config


@pytest.fixture(scope='session')
def run_dir(tmp_path_factory, data_dir) -> pathlib.Path:
  """A finished tiny KD run (3 stages, results written), trained once per session.

  Its models see their input (predict / evaluate / export checks would be hollow otherwise): with
  the configs' BatchNorm momentum (0.9) six steps leave the running statistics near their init,
  the features collapse through the layers and the outputs vary by ~2e-6 px across images. With
  momentum 0.5 the running statistics are the last batches' and the outputs vary by pixels
  (`inference_test.test_fixture_models_see_their_input`).
  """
  from fkd import inference
  from fkd.training import trainer as train

  workdir = tmp_path_factory.getbasetemp() / 'kd_tiny_run'
  config = run_dir_config(data_dir)
  if not all(inference.is_finished(str(workdir / s)) for s in config.stages):
    train.run(config, str(workdir))
  return workdir
