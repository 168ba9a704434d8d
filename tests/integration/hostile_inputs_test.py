"""Hostile but fair input to every command line (issue 20): one table, one row per case.

Each row is a command (module + arguments), the exit code it must end with, a fragment of its one
`fkd: error:` line (or of its output when it succeeds) and what it may write. For every row:

- stderr shows no traceback, and an error is exactly one `fkd: error:` line;
- nothing is lost: every file in the row's sandbox and in the shared finished run (`run_dir`) has
  the same bytes afterwards, unless the row names it in `may_change`; a failing command leaves no
  new file behind.

Rows run in this process (`runpy` with the module's `__main__`, its absl flags removed afterwards),
since starting ~70 Python processes that import JAX would take minutes; `subprocess=True` rows
check real exit codes, and the tests after the table what only a separate process shows (Ctrl-C,
a live second run). Add a case by adding a row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import hashlib
import io
import json
import os
import pathlib
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import conftest
import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = '--config=configs/kd.py:tiny --config.data.data_dir={data}'
RUN = TINY + ' ' + ' '.join(conftest.RUN_DIR_FLAGS)  # the config that trained run_dir
MAIN_NEW = TINY + ' --workdir={tmp}/w'  # fkd.main into a new workdir


@dataclasses.dataclass(frozen=True)
class Case:
  """One hostile command and what it must do.

  `args` is split like a shell line after `{run}` (the finished tiny run, shared: read only),
  `{data}` (the TFDS data_dir) and `{tmp}` (this row's sandbox) are filled in.
  """

  id: str
  module: str
  args: str
  code: int = 2
  message: str = ''  # in the `fkd: error:` line (code 2), else in stdout
  setup: Callable[[pathlib.Path, pathlib.Path], None] | None = None  # (sandbox, run_dir)
  patch: Callable[[pytest.MonkeyPatch], None] | None = None  # in-process rows only
  may_change: tuple[str, ...] = ()  # globs, relative to the sandbox, of files it may write
  check: Callable[[pathlib.Path], None] | None = None  # more about the sandbox afterwards
  subprocess: bool = False


# ---- setups: the user's files, made in the row's sandbox ---------------------------------------


def _photo(path: pathlib.Path, size: tuple[int, int] = (64, 48), value: int = 90) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(value)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)


def photos(*names: str) -> Callable[[pathlib.Path, pathlib.Path], None]:
  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    for i, name in enumerate(names):
      _photo(tmp / name, value=i)

  return setup


def files(contents: dict[str, str | None]) -> Callable[[pathlib.Path, pathlib.Path], None]:
  """The user's files (relative path -> text; None: an empty folder)."""

  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    for name, text in contents.items():
      path = tmp / name
      if text is None:
        path.mkdir(parents=True, exist_ok=True)
      else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

  return setup


def both(*setups: Callable) -> Callable[[pathlib.Path, pathlib.Path], None]:
  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    for s in setups:
      s(tmp, run)

  return setup


def copy_run(tmp: pathlib.Path, run: pathlib.Path) -> None:
  """A private copy of the finished run at {tmp}/w (for rows that change a workdir)."""
  shutil.copytree(run, tmp / 'w')


def _truncate_latest(stage_dir: pathlib.Path) -> None:
  step = max(int(p.name) for p in stage_dir.iterdir() if p.name.isdigit())
  biggest = max((stage_dir / str(step) / 'model').rglob('d/*'), key=lambda p: p.stat().st_size)
  with open(biggest, 'r+b') as f:
    f.truncate(biggest.stat().st_size // 2)


def corrupt_copy(stage: str) -> Callable[[pathlib.Path, pathlib.Path], None]:
  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    copy_run(tmp, run)
    _truncate_latest(tmp / 'w' / stage)

  return setup


def lock_of(pid_of: Callable[[], int]) -> Callable[[pathlib.Path, pathlib.Path], None]:
  """{tmp}/w/.lock naming the process `pid_of()` on this host."""

  def setup(tmp: pathlib.Path, run: pathlib.Path) -> None:
    from fkd.infra import workdir

    pid = pid_of()
    (tmp / 'w').mkdir(exist_ok=True)
    record = {
      'pid': pid,
      'host': __import__('socket').gethostname(),
      'time': time.time(),
      'start_time': workdir._start_time(pid),
    }
    (tmp / 'w' / '.lock').write_text(json.dumps(record))

  return setup


def _dead_pid() -> int:
  proc = subprocess.Popen(['true'])
  proc.wait()
  return proc.pid


def set_aside(stage: str) -> Callable[[pathlib.Path], None]:
  def check(tmp: pathlib.Path) -> None:
    stage_dir = tmp / 'w' / stage
    assert [p.name for p in stage_dir.iterdir() if '.corrupt-' in p.name] == ['6.corrupt-1']
    assert not (stage_dir / '6').exists()

  return check


def exported(tmp: pathlib.Path, run: pathlib.Path) -> None:
  """An earlier export of the copied run, at the default place."""
  from fkd.serve import export

  export.export(str(tmp / 'w'), batch=1)


def lock_gone(tmp: pathlib.Path) -> None:
  assert not (tmp / 'w' / '.lock').exists()


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
  """The first report written fails as a full disk does under Orbax / asyncio (wrapped)."""
  from fkd.infra import metric_writer

  def full(*args, **kwargs):
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), 'eval.jsonl')
    except OSError as e:
      raise RuntimeError('Event loop is closed') from e

  monkeypatch.setattr(metric_writer.MetricWriter, 'write_scalars', full)


def permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
  from fkd.infra import metric_writer

  def denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), 'eval.jsonl')

  monkeypatch.setattr(metric_writer.MetricWriter, 'write_scalars', denied)


# ---- the table --------------------------------------------------------------------------------

M, E, P, X, B = 'fkd.main', 'fkd.evaluate', 'fkd.predict', 'fkd.export', 'fkd.data.build'
S, W, C = 'fkd.tools.summary', 'fkd.tools.import_weights', 'fkd.tools.calibrate_detector'
RUNLOCAL = '--config=configs/kd.py:runlocal --config.data.data_dir={data} --workdir={tmp}/w'
PREDICT = '--checkpoint={run}/student_kd --output={tmp}/out'

CASES = [
  # fkd.main: every config value checked before anything is written.
  Case(
    'batch_negative',
    M,
    MAIN_NEW + ' --config.train.batch_size=-4',
    message='config.train.batch_size must be a positive integer, got -4',
  ),
  Case(
    'batch_zero',
    M,
    MAIN_NEW + ' --config.train.batch_size=0',
    message='config.train.batch_size must be a positive integer, got 0',
  ),
  Case(
    'teacher_batch_zero',
    M,
    MAIN_NEW + ' --config.teacher_train.batch_size=0',
    message='config.teacher_train.batch_size must be a positive integer',
  ),
  Case(
    'image_size_zero',
    M,
    MAIN_NEW + ' --config.data.image_size=0',
    message='config.data.image_size must be a positive integer, got 0',
  ),
  Case(
    'image_size_negative',
    M,
    MAIN_NEW + ' --config.data.image_size=-32',
    message='config.data.image_size must be a positive integer',
  ),
  Case(
    'epochs_negative',
    M,
    RUNLOCAL + ' --config.train.num_epochs=-3',
    message='config.train.num_epochs must be a positive number, got -3',
  ),
  Case(
    'epochs_negative_with_steps',
    M,
    TINY + ' --workdir={tmp}/w --config.train.num_epochs=-3',
    message='config.train.num_epochs must be a number >= 0, got -3',
  ),
  Case(
    'epochs_zero',
    M,
    RUNLOCAL + ' --config.teacher_train.num_epochs=0',
    message='config.teacher_train.num_epochs must be a positive number',
  ),
  Case('lr_infinite', M, MAIN_NEW + ' --config.train.lr=inf', message='train.lr must be a number'),
  Case(
    'lr_negative',
    M,
    MAIN_NEW + ' --config.teacher_train.lr=-0.001',
    message='config.teacher_train.lr must be a number >= 0, got -0.001',
  ),
  Case('lr_nan', M, MAIN_NEW + ' --config.train.lr=nan', message='train.lr must be a number >= 0'),
  Case(
    'schedule_unknown',
    M,
    MAIN_NEW + ' --config.train.schedule=exponential',
    message="config.train.schedule must be one of inverse_time, cosine, steps, got 'exponential'",
  ),
  Case(
    'log_every_zero',
    M,
    MAIN_NEW + ' --config.train.log_every_steps=0',
    message='config.train.log_every_steps must be a positive integer',
  ),
  Case(
    'checkpoint_every_zero',
    M,
    MAIN_NEW + ' --config.teacher_train.checkpoint_every_steps=0',
    message='config.teacher_train.checkpoint_every_steps must be a positive integer',
  ),
  Case(
    'warmup_negative',
    M,
    MAIN_NEW + ' --config.train.warmup_steps=-1',
    message='config.train.warmup_steps must be an integer >= 0',
  ),
  Case(
    'adam_b1_above_one',
    M,
    MAIN_NEW + ' --config.train.adam_b1=1.5',
    message='config.train.adam_b1 must be in [0, 1)',
  ),
  Case(
    'adam_eps_zero',
    M,
    MAIN_NEW + ' --config.train.adam_eps=0',
    message='config.train.adam_eps must be a positive number',
  ),
  Case(
    'augment_unknown',
    M,
    MAIN_NEW + ' --config.data.augment=rotate',
    message="config.data.augment must be one of kd, flip, none, got 'rotate'",
  ),
  Case(
    'target_space_unknown',
    M,
    MAIN_NEW + ' --config.data.target_space=meters',
    message='config.data.target_space must be one of',
  ),
  Case(
    'max_train_zero',
    M,
    MAIN_NEW + ' --config.data.max_train_examples=0',
    message='config.data.max_train_examples must be a positive integer or -1',
  ),
  Case(
    'workers_negative',
    M,
    MAIN_NEW + ' --config.data.num_workers=-2',
    message='config.data.num_workers must be an integer >= 0',
  ),
  Case(
    'eval_batch_zero',
    M,
    MAIN_NEW + ' --config.eval.batch_size=0',
    message='config.eval.batch_size must be a positive integer',
  ),
  Case(
    'fr_threshold_negative',
    M,
    MAIN_NEW + ' --config.eval.fr_threshold=-0.1',
    message='config.eval.fr_threshold must be a positive number',
  ),
  Case(
    'model_unknown',
    M,
    MAIN_NEW + ' --config.student.name=resnet9',
    message='config.student.name must be one of',
  ),
  Case(
    'method_unknown', M, MAIN_NEW + ' --config.method=bogus', message='config.method must be one of'
  ),
  Case(
    'loss_unknown',
    M,
    MAIN_NEW + ' --config.loss.teacher=huber',
    message="config.loss.teacher must be one of ['l1', 'mse'], got 'huber'",
  ),
  Case(
    'dataset_unknown',
    M,
    MAIN_NEW + ' --config.data.name=no_such_faces',
    message="no dataset builder named 'no_such_faces'",
  ),
  Case('misspelled_key', M, MAIN_NEW + ' --config.trian.lr=1', message='trian'),
  Case(
    'config_file_missing',
    M,
    '--config=configs/nope.py --workdir={tmp}/w',
    message='bad command line',
  ),
  Case('workdir_missing', M, TINY, message='workdir'),
  Case('positional_argument', M, MAIN_NEW + ' extra', message='unexpected arguments: extra'),
  Case(
    'workdir_is_a_file',
    M,
    TINY + ' --workdir={tmp}/file/w',
    setup=files({'file': 'mine'}),
    message='is not writable',
  ),
  Case(
    'teacher_ckpt_missing',
    M,
    MAIN_NEW + ' --config.teacher_tough_ckpt={tmp}/nope',
    message='config.teacher_tough_ckpt: no checkpoint at',
  ),
  # fkd.main on an existing workdir: the config that made it, the lock, corrupt checkpoints.
  Case(
    'rerun_other_lr',
    M,
    RUN + ' --workdir={run} --config.train.lr=0.005',
    message='config.train.lr is 0.005 but',
  ),
  Case(
    'rerun_names_the_way_forward',
    M,
    RUN + ' --workdir={run} --config.train.num_steps=60',
    message='into a new --workdir, or pass --allow_config_change',
  ),
  Case(
    'rerun_other_image_size',
    M,
    RUN + ' --workdir={run} --config.data.image_size=48',
    message='config.data.image_size is 48 but',
  ),
  Case(
    'rerun_other_width',
    M,
    RUN + ' --workdir={run} --config.student.kwargs.width=0.5',
    message='config.student.kwargs.width is 0.5 but',
  ),
  Case(
    'rerun_other_loss',
    M,
    RUN + ' --workdir={run} --config.loss.teacher=mse',
    message="config.loss.teacher is 'mse' but",
  ),
  Case(
    'rerun_other_dataset_size',
    M,
    RUN + ' --workdir={run} --config.data.max_train_examples=32',
    message='config.data.max_train_examples is 32',
  ),
  Case(
    'lock_of_a_live_run',
    M,
    MAIN_NEW,
    setup=lock_of(os.getppid),
    message='is in use by pid',
    may_change=('w', 'w/.lock'),
  ),
  Case(
    'stale_lock_taken_over',
    M,
    RUN + ' --workdir={tmp}/w',
    setup=both(copy_run, lock_of(_dead_pid)),
    code=0,
    message='taking over the lock of a run that ended',
    check=lock_gone,
    may_change=('w/.lock', 'w/results.*', 'w/*.png', 'w/*/eval.jsonl', 'w/*/events.*'),
  ),
  Case(
    'rerun_allowed_to_change',
    M,
    RUN + ' --workdir={tmp}/w --config.train.lr=0.005 --allow_config_change',
    setup=copy_run,
    code=0,
    message='config.train.lr is 0.005, student_kd was trained with 0.002',
    may_change=('w/results.*', 'w/*.png', 'w/*/eval.jsonl', 'w/*/events.*'),
  ),
  Case(
    'corrupt_final_checkpoint',
    M,
    RUN + ' --workdir={tmp}/w',
    setup=corrupt_copy('student_kd'),
    message='no checkpoint in',
    check=set_aside('student_kd'),
    may_change=('w/student_kd/6', 'w/student_kd/6/*', 'w/student_kd/6.corrupt-1*'),
  ),
  # fkd.evaluate
  Case('evaluate_workdir_missing', E, RUN + ' --workdir={tmp}/nope', message='does not exist'),
  Case(
    'evaluate_other_image_size',
    E,
    RUN + ' --workdir={run} --config.data.image_size=48',
    message='config.data.image_size is 48 but',
  ),
  Case(
    'evaluate_other_norm',
    E,
    RUN + ' --workdir={run} --config.eval.norm=inter_pupil',
    message="config.eval.norm is 'inter_pupil'",
  ),
  Case(
    'evaluate_other_dataset',
    E,
    RUN + ' --workdir={run} --config.data.name=no_such_faces',
    message="config.data.name is 'no_such_faces'",
  ),
  Case(
    'evaluate_bad_value',
    E,
    RUN + ' --workdir={run} --config.eval.batch_size=0',
    message='config.eval.batch_size must be a positive integer',
  ),
  Case('evaluate_misspelled_flag', E, RUN + ' --workdri={run}', message='bad command line'),
  Case(
    'evaluate_corrupt_checkpoint',
    E,
    RUN + ' --workdir={tmp}/w',
    setup=corrupt_copy('teacher_tough'),
    message='teacher_tough/6 does not restore',
  ),
  Case(
    'evaluate_disk_full',
    E,
    RUN + ' --workdir={tmp}/w',
    setup=copy_run,
    patch=disk_full,
    message='No space left on device: eval.jsonl (free some space',
  ),
  Case(
    'evaluate_permission_denied',
    E,
    RUN + ' --workdir={tmp}/w',
    setup=copy_run,
    patch=permission_denied,
    message='Permission denied: eval.jsonl',
  ),
  Case(
    'evaluate_operational_change_is_fine',
    E,
    RUN + ' --workdir={tmp}/w --config.eval.batch_size=8',
    setup=copy_run,
    code=0,
    message='| student_kd |',
    may_change=('w/results.*', 'w/*.png', 'w/*/eval.jsonl', 'w/*/events.*'),
  ),
  # fkd.predict: the user's photos are never overwritten.
  Case(
    'predict_output_is_the_input_folder',
    P,
    '--checkpoint={run}/student_kd --image={tmp}/photos --output={tmp}/photos --whole_image',
    setup=photos('photos/a.png', 'photos/b.jpg'),
    message='would overwrite the input',
  ),
  Case(
    'predict_output_holds_a_user_file',
    P,
    PREDICT + ' --image={tmp}/a.png --whole_image',
    setup=both(photos('a.png'), files({'out/a.json': '{"mine": 1}'})),
    message='exists and was not written by fkd.predict',
  ),
  Case(
    'predict_output_is_a_file',
    P,
    '--checkpoint={run}/student_kd --image={tmp}/a.png --output={tmp}/a.png.txt --whole_image',
    setup=both(photos('a.png'), files({'a.png.txt': 'x'})),
    message='is a file, not a folder',
  ),
  Case(
    'predict_same_stems_kept_apart',
    P,
    PREDICT + ' --image={tmp}/in --whole_image',
    code=0,
    setup=photos('in/a.png', 'in/a.jpg'),
    message='a_png.json',
    may_change=('out', 'out/a_png.*', 'out/a_jpg.*'),
  ),
  Case(
    'predict_bbox_nan',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=nan,0,10,10',
    setup=photos('a.png'),
    message='--bbox must be 4 finite numbers',
  ),
  Case(
    'predict_bbox_inf',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=0,0,inf,10',
    setup=photos('a.png'),
    message='--bbox must be 4 finite numbers',
  ),
  Case(
    'predict_bbox_three_numbers',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=1,2,3',
    setup=photos('a.png'),
    message='--bbox must be x,y,w,h (4 numbers)',
  ),
  Case(
    'predict_bbox_zero_width',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=0,0,0,10',
    setup=photos('a.png'),
    message='width and height must be positive',
  ),
  Case(
    'predict_bbox_outside',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=5000,5000,40,40',
    setup=photos('a.png'),
    message='lies outside',
  ),
  Case(
    'predict_bbox_left_of_the_image',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=-100,0,50,40',
    setup=photos('a.png'),
    message='(64x48 pixels)',
  ),
  Case(
    'predict_image_missing',
    P,
    PREDICT + ' --image={tmp}/nope.png --whole_image',
    message='does not exist',
  ),
  Case(
    'predict_empty_folder',
    P,
    PREDICT + ' --image={tmp}/empty_dir --whole_image',
    setup=files({'empty_dir': None}),
    message='no images',
  ),
  Case(
    'predict_broken_photo',
    P,
    PREDICT + ' --image={tmp}/a.png --whole_image',
    setup=files({'a.png': 'not a png'}),
    message='cannot decode the image',
  ),
  Case(
    'predict_two_inputs',
    P,
    PREDICT + ' --image={tmp}/a.png --video={tmp}/v.mp4',
    setup=photos('a.png'),
    message='exactly one of --image, --video and --camera',
  ),
  Case(
    'predict_workdir_and_checkpoint',
    P,
    PREDICT + ' --workdir={run} --image={tmp}/a.png --whole_image',
    setup=photos('a.png'),
    message='exactly one of --workdir and --checkpoint',
  ),
  Case(
    'predict_workdir_missing',
    P,
    '--workdir={tmp}/nope --image={tmp}/a.png --output={tmp}/o --whole_image',
    setup=photos('a.png'),
    message='does not exist',
  ),
  Case(
    'predict_bbox_and_whole_image',
    P,
    PREDICT + ' --image={tmp}/a.png --bbox=0,0,9,9 --whole_image',
    setup=photos('a.png'),
    message='at most one of --bbox and --whole_image',
  ),
  Case(
    'predict_smooth_photo',
    P,
    PREDICT + ' --image={tmp}/a.png --smooth',
    setup=photos('a.png'),
    message='--smooth is for --video and --camera',
  ),
  Case(
    'predict_batch_zero',
    P,
    PREDICT + ' --image={tmp}/a.png --whole_image --batch_size=0',
    setup=photos('a.png'),
    message='batch_size must be at least 1',
  ),
  Case('predict_camera_name', P, PREDICT + ' --camera=front', message='--camera must be'),
  Case('predict_video_missing', P, PREDICT + ' --video={tmp}/nope.mp4', message='does not exist'),
  Case(
    'predict_corrupt_checkpoint',
    P,
    '--checkpoint={tmp}/w/student_kd --image={tmp}/a.png --output={tmp}/out --whole_image',
    setup=both(corrupt_copy('student_kd'), photos('a.png')),
    message='does not restore',
  ),
  # fkd.export
  Case(
    'export_output_json',
    X,
    '--workdir={run} --output={tmp}/model.json',
    message='cannot be a .json file',
  ),
  Case(
    'export_over_a_user_file',
    X,
    '--workdir={run} --output={tmp}/model.bin',
    setup=files({'model.bin': 'mine'}),
    message='exists and was not written by fkd.export',
  ),
  Case(
    'export_over_a_user_record',
    X,
    '--workdir={run} --output={tmp}/model.stablehlo',
    setup=files({'model.json': '{"mine": 1}'}),
    message='model.json (the record of --output',
  ),
  Case(
    'export_output_is_a_folder',
    X,
    '--workdir={run} --output={tmp}/d_dir',
    setup=files({'d_dir': None}),
    message='is a folder',
  ),
  Case(
    'export_over_results',
    X,
    '--workdir={tmp}/w --output={tmp}/w/results.md',
    setup=copy_run,
    message='exists and was not written by fkd.export',
  ),
  Case(
    'export_stage_missing',
    X,
    '--workdir={run} --stage=nope --output={tmp}/m.stablehlo',
    message='no checkpoint in',
  ),
  Case('export_format_unknown', X, '--workdir={run} --format=onnx', message='bad command line'),
  Case('export_workdir_missing', X, '--workdir={tmp}/nope', message='does not exist'),
  Case(
    'export_replaces_its_own_export',
    X,
    '--workdir={tmp}/w --batch=1',
    setup=both(copy_run, exported),
    code=0,
    message='student_kd ->',
    may_change=('w/export/student_kd.*',),
  ),
  # fkd.data.build
  Case('build_dataset_unknown', B, '--dataset=nope --manual_dir={tmp}', message="--dataset='nope'"),
  Case('build_dataset_missing', B, '--manual_dir={tmp}', message='--dataset'),
  Case(
    'build_manual_dir_missing',
    B,
    '--dataset=300w --manual_dir={tmp}/nope',
    message='is not a directory',
  ),
  Case('build_manual_dir_not_given', B, '--dataset=300w', message='--manual_dir is required'),
  Case(
    'build_crop_size_text',
    B,
    '--dataset=300w --manual_dir={tmp} --crop_size=big',
    message="invalid int value: 'big'",
  ),
  Case(
    'build_unknown_flag',
    B,
    '--dataset=300w --manual_dir={tmp} --bogus',
    message='unrecognized arguments: --bogus',
  ),
  Case(
    'build_data_dir_is_a_file',
    B,
    '--dataset=300w --manual_dir={tmp} --data_dir={tmp}/f',
    setup=files({'f': 'mine'}),
    message='is a file, not a folder',
  ),
  Case(
    'build_folder_without_spec',
    B,
    '--dataset=folder --manual_dir={tmp}/faces_dir --data_dir={tmp}/tfds',
    setup=files({'faces_dir': None}),
    message='needs a dataset.json',
  ),
  Case(
    'build_folder_bad_spec',
    B,
    '--dataset=folder --manual_dir={tmp}/faces --data_dir={tmp}/tfds',
    setup=files({'faces/dataset.json': '{oops'}),
    message='not valid JSON',
  ),
  Case(
    'build_config_unknown',
    B,
    '--dataset=cofw --config=nope --manual_dir={tmp}',
    message="--config='nope'",
  ),
  # fkd.tools.*
  Case('summary_model_unknown', S, 'resnet9', message="unknown model 'resnet9'"),
  Case('summary_no_model', S, '', message='usage: python -m fkd.tools.summary'),
  Case('summary_resolution_text', S, 'mobilenet_v2 --resolution=big', message='bad command line'),
  Case(
    'import_source_missing',
    W,
    '--from=keras --arch=mobilenet_v2 {tmp}/nope.keras {tmp}/ckpt',
    message='no such file',
  ),
  Case(
    'import_into_a_file',
    W,
    '--from=keras --arch=mobilenet_v2 {tmp}/w.keras {tmp}/mine',
    setup=files({'mine': 'x', 'w.keras': 'x'}),
    message='is a file, not a folder',
  ),
  Case(
    'import_into_a_full_folder',
    W,
    '--from=torch --arch=resnet50 {tmp}/w.pth {tmp}/ckpt',
    setup=files({'ckpt/notes': 'mine', 'w.pth': 'x'}),
    message='exists and is not empty',
  ),
  Case(
    'import_format_unknown',
    W,
    '--from=onnx --arch=resnet50 {tmp}/a {tmp}/b',
    message='bad command line',
  ),
  Case(
    'import_arch_unknown',
    W,
    '--from=torch --arch=vgg16 {tmp}/w.pth {tmp}/ckpt',
    setup=files({'w.pth': 'x'}),
    message='vgg16',
  ),
  Case(
    'calibrate_manual_dir_missing',
    C,
    '--manual_dir={tmp}/nope --output={tmp}/c.json',
    message='is not a directory',
  ),
  Case(
    'calibrate_over_a_user_file',
    C,
    '--manual_dir={tmp} --output={tmp}/notes.json',
    setup=files({'notes.json': '{"mine": 1}'}),
    message='exists and was not written by fkd.tools.calibrate_detector',
  ),
  Case(
    'calibrate_positional',
    C,
    '--manual_dir={tmp} --output={tmp}/c.json extra',
    message='unexpected arguments: extra',
  ),
  # Real processes: the exit codes as a shell sees them.
  Case(
    'process_main_batch',
    M,
    MAIN_NEW + ' --config.train.batch_size=-4',
    subprocess=True,
    message='config.train.batch_size must be a positive integer, got -4',
  ),
  Case('process_build_no_args', B, '', subprocess=True, message='--dataset'),
  Case('process_summary_unknown', S, 'resnet9', subprocess=True, message='unknown model'),
]


