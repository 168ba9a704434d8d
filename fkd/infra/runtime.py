"""Process settings that make XLA:CPU train steps fast; entry points apply them (`fkd.cli.start`).

A MobileNetV2 train step at 224², batch 32, allocates gigabytes of temporaries per step. XLA's
CPU client runs steps on a worker thread, whose glibc arena serves allocations above 32 MB with
fresh `mmap`s and gives them back with `munmap`: every step page-faults all of that memory again,
a large share of the step's time. Two settings remove it (benchmarks/train_step.py measures
the effect; see README "Speed on CPU"):

- `jax_cpu_enable_async_dispatch=False`: CPU computations run on the calling thread, whose
  allocations come from glibc's main arena;
- glibc `mallopt(M_MMAP_MAX, 0)` and `mallopt(M_TRIM_THRESHOLD, -1)`: the main arena never uses
  `mmap` for large blocks and never returns freed memory to the system, so the next step reuses
  the same pages (resident memory stays at the peak of a step, as in TensorFlow).

Both only take effect if set before JAX creates its CPU client, so every entry point calls
`configure()` first (`fkd.cli.start()`; importing fkd changes nothing); GPU and TPU
computations are unaffected (the malloc settings are skipped when a GPU/TPU plugin is installed
and JAX_PLATFORMS does not say cpu). `FKD_CPU_TUNING=0` in the environment turns this off. Training
prefetches the next batch on a thread, so synchronous dispatch loses no overlap.

`enable_compilation_cache()` (also called by `fkd.cli.start()`) turns on JAX's persistent
compilation cache, so a train step compiled once (a large teacher's step takes long to compile
on CPU) loads quickly in every later run with the same shapes and versions. Where:
`$FKD_COMPILATION_CACHE`, else `$XDG_CACHE_HOME/fkd/jax`, else `~/.cache/fkd/jax`;
`FKD_COMPILATION_CACHE=0` turns it off, and a cache directory set through JAX's own
`JAX_COMPILATION_CACHE_DIR` / `jax_compilation_cache_dir` is left as it is. Only programs that
took at least `jax_persistent_cache_min_compile_time_secs` (JAX's default, 1 s) to compile are
written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

import jax

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4

status: dict[str, bool] = {'async_dispatch_off': False, 'malloc_tuned': False}
cache_status: dict[str, str | None] = {'dir': None, 'source': None}


def _backends_initialized() -> bool:
  from jax._src import xla_bridge

  check = getattr(xla_bridge, 'backends_are_initialized', None)
  return bool(check()) if check is not None else bool(getattr(xla_bridge, '_backends', {}))


_ACCELERATOR_PLUGINS = (
  'jax_cuda12_plugin',
  'jax_cuda13_plugin',
  'jax_rocm60_plugin',
  'jax_rocm7_plugin',
  'libtpu',
)


def _accelerator_installed() -> bool:
  """Whether JAX may pick a GPU/TPU (checked without initialising JAX's backends)."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() not in ('cpu', '')
  return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _tune_glibc_malloc() -> bool:
  if not sys.platform.startswith('linux') or _accelerator_installed():
    return False  # on GPU/TPU hosts the step's memory is on the device: keep glibc's defaults
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only (not musl)
    del gnu_get_libc_version
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
  except (OSError, AttributeError):
    return False


def _disabled() -> bool:
  return os.environ.get('FKD_CPU_TUNING', '1') == '0'


def configure() -> dict[str, bool]:
  """Applies the settings above once (idempotent); returns what is in effect."""
  if _disabled() or status['async_dispatch_off']:
    return status
  if _backends_initialized():
    return status  # too late for the client option; `describe()` says so
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  status['async_dispatch_off'] = True
  status['malloc_tuned'] = _tune_glibc_malloc()
  return status


OFF_WORDS = ('0', 'off', 'false', 'no')
ON_WORDS = ('1', 'on', 'true', 'yes')


def env_switch(name: str) -> bool | None:
  """`$name` as a switch: True for 1/on/true/yes, False for 0/off/false/no (any case), None
  when unset or anything else (a path, for the settings that also take one)."""
  value = os.environ.get(name, '').lower()
  return True if value in ON_WORDS else False if value in OFF_WORDS else None


def fkd_cache_dir(name: str) -> str:
  """`$XDG_CACHE_HOME/fkd/<name>`, else `~/.cache/fkd/<name>`."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'fkd', name)


def default_cache_dir() -> str:
  return fkd_cache_dir('jax')


def enable_compilation_cache() -> str | None:
  """JAX's persistent compilation cache in fkd's cache directory (see the module docstring);
  returns the directory in use, or None when off. Call before the first compilation."""
  current = jax.config.jax_compilation_cache_dir
  if current:  # set through JAX (JAX_COMPILATION_CACHE_DIR, the tests' conftest): keep it
    cache_status.update(dir=current, source='jax')
    return current
  setting = os.environ.get('FKD_COMPILATION_CACHE', '')
  if env_switch('FKD_COMPILATION_CACHE') is False:
    cache_status.update(dir=None, source='off')
    return None
  path = os.path.abspath(os.path.expanduser(setting or default_cache_dir()))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    cache_status.update(dir=None, source='unwritable')
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  cache_status.update(dir=path, source='fkd')
  return path


def describe() -> str:
  """One line for logs: whether the CPU settings are in effect."""
  cache = cache_status['dir']
  cache = f'; compilation cache {cache}' if cache else ''
  if jax.default_backend() != 'cpu':
    return cache.lstrip('; ')
  if status['async_dispatch_off'] and status['malloc_tuned']:
    return 'CPU tuning on (synchronous dispatch, glibc malloc keeps freed memory)' + cache
  if _disabled():
    return 'CPU tuning off (FKD_CPU_TUNING=0)' + cache
  if status['async_dispatch_off']:
    return (
      'CPU tuning partial: synchronous dispatch on, glibc malloc settings skipped (not '
      'glibc, or a GPU/TPU plugin is installed; JAX_PLATFORMS=cpu enables them)' + cache
    )
  return (
    'CPU tuning not applied: call fkd.cli.start() (fkd.infra.runtime.configure()) before JAX '
    'initialises (faster CPU train steps: README, "Speed on CPU")' + cache
  )
