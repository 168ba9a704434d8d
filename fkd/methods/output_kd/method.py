"""Output distillation: the plain regression-KD baseline that KD-Loss is measured against.

The student regresses the ground truth and the frozen Tough teacher's outputs at once: Hinton et
al.'s (2015) soft-target distillation carried over to regression, with no teacher-dependent
weighting (the part KD-Loss adds):

  L = (1 − α)·D(student, ground truth) + α·D(student, teacher),  α = config.output_kd.alpha,
with D = MSE (`config.output_kd.loss='mse'`, the classic form) or L1 (`'l1'`: the same loss shape
as KD-Loss's Loss_Main, so the ablation can tell teacher targets from loss shape). Unlabelled points
(the batch's `pipeline.LABELLED` mask) leave both terms, as they leave KD-Loss's: the teacher's
term is guidance towards a ground truth that is unknown there.

Same teacher stage, student network, data and budget as KD-Loss (`fkd.methods.kd.method`), and the
same
seed offsets, so `student_output_kd` starts from `student_kd`'s initialisation: the two students
differ only in how the teacher enters the loss.
"""

from __future__ import annotations

from typing import Any

from fkd.data import pipeline
from fkd.errors import FkdError
from fkd.methods.base import LossFn, Method, Row, Stage
from fkd.methods.kd import method as kd
from fkd.methods.output_kd import ablation


class OutputKD(Method):
  name = ablation.NAME
  stages = ('teacher_tough', ablation.STAGE, 'student_baseline')
  preferred = (ablation.STAGE, 'student_baseline', 'teacher_tough')
  new_blocks = (ablation.NAME,)  # its rows switch a KD-Loss config to this method
  pretrains = {
    'teacher_tough': ('teacher', ('teacher_tough',)),
    'student_baseline': ('student', (ablation.STAGE, 'student_baseline')),
  }

  def stage(self, name: str, config: Any) -> Stage:
    if name == ablation.STAGE:
      return Stage(
        name,
        'student',
        config.student,
        config.train,
        kd.regression_head(config),
        teachers=('teacher_tough',),
        loss='output_kd',
      )
    if name in self.stages:
      return kd.regression_stage(name, config)
    raise FkdError(
      f'config.stages: unknown stage {name!r} for method output_kd; known: {", ".join(self.stages)}'
    )

  def seed_offset(self, name: str) -> int:
    return kd.KDLoss.stages.index(kd.STUDENT if name == ablation.STAGE else name)

  def validate(self, config: Any) -> None:
    if not 0.0 <= config.output_kd.alpha <= 1.0:
      raise FkdError(f'config.output_kd.alpha must be in [0, 1], got {config.output_kd.alpha}')
    if config.output_kd.get('loss', 'mse') not in kd.SIMPLE_LOSSES:
      raise FkdError(
        f'config.output_kd.loss must be one of {", ".join(kd.SIMPLE_LOSSES)}, '
        f'got {config.output_kd.loss!r}'
      )

  def loss_fn(self, stage: Stage, config: Any) -> LossFn:
    if stage.loss != 'output_kd':
      return kd.supervised_loss(stage)
    alpha = float(config.output_kd.alpha)
    distance = kd.SIMPLE_LOSSES[config.output_kd.get('loss', 'mse')]

    def loss_fn(outputs, features, batch, teachers):
      del features
      mask = batch.get(pipeline.LABELLED)
      terms = {
        'gt': (1.0 - alpha) * distance(outputs, stage.head.targets(batch['landmarks']), mask),
        'teacher': alpha * distance(outputs, teachers['teacher_tough'][0], mask),
      }
      return terms['gt'] + terms['teacher'], terms

    return loss_fn

  def guest_rows(self, host: Method, config: Any) -> dict[str, Row]:
    """Beside KD-Loss, from its Tough teacher: how much of KD-Loss's gain plain distillation
    gets."""
    return ablation.rows() if isinstance(host, kd.KDLoss) else {}
