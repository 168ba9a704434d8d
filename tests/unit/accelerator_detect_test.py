"""`fkd.infra.accelerator`: the accelerator from faked /sys and /dev trees, the JAX requirement
and compute dtype that follow, and that the module loads without fkd's or JAX's imports (the
Colab install cell runs it before anything is installed)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from fkd.infra import accelerator

REPO = pathlib.Path(__file__).resolve().parents[2]


def pci(root: pathlib.Path, slot: str, vendor: str, device: str, pci_class: str) -> None:
  d = root / 'bus' / 'pci' / 'devices' / slot
  d.mkdir(parents=True)
  (d / 'vendor').write_text(vendor + '\n')
  (d / 'device').write_text(device + '\n')
  (d / 'class').write_text(pci_class + '\n')


def virtio(root: pathlib.Path) -> None:  # what every cloud VM has: Red Hat virtio, Intel bridge
  pci(root, '0000:00:00.0', '0x8086', '0x1237', '0x060000')
  pci(root, '0000:00:03.0', '0x1af4', '0x1000', '0x020000')


@pytest.mark.parametrize(
  'devices,expected',
  [
    ([], 'cpu'),
    ([('0x1ae0', '0x0027', '0xff0000')] * 4, 'tpu'),  # TPU v2/v3: 4 chips
    ([('0x1ae0', '0x0063', '0x120000')], 'tpu'),  # v5e
    ([('0x1ae0', '0x0099', '0x120000')], 'tpu'),  # an unknown generation, accelerator class
    ([('0x1ae0', '0x0042', '0x020000')], 'cpu'),  # gVNIC: Google's network card is no TPU
    ([('0x1ae0', '0x0042', '0x020000'), ('0x10de', '0x1eb8', '0x030200')], 'gpu'),  # T4 + gVNIC
    ([('0x10de', '0x20b0', '0x030000')], 'gpu'),  # A100 (VGA class)
    ([('0x10de', '0x22a3', '0x068000')], 'cpu'),  # an NVSwitch bridge alone is no GPU
  ],
)
def test_detect_from_pci(tmp_path, devices, expected):
  sys_root, dev_root = tmp_path / 'sys', tmp_path / 'dev'
  dev_root.mkdir()
  virtio(sys_root)
  for i, (vendor, device, pci_class) in enumerate(devices):
    pci(sys_root, f'0000:00:{4 + i:02x}.0', vendor, device, pci_class)
  assert accelerator.detect(str(sys_root), str(dev_root)) == expected


def test_device_nodes_are_only_a_fallback(tmp_path):
  sys_root, dev_root = tmp_path / 'sys', tmp_path / 'dev'
  dev_root.mkdir()
  (dev_root / 'accel0').touch()
  # No PCI tree to read (a container): the TPU device node decides.
  assert accelerator.detect(str(sys_root), str(dev_root)) == 'tpu'
  # A readable PCI tree without a TPU: /dev/accel0 alone is not a TPU.
  virtio(sys_root)
  assert accelerator.detect(str(sys_root), str(dev_root)) == 'cpu'
  (dev_root / 'nvidiactl').touch()
  assert accelerator.detect(str(sys_root), str(dev_root)) == 'gpu'


def test_this_machine_is_read_without_error():
  assert accelerator.detect() in ('tpu', 'gpu', 'cpu')


@pytest.mark.parametrize(
  'accel,installed,expected',
  [
    ('tpu', '0.11.2', 'jax[tpu]==0.11.2'),  # keep the runtime's JAX, add libtpu if missing
    ('gpu', '0.10.0', 'jax[cuda12]==0.10.0'),
    ('cpu', '0.12.1', 'jax==0.12.1'),
    ('tpu', '0.5.2', 'jax[tpu]>=0.10'),  # too old for fkd: upgrade
    ('gpu', None, 'jax[cuda12]>=0.10'),
    ('tpu', '0.10.0rc1', 'jax[tpu]==0.10.0rc1'),
    ('tpu', '0.9.9', 'jax[tpu]>=0.10'),
  ],
)
def test_pip_requirement(accel, installed, expected):
  assert accelerator.pip_requirement(accel, installed) == expected


@pytest.mark.parametrize(
  'platform,capability,expected',
  [
    ('tpu', None, 'bfloat16'),
    ('gpu', '8.0', 'bfloat16'),  # A100
    ('gpu', '9.0', 'bfloat16'),  # H100
    ('gpu', '8.9', 'bfloat16'),  # L4
    ('gpu', '7.5', 'float32'),  # T4: no bfloat16 tensor cores
    ('gpu', '7.0', 'float32'),  # V100
    ('gpu', None, 'float32'),
    ('cpu', None, 'float32'),
  ],
)
def test_compute_dtype(platform, capability, expected):
  assert accelerator.compute_dtype(platform, capability) == expected


def test_confirm():
  assert accelerator.confirm('tpu', 'tpu') == 'tpu'
  assert accelerator.confirm('gpu', 'cuda') == 'gpu'
  assert accelerator.confirm('cpu', 'cpu') == 'cpu'
  with pytest.raises(RuntimeError, match=r'TPU but JAX runs on cpu.*jax\[tpu\]'):
    accelerator.confirm('tpu', 'cpu')
  with pytest.raises(RuntimeError, match='GPU'):
    accelerator.confirm('gpu', 'cpu')


def test_loads_without_jax_or_fkd():
  """The install cell's situation: only the standard library, the module loaded by its path."""
  path = str(REPO / 'fkd' / 'infra' / 'accelerator.py')
  code = (
    'import sys, importlib.util\n'
    'sys.modules["jax"] = None  # any import of jax fails\n'
    f'spec = importlib.util.spec_from_file_location("probe", {path!r})\n'
    'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n'
    'print(m.detect(), "fkd" in sys.modules)\n'
  )
  out = subprocess.run(
    [sys.executable, '-S', '-c', code], capture_output=True, text=True, check=True
  )
  accel, fkd_loaded = out.stdout.split()
  assert accel in ('tpu', 'gpu', 'cpu') and fkd_loaded == 'False'