# ---- running a row ----------------------------------------------------------------------------


def _snapshot(root: pathlib.Path) -> dict[str, tuple[int, str]]:
  """Relative path -> (size, content digest) of every file under `root` (directories too)."""
  out = {}
  if not root.exists():
    return out
  for path in root.rglob('*'):
    rel = str(path.relative_to(root))
    if path.is_dir():
      out[rel] = (-1, '')
    else:
      out[rel] = (path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest())
  return out


def run_in_process(module: str, argv: list[str]) -> tuple[int, str, str]:
  """`python -m module *argv` in this process: (exit code, stdout, stderr)."""
  import logging

  from absl import flags
  from absl import logging as absl_logging

  before = set(flags.FLAGS)
  handlers, verbosity = logging.root.handlers[:], absl_logging.get_verbosity()
  out, err = io.StringIO(), io.StringIO()
  saved_argv = sys.argv
  sys.argv = [module, *argv]
  code = 0
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # runpy: module already imported
        try:
          runpy.run_module(module, run_name='__main__', alter_sys=True)
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.argv = saved_argv
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    logging.root.handlers[:] = handlers  # absl.app.run installs its handler on the root logger
    absl_logging.set_verbosity(verbosity)
  return code, out.getvalue(), err.getvalue()


def run_process(module: str, argv: list[str]) -> tuple[int, str, str]:
  proc = subprocess.run(
    [sys.executable, '-m', module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  return proc.returncode, proc.stdout, proc.stderr


def _allowed(rel: str, patterns: tuple[str, ...]) -> bool:
  return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, run_dir, data_dir, tmp_path, monkeypatch):
  sandbox = tmp_path / 'sandbox'
  sandbox.mkdir()
  if case.setup:
    case.setup(sandbox, run_dir)
  if case.patch:
    case.patch(monkeypatch)
  argv = shlex.split(case.args.format(run=run_dir, data=data_dir, tmp=sandbox))
  mine, shared = _snapshot(sandbox), _snapshot(run_dir)

  runner = run_process if case.subprocess else run_in_process
  monkeypatch.chdir(REPO)
  code, out, err = runner(case.module, argv)

  assert 'Traceback' not in err, err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith('fkd: error:')]
  assert code == case.code, (code, out[-1500:], err[-1500:])
  if case.code == 2:
    assert len(errors) == 1, err[-2000:]
    assert case.message in errors[0], errors[0]
    others = [ln for ln in err.splitlines() if ln not in errors]
    assert not any('Error' in ln or 'error:' in ln for ln in others), err[-2000:]
  else:
    assert not errors, err[-2000:]
    assert case.message in out, out[-2000:]

  # Nothing lost: the shared run is untouched; the sandbox changed only where the row says.
  assert _snapshot(run_dir) == shared
  after = _snapshot(sandbox)
  for rel, before in mine.items():
    if not _allowed(rel, case.may_change):
      assert after.get(rel) == before, f'{rel} was changed or lost'
  new = [rel for rel in after if rel not in mine and not _allowed(rel, case.may_change)]
  assert not new, f'left behind: {new}'
  assert not list(sandbox.rglob('.lock')) or case.id == 'lock_of_a_live_run'
  if case.check:
    case.check(sandbox)


