"""XLA flags fkd sets for CPU-only runs (imported by `fkd/__init__`, before JAX starts a backend).

`--xla_llvm_disable_expensive_passes=true` skips LLVM's costly optimisation passes. Compiling the
MobileNetV2 student train step (224², batch 32) on a loaded 2-core machine, without / with it in
alternating processes: 30.3 / 16.2, 63.5 / 63.1, 68.8 / 57.7, 32.0 / 19.9, 21.8 / 20.9 s (never
slower, median -16 %); steps after it 8.1 / 9.1 and 3.1 / 3.1 img/s (no slower), same losses.
tests/xla_flags_test.py checks that a train step's loss, gradients and BN statistics are unchanged.

Only when JAX will run on CPU alone: `JAX_PLATFORMS` empty or 'cpu' and no GPU/TPU plugin
installed. Flags already in `XLA_FLAGS` win; `FKD_XLA_CPU_FLAGS=0` turns this off. No effect when
a JAX backend was already initialised before `import fkd`.
"""

from __future__ import annotations

import importlib.util
import os

CPU_XLA_FLAGS = ('--xla_llvm_disable_expensive_passes=true',)

_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                        'jax_rocm7_plugin', 'libtpu', 'jax_plugins')


def cpu_only(environ: dict[str, str] | None = None) -> bool:
  """Whether JAX will see only the CPU (from the environment, without starting JAX)."""
  environ = os.environ if environ is None else environ
  platforms = environ.get('JAX_PLATFORMS', '') or environ.get('JAX_PLATFORM_NAME', '')
  if platforms:
    return {p.strip().lower() for p in platforms.split(',') if p.strip()} <= {'cpu'}
  return not any(_installed(m) for m in _ACCELERATOR_PLUGINS)


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def with_cpu_flags(environ: dict[str, str] | None = None) -> str | None:
  """The XLA_FLAGS value with fkd's CPU flags added, or None to leave it unchanged."""
  environ = os.environ if environ is None else environ
  if environ.get('FKD_XLA_CPU_FLAGS', '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return None
  if not cpu_only(environ):
    return None
  current = environ.get('XLA_FLAGS', '')
  names = {f.split('=', 1)[0] for f in current.split()}
  extra = [f for f in CPU_XLA_FLAGS if f.split('=', 1)[0] not in names]
  return ' '.join([current, *extra]).strip() if extra else None


def apply() -> None:
  flags = with_cpu_flags()
  if flags is not None:
    os.environ['XLA_FLAGS'] = flags
