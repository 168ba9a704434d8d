"""Baseline student: MobileNetV2 alone with a plain MSE loss (method.md §2.5.4, `mn-base`).

Same data, network and budget as the KD student of configs/kd.py. Run it into the same workdir to
see `student_baseline` beside `student_kd` in results.json:
  python -m fkd.main --config=configs/baseline.py --workdir=runs/kd
Args: as configs/kd.py (synthetic | 300w | wflw | cofw, runlocal, tiny).
"""

from fkd import config_lib
from fkd.methods.kd import recipe


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, dataset='synthetic', runlocal=False, tiny=False, cpu=False)
  config = recipe.kd_base(arg.dataset, arg.runlocal, arg.tiny, arg.cpu)
  config.stages = ('student_baseline',)
  return config
