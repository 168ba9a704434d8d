"""fkd's train steps against the same steps in Keras 3 on TensorFlow, alternating in one process.

  pip install -e ".[bench]"   # TensorFlow + Keras (never part of the main install)
  python benchmarks/train_step.py [--batch 32] [--res 224] [--rounds 5] [--steps student,teacher,kd]

Steps (KD-Loss at paper size, `kd_recipe.kd_base('300w')`: 68 landmarks, Adam with Keras'
defaults):
- `student`: MobileNetV2 1.0 regression step (MSE, BatchNorm in training mode), fkd's
  `train.make_train_step` for the `student_baseline` stage;
- `teacher`: EfficientNet-B3 (top dropout 0.5, drop-connect 0.2), the `teacher_tough` stage;
- `kd`: the `student_kd` step: the student with KD-Loss against two frozen EfficientNet-B3
  teachers (their forward pass in inference mode inside the step), frozen as training freezes
  them (`inference.freeze`: BatchNorm folded into the convolutions);
- `fold`: no Keras side: the frozen B3 teacher's forward pass (uint8 batch to outputs and
  features, as in the KD step) unfolded against folded, alternating; `teacher_fold_speedup` in
  the JSON line is unfolded time / folded time.

The Keras side builds the same models with `keras.applications` (random weights, `pooling='avg'`
+ Dense(136); the teachers with Dropout(0.5)), `Adam(epsilon=1e-7)` and `train_on_batch`; the KD
step is one Keras model whose output concatenates the student's and the frozen teachers' (called
with `training=False`, `trainable=False`) predictions, with KD-Loss (released-code constants)
written in `keras.ops`. Keras runs on TensorFlow (`KERAS_BACKEND=tensorflow`, set here) with
Keras' default `jit_compile='auto'` (which means no XLA on a CPU-only machine: TensorFlow's
graph runtime with its oneDNN kernels) unless `--keras-jit` says otherwise.

The benchmark calls `fkd.cli.start()` before JAX initialises, as `python -m fkd.main` does, so the
CPU process settings (`fkd/infra/runtime.py`: synchronous CPU dispatch, glibc malloc that keeps
freed
memory) are in effect, as in training; the header line says so. `FKD_CPU_TUNING=0` measures
without them.

Each pair is compiled (fkd: `jit(...).lower().compile()` time; Keras: the first call), warmed up,
then fkd and Keras alternate step by step so a shared machine's noise hits both alike; medians of
img/s. Each step runs in a fresh child process (`--one-process`: all in this one), so one step's
memory is returned before the next. fkd's compile is reported twice: cold (`compile`, into an
empty persistent compilation cache, a temporary directory of the run) and cached
(`cached_compile`: in-memory caches cleared, the step traced, lowered and loaded from that cache,
as a second `python -m fkd.main` run with the same shapes does with `fkd.cli.start()`'s cache).
The last line is JSON with the student step's figures and the other ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from fkd import cli, heads, inference, methods  # noqa: E402
from fkd.infra import runtime
from fkd.losses import kd_loss as losses
from fkd.methods.kd import recipe as kd_recipe
from fkd.models import layers, native  # noqa: E402
from fkd.training import trainer as train

STAGES = {'student': 'student_baseline', 'teacher': 'teacher_tough', 'kd': 'student_kd'}
KINDS = (*STAGES, 'fold')


def make_batch(batch: int, res: int, num_landmarks: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  pts = rng.uniform(0.2 * res, 0.8 * res, (batch, num_landmarks, 2)).astype(np.float32)
  return {
    'image': rng.integers(0, 256, (batch, res, res, 3), dtype=np.uint8),
    'landmarks': pts,
    'soft_landmarks': pts,
  }


class FkdRunner:
  """fkd's real step: `train.make_train_step` + `init_state` + `make_optimizer`, jitted with
  the state donated as in `train.train_stage`."""

  def __init__(self, kind: str, config, batch: dict[str, np.ndarray]):
    res = config.data.image_size
    n = config.data.num_landmarks
    method = methods.get(config)
    stage = method.stage(STAGES[kind], config)
    model = train.build_model(stage, n)
    optimizer = train.make_optimizer(stage.train_config, 1000)
    teachers, frozen = {}, {}
    for i, which in enumerate(stage.teachers):
      teacher_stage = method.stage(which, config)
      teacher_model = train.build_model(teacher_stage, n)
      t = train.init_state(teacher_model, optimizer, res, seed=10 + i)
      frozen[which], teachers[which] = inference.freeze(
        teacher_model, teacher_stage.head, {}, jax.device_get(t)
      )
    self.state = train.init_state(model, optimizer, res, seed=0)
    step = train.make_train_step(
      model,
      optimizer,
      stage,
      method.loss_fn(stage, config),
      frozen,
      method.train_apply_kwargs(stage, config),
    )
    self.batch = jax.device_put(batch)
    self.rng = jax.random.key_data(jax.random.key(0))
    self.teachers = jax.device_put(teachers)
    args = (self.state, self.batch, self.rng, self.teachers)
    self.compiled, self.compile_s = compile_timed(step, args, donate_argnums=(0,))
    jax.clear_caches()  # a fresh process: trace, lower and load from the persistent cache
    _, self.cached_compile_s = compile_timed(step, args, donate_argnums=(0,))

  def __call__(self) -> float:
    self.state, metrics = self.compiled(self.state, self.batch, self.rng, self.teachers)
    return float(metrics['loss'])  # waits for the step


def compile_timed(fn, args, **jit_kwargs):
  """(compiled `jit(fn)` for `args`, seconds to trace, lower and compile it)."""
  t0 = time.perf_counter()
  compiled = jax.jit(lambda *a: fn(*a), **jit_kwargs).lower(*args).compile()
  return compiled, time.perf_counter() - t0


class FoldRunner:
  """The KD step's frozen teacher forward pass (`teacher_tough`, B3), unfolded and folded."""

  def __init__(self, config, batch: dict[str, np.ndarray]):
    method = methods.get(config)
    stage = method.stage(STAGES['teacher'], config)
    model = train.build_model(stage, config.data.num_landmarks)
    optimizer = train.make_optimizer(stage.train_config, 1000)
    state = jax.device_get(train.init_state(model, optimizer, config.data.image_size, seed=10))
    self.images = jax.device_put(batch['image'])
    self.runs = {}
    for fold in (False, True):
      frozen, variables = inference.freeze(model, stage.head, {}, state, fold=fold)

      def forward(variables, images, module=frozen.module):
        return module.apply(variables, images.astype(np.float32) / 255.0, train=False)

      variables = jax.device_put(variables)
      compiled, _ = compile_timed(forward, (variables, self.images))
      self.runs['folded' if fold else 'unfolded'] = (compiled, variables)

  def __call__(self, which: str) -> None:
    compiled, variables = self.runs[which]
    jax.block_until_ready(compiled(variables, self.images))


