"""Which accelerator this machine has, read before JAX is installed, and what follows from it.

The Colab install cell runs before fkd or JAX are installed: it loads this module from the cloned
repository (standard library only; importing it touches no JAX), detects the accelerator from
the hardware, and installs the matching JAX build (`pip_requirement`). After the install,
`confirm` checks that JAX sees that accelerator, so a CPU-only JAX on a TPU runtime is an error,
not a silently slow run.

Detection reads the PCI devices (`/sys/bus/pci/devices/*/{vendor,device,class}`), as JAX's own
backend selection does, rather than one device node: `/dev/accel0` is absent on TPU generations
that attach through VFIO, and present-but-unrelated nodes exist in containers. Google's vendor ID
also covers its virtual network card (gVNIC, on GPU runtimes too), so a Google device counts as a
TPU only by a TPU device ID or the processing-accelerator class. Device nodes are the fallback
when the PCI tree is not visible (some containers).
"""

from __future__ import annotations

import glob
import os

GOOGLE = '0x1ae0'
NVIDIA = '0x10de'
# Google TPU PCI device IDs (the table of `jax/_src/hardware_utils.py`): v2/v3, v4, v5p, v5e,
# v6e, 7x. A Google device of PCI class 0x12 (processing accelerator) counts too.
TPU_DEVICE_IDS = frozenset({'0x0027', '0x005e', '0x0062', '0x0063', '0x006f', '0x0076'})
_ACCELERATOR_CLASS = '0x12'  # PCI base class: processing accelerators
_DISPLAY_CLASS = '0x03'  # PCI base class: display controllers (NVIDIA GPUs; not NVSwitch bridges)
JAX_EXTRAS = {'tpu': 'tpu', 'gpu': 'cuda12', 'cpu': None}
MIN_JAX = (0, 10)  # pyproject's floor


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip().lower()
  except OSError:
    return ''


def pci_accelerator(sys_root: str = '/sys') -> str | None:
  """'tpu' or 'gpu' from the PCI devices under `sys_root`, None when there is neither (or no PCI
  tree). A TPU wins over a GPU (no runtime has both)."""
  found = set()
  for vendor_path in glob.glob(os.path.join(sys_root, 'bus', 'pci', 'devices', '*', 'vendor')):
    device_dir = os.path.dirname(vendor_path)
    vendor = _read(vendor_path)
    pci_class = _read(os.path.join(device_dir, 'class'))
    if vendor == GOOGLE and (
      _read(os.path.join(device_dir, 'device')) in TPU_DEVICE_IDS
      or pci_class.startswith(_ACCELERATOR_CLASS)
    ):
      found.add('tpu')
    elif vendor == NVIDIA and (not pci_class or pci_class.startswith(_DISPLAY_CLASS)):
      found.add('gpu')
  return 'tpu' if 'tpu' in found else 'gpu' if 'gpu' in found else None


def detect(sys_root: str = '/sys', dev_root: str = '/dev') -> str:
  """'tpu', 'gpu' or 'cpu': the PCI devices first, then device nodes (`accel*` / `vfio/*` for a
  TPU only when there is no PCI tree to read; `nvidia0` / `nvidiactl` for a GPU)."""
  found = pci_accelerator(sys_root)
  if found:
    return found
  pci_visible = bool(glob.glob(os.path.join(sys_root, 'bus', 'pci', 'devices', '*')))
  if not pci_visible and glob.glob(os.path.join(dev_root, 'accel[0-9]*')):
    return 'tpu'
  if any(os.path.exists(os.path.join(dev_root, n)) for n in ('nvidia0', 'nvidiactl')):
    return 'gpu'
  return 'cpu'


def _version(text: str) -> tuple[int, ...]:
  parts = []
  for piece in text.split('.')[:3]:
    digits = ''.join(c for c in piece if c.isdigit()) if piece else ''
    if not digits or not piece[0].isdigit():
      break
    parts.append(int(digits))
  return tuple(parts)


def pip_requirement(accelerator: str, installed_jax: str | None) -> str:
  """The JAX requirement to install with fkd for `accelerator`: `jax[tpu]` / `jax[cuda12]` /
  `jax`, pinned to the runtime's installed JAX when that is new enough (pip then only adds a
  missing accelerator plugin and keeps the runtime's build), else `>=0.10` (pip picks within
  fkd's supported range)."""
  extra = JAX_EXTRAS[accelerator]
  name = f'jax[{extra}]' if extra else 'jax'
  if installed_jax and _version(installed_jax)[:2] >= MIN_JAX:
    return f'{name}=={installed_jax}'
  return f'{name}>={MIN_JAX[0]}.{MIN_JAX[1]}'


def compute_dtype(platform: str, compute_capability: str | None = None) -> str:
  """The compute dtype fkd's notebooks train in on `platform` (a JAX platform name): bfloat16 on
  a TPU (the MXU's type) and on an NVIDIA GPU whose tensor cores have bfloat16 (compute
  capability 8.0 and newer: A100, L4, H100), float32 elsewhere (a T4 or V100 has no bfloat16
  tensor cores, and on a CPU bfloat16 is slower)."""
  if platform == 'tpu':
    return 'bfloat16'
  if platform in ('gpu', 'cuda') and compute_capability:
    major = _version(str(compute_capability))[:1]
    if major and major[0] >= 8:
      return 'bfloat16'
  return 'float32'


def confirm(expected: str, platform: str) -> str:
  """`platform` (JAX's `jax.devices()[0].platform`) as 'tpu' / 'gpu' / 'cpu', or a RuntimeError
  when it is not the `expected` accelerator (JAX installed without its plugin, or the plugin
  failed to start)."""
  seen = {'cuda': 'gpu', 'rocm': 'gpu'}.get(platform, platform)
  if expected != 'cpu' and seen != expected:
    raise RuntimeError(
      f'this runtime has a {expected.upper()} but JAX runs on {platform}: reinstall with '
      f'`pip install -U "{pip_requirement(expected, None)}"` and restart the runtime'
    )
  return seen
