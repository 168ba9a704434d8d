"""Shared pieces of the configs in `configs/`: arg parsing, the common blocks, loading.

Configs are big_vision style: `get_config(arg)` where `arg` is a comma-separated list such as
`300w,runlocal`. The first bare word naming a dataset picks it; `runlocal` shrinks everything so the
whole pipeline runs in a few minutes on a 2-core CPU; `tiny` shrinks it further to a few steps per
stage (unit tests, notebooks' smoke runs); `key=value` items set other options.

Blocks: `common` (seed, method, stages, data, eval: every method) and `optimizer_config`. Each
method's recipe builds on them in its own package: `fkd/methods/kd/recipe.py` (the regression
methods), `fkd/methods/fan/recipe.py` (the heatmap methods).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from fkd.data import datasets

DATASETS = tuple(k for k in datasets.DATASETS if k != 'cofw68')  # the config-arg dataset names


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'synthetic,runlocal,key=value' into a ConfigDict over `defaults`."""
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or '').split(',')):
    if '=' in item:
      key, value = item.split('=', 1)
      if key not in out:
        raise ValueError(f'unknown config arg {key!r}; known: {sorted(out)}')
      out[key] = type(defaults[key])(value) if defaults[key] is not None else value
    elif item in DATASETS:
      out.dataset = item
    elif item in out and isinstance(defaults[item], bool):
      out[item] = True
    else:
      raise ValueError(
        f'unknown config arg {item!r}; datasets: {sorted(DATASETS)}, '
        f'flags: {sorted(k for k, v in defaults.items() if isinstance(v, bool))}'
      )
  return out


def optimizer_config(
  *, batch_size: int, num_epochs: float, num_steps: int = -1, lr: float = 1e-3
) -> ml_collections.ConfigDict:
  """Adam + Keras' legacy inverse-time decay, the KD-Loss recipe (method.md §2.6)."""
  return ml_collections.ConfigDict(
    dict(
      batch_size=batch_size,
      num_epochs=num_epochs,  # converted to steps with floor(N_train / batch) per epoch
      num_steps=num_steps,  # > 0 overrides num_epochs
      lr=lr,  # method.md §2.6: 1e-3
      schedule='inverse_time',  # method.md §2.6: lr_t = lr / (1 + decay t), Keras `decay=1e-4`
      lr_decay=1e-4,  # method.md §2.6
      warmup_steps=0,  # 'cosine' only: linear warm-up before the cosine decay to 0
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-7,  # method.md §2.6: Keras Adam defaults
      log_every_steps=50,
      checkpoint_every_steps=500,
    )
  )


def shrink_to_tiny(
  config: ml_collections.ConfigDict,
  steps: int = 6,
  *,
  epochs: float | None = None,
  batch_size: int | None = None,
  log_every: int | None = None,
  checkpoint_every: int | None = None,
) -> None:
  """`tiny`: a few steps per stage (tests, smoke runs), for `config.train` and `teacher_train`.

  `steps` fixed steps, logging and checkpointing at the last; or, with `epochs`, that many epochs
  of `batch_size` (a recipe whose tiny run keeps the epoch budget), logging every `log_every` and
  checkpointing every `checkpoint_every` steps.
  """
  for t in (config.train, config.teacher_train):
    if batch_size is not None:
      t.batch_size = batch_size
    if epochs is None:
      t.num_steps = steps
    else:
      t.num_epochs = epochs
    t.log_every_steps = log_every or steps
    t.checkpoint_every_steps = checkpoint_every or steps


