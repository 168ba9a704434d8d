"""Output distillation, the plain regression-KD baseline (fkd/methods/output_kd/method.py).

The Tough teacher of KD-Loss (same network, data and budget as configs/kd.py), then the same
MobileNetV2 student trained on (1 − α)·MSE(ground truth) + α·MSE(teacher output). Reuse a KD-Loss
run's teacher instead of training one:
  python -m fkd.main --config=configs/output_kd.py --workdir=runs/output_kd \
      --config.teacher_tough_ckpt=runs/kd/teacher_tough
Alone (trains its own Tough teacher):
  python -m fkd.main --config=configs/output_kd.py --workdir=runs/output_kd
Args: as configs/kd.py (synthetic | 300w | wflw | cofw, runlocal, tiny).
"""

from fkd import config_lib
from fkd.methods.kd import recipe


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, dataset='synthetic', runlocal=False, tiny=False)
  config = recipe.regression_base(arg.dataset, arg.runlocal, arg.tiny, method='output_kd')
  config.stages = ('teacher_tough', 'student_output_kd')
  config.output_kd = dict(
    # Weight of the teacher term: an even mix of ground truth and teacher (not tuned; the
    # ablation reports it as is).
    alpha=0.5,
    # The distance of both terms: 'mse' (the classic regression KD) or 'l1' (Loss_Main's shape).
    loss='mse',
  )
  return config
