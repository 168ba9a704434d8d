"""fkd.tools.summary: parameter counts and MACs against hand counts and the references."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax import lax

from fkd.tools import summary

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_count_macs_by_hand():
  def f(x, k, k_dw, w):
    y = lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = lax.conv_general_dilated(
      y, k_dw, (2, 2), 'SAME', feature_group_count=4, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    return jnp.mean(y, axis=(1, 2)) @ w

  args = (
    jnp.zeros((1, 8, 8, 3)),
    jnp.zeros((3, 3, 3, 4)),
    jnp.zeros((3, 3, 1, 4)),
    jnp.zeros((4, 10)),
  )
  # 3x3 conv 3->4 on 8x8: 64*4*27; depthwise 3x3 stride 2 on 4 channels: 16*4*9; dense 4*10.
  expected = 64 * 4 * 27 + 16 * 4 * 9 + 4 * 10
  assert summary.count_macs(jax.make_jaxpr(jax.jit(f))(*args).jaxpr) == expected


def test_summary_of_the_references():
  s = summary.summarize('mobilenet_v2')
  assert s['params'] == 3_504_872
  assert 300e6 < s['macs'] < 301e6  # Sandler et al. 2018, Table 3: 300M multiply-adds
  assert s['flops'] > 2 * s['macs']  # XLA counts every op, a multiply-add as 2
  s = summary.summarize('efficientnet_b0')
  assert s['params'] == 5_288_548
  assert 0.38e9 < s['macs'] < 0.40e9  # Tan & Le 2019, Table 2: 0.39B FLOPs (multiply-adds)
  assert s['features']['top'] == (7, 7, 1280)
  s = summary.summarize('mobilenet_v2', None, 96)
  assert s['params'] == 2_223_872 and s['features']['last_conv'] == (3, 3, 1280)


def test_cli():
  out = subprocess.run(
    [sys.executable, '-m', 'fkd.tools.summary', 'resnet50'],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert 'trainable parameters: 25,557,032' in out
  assert 'MACs (convolutions + dense): 4,089,184,256' in out  # torchvision: 4.09 GFLOPS
  assert 'stage_4 7x7x2048' in out
  bad = subprocess.run(
    [sys.executable, '-m', 'fkd.tools.summary', 'resnet18'],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
  )
  assert bad.returncode == 2 and 'unknown model' in bad.stderr
