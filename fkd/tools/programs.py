"""Every XLA program of a config, built from shapes alone and lowered for any platform.

A config's programs are each stage's train step (the trainer's `make_train_step`, frozen teachers
included), the evaluation forward pass (`inference.Predictor.landmarks` at `config.eval.batch_size`)
and the predict forward pass (the same at one image), and, with `config.data.augment_on` 'device' or
'auto' (the device on an accelerator), the training augmentation (`fkd.data.device_augment`, with
the ASM soft landmarks when the method trains on them) at the first stage's batch size, named
`augment`. `build(config)` makes them from the config's shapes only: no dataset, no checkpoint
(teachers are frozen from zero variables, folded as training folds them; `init_from` and the
synthetic pre-stage are left out: they change values, not programs).

`lower(program, platform)` traces a program inside `layers.target_platform(platform)`, so every
'auto' choice resolves as it would on that platform, and lowers it with
`lowering_platforms=(platform,)`: on a CPU-only machine this is how the TPU / GPU formulation is
built and checked (`custom_calls`). Used by `benchmarks/accelerator.py` and
`tests/accelerator_test.py`.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fkd import inference, methods
from fkd.data import asm, device_augment
from fkd.models import layers
from fkd.training import trainer

# Custom-call targets that are not kernels: partitioner annotations every backend handles.
NEUTRAL_CUSTOM_CALLS = frozenset(
  {'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape', 'annotate_device_placement'}
)
_CUSTOM_CALL = re.compile(r'stablehlo\.custom_call\s+@([\w.$-]+)|call_target_name\s*=\s*"([^"]+)"')


@dataclasses.dataclass(frozen=True)
class Program:
  """One jittable function and its abstract arguments; `images`: images per call."""

  name: str
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  images: int
  kind: str  # 'train' | 'eval' | 'predict' | 'augment'


def _spec(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _zeros(tree: Any) -> Any:
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def _frozen(model: Any, head: Any, meta: dict[str, Any], image_size: int):
  """(Frozen, variable shapes) of `model` as `inference.load_frozen` freezes a checkpoint."""
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
  frozen, variables = inference.freeze(model, head, meta, _zeros(shapes))
  return frozen, _spec(variables)


def batch_spec(config: Any, batch: int, method: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """The arrays of a train batch (`fkd.data.pipeline.train_batch`) of `method`, as shapes."""
  size, n = config.data.image_size, config.data.num_landmarks
  spec = {
    'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
    'landmarks': jax.ShapeDtypeStruct((batch, n, 2), jnp.float32),
  }
  if method.soft_targets(config) is not None:  # the method trains on ASM soft landmarks
    spec['soft_landmarks'] = jax.ShapeDtypeStruct((batch, n, 2), jnp.float32)
  return spec


def augment_program(config: Any, batch: int, method: Any) -> Program:
  """The device augmentation of `config` at `batch` faces: what the trainer runs before each step
  (`trainer.augment_batch_fn`), from shapes (an identity flip permutation and a stand-in shape
  model: values, not the program, differ from a dataset's)."""
  size, n = config.data.image_size, config.data.num_landmarks
  aug = device_augment.Augmentation(
    config.data.augment if config.data.augment in device_augment.MODES else 'none',
    tuple(range(n)),
    margin=3.0 * size / 224.0,
    box_noise=tuple(float(v) for v in config.data.get('box_noise', ())),
    fill=config.data.get('augment_fill', 'zeros'),
  )
  pca = None
  if method.soft_targets(config) is not None:
    k = min(2 * n, 16)
    pca = asm.PCAModel(
      mean=np.full(2 * n, size / 2.0),
      components=np.eye(2 * n, k),
      eigenvalues=np.linspace(100.0, 1.0, k),
      acc=None,
      k=k,
      ratio=np.full(k, 1.0 / k),
      num_shapes=0,
    )
  spec = {
    'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
    'landmarks': jax.ShapeDtypeStruct((batch, n, 2), jnp.float32),
    'plain_prob': jax.ShapeDtypeStruct((batch,), jnp.float32),
    'index': jax.ShapeDtypeStruct((batch,), jnp.int32),
  }
  if aug.fill == 'context':  # ibug_300w/context's images: the crop box doubled
    spec['context'] = jax.ShapeDtypeStruct((batch, 2 * size, 2 * size, 3), jnp.uint8)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  fn = device_augment.make_augment(aug, pca)
  return Program('augment', fn, (spec, scalar, scalar), batch, 'augment')


def build(
  config: Any,
  train_batch: int | None = None,
  eval_batch: int | None = None,
  optimizer: optax.GradientTransformation | None = None,
):
  """Every program of `config` (list of `Program`): per stage `<stage>/train`, `<stage>/eval`,
  `<stage>/predict`. `train_batch` / `eval_batch` override the config's batch sizes, `optimizer`
  the stages' own."""
  method = methods.get(config)
  size, n = config.data.image_size, config.data.num_landmarks
  dtype = config.get('compute_dtype', 'float32')
  frozen_cache: dict[str, tuple[Any, Any]] = {}

  def frozen(name: str):
    if name not in frozen_cache:
      stage = method.stage(name, config)
      teachers = {t: frozen(t)[0] for t in stage.teachers}
      model = trainer.build_model(stage, n, dtype, **method.model_kwargs(stage, config, teachers))
      meta = {'num_landmarks': n, 'image_size': size, 'model': stage.model_config.name}
      frozen_cache[name] = _frozen(model, stage.head, meta, size)
    return frozen_cache[name]

  programs = []
  rng = _spec(jax.random.key_data(jax.random.key(0)))
  for name in config.stages:
    stage = method.stage(name, config)
    teachers = {t: frozen(t)[0] for t in stage.teachers}
    teacher_variables = {t: frozen(t)[1] for t in stage.teachers}
    extra = method.model_kwargs(stage, config, teachers)
    model = trainer.build_model(stage, n, dtype, **extra)
    tc = stage.train_config
    stage_optimizer = optimizer or trainer.make_optimizer(tc, 1000)
    apply_kwargs = method.train_apply_kwargs(stage, config)
    state = jax.eval_shape(
      lambda: trainer.init_state(model, stage_optimizer, size, 0, apply_kwargs)  # noqa: B023
    )
    step = trainer.make_train_step(
      model, stage_optimizer, stage, method.loss_fn(stage, config), teachers, apply_kwargs
    )
    b = train_batch or tc.batch_size
    batch = batch_spec(config, b, method)
    args = (state, batch, rng, teacher_variables)
    programs.append(Program(f'{name}/train', step, args, b, 'train'))
    served, variables = _frozen(model, stage.head, {}, size)
    predictor = types.SimpleNamespace(module=served.module, head=served.head)
    forward = lambda v, x, p=predictor: inference.Predictor.landmarks(p, v, x)
    for kind, count in (('eval', eval_batch or config.eval.batch_size), ('predict', 1)):
      images = jax.ShapeDtypeStruct((count, size, size, 3), jnp.uint8)
      programs.append(Program(f'{name}/{kind}', forward, (variables, images), count, kind))
  # 'auto' is the device on the accelerators these programs are for.
  if config.data.get('augment_on', 'auto') != 'host' and config.stages:
    first = method.stage(config.stages[0], config).train_config.batch_size
    programs.append(augment_program(config, train_batch or first, method))
  return programs


def trace(program: Program, platform: str | None = None):
  """`jax.jit(program.fn).trace(...)` with every 'auto' resolved for `platform` (None: here).

  Traced through a fresh wrapper each time: JAX caches a jitted function's trace by the
  function, and the target platform is not part of that key, so `program.fn` itself would come
  back with the formulation of whichever platform traced it first.
  """
  fresh = lambda *args: program.fn(*args)
  if platform is None:
    return jax.jit(fresh).trace(*program.args)
  with layers.target_platform(platform):
    return jax.jit(fresh).trace(*program.args)


def lower(program: Program, platform: str):
  """The program traced and lowered for `platform` ('cpu' | 'cuda' | 'rocm' | 'tpu')."""
  return trace(program, platform).lower(lowering_platforms=(platform,))


def custom_calls(stablehlo: str) -> dict[str, int]:
  """Counts of the custom-call targets in StableHLO text that are kernels (a backend must provide
  them), i.e. all but the partitioner annotations of `NEUTRAL_CUSTOM_CALLS`."""
  counts: dict[str, int] = {}
  for match in _CUSTOM_CALL.finditer(stablehlo):
    target = match.group(1) or match.group(2)
    if target not in NEUTRAL_CUSTOM_CALLS:
      counts[target] = counts.get(target, 0) + 1
  return counts
