"""KD-Loss (Fard & Mahoor, CVIU 2022; method.md §2): two regression teachers, then the student.

Stages, in training and report order (a stage's position offsets its seed):

1. `teacher_tolerant`: the teacher model on the ASM soft landmarks (§2.3), `config.loss.teacher`;
2. `teacher_tough`: the same model on the ground truth;
3. `student_kd`: the student with KD-Loss (§2.5) from the frozen teachers of `config.kd.teachers`
   (both by default; one or none give the ablations of §2.5.4, a missing teacher's ALoss term is
   dropped);
4. `student_baseline`: the student alone, `config.loss.baseline` on the ground truth (§2.5.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fkd import heads
from fkd.data import pipeline
from fkd.errors import FkdError
from fkd.losses import kd_loss as losses
from fkd.methods.base import LossFn, Method, Row, Stage
from fkd.methods.kd import ablation

TEACHERS = ('teacher_tough', 'teacher_tolerant')
STUDENT = 'student_kd'  # the KD-Loss student (output distillation shares its seed offset)
SIMPLE_LOSSES = {'mse': losses.mse, 'l1': losses.l1}


def regression_head(config: Any) -> heads.RegressionHead:
  return heads.RegressionHead(config.data.image_size, config.data.target_space)


def regression_stage(name: str, config: Any) -> Stage:
  """The stages every regression method shares: both teachers and the baseline student."""
  head = regression_head(config)
  if name == 'teacher_tolerant':
    return Stage(
      name, 'teacher', config.teacher, config.teacher_train, head, loss=config.loss.teacher
    )
  if name == 'teacher_tough':
    return Stage(
      name, 'teacher', config.teacher, config.teacher_train, head, loss=config.loss.teacher
    )
  if name == 'student_baseline':
    return Stage(name, 'student', config.student, config.train, head, loss=config.loss.baseline)
  raise KeyError(name)


def supervised_loss(stage: Stage) -> LossFn:
  """`stage.loss` (mse | l1) against the ground truth, or the soft landmarks for the Tolerant
  teacher (method.md §2.3); unlabelled points (the batch's `pipeline.LABELLED` mask) are left out
  (`fkd.losses.kd_loss.masked_mean`)."""
  if stage.loss not in SIMPLE_LOSSES:
    raise FkdError(f'{stage.name}: loss must be one of {sorted(SIMPLE_LOSSES)}, got {stage.loss!r}')
  base = SIMPLE_LOSSES[stage.loss]
  key = 'soft_landmarks' if stage.name == 'teacher_tolerant' else 'landmarks'

  def loss_fn(outputs, features, batch, teachers):
    del features, teachers
    return base(outputs, stage.head.targets(batch[key]), batch.get(pipeline.LABELLED)), {}

  return loss_fn


class KDLoss(Method):
  name = 'kd'
  stages = ('teacher_tolerant', 'teacher_tough', 'student_kd', 'student_baseline')
  preferred = ('student_kd', 'student_baseline', 'teacher_tough', 'teacher_tolerant')
  reference_row = ablation.REFERENCE
  # The `300w,cpu` preset: both teachers start from one teacher network pretrained on the ground
  # truth of synthetic faces, the students from the student network pretrained with MSE.
  pretrains = {
    'teacher_tough': ('teacher', ('teacher_tolerant', 'teacher_tough')),
    'student_baseline': ('student', ('student_kd', 'student_baseline')),
  }
  published = 'kd_loss'

  def stage(self, name: str, config: Any) -> Stage:
    if name == 'student_kd':
      return Stage(
        name,
        'student',
        config.student,
        config.train,
        regression_head(config),
        teachers=tuple(config.kd.teachers),
        loss='kd',
      )
    try:
      return regression_stage(name, config)
    except KeyError:
      raise FkdError(
        f'config.stages: unknown stage {name!r} for method kd; known: {", ".join(self.stages)}'
      ) from None

  def validate(self, config: Any) -> None:
    try:
      losses.KDParams.from_config(config.kd)
    except (TypeError, ValueError) as e:
      raise FkdError(f'config.kd: {e}') from None
    unknown = [t for t in config.kd.teachers if t not in TEACHERS]
    if unknown or len(set(config.kd.teachers)) != len(config.kd.teachers):
      raise FkdError(
        f'config.kd.teachers must be distinct names among {TEACHERS}, got '
        f'{tuple(config.kd.teachers)}'
      )
    for name in ('teacher', 'baseline'):
      if config.loss[name] not in SIMPLE_LOSSES:
        raise FkdError(
          f'config.loss.{name} must be one of {sorted(SIMPLE_LOSSES)}, got {config.loss[name]!r}'
        )

  def loss_fn(self, stage: Stage, config: Any) -> LossFn:
    if stage.loss != 'kd':
      return supervised_loss(stage)
    params = losses.KDParams.from_config(config.kd)

    def loss_fn(outputs, features, batch, teachers: Mapping[str, Any]):
      del features
      gt = stage.head.targets(batch['landmarks'])
      tough = teachers['teacher_tough'][0] if 'teacher_tough' in teachers else None
      tolerant = teachers['teacher_tolerant'][0] if 'teacher_tolerant' in teachers else None
      # Unlabelled points leave every term, the teachers' ALoss terms too (no ground truth there).
      return losses.kd_loss(outputs, gt, tough, tolerant, params, batch.get(pipeline.LABELLED))

    return loss_fn

  def soft_targets(self, config: Any) -> float | None:
    """The Tolerant teacher's ASM targets (`config.asm.acc`), when the config has them."""
    return config.asm.acc if config.get('asm') else None

  def ablation_rows(self, config: Any) -> dict[str, Row]:
    return ablation.rows(config)