def keras_kd_loss(num_outputs: int, p: losses.KDParams):
  """KD-Loss (losses.kd_loss, `low_region='zero'`) on y_pred = [student, tough, tolerant]."""
  from keras import ops

  def aloss(s, t, g, alpha, alpha_neg):
    e, d = ops.abs(s - g), ops.abs(t - g)
    w = ops.where(e > d, alpha, ops.where(e >= p.beta * d, alpha_neg, 0.0))
    w = ops.where((d == 0) | (e == 0), 0.0, w)
    return ops.mean(w * ops.abs(d - e))

  def loss(g, y):
    s, tou, tol = (y[:, i * num_outputs : (i + 1) * num_outputs] for i in range(3))
    tou, tol = ops.stop_gradient(tou), ops.stop_gradient(tol)
    lam = ops.abs(tol - g)
    e = ops.abs(s - g)
    main = ops.where(e <= lam, p.main_slope * e, e * e + p.main_slope * lam - lam * lam)
    return (
      p.w_main * ops.mean(main)
      + p.w_tou * aloss(s, tou, g, p.alpha_tou, p.alpha_neg_tou)
      + p.w_tol * aloss(s, tol, g, p.alpha_tol, p.alpha_neg_tol)
    )

  return loss


class KerasRunner:
  """The same step in Keras 3: `keras.applications` models, Adam, `train_on_batch`."""

  def __init__(self, kind: str, config, batch: dict[str, np.ndarray], jit_compile):
    import keras

    keras.utils.set_random_seed(0)
    res = config.data.image_size
    n = 2 * config.data.num_landmarks
    shape = (res, res, 3)

    def student():
      base = keras.applications.MobileNetV2(
        input_shape=shape, include_top=False, weights=None, pooling='avg'
      )
      return keras.Sequential([base, keras.layers.Dense(n)])

    def teacher():
      base = keras.applications.EfficientNetB3(
        input_shape=shape, include_top=False, weights=None, pooling='avg'
      )
      return keras.Sequential([base, keras.layers.Dropout(0.5), keras.layers.Dense(n)])

    tc = config.train if kind != 'teacher' else config.teacher_train
    optimizer = keras.optimizers.Adam(
      tc.lr, beta_1=tc.adam_b1, beta_2=tc.adam_b2, epsilon=tc.adam_eps
    )
    if kind == 'kd':
      inputs = keras.Input(shape)
      tough, tolerant = teacher(), teacher()
      tough.trainable = tolerant.trainable = False
      out = keras.layers.Concatenate()(
        [student()(inputs), tough(inputs, training=False), tolerant(inputs, training=False)]
      )
      model = keras.Model(inputs, out)
      loss = keras_kd_loss(n, losses.KDParams.from_config(config.kd))
    else:
      model = student() if kind == 'student' else teacher()
      loss = 'mse'
    model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    self.model = model
    self.x = batch['image'].astype(np.float32) / 255.0
    self.y = np.asarray(heads.to_target(batch['landmarks'], res, config.data.target_space))
    t0 = time.perf_counter()
    self()
    self.compile_s = time.perf_counter() - t0

  def __call__(self) -> float:
    return float(self.model.train_on_batch(self.x, self.y))


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--res', type=int, default=224)
  parser.add_argument('--rounds', type=int, default=5, help='timed steps of each framework')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compiling')
  parser.add_argument('--steps', default=','.join(KINDS))
  parser.add_argument(
    '--keras-jit',
    default='auto',
    choices=('auto', 'true', 'false'),
    help="Keras' compile(jit_compile=...); 'auto' is Keras' default",
  )
  parser.add_argument('--no-keras', action='store_true', help='fkd only')
  parser.add_argument(
    '--one-process',
    action='store_true',
    help='all steps in this process (default: each step in a fresh child process)',
  )
  parser.add_argument('--rows-out', help=argparse.SUPPRESS)  # a child's results file
  args = parser.parse_args()
  args.kinds = args.steps.split(',')
  if unknown := set(args.kinds) - set(KINDS):
    parser.error(f'--steps: unknown {sorted(unknown)}; known: {list(KINDS)}')
  return args