def common(
  dataset: str = 'synthetic', runlocal: bool = False, *, method: str, norm: str
) -> ml_collections.ConfigDict:
  """What every method's config has: seed, method, stages (set by the caller), data and eval."""
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; known: {sorted(DATASETS)}')
  facts = datasets.get(dataset)
  paper = dataset != 'synthetic'
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The models' compute dtype (students, teachers, frozen models): 'float32' | 'bfloat16'.
  # Parameters, optimizer state, losses and metrics stay float32 either way.
  c.compute_dtype = 'float32'
  c.method = method  # a key of fkd.methods.REGISTRY
  c.stages = ()
  # Validation NME every this many steps while a stage trains (metrics.jsonl, TensorBoard:
  # val_nme, val_fr); 0 = off. Without a validation split, faces are held out of the train split
  # (fkd.training.trainer.validation_data).
  c.eval_every_steps = 0
  c.keep_best = False  # keep <stage>/best, the best validation NME; evaluation and teachers use it
  # The CPU program: 'auto' / 'native' run fkd's C++ kernels where they build (fkd.models.native),
  # 'xla' never (and runs frozen teachers in one call); FKD_NATIVE / FKD_FROZEN_CHUNK override.
  c.cpu_kernels = 'auto'

  c.data = ml_collections.ConfigDict(
    dict(
      name=facts.tfds_name,
      data_dir=config_dict.placeholder(str),  # TFDS data_dir; None = TFDS default
      manual_dir=config_dict.placeholder(str),  # raw download, builds the dataset on first use
      allow_partial=False,
      image_size=224 if paper else 64,  # method.md §2.2: 224x224 crops
      num_landmarks=facts.num_landmarks,
      target_space=facts.kd_space,  # method.md §2.2 / §9 #5: pixels for COFW, normalised otherwise
      train_split='train',
      eval_splits=facts.eval_splits,
      augment='flip',  # 'flip' | 'none' | the KD-Loss online one (method.md §2.2; its recipe)
      # augment='kd' only: std of a Gaussian jitter of the crop's landmark box, (dx, dy) in box
      # widths / heights and (log sx, log sy), as a detector's calibrated box misses it
      # (fkd.serve.box_calibration records its residuals); () = the exact box.
      box_noise=(),
      # augment='kd' only: what an augmented crop shows past the stored crop (rotation corners,
      # a box_noise re-crop beyond the stored margin): 'zeros' (black, method.md §2.2 step 1) or
      # 'reflect' (the crop mirrored at its edges: no black border marking the landmark box) or
      # 'context' (the face's real surroundings: a dataset built with context images, e.g.
      # ibug_300w/context).
      augment_fill='zeros',
      # Where augment='kd' / 'flip' run: 'device' (a jitted batched program before each train
      # step, fkd.data.device_augment; the host only gathers crops) or 'host' (NumPy / PIL on
      # num_workers threads: the random stream of runs before the device one); 'auto': the
      # device on a TPU / GPU, the host on CPU (training.trainer.resolve_augment_on).
      augment_on='auto',
      num_workers=0,  # augmentation threads of augment_on='host'; 0 = one per CPU core
      max_train_examples=-1,  # > 0 keeps only the first examples (quick looks, tests)
      # Train split cut into this many contiguous shards, each process reading only its own;
      # 0 = one per process. Fix it to keep the data order when the number of hosts changes.
      num_shards=0,
      max_eval_examples=-1,
    )
  )
  c.eval = ml_collections.ConfigDict(
    dict(
      norm=norm,
      frame='crop',  # results.md §1: KD-Loss measures in the 224 crop frame
      fr_threshold=0.1,
      batch_size=128,
    )
  )
  if runlocal:
    if dataset == 'synthetic':
      c.data.name = 'synthetic_faces/small'
    c.data.image_size = 32
    c.data.max_train_examples = 256
    c.data.max_eval_examples = 64
    c.eval.batch_size = 64
  return c


def load(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config=path:arg` loads it (notebooks, tools).

  `path` may carry the arg itself: `load('configs/kd.py:tiny')`.
  """
  import importlib.util
  import os

  if arg is None and ':' in os.path.basename(path):
    path, arg = path.rsplit(':', 1)
  spec = importlib.util.spec_from_file_location(
    f'fkd_config_{os.path.splitext(os.path.basename(path))[0]}', path
  )
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f'no config file {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
