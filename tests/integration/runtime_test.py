"""fkd.infra.runtime: entry points apply the CPU process settings (importing fkd does not); they
stop
per-step page faults."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from fkd.infra import runtime

REPO = pathlib.Path(__file__).resolve().parents[2]

# A jitted gradient whose 64 MB intermediates are fresh buffers each call (like a train step's
# temporaries); reports the settings and the median minor page faults per call after warm-up
# (with the settings, an occasional call still grows the heap and faults once; the steady state
# is what the settings change, and CI once caught such a call inside a 5-call mean).
PROBE = r"""
import json, resource, sys
if sys.argv[1] == 'jax_first':
  import jax; jax.devices()
import fkd, jax, jax.numpy as jnp
from fkd import cli
from fkd.infra import runtime
if sys.argv[1] != 'import_only':
  cli.start()

def loss(w, x):
  h = jnp.tanh(jnp.tanh(x @ w) @ w)
  return jnp.sum(h * h)

step = jax.jit(jax.grad(loss))
w, x = jnp.full((64, 64), 1 / 64), jnp.ones((256 * 1024, 64))
for _ in range(3):
  step(w, x).block_until_ready()
per_call = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(w, x).block_until_ready()
  per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(per_call)[len(per_call) // 2]  # median: the steady state
print(json.dumps({**runtime.status, 'faults': faults, 'describe': runtime.describe()}))
"""


def _probe(order: str, **env) -> dict:
  out = subprocess.run(
    [sys.executable, '-c', PROBE, order],
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
    cwd=REPO,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu', **env},
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
  not sys.platform.startswith('linux') or jax.default_backend() != 'cpu',
  reason='glibc malloc settings on a CPU backend',
)
@pytest.mark.slow  # tens of seconds on 2 cores; `pytest -m slow` (CI) runs it
def test_cpu_tuning_removes_page_faults():
  pages = 64 * 2**20 // 4096  # 16384 pages per 64 MB intermediate
  tuned = _probe('fkd_first')
  assert tuned['async_dispatch_off'] and tuned['malloc_tuned'], tuned
  assert tuned['faults'] < pages / 10, tuned
  assert tuned['describe'].startswith('CPU tuning on')
  off = _probe('fkd_first', FKD_CPU_TUNING='0')
  assert not off['async_dispatch_off'] and off['faults'] > pages / 2, off  # the control
  assert 'FKD_CPU_TUNING=0' in off['describe']
  late = _probe('jax_first')  # too late for the client option: says so instead of pretending
  assert not late['async_dispatch_off'] and 'not applied' in late['describe'], late
  imported = _probe('import_only')  # importing fkd alone changes no process setting
  assert not imported['async_dispatch_off'] and not imported['malloc_tuned'], imported


def test_malloc_settings_skipped_for_accelerators(monkeypatch):
  from fkd.infra import runtime

  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  assert runtime._accelerator_installed()
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not runtime._accelerator_installed()


CACHE_PROBE = r"""
import json
import jax, jax.numpy as jnp
from fkd import cli
from fkd.infra import runtime
cli.start()
jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({'dir': jax.config.jax_compilation_cache_dir, **runtime.cache_status}))
"""


def _cache_probe(tmp_path, **env) -> dict:
  base = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}  # conftest's
  out = subprocess.run(
    [sys.executable, '-c', CACHE_PROBE],
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
    cwd=REPO,
    env={**base, 'XDG_CACHE_HOME': str(tmp_path / 'xdg'), **env},
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # CI runs it with -m slow (the default suite's time budget)
def test_entry_points_enable_the_compilation_cache(tmp_path):
  default = _cache_probe(tmp_path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  path = tmp_path / 'xdg' / 'fkd' / 'jax'
  assert default == {'dir': str(path), 'source': 'fkd'}
  assert any(path.iterdir())  # the program was written
  chosen = _cache_probe(tmp_path, FKD_COMPILATION_CACHE=str(tmp_path / 'mine'))
  assert chosen['dir'] == str(tmp_path / 'mine')
  off = _cache_probe(tmp_path, FKD_COMPILATION_CACHE='0')
  assert off == {'dir': None, 'source': 'off'}
  jax_own = _cache_probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_own'))
  assert jax_own == {'dir': str(tmp_path / 'jax_own'), 'source': 'jax'}


@pytest.mark.parametrize(
  'value, expected',
  [
    ('1', True),
    ('ON', True),
    ('yes', True),
    ('0', False),
    ('False', False),
    ('no', False),
    ('', None),
    ('/tmp/cache', None),
    ('2', None),
  ],
)
def test_env_switch(monkeypatch, value, expected):
  monkeypatch.setenv('FKD_TEST_SWITCH', value)
  assert runtime.env_switch('FKD_TEST_SWITCH') is expected
  monkeypatch.delenv('FKD_TEST_SWITCH')
  assert runtime.env_switch('FKD_TEST_SWITCH') is None