def main():
  """Each step in its own child process unless --one-process: with the CPU tuning (freed memory
  is kept) and TensorFlow's own pools, one process holding every step's two frameworks reached
  16 GB and was OOM-killed on a shared 24 GB machine; a child returns its memory when it ends."""
  args = parse_args()
  if args.rows_out or args.one_process or len(args.kinds) == 1:
    result = measure(args)
    if args.rows_out:
      with open(args.rows_out, 'w') as f:
        json.dump(result, f)
      return
  else:
    result = {'rows': {}, 'fold': None, 'backend': None}
    for kind in args.kinds:
      with tempfile.NamedTemporaryFile(suffix='.json') as out:
        argv = [sys.executable, os.path.abspath(__file__), '--steps', kind]
        argv += ['--batch', str(args.batch), '--res', str(args.res), '--rounds', str(args.rounds)]
        argv += ['--warmup', str(args.warmup), '--keras-jit', args.keras_jit]
        argv += ['--no-keras'] * args.no_keras + ['--rows-out', out.name]
        code = subprocess.run(argv).returncode
        if code != 0:
          print(f'[{kind}] the child process failed (exit code {code}); no figures', flush=True)
          continue
        with open(out.name) as f:
          child = json.load(f)
      result['rows'].update(child['rows'])
      result['fold'] = child['fold'] if child['fold'] is not None else result['fold']
      result['backend'] = child['backend']
  report(result)


def measure(args) -> dict:
  """The steps of `args.kinds` in this process: {'rows', 'fold', 'backend'}."""
  cli.start()
  # Cold compiles into an empty persistent cache (whatever the user's cache holds), cached ones
  # from it; removed at exit.
  cache_dir = tempfile.mkdtemp(prefix='fkd-bench-jax-cache-')
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  runtime.cache_status.update(dir=f'{cache_dir} (empty, this run only)', source='benchmark')
  try:
    return measure_steps(args)
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)


