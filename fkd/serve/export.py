"""Export of a trained model for deployment: StableHLO (`jax.export`) or TFLite (via jax2tf).

  python -m fkd.export --workdir=DIR --format=stablehlo [--stage=student_kd] [--batch=0]
      [--output=DIR/export/student_kd.stablehlo]
  python -m fkd.export --workdir=DIR --format=tflite      # needs TensorFlow installed

The exported function is the whole inference: uint8 face crops (B, S, S, 3), S = the model's
`image_size`, -> landmarks (B, N, 2) float32 in crop pixels (pixel centres at integers), with the
parameters baked in as constants. Map them to the photo with the inverse crop affine
(`fkd.predict`). `--batch=0` (default) exports a symbolic batch size for StableHLO; TFLite always
gets a fixed batch (1 when 0). Next to the artifact a `.json` file records the input/output
contract and the model. Load the StableHLO artifact with

  exp = jax.export.deserialize(open(path, 'rb').read()); landmarks = exp.call(images)
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fkd import heads, inference
from fkd.errors import FkdError
from fkd.infra import checkpoint, files
from fkd.models import layers

FORMATS = ('stablehlo', 'tflite')


def inference_fn(stage_dir: str) -> tuple[Callable[[jax.Array], jax.Array], dict[str, Any]]:
  """`f(images uint8 (B, S, S, 3)) -> landmarks (B, N, 2)` in crop pixels, and the stage's meta.

  The parameters are closed over, so they become constants of the exported program.
  """
  predictor = inference.Predictor(stage_dir)
  return functools.partial(predictor.landmarks, predictor.variables), predictor.meta


def predictor_head(meta: dict[str, Any]) -> dict[str, Any]:
  return heads.from_meta(meta).meta()


def export_stablehlo(
  fn: Callable, image_size: int, batch: int = 0, platforms: Sequence[str] | None = None
) -> jax.export.Exported:
  """`jax.export` of `fn` on uint8 (batch, S, S, 3); batch 0 = symbolic batch size 'b'."""
  (b,) = jax.export.symbolic_shape('b') if batch <= 0 else (batch,)
  spec = jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.uint8)
  return jax.export.export(jax.jit(_fresh(fn)), platforms=platforms)(spec)


def _fresh(fn: Callable) -> Callable:
  """A new function object calling `fn`: JAX's trace caches are keyed by the function, not by
  `layers.portable_ops()`, so `fn` traced earlier (the parity probe, on CPU's native kernels)
  would otherwise be exported as that trace."""
  return lambda images: fn(images)


def load_stablehlo(path: str) -> jax.export.Exported:
  with open(path, 'rb') as f:
    return jax.export.deserialize(bytearray(f.read()))


def export_tflite(fn: Callable, image_size: int, batch: int = 1) -> bytes:
  """A TFLite flatbuffer through jax2tf + a SavedModel (TFLite reads the embedded StableHLO)."""
  try:
    import tensorflow as tf
  except ImportError:
    raise FkdError(
      '--format=tflite needs TensorFlow (pip install tensorflow), which is not '
      'installed; --format=stablehlo needs only JAX'
    ) from None
  from jax.experimental import jax2tf

  spec = tf.TensorSpec((max(batch, 1), image_size, image_size, 3), tf.uint8, name='images')
  tf_fn = tf.function(
    jax2tf.convert(_fresh(fn), with_gradient=False), input_signature=[spec], autograph=False
  )
  module = tf.Module()
  module.serve = tf_fn
  with tempfile.TemporaryDirectory() as tmp:
    tf.saved_model.save(module, tmp, signatures=tf_fn.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    converter.target_spec.supported_ops = [
      tf.lite.OpsSet.TFLITE_BUILTINS,
      tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    return converter.convert()


def run_tflite(model: bytes, images: np.ndarray) -> np.ndarray:
  """Runs a TFLite flatbuffer on a batch (TensorFlow's interpreter)."""
  import tensorflow as tf

  interpreter = tf.lite.Interpreter(model_content=model)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'], images)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
MAX_BATCH = 4096


def export(
  workdir: str,
  fmt: str = 'stablehlo',
  output: str | None = None,
  stage: str | None = None,
  batch: int = 0,
  platforms: Sequence[str] | None = None,
  allow_unfinished: bool = False,
) -> dict[str, Any]:
  """Exports a stage of `workdir` (default: the student) and checks it against JAX.

  An unfinished stage (a checkpoint before its final step) is refused unless `allow_unfinished`.
  The check runs the artifact here only when it was lowered for this machine's platform.
  Returns the record written next to the artifact (paths, shapes, model, step, parity).
  """
  if fmt not in FORMATS:
    raise FkdError(f'--format must be one of {", ".join(FORMATS)}, got {fmt!r}')
  if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch <= MAX_BATCH:
    raise FkdError(f'--batch must be an integer in [0, {MAX_BATCH}] (0: symbolic), got {batch!r}')
  platforms = [p.strip().lower() for p in platforms] if platforms else None
  for p in platforms or ():
    if p not in PLATFORMS:
      raise FkdError(f'--platforms: {p!r} is not one of {", ".join(PLATFORMS)}')
  if platforms and fmt != 'stablehlo':
    raise FkdError('--platforms is for --format=stablehlo')
  if not os.path.isdir(workdir):
    raise FkdError(f'workdir {workdir} does not exist')
  stage_dir = os.path.join(workdir, stage) if stage else inference.find_stage(workdir)
  meta = checkpoint.read_meta(stage_dir)
  if meta is None:
    raise FkdError(f'no checkpoint in {stage_dir}')
  step, total = checkpoint.latest_step(stage_dir), int(meta.get('total_steps', 0) or 0)
  status = inference.status(
    {'stage': meta.get('stage'), 'checkpoint': stage_dir, 'step': step, 'total_steps': total,
     'finished': step >= total}
  )  # fmt: skip
  if not stage:
    notes_first = [f'{n} (--stage picks one)' for n in inference.passed_over(workdir, stage_dir)]
  else:
    notes_first = []
  if step < total and not allow_unfinished:
    raise FkdError(
      f'{stage_dir} is unfinished (step {step} of {total}); finish its training, or pass '
      '--allow_unfinished to export it as it is'
    )
  name = os.path.basename(os.path.normpath(stage_dir))
  output = output or os.path.join(workdir, 'export', f'{name}.{fmt}')
  check_output(output)
  fn, meta = inference_fn(stage_dir)
  size = int(meta['image_size'])
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

  probe_batch = batch if batch > 0 else 2
  probe = np.random.default_rng(0).integers(0, 256, (probe_batch, size, size, 3), np.uint8)
  expected = np.asarray(jax.jit(fn)(probe))
  notes = list(notes_first)
  if fmt == 'stablehlo':
    with layers.portable_ops():  # standard conv ops for other runtimes
      exported = export_stablehlo(fn, size, batch, platforms)
    try:
      data = exported.serialize()
    except ImportError as e:  # jax.export serialization needs the `flatbuffers` package
      raise FkdError(f'--format=stablehlo: {e}') from None
    here = jax.default_backend()
    if here in exported.platforms:
      got = np.asarray(jax.export.deserialize(data).call(probe))
    else:  # it cannot run here: said in the record and on the console, not a traceback
      got = None
      notes.append(
        f'not checked against JAX: lowered for {", ".join(exported.platforms)}, and this '
        f'machine runs {here}; run it there to check it'
      )
    in_shape = [d if isinstance(d, int) else str(d) for d in exported.in_avals[0].shape]
    extra = {
      'platforms': list(exported.platforms),
      'load': "jax.export.deserialize(open(path, 'rb').read()).call(images)",
    }
  else:
    if batch <= 0:
      batch = probe_batch = 1
      probe = probe[:1]
      expected = expected[:1]
    with layers.portable_ops():  # TFLite's native CONV_2D / DEPTHWISE_CONV_2D
      data = export_tflite(fn, size, batch)
    got = run_tflite(data, probe)
    in_shape = [batch, size, size, 3]
    extra = {'load': 'tf.lite.Interpreter(model_path=path)'}
  files.atomic_write(output, data)  # never half an artifact
  diff = None if got is None else float(np.max(np.abs(got - expected)))
  if step < total:
    notes.append(status)
  record = {
    'artifact': os.path.abspath(output),
    'format': fmt,
    'bytes': len(data),
    'input': {
      'name': 'images',
      'shape': in_shape,
      'dtype': 'uint8',
      'meaning': 'RGB face crops, the box resized anisotropically (fkd.predict)',
    },
    'output': {
      'shape': [in_shape[0], int(meta['num_landmarks']), 2],
      'dtype': 'float32',
      'meaning': 'landmarks (x, y) in crop pixels, pixel centres at integers',
    },
    'model': {
      'checkpoint': os.path.abspath(stage_dir),
      'step': step,
      'total_steps': total,
      'finished': step >= total,
      'head': predictor_head(meta),
      **{
        k: meta[k]
        for k in (
          'stage',
          'method',
          'model',
          'model_kwargs',
          'dataset',
          'image_size',
          'num_landmarks',
          'crop_margin',  # how fkd.predict widens the landmark box into the crop
        )
        if k in meta
      },
    },
    'parity_max_abs_diff': diff,
    **extra,
  }
  if notes:
    record['notes'] = notes
  files.atomic_write(record_path(output), json.dumps(record, indent=1))
  return record


def record_path(output: str) -> str:
  """The JSON record written next to an artifact."""
  return os.path.splitext(output)[0] + '.json'


def _is_export_record(path: str) -> bool:
  record = files.json_object(path)
  return record is not None and {'artifact', 'format', 'input', 'output'} <= set(record)


def check_output(output: str) -> None:
  """An FkdError unless `output` and its record are new files or an earlier export's."""
  record = record_path(output)
  if os.path.abspath(record) == os.path.abspath(output):
    raise FkdError(f'--output {output}: the artifact cannot be a .json file (its record is one)')
  if os.path.isdir(output):
    raise FkdError(
      f'--output {output} is a folder; give the artifact file, e.g. {output}/model.{FORMATS[0]}'
    )
  files.check_replaceable(
    record, _is_export_record, 'fkd.export', name=f'{record} (the record of --output {output})'
  )

  def recorded(path: str) -> bool:  # the artifact an earlier export's record names
    if not _is_export_record(record):
      return False
    return os.path.realpath(files.json_object(record)['artifact']) == os.path.realpath(path)

  files.check_replaceable(output, recorded, 'fkd.export', name=f'--output {output}')


def _define_flags():
  from absl import flags

  flags.DEFINE_string('workdir', None, 'Run directory.')
  flags.DEFINE_enum('format', 'stablehlo', FORMATS, 'Artifact format.')
  flags.DEFINE_string('output', None, 'Artifact path (default DIR/export/<stage>.<format>).')
  flags.DEFINE_string(
    'stage', None, 'Stage to export (default: student_kd, else student_baseline, else a teacher).'
  )
  flags.DEFINE_integer('batch', 0, 'Fixed batch size; 0 = symbolic (StableHLO) or 1 (TFLite).')
  flags.DEFINE_list(
    'platforms',
    None,
    "StableHLO lowering platforms (cpu, cuda, rocm, tpu); default: this machine's backend.",
  )
  flags.DEFINE_boolean(
    'allow_unfinished', False, 'Export a stage whose training has not reached its final step.'
  )
  flags.mark_flags_as_required(['workdir'])
  return flags.FLAGS


def _main(argv: list[str]) -> None:
  f = _FLAGS
  record = export(f.workdir, f.format, f.output, f.stage, f.batch, f.platforms, f.allow_unfinished)
  diff = record['parity_max_abs_diff']
  model = record['model']
  print(
    f'fkd: {model["stage"]} -> {record["artifact"]} ({record["bytes"]:,} bytes; step '
    f'{model["step"]} of {model["total_steps"]}), '
    f'input {record["input"]["shape"]} uint8, output {record["output"]["shape"]} float32; '
    + (f'max |exported − JAX| = {diff:.2e}' if diff is not None else 'not checked here'),
    flush=True,
  )
  for note in record.get('notes', ()):
    print(f'fkd: note: {note}', flush=True)


def main() -> None:
  """`python -m fkd.export` (fkd/export.py runs this)."""
  global _FLAGS
  from fkd import cli

  _FLAGS = _define_flags()
  cli.run(_main)
