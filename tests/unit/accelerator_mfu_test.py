"""`benchmarks/accelerator.py`'s MFU: FLOPs per image × images/s of one device over that device's
peak (`PEAK_FLOPS`, by device kind and compute dtype), checked by hand on fake device kinds."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def bench():
  path = REPO / 'benchmarks' / 'accelerator.py'
  spec = importlib.util.spec_from_file_location('bench_accelerator', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_mfu_of_a_fake_device(bench, monkeypatch):
  monkeypatch.setitem(bench.PEAK_FLOPS, 'Fake TPU', (100e12, 50e12))
  monkeypatch.setitem(bench.PEAK_FLOPS, 'Fake TPU v9', (400e12, 400e12))
  # 6e9 FLOPs per image at 2,000 images/s = 12 TFLOP/s: 12 % of 100 T, 24 % of 50 T.
  assert bench.mfu(6e9, 2000.0, 'Fake TPU v1', 'bfloat16') == pytest.approx(0.12)
  assert bench.mfu(6e9, 2000.0, 'Fake TPU v1', 'float32') == pytest.approx(0.24)
  assert bench.mfu(6e9, 2000.0, 'Fake TPU v9 pod', 'bfloat16') == pytest.approx(0.03)  # longest
  assert bench.mfu(6e9, 2000.0, 'Abacus 3000', 'bfloat16') is None


def test_peaks_are_per_jax_device(bench):
  # A v2-8 is 4 chips of 45 T (bf16), seen by JAX as 8 devices (one per TensorCore).
  assert 8 * bench.peak_flops('TPU v2') == pytest.approx(4 * 45e12)
  assert 8 * bench.peak_flops('TPU v3') == pytest.approx(4 * 123e12)
  assert bench.peak_flops('TPU v4') == 275e12  # one megacore device per chip
  assert bench.peak_flops('TPU v5 lite') == 197e12
  assert bench.peak_flops('NVIDIA A100-SXM4-40GB') == 312e12
  assert bench.peak_flops('NVIDIA A100-SXM4-40GB', 'float32') == 156e12  # TF32, JAX's default
  assert bench.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert bench.peak_flops('NVIDIA H100 PCIe') == 756e12
  assert bench.peak_flops('Tesla T4', 'float32') == 8.1e12
  assert bench.peak_flops('NVIDIA L4') == 121e12
  assert bench.peak_flops('cpu') is None
