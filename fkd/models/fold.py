"""A trained model as an inference program: BatchNorm folded into the preceding convolutions.

In inference mode a BatchNorm after a convolution is a per-output-channel affine map,
`a·(conv(x) − μ) + β` with `a = γ / √(σ² + ε)`, so it can be moved into the convolution once:
kernel `W·a` (over the output-channel axis, the last one of both `nn.Conv`/`Conv1x1` (…, Cin, Cout)
and `DepthwiseConv` (k, k, 1, C) kernels) and a bias `β − μ·a`. `fold_batch_norm(module,
variables)` does that on loaded variables and returns the model built with `folded=True`, whose
BatchNorms are only `activation(x + bias)`; no statistics remain and dropout / drop-connect are
inference no-ops. The checkpoint layout is unchanged: folding is a transform applied at load
(`fkd.inference.load_frozen`: frozen teachers, prediction, export).

Conv ↔ BatchNorm pairs are found by the models' names (siblings in one module): `X_bn` follows
`X` (`expand_bn`, `depthwise_bn`, `project_bn`) or `X_conv` (`stem_bn`, `top_bn`, `last_bn`,
`downsample_bn`), `bnK` follows `convK` (ResNet). A BatchNorm without exactly one such conv is an
error, as are statistics left over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


def can_fold(module: Any) -> bool:
  """Whether `module` has the `folded` inference form (and is not folded already)."""
  fields = {f.name for f in dataclasses.fields(module)} if dataclasses.is_dataclass(module) else ()
  return 'folded' in fields and 'bn_epsilon' in fields and not module.folded


def _conv_candidates(bn_name: str) -> list[str]:
  names = []
  if bn_name.endswith('_bn'):
    names += [bn_name[: -len('_bn')], bn_name[: -len('_bn')] + '_conv']
  if 'bn' in bn_name:
    names.append(bn_name.replace('bn', 'conv', 1))
  return list(dict.fromkeys(names))


def _is_bn_stats(node: Any) -> bool:
  return isinstance(node, Mapping) and set(node) == {'mean', 'var'}


def _fold_tree(params: Mapping, stats: Mapping, epsilon: float, path: str) -> dict[str, Any]:
  out = dict(params)
  for name, node in stats.items():
    where = f'{path}/{name}'
    if name not in params:
      raise ValueError(f'batch_stats {where} has no parameters')
    if not _is_bn_stats(node):
      out[name] = _fold_tree(params[name], node, epsilon, where)
      continue
    convs = [c for c in _conv_candidates(name) if 'kernel' in params.get(c, {})]
    if len(convs) != 1:
      raise ValueError(f'BatchNorm {where}: no single preceding convolution among {convs}')
    (conv,) = convs
    bn = params[name]
    mean = np.asarray(node['mean'], np.float64)
    var = np.asarray(node['var'], np.float64)
    scale = np.asarray(bn['scale'], np.float64)
    bias = np.asarray(bn['bias'], np.float64)
    a = scale / np.sqrt(var + epsilon)
    kernel = np.asarray(params[conv]['kernel'])
    if kernel.shape[-1] != a.shape[0]:
      raise ValueError(f'BatchNorm {where}: {a.shape[0]} channels, {conv} kernel {kernel.shape}')
    folded_conv = dict(params[conv])
    folded_conv['kernel'] = (kernel.astype(np.float64) * a).astype(kernel.dtype)
    shift = mean
    if 'bias' in params[conv]:  # conv bias b: a·(y + b − μ) + β
      shift = mean - np.asarray(params[conv]['bias'], np.float64)
      del folded_conv['bias']
    out[conv] = folded_conv
    out[name] = {'bias': (bias - shift * a).astype(np.asarray(bn['bias']).dtype)}
  return out


def fold_batch_norm(module: Any, variables: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
  """(`module` with `folded=True`, its variables {'params'}) computing `module.apply(variables,
  x, train=False)` (to float32 rounding). Host NumPy arrays out."""
  if not can_fold(module):
    raise ValueError(f'{type(module).__name__} has no folded inference form')
  params = _fold_tree(
    variables['params'], variables.get('batch_stats', {}), float(module.bn_epsilon), ''
  )
  return module.clone(folded=True), {'params': params}
