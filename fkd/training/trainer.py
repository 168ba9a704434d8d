"""The generic trainer: every stage of every method (`fkd.methods`) trains the same way.

`run(config, workdir)` is the whole job: validate, load data, train every stage of
`config.stages` (skipping finished ones, resuming interrupted ones, and using `config.<stage>_ckpt`
in place of training a stage) and evaluate every model the workdir holds. Each stage lives in
`<workdir>/<stage>/` as Orbax checkpoints whose meta holds the model, its head, the method and
the program that trained it (`program`: backend, devices, formulations, native kernels).

The loop keeps an accelerator busy: batches are placed on the devices two steps ahead on a
thread (`DevicePrefetch`), metrics stay on the device until a log or checkpoint step
(`StepQueue`: a NaN/Inf step is still named and never saved) and checkpoints are written by
Orbax in the background. `config.eval_every_steps` scores a validation split as the stage trains
(`validation_data`), `config.keep_best` keeps the best of those models in `<stage>/best/`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from fkd import inference, methods, models
from fkd.data import device_augment
from fkd.data import pipeline as ip
from fkd.errors import FkdError
from fkd.evaluation import evaluate
from fkd.evaluation import metrics as eval_metrics
from fkd.infra import checkpoint, config_check, metric_writer, runtime, sharding
from fkd.infra import workdir as workdir_lib
from fkd.methods import Frozen, Method, Stage
from fkd.models import batch_norm, layers, native
from fkd.training import init_from as pretrained
from fkd.training import prestage as pretrain


def build_model(stage: Stage, num_landmarks: int, compute_dtype: str = 'float32', **extra: Any):
  """The Flax module of a stage: its model config, head outputs and method extras, computing in
  `compute_dtype` (`config.compute_dtype`)."""
  kwargs = {**methods.base.plain(stage.model_config.kwargs), **extra}
  return inference.make_model(
    stage.model_config.name, kwargs, stage.head, num_landmarks, compute_dtype
  )


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked before a single file is written.


def validate(config: Any, workdir: str, allow_config_change: bool = False) -> Method:
  """Checks the config, the stages' inputs and the workdir's stage records (`fkd.infra.workdir`);
  returns the config's method."""
  method = methods.get(config)
  config_check.check(config, jax.device_count(), models.model_names(), jax.process_count())
  stages = [method.stage(name, config) for name in config.stages]
  for stage in stages:
    pretrained.check(stage.model_config, stage.role)
  method.validate(config)
  if config.eval.frame != 'crop':
    raise FkdError(
      f"config.eval.frame: only 'crop' is implemented (NME in the model's face crop, "
      f'as KD-Loss reports it), got {config.eval.frame!r}'
    )
  ip.check_prepared_or_buildable(config)
  for stage in stages:
    if config.get(f'{stage.name}_ckpt'):
      continue  # not trained here
    for teacher in stage.teachers:
      explicit = config.get(f'{teacher}_ckpt')
      if explicit and checkpoint.read_meta(explicit) is None:
        raise FkdError(f'config.{teacher}_ckpt: no checkpoint at {explicit}')
      if (
        not explicit
        and teacher not in config.stages
        and checkpoint.read_meta(os.path.join(workdir, teacher)) is None
      ):
        raise FkdError(
          f'{stage.name} needs {teacher}: train it first (add it to config.stages) '
          f'or set config.{teacher}_ckpt'
        )
  # Writability of the workdir, without leaving anything behind when it is new.
  probe = os.path.abspath(workdir)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise FkdError(f'workdir {workdir} is not writable ({probe} does not allow writing)')
  if os.path.isdir(workdir):
    workdir_lib.check_config(config, workdir, method.stages, allow_config_change)
  return method


# ---------------------------------------------------------------------------------------------
# Train state and step.


