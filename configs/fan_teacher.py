"""The Simple Baselines heatmap teacher alone (method.md §5.3), for MobileFAN and EfficientFAN.

Trains only the `teacher` stage into WORKDIR/teacher. Both students can then distil from it: with
--config.teacher_ckpt set, their configs skip their own teacher stage.
  python -m fkd.main --config=configs/fan_teacher.py --workdir=runs/fan_teacher
  python -m fkd.main --config=configs/mobilefan.py --workdir=runs/mobilefan \
      --config.teacher_ckpt=runs/fan_teacher/teacher
  python -m fkd.main --config=configs/efficientfan.py --workdir=runs/efficientfan \
      --config.teacher_ckpt=runs/fan_teacher/teacher
Args: as configs/mobilefan.py (synthetic | 300w | wflw | cofw, runlocal, tiny).
"""

from fkd.config_lib import parse_arg
from fkd.methods.fan import recipe as fan_config


def get_config(arg: str | None = None):
  arg = parse_arg(arg, dataset='synthetic', runlocal=False, tiny=False)
  config = fan_config.fan_base('mobilefan', arg.dataset, arg.runlocal, arg.tiny)
  config.stages = ('teacher',)
  return config
