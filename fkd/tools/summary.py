"""Parameter count and FLOPs of a backbone: `python -m fkd.tools.summary NAME [--num_classes=1000]
[--resolution=224]` (NAME from `fkd.models.model_names()`, e.g. mobilenet_v2, efficientnet_b3,
resnet50).

Prints trainable parameters (`params`), BatchNorm statistics (`batch_stats`) and the cost of one
inference forward pass of a single image, traced with abstract inputs (nothing runs), with grouped
depthwise convolutions:
- MACs: multiply-accumulates of the convolutions and dense layers (counted from the jaxpr), the
  unit papers usually call "FLOPs" (MobileNetV2 "300M", EfficientNet-B0 "0.39B");
- FLOPs: XLA's cost analysis of the whole program (every op; a multiply-add is 2 FLOPs).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp

from fkd import models
from fkd.errors import FkdError


def count_macs(jaxpr: jax.extend.core.Jaxpr) -> int:
  """Multiply-accumulates of every convolution and dot_general in `jaxpr` (sub-jaxprs included)."""
  total = 0
  for eqn in jaxpr.eqns:
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, spatial…)
      total += math.prod(out) * rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
    elif eqn.primitive.name == 'dot_general':
      lhs = eqn.invars[0].aval.shape
      (contract, _), _ = eqn.params['dimension_numbers']
      total += math.prod(out) * math.prod(lhs[d] for d in contract)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += count_macs(sub)
  return total


def summarize(
  name: str, num_classes: int | None = 1000, resolution: int = 224, **kwargs: Any
) -> dict[str, Any]:
  """{'params', 'batch_stats', 'macs', 'flops', 'features'} of `name` on one resolution² image."""
  if name not in models.model_names():
    raise FkdError(f'unknown model {name!r}; known: {", ".join(models.model_names())}')
  if name not in ('resnet', 'resnet50'):
    kwargs.setdefault('depthwise_impl', 'grouped')  # one conv op, as the FLOPs convention counts
  model = models.get_model(name, num_outputs=num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  apply = jax.jit(functools.partial(model.apply, train=False))
  cost = apply.lower(variables, x).cost_analysis()
  if isinstance(cost, list | tuple):  # older JAX: one dict per computation
    cost = cost[0]
  _, features = jax.eval_shape(apply, variables, x)
  macs = count_macs(jax.make_jaxpr(apply)(variables, x).jaxpr)
  return {
    'params': models.count_params(variables['params']),
    'batch_stats': models.count_params(variables.get('batch_stats', {})),
    'macs': macs,
    'flops': int(cost['flops']),
    'features': {k: tuple(v.shape[1:]) for k, v in features.items()},
  }


def main(argv: list[str]) -> None:
  from absl import flags

  if len(argv) != 2:
    raise FkdError(
      'usage: python -m fkd.tools.summary NAME [--num_classes=1000] [--resolution=224]'
    )
  f = flags.FLAGS
  if not 32 <= f.resolution <= 4096:
    raise FkdError(f'--resolution must be an integer in [32, 4096] (pixels), got {f.resolution}')
  if not 0 <= f.num_classes <= 1_000_000:
    raise FkdError(
      f'--num_classes must be an integer in [0, 1000000] (0: no head), got {f.num_classes}'
    )
  num_classes = f.num_classes if f.num_classes > 0 else None
  s = summarize(argv[1], num_classes, f.resolution)
  head = f'{num_classes}-class head' if num_classes else 'no head'
  print(f'{argv[1]} at {f.resolution}x{f.resolution}, {head}')
  print(f'  trainable parameters: {s["params"]:,}')
  print(f'  BatchNorm statistics: {s["batch_stats"]:,}')
  print(f'  MACs (convolutions + dense): {s["macs"]:,} ({s["macs"] / 1e9:.3f} G)')
  print(f'  FLOPs (XLA cost analysis, all ops): {s["flops"]:,} ({s["flops"] / 1e9:.3f} G)')
  print(
    '  features: ' + ', '.join(f'{k} {"x".join(map(str, v))}' for k, v in s['features'].items())
  )


if __name__ == '__main__':
  from absl import flags

  from fkd import cli

  flags.DEFINE_integer('num_classes', 1000, 'Head size; 0 = no head (pooled features).')
  flags.DEFINE_integer('resolution', 224, 'Input height and width.')

  cli.run(main, positional_args=True)
