"""A pre-stage on the embedded `synthetic_faces` before the stages of a real dataset.

With `config.pretrain.dataset` set (the KD-Loss `300w,cpu` preset sets it),
`fkd.training.trainer.run` first trains the config's teacher and student networks on the ground
truth of that dataset, into `<workdir>/pretrain/` (its own `results.json` on the synthetic test
split), and then starts every real-data stage from them: the teachers from the pretrained teacher
network, the students from the pretrained student network (`init_from`, head included when
`init_skip` is empty). It is an ordinary fkd run on another dataset, of the stages the methods
declare (`Method.pretrains`), so reruns skip it once finished and an interrupted pre-stage
resumes. An `init_from` set by hand wins over the pre-stage's.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

from fkd import methods


def pretrains() -> dict[str, tuple[str, tuple[str, ...]]]:
  """Pre-stage stage -> (model config key it pretrains, the real-data stages that start from it),
  merged over every method's `Method.pretrains` (an ablation row may switch the config's method,
  so a pre-stage serves the stages of every method)."""
  out: dict[str, tuple[str, tuple[str, ...]]] = {}
  for method in methods.REGISTRY.values():
    for stage, (key, users) in method.pretrains.items():
      old_key, old_users = out.get(stage, (key, ()))
      if old_key != key:
        raise ValueError(f'pre-stage {stage!r} pretrains both config.{old_key} and config.{key}')
      out[stage] = (key, tuple(dict.fromkeys((*old_users, *users))))
  return out


def enabled(config: Any) -> bool:
  pc = config.get('pretrain')
  return bool(pc and pc.get('dataset'))


def pretrain_config(config: Any) -> Any:
  """The config of the pre-stage run: the same networks and resolution on `pretrain.dataset`."""
  pc = config.pretrain
  sub = copy.deepcopy(config)
  with sub.unlocked():
    sub.pretrain.dataset = None
    sub.data.name = pc.dataset
    sub.data.manual_dir = None
    sub.data.allow_partial = False
    sub.data.eval_splits = ('test',)
    sub.data.augment = pc.augment
    if pc.augment != 'kd':  # options of the real data's 'kd' augmentation: none here
      sub.data.box_noise = ()
      sub.data.augment_fill = 'zeros'
    elif sub.data.get('augment_fill') == 'context':  # the pre-stage's data has no context images
      sub.data.augment_fill = 'reflect'
    sub.data.max_train_examples = -1
    sub.data.max_eval_examples = -1
    sub.train = copy.deepcopy(pc.student_train)
    sub.teacher_train = copy.deepcopy(pc.teacher_train)
    for key in [k for k in sub if k.endswith('_ckpt')]:  # the pre-stage trains its own stages
      sub[key] = None
    table = pretrains()
    wanted = {key for key, _ in table.values()}
    stages = []
    for stage, (key, users) in table.items():
      sub[key].init_from = None
      sub[key].init_skip = ('head/.*',)
      if (
        key in wanted
        and any(s in config.stages for s in users)
        and not config[key].get('init_from')
      ):
        stages.append(stage)
    sub.stages = tuple(stages)
  return sub


def run(config: Any, workdir: str, train_run: Callable[[Any, str], Any]) -> Any:
  """Runs the pre-stage (when enabled and needed) with `train_run` (`fkd.training.trainer.run`,
  passed in so that this module does not import the trainer) and returns the config that starts
  from it."""
  if not enabled(config):
    return config
  sub = pretrain_config(config)
  if not sub.stages:
    return config
  pre_dir = os.path.join(workdir, 'pretrain')
  print(f'[pretrain] {", ".join(sub.stages)} on {sub.data.name} into {pre_dir}', flush=True)
  train_run(sub, pre_dir)
  out = copy.deepcopy(config)
  for stage in sub.stages:
    key, _ = pretrains()[stage]
    out[key].init_from = os.path.join(pre_dir, stage)
  return out
