"""MobileFAN (Zhao et al., Pattern Recognition 2020): Simple Baselines teacher -> MobileNetV2.

Two stages in one command: the teacher on Gaussian heatmaps, then the MobileFAN student (MobileNetV2
encoder, three k2 s2 deconvolutions, 1x1 head) with heatmap MSE + feature-aligned (λ 0.01) +
feature-similarity (pixel affinity, λ 0.01) distillation (method.md §4–5). Hyper-parameters live in
fkd/methods/fan/recipe.py with comments citing method.md.

Embedded synthetic dataset, CPU-sized:
  python -m fkd.main --config=configs/mobilefan.py --workdir=runs/mobilefan
Quick look (a few minutes, tiny models):
  python -m fkd.main --config=configs/mobilefan.py:runlocal --workdir=/tmp/mobilefan
Paper scale (256², ResNet-50 teacher, batch 8, 80 epochs; needs `resnet50` in fkd.models):
  python -m fkd.main --config=configs/mobilefan.py:cofw --workdir=runs/mobilefan_cofw \
      --config.data.manual_dir=/data/COFW
Args (comma-separated): synthetic (default) | 300w | wflw | cofw; runlocal; tiny (tests);
baseline (also train `student_baseline`, the student with the heatmap MSE alone).
"""

from fkd.config_lib import parse_arg
from fkd.methods.fan import recipe as fan_config


def get_config(arg: str | None = None):
  arg = parse_arg(arg, dataset='synthetic', runlocal=False, tiny=False, baseline=False)
  config = fan_config.fan_base('mobilefan', arg.dataset, arg.runlocal, arg.tiny)
  if arg.baseline:
    config.stages = (*config.stages, 'student_baseline')
  return config
