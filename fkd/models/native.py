"""Native XLA:CPU kernels for what XLA:CPU runs slowly, as XLA FFI custom calls.

`native_kernels.cc` (next to this file) holds the depthwise convolution's forward pass, input
gradient and kernel gradient. XLA:CPU evaluates the kernel gradient as k·k separate reductions
that each stream the activations and cotangents from memory (memory-bound, the largest single
cost of a MobileNetV2 train step on CPU); the kernel makes one pass per output row with a block of
channels of every tap in registers. All three share their work out over XLA's intra-op thread pool
(each faster than its XLA form on the MobileNetV2 and EfficientNet shapes: docs/cpu-speed.md,
`benchmarks/depthwise.py --impls shifted,native`).

The source is compiled on first use, with the system C++ compiler (`$CXX`, else `c++` / `g++`)
against the FFI headers jaxlib ships (`jax.ffi.include_dir()`), into
`$FKD_NATIVE_CACHE` (else `$XDG_CACHE_HOME/fkd/native`, else `~/.cache/fkd/native`), once per
source, jaxlib version, compiler flags and CPU model (the file name is their hash: `-march=native`
code is only loaded on the CPU it was built for). Compiling takes seconds, once, and writes
through a temporary file, so concurrent processes never load a half-written library. Without a
compiler, when compiling or loading fails, or with `FKD_NATIVE=0`, `available()` is False (the
reason is in `status`) and fkd uses the XLA formulation: the same maths, tested equal.

On by default on one CPU device (`'auto'`; `FKD_NATIVE=0` turns them off,
`DepthwiseConv(impl='native')` asks for them explicitly). Their whole-model gradients are closer
to float64 than the XLA formulations' (docs/cpu-speed.md). A student's NME follows the float32
program that trains it (students trained with the native kernels and with the XLA formulations
score differently), which is why README says which program each of its tables was trained with.

`native_kernels.cc` also holds BatchNorm's channel sums for `fkd.models.batch_norm` (Σx, Σx²
in one pass; Σg, Σg(x − μ) of the backward pass in one pass with the activation's derivative
recomputed) and the inference form of an EfficientNet block's middle
(`depthwise_bias_swish`: the expansion's activation, the depthwise convolution, its folded
BatchNorm bias, swish and the squeeze-and-excitation pooling in one pass), which frozen
teachers use.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from fkd.infra import files, runtime

Array = jax.Array

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_kernels.cc')
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')
TARGETS = {
  'fkd_depthwise_forward': 'FkdDepthwiseForward',
  'fkd_depthwise_input_grad': 'FkdDepthwiseInputGrad',
  'fkd_depthwise_kernel_grad': 'FkdDepthwiseKernelGrad',
  'fkd_depthwise_bias_swish': 'FkdDepthwiseBiasSwish',
  'fkd_batch_sums': 'FkdBatchSums',
  'fkd_batch_norm_grad_sums': 'FkdBatchNormGradSums',
}

status: dict[str, str | None] = {'library': None, 'error': None}
_lock = threading.Lock()
_loaded: bool | None = None

# What a run asks for (`config.cpu_kernels`): 'auto' and 'native' use the kernels where they
# build, 'xla' never does. `FKD_NATIVE=0/1` overrides it (`enabled`).
CPU_KERNELS = ('auto', 'native', 'xla')
_mode = 'auto'


def set_mode(mode: str) -> None:
  """Sets the process's `config.cpu_kernels` ('auto' | 'native' | 'xla'); call before tracing."""
  global _mode
  if mode not in CPU_KERNELS:
    raise ValueError(f'cpu_kernels must be one of {CPU_KERNELS}, got {mode!r}')
  _mode = mode


def mode() -> str:
  """The process's `config.cpu_kernels` (see `set_mode`)."""
  return _mode


def cache_dir() -> str:
  setting = os.environ.get('FKD_NATIVE_CACHE')
  if setting:
    return os.path.abspath(os.path.expanduser(setting))
  return runtime.fkd_cache_dir('native')


def _compiler() -> str | None:
  for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next((line for line in f if line.startswith(('model name', 'flags'))), '')
  except OSError:
    return platform.processor()


