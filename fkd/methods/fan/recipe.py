"""Shared config of the heatmap pipeline (MobileFAN, EfficientFAN): `fan_base`.

The common data and eval blocks (`config_lib.common`), with `method='fan'`, heatmap models, the
`fan` loss block and the MobileFAN recipe (method.md §4–6). Args as config_lib: a dataset
(synthetic | 300w | wflw | cofw), `runlocal`, and `tiny` (unit tests: the 40-image dataset and
the smallest networks).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from fkd import config_lib


def fan_base(
  student: str, dataset: str = 'synthetic', runlocal: bool = False, tiny: bool = False
) -> ml_collections.ConfigDict:
  """`student` is 'mobilefan' or 'efficientfan'."""
  if student not in ('mobilefan', 'efficientfan'):
    raise ValueError(f"student must be 'mobilefan' or 'efficientfan', got {student!r}")
  runlocal = runlocal or tiny
  paper = dataset != 'synthetic'
  # method.md §5.6: outer eye corners (WFLW 60/72 too).
  c = config_lib.common(dataset, runlocal, method='fan', norm='inter_ocular')
  c.stages = ('teacher', 'student_distill')
  c.data.image_size = 256 if paper else 64  # method.md §4.1: 256² crops (stride-4 64² heatmaps)
  c.data.target_space = 'pixel'  # heatmap models predict crop pixels
  # method.md §4.3 asks for scale U(0.75, 1.25), rotation ±30° (p 0.6) and flips; the input
  # pipeline implements flips only for now (the KD-Loss 'kd' augmentation is another protocol).
  c.data.augment = 'flip'
  # method.md §5.6 scores in original-image pixels; the square crops of §4.1 scale both axes
  # alike, so inter-ocular NME is the same in the crop frame.

  # method.md §5.1 (MobileFAN) / §6.2 (EfficientFAN): ImageNet-initialised trunks in the papers;
  # fkd starts from random init until converted weights exist (§8).
  c.student = ml_collections.ConfigDict(dict(name=student, kwargs={}))
  # method.md §5.3 / §6.3 (§9 #14): the ResNet-50 Simple Baselines teacher for both students.
  c.teacher = ml_collections.ConfigDict(dict(name='simple_baselines', kwargs={}))
  # A teacher checkpoint used in place of training the `teacher` stage (None: train it).
  c.teacher_ckpt = config_dict.placeholder(str)

  c.fan = ml_collections.ConfigDict(
    dict(
      sigma=1.0,  # method.md §4.4: σ = 1 heatmap pixel (MobileFAN --sigma default)
      quantize_targets=False,  # method.md §4.4 / §9 #18: sub-pixel centres (True = official)
      decode='reference',  # method.md §4.6: argmax + quarter pixel; 'quadratic' | 'soft_argmax'
      layers=(1, 2, 3),  # method.md §5.4 / §6.4: the three decoder stages
      # MobileFAN (§5.4): λ_FA = λ_FS = 0.01 (README command for COFW; §9 #10).
      # EfficientFAN (§6.4, §9 #16): λ_FA = λ_PS = 0.01, no pixel-affinity term.
      lambda_fa=0.01,
      lambda_fs=0.01 if student == 'mobilefan' else 0.0,
      lambda_ps=0.0 if student == 'mobilefan' else 0.01,
      ps_min_scale=0,  # method.md §6.4: scales down to a 2x2 grid, unpooled included
      ps_pool='avg',  # method.md §6.4: average pooling ('max' is the SKD choice)
      share_adapter_23=False,  # method.md §5.2 / §9 #11: separate adapters
    )
  )

  # method.md §5.5: Adam (0.9, 0.999), lr 1e-3, ×0.1 at epochs 30 and 50, 80 epochs, batch 8,
  # no weight decay. EfficientFAN uses the same recipe (§6.5).
  c.train = config_lib.optimizer_config(batch_size=8, num_epochs=80, lr=1e-3)
  c.train.schedule = 'steps'
  c.train.lr_boundaries_epochs = (30, 50)
  c.train.lr_decay_factor = 0.1
  c.train.adam_eps = 1e-8  # PyTorch Adam default (the official code is PyTorch)
  # method.md §5.3: Simple Baselines schedule for the teacher: Adam 1e-3, ×0.1 at epochs 90 and
  # 120, 140 epochs, batch 32, no weight decay.
  c.teacher_train = config_lib.optimizer_config(batch_size=32, num_epochs=140, lr=1e-3)
  c.teacher_train.schedule = 'steps'
  c.teacher_train.lr_boundaries_epochs = (90, 120)
  c.teacher_train.lr_decay_factor = 0.1
  c.teacher_train.adam_eps = 1e-8

  if not paper:
    # Embedded dataset on a CPU: 64² crops (16² heatmaps), MobileNetV2-trunk teacher instead of
    # ResNet-50, narrow trunks, a warm-up + cosine schedule from 2e-3 (as the KD-Loss CPU config).
    # σ = 1 heatmap pixel is 4 crop pixels here, as at 256².
    c.teacher.kwargs = dict(
      backbone='mobilenet_v2',
      backbone_kwargs=dict(width=0.75, depth=0.5, bn_momentum=0.99, include_last_conv=False),
      decoder_channels=128,
      bn_momentum=0.99,
    )
    trunk = (
      dict(width=0.5, depth=0.5, bn_momentum=0.99)
      if student == 'mobilefan'
      else dict(width_scale=0.5, depth_scale=0.5, bn_momentum=0.99)
    )
    c.student.kwargs = dict(backbone_kwargs=trunk, decoder_channels=64, bn_momentum=0.99)
    c.train = config_lib.optimizer_config(batch_size=32, num_epochs=12, lr=2e-3)
    c.teacher_train = config_lib.optimizer_config(batch_size=32, num_epochs=12, lr=2e-3)
    for t in (c.train, c.teacher_train):
      t.schedule = 'cosine'
      t.warmup_steps = 50

  if runlocal:
    c.data.image_size = 64  # 16² heatmaps; 32² crops would leave 8² maps
    c.teacher.kwargs = dict(
      backbone='mobilenet_v2',
      backbone_kwargs=dict(width=0.35, depth=0.34, bn_momentum=0.9, include_last_conv=False),
      decoder_channels=32,
      bn_momentum=0.9,
    )
    trunk = (
      dict(width=0.35, depth=0.34, bn_momentum=0.9)
      if student == 'mobilefan'
      else dict(width_scale=0.25, depth_scale=0.25, bn_momentum=0.9)
    )
    c.student.kwargs = dict(backbone_kwargs=trunk, decoder_channels=16, bn_momentum=0.9)
    for t in (c.train, c.teacher_train):
      t.batch_size = 16
      t.num_epochs = 4
      t.num_steps = -1
      t.lr = 2e-3
      t.schedule = 'cosine'
      t.warmup_steps = 8
      t.log_every_steps = 8
      t.checkpoint_every_steps = 32
  if tiny:
    c.data.name = 'synthetic_faces/tiny' if dataset == 'synthetic' else c.data.name
    c.data.max_train_examples = 32
    c.data.max_eval_examples = 16
    config_lib.shrink_to_tiny(c, epochs=2, batch_size=8, log_every=2, checkpoint_every=4)
  return c