def make_schedule(tc: Any, steps: int) -> optax.Schedule:
  """'inverse_time' is Keras' legacy `decay` (the KD-Loss recipe); 'cosine' suits short runs."""
  if tc.schedule == 'inverse_time':
    return lambda step: tc.lr / (1.0 + tc.lr_decay * step)
  if tc.schedule == 'cosine':
    warmup = max(1, min(tc.warmup_steps, steps // 4))  # short runs: at most a quarter warms up
    return optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, max(steps, warmup + 1))
  if tc.schedule == 'steps':  # x lr_decay_factor at each epoch of lr_boundaries_epochs
    per_epoch = steps / max(tc.num_epochs, 1e-9)
    return optax.piecewise_constant_schedule(
      tc.lr, {round(b * per_epoch): tc.lr_decay_factor for b in tc.lr_boundaries_epochs}
    )
  raise FkdError(f"schedule must be 'inverse_time', 'cosine' or 'steps', got {tc.schedule!r}")


def make_optimizer(tc: Any, steps: int = 1) -> optax.GradientTransformation:
  return optax.adam(make_schedule(tc, steps), b1=tc.adam_b1, b2=tc.adam_b2, eps=tc.adam_eps)


def init_state(
  model, optimizer, image_size: int, seed: int, apply_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """Fresh {'params', 'batch_stats', 'opt_state', 'step'} (init jitted: faster to compile).

  `apply_kwargs`: those of the train step, so training-only parts (adapters) get parameters.
  """
  rng = jax.random.key(seed)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  init = jax.jit(functools.partial(model.init, train=False, **dict(apply_kwargs or {})))
  variables = init({'params': rng, 'dropout': rng}, dummy)
  params = variables['params']
  return {
    'params': params,
    'batch_stats': variables.get('batch_stats', {}),
    'opt_state': optimizer.init(params),
    'step': jnp.zeros((), jnp.int32),
  }


CPU_FROZEN_CHUNK = 4  # images per call of a frozen model on one CPU device; `FKD_FROZEN_CHUNK`


def frozen_chunk() -> int:
  """Images per call of a frozen model in a train step; 0 = the whole batch in one call.

  On one CPU device `CPU_FROZEN_CHUNK`, or one call with `config.cpu_kernels='xla'` (the plain
  XLA program); `$FKD_FROZEN_CHUNK` overrides both. Elsewhere one call (and under
  `models.layers.target_platform` of another platform: its program).
  """
  if models.layers.current_platform() != 'cpu' or jax.device_count() != 1:
    return 0
  default = 0 if native.mode() == 'xla' else CPU_FROZEN_CHUNK
  return int(os.environ.get('FKD_FROZEN_CHUNK', default))


def frozen_apply(module, variables, images: jax.Array, chunk: int | None = None):
  """`module.apply(variables, images, train=False)` of a frozen model (a teacher in the step).

  On one CPU device the batch runs `chunk` images at a time (`lax.map`; default `frozen_chunk()`:
  `$FKD_FROZEN_CHUNK`, else `CPU_FROZEN_CHUNK` = 4; 0 = one call): inference mode treats images
  independently, and a few images' activations stay in cache where the whole batch's stream
  through memory (faster for the frozen EfficientNet-B3 forward pass at 224², batch 32: README
  "Speed on CPU"). Same outputs to float32 rounding. Elsewhere (GPU/TPU, a
  batch sharded over devices) one call.
  """
  batch = images.shape[0]
  if chunk is None:
    chunk = frozen_chunk() or batch
  if chunk <= 0 or chunk >= batch or batch % chunk:
    return module.apply(variables, images, train=False)
  chunks = images.reshape(batch // chunk, chunk, *images.shape[1:])
  out = jax.lax.map(lambda x: module.apply(variables, x, train=False), chunks)
  return jax.tree.map(lambda a: a.reshape(batch, *a.shape[2:]), out)


def weighted_mean(fn, weight: jax.Array, *args: Any) -> Any:
  """`fn(*args)` (a pytree of batch means, e.g. (loss, terms)) as the `weight`-weighted mean of
  `fn` on each example alone: what a batch of only the examples of weight 1 gives, with
  examples of weight 0 (`sharding.pad_batch`'s padding) adding nothing, gradients included.
  Every fkd loss and train metric is a mean of per-example terms, so the two agree."""
  values = jax.vmap(lambda *example: fn(*jax.tree.map(lambda a: a[None], example)))(*args)
  total = jnp.sum(weight)
  return jax.tree.map(lambda v: jnp.sum(v * weight) / total, values)


def make_train_step(
  model,
  optimizer,
  stage: Stage,
  loss_fn: methods.LossFn,
  teachers: Mapping[str, Frozen],
  apply_kwargs: Mapping[str, Any] | None = None,
):
  """A pure step(state, batch, rng, teacher_variables) -> (state, metrics).

  The teachers are frozen inputs: inference mode (as `inference.load_frozen` gives them: BatchNorm
  folded into the convolutions) and `stop_gradient` on their outputs and features. `loss_fn` is
  the method's (`Method.loss_fn`). A batch with `sharding.WEIGHT` (a padded batch) weights the
  loss, the metrics and the BatchNorm statistics per example (`weighted_mean`,
  `models.batch_norm.example_weights`).
  """
  apply_kwargs = dict(apply_kwargs or {})

  def step(state, batch, rng, teacher_variables):
    chex.assert_rank(batch['image'], 4)
    chex.assert_type(batch['image'], jnp.uint8)
    images = batch['image'].astype(jnp.float32) / 255.0  # models normalise inside if they do
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(rng)  # raw uint32 key data (replicable across hosts)
    rng = jax.random.fold_in(rng, state['step'])
    teacher_outputs = {  # float32 whatever the compute dtype: losses and Grams are float32
      name: inference.float32(
        jax.lax.stop_gradient(frozen_apply(frozen.module, teacher_variables[name], images))
      )
      for name, frozen in teachers.items()
    }

    weight = batch.get(sharding.WEIGHT)

    def objective(params):
      with models.batch_norm.example_weights(weight):
        (outputs, features), mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']},
          images,
          train=True,
          mutable=['batch_stats'],
          rngs={'dropout': rng},
          **apply_kwargs,
        )
      outputs, features = inference.float32((outputs, features))
      if weight is None:
        loss, terms = loss_fn(outputs, features, batch, teacher_outputs)
      else:
        loss, terms = weighted_mean(loss_fn, weight, outputs, features, batch, teacher_outputs)
      return loss, (terms, mutated.get('batch_stats', {}), outputs)

    (loss, (terms, batch_stats, outputs)), grads = jax.value_and_grad(objective, has_aux=True)(
      state['params']
    )
    chex.assert_shape(loss, ())
    new_state, metrics = apply_update(optimizer, state, grads, batch_stats, loss, terms)
    mask = batch.get(ip.LABELLED)  # unlabelled points: out of the metrics as of the loss
    if weight is None:
      metrics.update(stage.head.train_metrics(outputs, batch['landmarks'], mask))
    else:
      metrics.update(
        weighted_mean(stage.head.train_metrics, weight, outputs, batch['landmarks'], mask)
      )
    return new_state, metrics

  return step


def apply_update(
  optimizer: optax.GradientTransformation,
  state: dict[str, Any],
  grads: Any,
  batch_stats: Any,
  loss: jax.Array,
  terms: dict[str, jax.Array],
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """The end of every train step: the optimizer update, and the loss / gradient-norm metrics."""
  updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
  new_state = {
    'params': optax.apply_updates(state['params'], updates),
    'batch_stats': batch_stats,
    'opt_state': opt_state,
    'step': state['step'] + 1,
  }
  metrics = {
    'loss': loss,
    **{f'loss/{k}': v for k, v in terms.items()},
    'grad_norm': optax.global_norm(grads),
  }
  return new_state, metrics


# ---------------------------------------------------------------------------------------------
# One stage.


class Preempted(FkdError):
  """The stage was asked to stop (SIGTERM, or SIGINT: `signum`) and saved a checkpoint first."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = signum


@contextlib.contextmanager
def _preemption_guard():
  """Yields `preempted(step)`: the signal number to save and stop on now, or 0.

  One process: SIGTERM and SIGINT (Ctrl-C) set a flag the loop polls, so the stage saves a
  checkpoint at the step it is at and stops; a second Ctrl-C interrupts at once (Python's
  KeyboardInterrupt). Several processes: JAX's preemption sync point (the coordination service
  relays SIGTERM), so that every host stops at the same step.
  """
  if jax.process_count() > 1:
    yield lambda step: signal.SIGTERM if multihost_utils.reached_preemption_sync_point(step) else 0
    return
  received: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield lambda step: 0
    return

  def on_signal(signum, frame):
    if signum == signal.SIGINT:
      if received:  # the second Ctrl-C: stop now, without the checkpoint
        raise KeyboardInterrupt
      # os.write: print() may be in the middle of a write when the signal arrives.
      os.write(2, b'\nfkd: Ctrl-C: saving a checkpoint, then stopping (again: stop at once)\n')
    received.append(signum)

  previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield lambda step: received[0] if received else 0
    # Reached on a clean exit only: a signal after the loop's last look (e.g. during the final
    # save) is kept, not lost.
    if received:
      _LATE_SIGNALS.append(received[0])
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


_LATE_SIGNALS: list[int] = []


def stop_if_signalled(where: str) -> None:
  """Raises `Preempted` when a stage ended with a signal its loop did not act on (it arrived
  during the stage's final checkpoint): the job stops before its next stage or run."""
  if _LATE_SIGNALS:
    signum = _LATE_SIGNALS[0]
    _LATE_SIGNALS.clear()
    raise Preempted(
      f'[{where}] stopped by {signal.Signals(signum).name} after its final checkpoint; rerun '
      'the same command to go on',
      signum,
    )


def _check_finite(
  stage: str, step: int, metrics: dict[str, Any], stage_dir: str
) -> dict[str, float]:
  """Host values of a step's metrics; stops the stage on a NaN/Inf loss term or gradient."""
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  bad = [k for k, v in values.items() if not np.isfinite(v)]
  if bad:
    raise FkdError(
      f'[{stage}] non-finite {", ".join(bad)} at step {step}; stopped, the last '
      f'good checkpoint in {stage_dir} is kept'
    )
  return values


MAX_IN_FLIGHT = 3  # train steps the host may queue ahead of the device


class StepQueue:
  """The steps dispatched since the host last looked at their metrics.

  The loop never waits for a step's metrics to reach the host: `push` keeps them on the device
  (a few scalars per step) and `check` fetches all of them at once, every `log_every_steps` and
  before every checkpoint, raising `_check_finite`'s error for the first non-finite step, so no
  state after a NaN/Inf is ever saved. At most `max_in_flight` steps are queued (the host waits
  for the oldest, without a transfer) so it does not run far ahead of the device.
  """

  def __init__(self, stage: str, stage_dir: str, max_in_flight: int = MAX_IN_FLIGHT):
    self.stage, self.stage_dir, self.max_in_flight = stage, stage_dir, max_in_flight
    self.unchecked: list[tuple[int, dict[str, Any]]] = []

  def push(self, step: int, metrics: dict[str, Any]) -> None:
    self.unchecked.append((step, metrics))
    if len(self.unchecked) > self.max_in_flight:
      jax.block_until_ready(self.unchecked[-1 - self.max_in_flight][1])

  def check(self) -> dict[str, float]:
    """Host values of the latest step's metrics, once every unchecked step is finite."""
    host = jax.device_get(self.unchecked)
    self.unchecked = []
    values: dict[str, float] = {}
    for step, metrics in host:
      values = _check_finite(self.stage, step, metrics, self.stage_dir)
    return values


class DevicePrefetch:
  """Batches `make(i)` for i in [start, stop), made and placed on the devices on a thread, `depth`
  ahead of the step that takes them (batches are a pure function of the step, so what trains is
  unchanged; on CPU, where steps dispatch synchronously, the next batch overlaps the step)."""

  def __init__(self, make, start: int, stop: int, depth: int = 2):
    self._make, self._next, self._stop, self._depth = make, start, stop, depth
    self._pool = concurrent.futures.ThreadPoolExecutor(1, 'fkd-prefetch')
    self._queue: list[concurrent.futures.Future] = []
    self._fill()

  def _fill(self) -> None:
    while len(self._queue) < self._depth and self._next < self._stop:
      self._queue.append(self._pool.submit(self._make, self._next))
      self._next += 1

  def __next__(self) -> Any:
    if not self._queue:
      raise StopIteration
    batch = self._queue.pop(0).result()
    self._fill()
    return batch

  def __iter__(self) -> DevicePrefetch:
    return self

  def close(self) -> None:
    for future in self._queue:
      future.cancel()
    self._pool.shutdown(wait=True)

  def __enter__(self) -> DevicePrefetch:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def resolve_augment_on(value: str) -> str:
  """`config.data.augment_on` resolved: 'auto' is 'device' on an accelerator (the host cannot feed
  it) and 'host' on CPU, where the "device" is the same cores and the host threads' NumPy / PIL
  augmentation overlaps the step for less compute; `layers.target_platform` decides "on CPU"."""
  if value not in config_check.AUGMENT_ON:
    raise FkdError(
      f'config.data.augment_on must be one of {config_check.AUGMENT_ON}, got {value!r}'
    )
  if value != 'auto':
    return value
  return 'host' if layers.current_platform() == 'cpu' else 'device'


def augment_batch_fn(config: Any, data: ip.Data, mesh: jax.sharding.Mesh):
  """The jitted (sharded batch, seed, step) -> augmented batch of `config.data.augment_on=
  'device'` (`fkd.data.device_augment`), its outputs sharded as the batch."""
  aug = ip.device_augmentation(
    data,
    config.data.augment,
    config.data.get('box_noise', ()),
    config.data.get('augment_fill', 'zeros'),
  )
  return jax.jit(
    device_augment.make_augment(aug, data.pca), out_shardings=sharding.batch_sharded(mesh)
  )


def total_steps(stage: Stage, num_train: int) -> int:
  tc = stage.train_config
  if tc.num_steps > 0:
    return int(tc.num_steps)
  return max(1, int(tc.num_epochs * ip.steps_per_epoch(num_train, tc.batch_size)))


# ---------------------------------------------------------------------------------------------
# What ran: the program a stage is trained with.


DEPTHWISE_BACKBONES = ('mobilenet', 'efficientnet')  # backbones built of depthwise convolutions


def program(config: Any, model: Any, has_teachers: bool) -> dict[str, Any]:
  """The float32 program that trains a model, as resolved here: backend, devices, compute dtype,
  the depthwise / BatchNorm / deconvolution formulations, the frozen teachers' chunking and
  whether the native CPU kernels run (`config.cpu_kernels` is what was asked for)."""
  depthwise = getattr(model, 'depthwise_impl', None)
  backbone = getattr(model, 'backbone', None)  # heatmap networks: MobileNetV2 / EfficientNet
  if depthwise is None and isinstance(backbone, str) and backbone.startswith(DEPTHWISE_BACKBONES):
    depthwise = dict(getattr(model, 'backbone_kwargs', None) or {}).get('depthwise_impl', 'auto')
  deconv = getattr(model, 'deconv_impl', None)
  if deconv is not None:
    from fkd.models import heatmap_net

    deconv = layers.resolve_impl(deconv, heatmap_net.DECONV_IMPLS, 'deconv', 'phases', 'xla')
  kernels = layers.resolve_depthwise_impl('auto') == 'native'
  return {
    'backend': jax.default_backend(),
    'devices': jax.device_count(),
    'processes': jax.process_count(),
    'compute_dtype': str(config.get('compute_dtype', 'float32')),
    'cpu_kernels': config.get('cpu_kernels', 'auto'),
    'native_kernels': kernels,
    'depthwise': layers.resolve_depthwise_impl(depthwise) if depthwise else None,
    'batch_norm': batch_norm.resolve_impl('auto'),
    'deconv': deconv,
    'teacher_chunk': (frozen_chunk() or 'whole batch') if has_teachers else None,
    # Where the training augmentation runs: the device's random stream is not the host's.
    'augment_on': resolve_augment_on(config.data.get('augment_on', 'auto')),
    'jax': jax.__version__,
  }


def describe_program(p: dict[str, Any]) -> str:
  """One line for logs."""
  parts = [f'{p["backend"]}, {p["devices"]} device(s), {p["compute_dtype"]}']
  for key in ('depthwise', 'batch_norm', 'deconv'):
    if p.get(key):
      parts.append(f'{key} {p[key]}')
  if p.get('teacher_chunk') is not None:
    parts.append(f'teachers in chunks of {p["teacher_chunk"]}')
  if p.get('augment_on'):
    parts.append(f'augmentation on the {p["augment_on"]}')
  if p['backend'] == 'cpu':
    parts.append(f'native kernels {"on" if p["native_kernels"] else "off"}')
  return f'program: {", ".join(parts)} (cpu_kernels={p["cpu_kernels"]})'


def kernel_note(config: Any) -> str | None:
  """The one-line note of a CPU run that asked for the native kernels and does not get them."""
  asked = config.get('cpu_kernels', 'auto')
  if jax.default_backend() != 'cpu' or jax.device_count() > 1 or not native.enabled():
    return None
  if native.available():
    return None
  return (
    f'fkd: note: the native CPU kernels are unavailable ({native.status["error"]}); training '
    f'with the XLA program (depthwise shifted, BatchNorm fused without native sums; '
    f'config.cpu_kernels={asked})'
  )


def _meta(
  stage: Stage, method: Method, config: Any, extra: dict[str, Any], steps: int, data: ip.Data
) -> dict[str, Any]:
  """A stage's checkpoint meta: everything `fkd.inference` and `fkd.predict` need to serve it
  (the dataset's crop margin and point groups: photos are cropped as its training faces were),
  and provenance."""
  plain = methods.base.plain
  facts = {'contours': [list(p) for p in data.contours]}
  if data.crop_margin is not None:
    facts['crop_margin'] = data.crop_margin.to_json()
  return {
    'stage': stage.name,
    'method': method.name,
    'model': stage.model_config.name,
    'model_kwargs': plain({**plain(stage.model_config.kwargs), **extra}),
    'head': stage.head.meta(),
    'loss': stage.loss,
    'teachers': list(stage.teachers),
    'num_landmarks': config.data.num_landmarks,
    'image_size': config.data.image_size,
    'dataset': config.data.name,
    'total_steps': steps,
    **facts,
    'compute_dtype': config.get('compute_dtype', 'float32'),
    **method.meta(stage, config),
  }


# ---------------------------------------------------------------------------------------------
# Validation while a stage trains (`config.eval_every_steps`).

VALIDATION_SPLITS = ('validation', 'val', 'valid')
HOLDOUT_FRACTION = 0.1  # of each train shard, when the dataset has no validation split
HOLDOUT_SEED = 7919  # fixed: the same faces are held out whatever config.seed is


@dataclasses.dataclass
class Validation:
  """The split scored while stages train, and where its faces come from (`record`)."""

  split: ip.Split
  record: dict[str, Any]


def validation_data(config: Any, data: ip.Data) -> tuple[ip.Data, Validation | None]:
  """(data to train on, validation) for `config.eval_every_steps` > 0; else (data, None).

  A validation split of the dataset when it has one; otherwise `HOLDOUT_FRACTION` of the faces of
  each train shard, chosen with `HOLDOUT_SEED`, are held out of training (their names recorded).
  """
  if config.get('eval_every_steps', 0) <= 0:
    return data, None
  train_split = config.data.train_split
  names = set(ip.prepare(config).info.splits)
  for name in VALIDATION_SPLITS:
    if name in names and name != train_split:
      split = data.splits.get(name) or ip.load(config, splits=(name,)).splits[name]
      return data, Validation(split, {'source': name, 'count': len(split)})
  if jax.process_count() > 1:
    raise FkdError(
      f'config.eval_every_steps: dataset {config.data.name!r} has no validation split, and '
      'holding faces out of the train split is implemented for one process only'
    )
  train, held = ip.hold_out(data.splits[train_split], HOLDOUT_FRACTION, HOLDOUT_SEED)
  record = {
    'source': f'{train_split} (held out)',
    'count': len(held),
    'fraction': HOLDOUT_FRACTION,
    'seed': HOLDOUT_SEED,
    'names': list(held.names),
  }
  print(
    f'[data] validation: {len(held)} faces held out of {train_split} (seed {HOLDOUT_SEED}); '
    f'{len(train)} train',
    flush=True,
  )
  return dataclasses.replace(data, splits={**data.splits, train_split: train}), Validation(
    held, record
  )


def _held_out(record: dict[str, Any] | None) -> int:
  """Faces held out of the train split (0: none) by a validation record."""
  return int(record.get('count', 0)) if record and 'fraction' in record else 0


def _validator(model, head, split: ip.Split, config: Any, mesh):
  """state -> {'val_nme', 'val_fr'} (%) of the model on the validation split."""

  @jax.jit
  def predict(variables, images):
    outputs, _ = model.apply(variables, images.astype(jnp.float32) / 255.0, train=False)
    return head.decode(outputs.astype(jnp.float32))

  def run(state: dict[str, Any]) -> dict[str, float]:
    variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    pred = evaluate.predict_split(predict, variables, split, config.eval.batch_size, mesh)
    nme = eval_metrics.nme_per_image(pred, split.landmarks, config.eval.norm, split.labelled)
    nme = nme[np.isfinite(nme)]  # faces without a normaliser (evaluate.scored_faces)
    scores = eval_metrics.summarize(nme, config.eval.fr_threshold)
    return {'val_nme': scores['nme'], 'val_fr': scores['fr']}

  return run


# ---------------------------------------------------------------------------------------------
# One stage.


def train_stage(
  stage: Stage,
  method: Method,
  config: Any,
  workdir: str,
  data: ip.Data,
  mesh: jax.sharding.Mesh,
  validation: Validation | None = None,
) -> None:
  """Trains one stage to its final step, resuming from the stage's latest checkpoint."""
  stage = pretrained.resolve_stage(stage)  # init_from's input normalisation and BN epsilon
  stage_dir = os.path.join(workdir, stage.name)
  tc = stage.train_config
  num_train = ip.num_examples(data.splits[config.data.train_split])
  steps = total_steps(stage, num_train)
  teachers, teacher_variables = {}, {}
  for name in stage.teachers:
    path, which = evaluate.model_dir(config, workdir, name)
    teachers[name], teacher_variables[name] = inference.load_frozen(
      path, compute_dtype=config.get('compute_dtype', 'float32')
    )
    if which:
      print(f'[{stage.name}] teacher {name}: {which}', flush=True)
    if teachers[name].meta['num_landmarks'] != data.num_landmarks:
      raise FkdError(
        f'{name} at {path} predicts {teachers[name].meta["num_landmarks"]} '
        f'landmarks, the data has {data.num_landmarks}'
      )
  teacher_variables = sharding.replicate(teacher_variables, mesh)
  extra = method.model_kwargs(stage, config, teachers)
  model = build_model(stage, data.num_landmarks, config.get('compute_dtype', 'float32'), **extra)
  optimizer = make_optimizer(tc, steps)
  seed = config.seed + method.seed_offset(stage.name)
  eval_every = int(config.get('eval_every_steps', 0)) if validation is not None else 0
  keep_best = bool(config.get('keep_best', False)) and eval_every > 0
  best_dir = evaluate.best_dir(stage_dir)

  lead = jax.process_index() == 0
  good = checkpoint.last_good_step(stage_dir, rename=lead)  # broken steps set aside
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'fkd: {stage.name} checkpoints checked')
  mgr = checkpoint.manager(stage_dir, asynchronous=True)
  apply_kwargs = method.train_apply_kwargs(stage, config)
  state = init_state(model, optimizer, config.data.image_size, seed, apply_kwargs)
  prior = checkpoint.read_meta(stage_dir, good) if good is not None else None
  if good is not None:
    if _held_out(prior.get('validation')) != _held_out(validation and validation.record):
      mgr.close()
      raise FkdError(
        f'[{stage.name}] the checkpoint {os.path.join(stage_dir, str(good))} was trained on '
        f'{"fewer" if _held_out(prior.get("validation")) else "all"} train faces (faces held out '
        'for validation: config.eval_every_steps > 0 on a dataset without a validation split); '
        'rerun with the config that started it, or train into a new --workdir'
      )
    try:
      state = checkpoint.restore(mgr, state, good)
    except Exception as e:  # noqa: BLE001  (the step restores on its own: the model differs)
      mgr.close()
      raise FkdError(
        f'[{stage.name}] the checkpoint {os.path.join(stage_dir, str(good))} does not fit the '
        f'model of this config ({type(e).__name__}); was config.{stage.role} changed? Train into '
        'a new --workdir'
      ) from None
    print(f'[{stage.name}] resuming from step {int(state["step"])}', flush=True)
  elif stage.model_config.get('init_from'):
    state = pretrained.load_into(state, stage, optimizer)
    print(f'[{stage.name}] initialised from {stage.model_config.init_from}', flush=True)
  state = sharding.replicate(state, mesh)
  start = int(state['step'])

  step_fn = make_train_step(
    model, optimizer, stage, method.loss_fn(stage, config), teachers, apply_kwargs
  )
  jit_step = jax.jit(step_fn, donate_argnums=(0,))
  rng = sharding.replicate(jax.random.key_data(jax.random.key(seed)), mesh)
  meta = _meta(stage, method, config, extra, steps, data)
  meta['program'] = program(config, model, bool(teachers))
  earlier = list((prior or {}).get('earlier_programs', []))
  if prior and prior.get('program') and prior['program'] != meta['program']:
    earlier.append({**prior['program'], 'until_step': good})
    print(
      f'fkd: note: [{stage.name}] steps up to {good} were trained by another program '
      f'({describe_program(prior["program"])}); recorded in the checkpoint meta',
      flush=True,
    )
  if earlier:
    meta['earlier_programs'] = earlier
  if validation is not None:
    meta['validation'] = {k: v for k, v in validation.record.items() if k != 'names'}
  schedule = make_schedule(tc, steps)
  if lead:  # the rows of abandoned attempts, after the step this run resumes from
    metric_writer.truncate(os.path.join(stage_dir, 'metrics.jsonl'), start)
  # TensorBoard events + metrics.jsonl in the stage directory (no TensorFlow needed).
  writer = metric_writer.MetricWriter(stage_dir, active=lead)

  best_mgr, best = None, (prior or {}).get('best')
  if keep_best:
    if lead and os.path.isdir(best_dir):  # best steps after `start` are trained again, identically
      checkpoint.last_good_step(best_dir)
      checkpoint.drop_after(best_dir, start)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'fkd: {stage.name} best checkpoints checked')
    best_mgr = checkpoint.manager(best_dir, max_to_keep=1, asynchronous=True)
  validate_now = None
  if eval_every:
    validate_now = _validator(model, stage.head, validation.split, config, mesh)

  print(
    f'[{stage.name}] {stage.model_config.name} {meta["model_kwargs"]}: '
    f'{models.count_params(state["params"]):,} params, {steps} steps of batch '
    f'{tc.batch_size} on {jax.device_count()} device(s)',
    flush=True,
  )
  print(f'[{stage.name}] {describe_program(meta["program"])}', flush=True)
  if cpu_note := runtime.describe():
    print(f'[{stage.name}] {cpu_note}', flush=True)
  t0 = time.time()
  t_log, n_log = t0, 0
  bar = metric_writer.progress(
    total=steps, initial=start, desc=stage.name, unit='step', enabled=lead
  )

  augment_on = meta['program']['augment_on']
  on_device = augment_batch_fn(config, data, mesh) if augment_on == 'device' else None

  def device_batch(i: int) -> dict[str, jax.Array]:
    # Padded to a multiple of this process's devices, the padding weighing 0 in the step.
    batch = sharding.pad_batch(
      ip.train_batch(
        data,
        config.data.train_split,
        tc.batch_size,
        i,
        seed,
        config.data.augment,
        jax.process_index(),
        jax.process_count(),
        config.data.get('box_noise', ()),
        augment_on=augment_on,
        augment_fill=config.data.get('augment_fill', 'zeros'),
      ),
      jax.local_device_count(),
    )
    batch = sharding.shard_batch(batch, mesh)
    # Augmented on the devices, keyed by (seed, step): dispatched here, on the prefetch thread.
    return on_device(batch, seed, i) if on_device is not None else batch

  queue = StepQueue(stage.name, stage_dir)
  try:
    with (
      _preemption_guard() as preempted,
      bar,
      writer,
      DevicePrefetch(device_batch, start, steps) as batches,
    ):
      for step in range(start, steps):
        state, metrics = jit_step(state, next(batches), rng, teacher_variables)
        done = step + 1
        queue.push(done, metrics)
        n_log += 1
        bar.update(1)
        stop = preempted(done)
        validate = eval_every and (done % eval_every == 0 or done == steps)
        save = done % tc.checkpoint_every_steps == 0 or done == steps or stop
        log = done % tc.log_every_steps == 0 or done == steps or done == start + 1 or validate
        if log or save:
          values = queue.check()  # the metrics reach the host here only
        if log:
          now = time.time()
          rate = n_log * tc.batch_size / max(now - t_log, 1e-9)
          eta = (steps - done) * tc.batch_size / max(rate, 1e-9)
          scalars = {**values, 'lr': float(schedule(done - 1)), 'img_per_s': rate}
          if validate:
            scalars.update(validate_now(state))
          terms = ' '.join(f'{k}={v:.4g}' for k, v in values.items())
          val = f' val_nme={scalars["val_nme"]:.4g}' if validate else ''
          metric_writer.write(
            f'[{stage.name}] step {done}/{steps} {terms}{val} {rate:.0f} img/s eta {eta:.0f}s'
          )
          writer.write_scalars(done, scalars)
          if validate and (best is None or scalars['val_nme'] < best['val_nme']):
            best = {'step': done, 'val_nme': scalars['val_nme']}
          if keep_best and validate and best['step'] == done:
            variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
            checkpoint.save_model_step(
              best_mgr,
              done,
              checkpoint.host_copy(variables),
              {**meta, 'best': best, 'checkpoint': 'best'},
              wait=False,
            )
          t_log, n_log = time.time(), 0
        if save:
          writer.flush()
          if best is not None:
            meta['best'] = best
          # Host copies taken now; Orbax writes them while the next steps train.
          checkpoint.save(mgr, done, checkpoint.host_copy(state), meta, wait=False)
        if stop:  # also after the last step: the signal must not reach the next stage unseen
          mgr.wait_until_finished()
          raise Preempted(
            f'[{stage.name}] stopped by {signal.Signals(stop).name} at step {done}/{steps}; '
            f'checkpoint saved in {stage_dir}: rerun the same command to resume',
            stop,
          )
  finally:  # every pending save completes (a failure keeps the last good checkpoint whole)
    mgr.close()
    if best_mgr is not None:
      best_mgr.close()
  if best is not None:
    print(
      f'[{stage.name}] best validation NME {best["val_nme"]:.4g} % at step {best["step"]}'
      + (f' (kept in {best_dir})' if keep_best else ''),
      flush=True,
    )
  print(f'[{stage.name}] done in {time.time() - t0:.0f}s', flush=True)


# ---------------------------------------------------------------------------------------------
# The whole job.


def run(config: Any, workdir: str, allow_config_change: bool = False) -> dict[str, Any]:
  """Trains every stage of `config.stages` and evaluates every model in `workdir`.

  `allow_config_change`: continue in a workdir whose stages were trained with another config (a
  note per differing field instead of an error; `fkd.infra.workdir`).
  """
  t0 = time.time()
  native.set_mode(config.get('cpu_kernels', 'auto'))  # before validate traces or builds anything
  method = validate(config, workdir, allow_config_change)
  given = workdir_lib.flatten(config)  # the stage records: before fields come from the dataset
  with _workdir_lock(workdir):
    return _run_locked(config, workdir, method, given, t0)


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """The workdir lock (`fkd.infra.workdir`), held by process 0 for every process of a run."""
  with contextlib.ExitStack() as stack:
    error = None
    try:
      stack.enter_context(workdir_lib.lock(workdir, active=jax.process_index() == 0))
    except FkdError as e:
      error = e
    if jax.process_count() > 1:  # every process stops when process 0 could not take it
      held = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if error is None and not held:
        raise FkdError(f'workdir {workdir} is in use by another run (process 0 says by which)')
    if error is not None:
      raise error
    yield


def _run_locked(
  config: Any, workdir: str, method: Method, given: dict[str, Any], t0: float
) -> dict[str, Any]:
  if jax.process_count() > 1:
    # Process 0 builds a missing dataset before the others look at it (on a shared filesystem
    # they then find it built; on local disks each builds its own copy after the barrier).
    if jax.process_index() == 0:
      ip.prepare(config)
    multihost_utils.sync_global_devices('fkd: dataset prepared')
  data = ip.load(
    config,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    soft_targets=method.soft_targets(config),
  )
  config = pretrain.run(config, workdir, run)  # config.pretrain: a pre-stage on another dataset
  ip.set_workers(config.data.num_workers)
  mesh = sharding.make_mesh()
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0 and (note := kernel_note(config)):
    print(note, flush=True)
  everything = data  # evaluation's mean shape: of every train face, as `fkd.evaluate` computes it
  data, validation = validation_data(config, data)
  if validation is not None and jax.process_index() == 0:
    evaluate.write_validation(validation.record, workdir)
  for name in config.stages:
    if config.get(f'{name}_ckpt'):
      print(f'[{name}] using {config.get(f"{name}_ckpt")} (config.{name}_ckpt)', flush=True)
      continue
    stage_dir = os.path.join(workdir, name)
    if jax.process_index() == 0:
      workdir_lib.write_record(stage_dir, given)
    # A finished stage is skipped only when its final step restores (else it is set aside and
    # the stage resumes from the step before it).
    good = checkpoint.last_good_step(stage_dir, rename=jax.process_index() == 0)
    if jax.process_count() > 1:  # process 0's renames done before anyone reads on
      multihost_utils.sync_global_devices(f'fkd: {name} checkpoints checked before skipping')
    if good is not None and inference.is_finished(stage_dir):
      print(f'[{name}] final checkpoint exists, skipping', flush=True)
      continue
    train_stage(method.stage(name, config), method, config, workdir, data, mesh, validation)
    stop_if_signalled(name)
  results = evaluate.evaluate_workdir(config, workdir, everything)
  if validation is not None:
    results['validation'] = {k: v for k, v in validation.record.items() if k != 'names'}
  results['wall_time_s'] = round(time.time() - t0, 1)
  if jax.process_index() == 0:
    evaluate.write_results(results, workdir)
  return results