def test_the_table_is_big_and_covers_every_tool():
  assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
  assert {c.module for c in CASES} >= {M, E, P, X, B, S, W, C}


# ---- what only separate processes show ---------------------------------------------------------


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 400) -> None:
  deadline = time.time() + timeout
  for line in proc.stdout:
    if text in line:
      return
    assert time.time() < deadline, f'no {text!r} in time'
  raise AssertionError(f'ended before {text!r}: {proc.stderr.read()[-2000:]}')


def test_ctrl_c_saves_a_checkpoint_and_a_second_run_is_locked_out(data_dir, tmp_path):
  """A live run holds the lock (a second run stops at once), and Ctrl-C (SIGINT) stops it with
  exit 130 after a checkpoint at the step it reached, which the rerun resumes from."""
  from fkd.infra import checkpoint

  workdir = tmp_path / 'w'
  command = [
    sys.executable, '-m', 'fkd.main', '--config=configs/baseline.py:tiny', f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}', '--config.train.num_steps=1000000',
    '--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=1000',
  ]  # fmt: skip
  proc = subprocess.Popen(
    command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  try:
    _wait_for(proc, 'step 2/1000000')
    code, _, err = run_process('fkd.main', command[3:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f'workdir {workdir} is in use by pid {proc.pid}' in lines[0], lines
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 130, err[-2000:]
  assert 'Traceback' not in err, err[-4000:]
  assert 'stopped by SIGINT at step' in err.strip().splitlines()[-1], err[-2000:]
  step = checkpoint.latest_step(str(workdir / 'student_baseline'))
  assert step is not None and step >= 2
  assert not (workdir / '.lock').exists()
  rows = [json.loads(line)['step'] for line in open(workdir / 'student_baseline' / 'metrics.jsonl')]
  assert max(rows) == step


# ---- the pieces behind the table ----------------------------------------------------------------


def test_a_bug_in_fkd_shows_its_traceback_and_says_so(capsys):
  from fkd import cli

  try:
    {}['missing']
  except KeyError as e:
    assert cli.report(e) == 1
  err = capsys.readouterr().err
  assert 'Traceback' in err and "KeyError: 'missing'" in err
  assert err.strip().splitlines()[-1].startswith('fkd: this is a bug in fkd')
  assert cli.report(KeyboardInterrupt()) == 130


def test_lock_of_a_reused_pid_is_stale(tmp_path, capsys):
  """A lock whose pid now belongs to another process (another start time) is taken over; this
  process's own lock is re-entrant, and released on the way out."""
  from fkd.infra import workdir

  lock = tmp_path / '.lock'
  host = __import__('socket').gethostname()
  lock.write_text(json.dumps({'pid': os.getppid(), 'host': host, 'start_time': 'other'}))
  with workdir.lock(str(tmp_path)):
    assert json.loads(lock.read_text())['pid'] == os.getpid()
    assert workdir.acquire(str(tmp_path)) == str(lock)
  assert not lock.exists()
  assert 'taking over the lock' in capsys.readouterr().out
  lock.write_text(json.dumps({'pid': 1, 'host': 'elsewhere', 'start_time': None}))
  with pytest.raises(Exception, match='in use by pid 1 on elsewhere'):
    workdir.acquire(str(tmp_path))
  assert lock.exists()  # another host's lock is never taken over by guessing


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
  from fkd.infra import metric_writer

  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (1, 8, 16, 24)))
  path.write_text(path.read_text() + '{"step": 3')  # a row cut short by a kill
  metric_writer.truncate(str(path), 16)
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [1, 8, 16]


def test_a_full_disk_under_orbax_is_one_line():
  """What a full disk looks like inside an Orbax save (a TensorStore ValueError naming the OS
  error code, re-raised by a background future) is the user's problem, said in one line."""
  from fkd import cli

  where = '/w/student_baseline/6.orbax-checkpoint-tmp/model.orbax-checkpoint-tmp/ocdbt.process_0/'
  message = (
    f'RESOURCE_EXHAUSTED: Error writing "params.head.kernel/0.0" in OCDBT database at local file '
    f'"{where}": Failed writing: "{where}d/3a85": Failed to write 1500913 bytes to file 23: No '
    "space left on device [os_error_code='28']"
  )
  try:
    try:
      raise ValueError(message)
    except ValueError as e:
      raise RuntimeError('Event loop is closed') from e
  except RuntimeError as e:
    assert cli.user_io_problem(e) == (
      f'No space left on device: {where} (free some space and rerun the same command)'
    )
  assert cli.user_io_problem(ValueError("OUT_OF_RANGE [os_error_code='2x']")) is None