def library_path(compiler: str) -> str:
  with open(SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(
    b'\0'.join(
      [source, jaxlib.__version__.encode(), ' '.join((compiler, *FLAGS)).encode()]
      + [platform.machine().encode(), _cpu_model().encode()]
    )
  ).hexdigest()[:16]
  return os.path.join(cache_dir(), f'fkd_native_{key}.so')


def _build(compiler: str, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.replacing(path) as tmp:  # concurrent first uses never load a half-written library
    cmd = [compiler, *FLAGS, f'-I{jax.ffi.include_dir()}', SOURCE, '-o', tmp]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
      lines = (done.stderr or done.stdout).strip().splitlines()
      raise RuntimeError(f'{os.path.basename(compiler)} failed: {lines[-1] if lines else "?"}')


def _load() -> bool:
  compiler = _compiler()
  if compiler is None:
    status['error'] = 'no C++ compiler ($CXX, c++, g++, clang++)'
    return False
  try:
    path = library_path(compiler)
    if not os.path.exists(path):
      _build(compiler, path)
    library = ctypes.cdll.LoadLibrary(path)
    for target, symbol in TARGETS.items():
      capsule = jax.ffi.pycapsule(getattr(library, symbol))
      jax.ffi.register_ffi_target(target, capsule, platform='cpu')
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
    status['error'] = str(e)
    return False
  status['library'] = path
  return True


def enabled() -> bool:
  """Whether 'auto' depthwise convolutions may use the native kernels: `FKD_NATIVE=0/1` when
  set, else not with `set_mode('xla')`."""
  switch = runtime.env_switch('FKD_NATIVE')
  return switch if switch is not None else _mode != 'xla'


def disabled_by() -> str | None:
  """What turned the kernels off ('FKD_NATIVE=0', 'config.cpu_kernels=xla'), or None."""
  switch = runtime.env_switch('FKD_NATIVE')
  if switch is False:
    return 'FKD_NATIVE=0'
  if switch is None and _mode == 'xla':
    return 'config.cpu_kernels=xla'
  return None


def available() -> bool:
  """Whether the native kernels are on (`enabled`), built, loaded and registered (builds them on
  first call)."""
  global _loaded
  if not enabled():
    status['error'] = disabled_by()
    return False
  with _lock:
    if _loaded is None:
      _loaded = _load()
    return _loaded


def _call(target: str, shape, a: Array, b: Array, strides: int, pads) -> Array:
  call = jax.ffi.ffi_call(
    target, jax.ShapeDtypeStruct(tuple(shape), jnp.float32), vmap_method='sequential'
  )
  return call(
    a.astype(jnp.float32),
    b.astype(jnp.float32),
    stride=np.int64(strides),
    pad_top=np.int64(pads[0][0]),
    pad_left=np.int64(pads[1][0]),
  )


def depthwise_forward(x: Array, kernel: Array, strides: int, pads, out_hw) -> Array:
  """Depthwise conv of NHWC `x` with `kernel` (k, k, 1, C), TF-style `pads`, float32."""
  return _call('fkd_depthwise_forward', (x.shape[0], *out_hw, x.shape[3]), x, kernel, strides, pads)


def depthwise_input_grad(g: Array, kernel: Array, strides: int, pads, in_hw) -> Array:
  """dX (N, *in_hw, C) of a depthwise conv from its cotangent `g`, float32."""
  return _call(
    'fkd_depthwise_input_grad', (g.shape[0], *in_hw, g.shape[3]), g, kernel, strides, pads
  )


def depthwise_kernel_grad(x: Array, g: Array, kernel_shape, strides: int, pads) -> Array:
  """dK (k, k, 1, C) of a depthwise conv (NHWC `x`, cotangent `g`, TF-style pads), float32."""
  return _call('fkd_depthwise_kernel_grad', kernel_shape, x, g, strides, pads)


def depthwise_bias_swish(
  x: Array, kernel: Array, bias: Array, strides: int, pads, out_hw, input_bias: Array | None = None
) -> tuple[Array, Array]:
  """Inference form of [swish(x + input_bias) →] depthwise conv → folded BatchNorm → swish,
  float32: (y, row_sums), y = swish(conv(x') + bias) (N, *out_hw, C), x' = swish(x + input_bias)
  (or x), and row_sums (N, out_h, C) the sums of y over each row."""
  n, c = x.shape[0], x.shape[3]
  call = jax.ffi.ffi_call(
    'fkd_depthwise_bias_swish',
    (
      jax.ShapeDtypeStruct((n, *out_hw, c), jnp.float32),
      jax.ShapeDtypeStruct((n, out_hw[0], c), jnp.float32),
    ),
    vmap_method='sequential',
  )
  return call(
    x.astype(jnp.float32),
    kernel.astype(jnp.float32),
    (bias if input_bias is None else input_bias).astype(jnp.float32),
    bias.astype(jnp.float32),
    stride=np.int64(strides),
    pad_top=np.int64(pads[0][0]),
    pad_left=np.int64(pads[1][0]),
    input_swish=np.int64(input_bias is not None),
  )


def batch_sums(x: Array) -> Array:
  """(2, C): the sums of `x` (..., C) and of its square over every axis but the last, float32
  (float64 across blocks of rows), in one pass."""
  call = jax.ffi.ffi_call(
    'fkd_batch_sums', jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32), vmap_method='sequential'
  )
  return call(x.astype(jnp.float32))


def batch_norm_grad_sums(
  dy: Array, x: Array, mean: Array, a: Array, b: Array, activation_code: int
) -> Array:
  """(2, C): [Σg, Σg·(x − mean)] over every axis but the last, g = act'(a·(x − mean) + b)·dy with
  act by `activation_code` (0 none, 1 ReLU, 2 ReLU6, 3 swish), float32, in one pass over `dy`
  and `x`."""
  call = jax.ffi.ffi_call(
    'fkd_batch_norm_grad_sums',
    jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32),
    vmap_method='sequential',
  )
  f32 = lambda v: v.astype(jnp.float32)
  return call(f32(dy), f32(x), f32(mean), f32(a), f32(b), activation=np.int64(activation_code))