def measure_steps(args) -> dict:
  kinds = args.kinds
  jit_compile = {'auto': 'auto', 'true': True, 'false': False}[args.keras_jit]
  config = kd_recipe.kd_base('300w')
  config.data.image_size = args.res
  batch = make_batch(args.batch, args.res, config.data.num_landmarks)
  versions = f'jax {jax.__version__}, backend {jax.default_backend()}'
  use_keras = not args.no_keras
  if use_keras and set(kinds) & set(STAGES):
    try:
      import keras
      import tensorflow as tf

      versions += f', keras {keras.__version__} on {keras.backend.backend()} (tf {tf.__version__})'
    except ImportError as e:
      print(f'Keras/TensorFlow not importable ({e}); pip install -e ".[bench]". fkd only.')
      use_keras = False
  # Whether 'auto' runs the native kernels (built once per machine, ~5 s, here before any timing,
  # as a first training run would have; FKD_NATIVE=0 turns them off).
  dw = 'on' if layers.resolve_depthwise_impl('auto') == 'native' else 'off'
  if native.enabled() and dw == 'off':
    dw += f' ({native.status["error"] or "several devices"})'
  print(
    f'{versions}; batch {args.batch}, {args.res}x{args.res}, XLA_FLAGS='
    f'{os.environ.get("XLA_FLAGS", "")!r}; {runtime.describe()}; native depthwise kernels {dw}',
    flush=True,
  )

  rows = {}
  fold_speedup = None
  for kind in kinds:
    if kind == 'fold':
      fold_speedup = measure_fold(config, batch, args)
      continue
    fkd = FkdRunner(kind, config, batch)
    print(
      f'[{kind}] fkd compile {fkd.compile_s:.1f} s cold, {fkd.cached_compile_s:.1f} s cached',
      flush=True,
    )
    ref = KerasRunner(kind, config, batch, jit_compile) if use_keras else None
    if ref is not None:
      print(f'[{kind}] keras first step (trace/compile) {ref.compile_s:.1f} s', flush=True)
    for _ in range(args.warmup):
      fkd()
      if ref is not None:
        ref()
    t_fkd, t_ref = [], []
    for _ in range(args.rounds):
      t_fkd.append(timed(fkd))
      if ref is not None:
        t_ref.append(timed(ref))
    fkd_ips = args.batch / statistics.median(t_fkd)
    ref_ips = args.batch / statistics.median(t_ref) if ref is not None else None
    rows[kind] = dict(
      fkd=fkd_ips,
      keras=ref_ips,
      compile=fkd.compile_s,
      cached_compile=fkd.cached_compile_s,
      keras_compile=ref.compile_s if ref is not None else None,
      ratio=fkd_ips / ref_ips if ref_ips else None,
    )
    print(
      f'[{kind}] fkd {fkd_ips:.2f} img/s'
      + (f', keras {ref_ips:.2f} img/s, ratio {fkd_ips / ref_ips:.2f}' if ref_ips else ''),
      flush=True,
    )
    del fkd, ref
    gc.collect()
  return {'rows': rows, 'fold': fold_speedup, 'backend': jax.default_backend()}


def report(result: dict) -> None:
  """The table and the last-line JSON."""
  rows, fold_speedup = result['rows'], result['fold']
  fmt = lambda v, f='.2f': '-' if v is None else format(v, f)
  print(
    f'\n{"step":<8} {"fkd img/s":>10} {"keras img/s":>12} {"ratio":>6} '
    f'{"fkd compile s cold/cached":>26} {"keras 1st step s":>17}'
  )
  for kind, r in rows.items():
    compile_s = f'{r["compile"]:.1f} / {r["cached_compile"]:.1f}'
    print(
      f'{kind:<8} {fmt(r["fkd"]):>10} {fmt(r["keras"]):>12} {fmt(r["ratio"]):>6} '
      f'{compile_s:>26} {fmt(r["keras_compile"], ".1f"):>17}'
    )
  if fold_speedup is not None:
    print(f'frozen B3 teacher forward, folded vs unfolded: {fold_speedup:.2f}x')
  s = rows.get('student', {})
  out = {
    'backend': result['backend'],
    'fkd_img_s': s.get('fkd'),
    'keras_img_s': s.get('keras'),
    'ratio_vs_keras': s.get('ratio'),
    'compile_s': s.get('compile'),
    'cached_compile_s': s.get('cached_compile'),
  }
  for kind in ('teacher', 'kd'):
    if kind in rows:
      out.update(
        {
          f'{kind}_fkd_img_s': rows[kind]['fkd'],
          f'{kind}_keras_img_s': rows[kind]['keras'],
          f'{kind}_ratio_vs_keras': rows[kind]['ratio'],
          f'{kind}_compile_s': rows[kind]['compile'],
          f'{kind}_cached_compile_s': rows[kind]['cached_compile'],
        }
      )
  out['teacher_fold_speedup'] = fold_speedup
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


def measure_fold(config, batch, args) -> float:
  """Unfolded / folded time of the frozen teacher's forward pass, alternating."""
  runner = FoldRunner(config, batch)
  times = {'unfolded': [], 'folded': []}
  for i in range(args.warmup + max(args.rounds, 3)):
    for which in times:
      t = timed(lambda which=which, runner=runner: runner(which))
      if i >= args.warmup:
        times[which].append(t)
  med = {k: statistics.median(v) for k, v in times.items()}
  speedup = med['unfolded'] / med['folded']
  print(
    f'[fold] frozen teacher forward: unfolded {args.batch / med["unfolded"]:.2f} img/s, '
    f'folded {args.batch / med["folded"]:.2f} img/s, speedup {speedup:.2f}',
    flush=True,
  )
  return speedup


if __name__ == '__main__':
  main()
