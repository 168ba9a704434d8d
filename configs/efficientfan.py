"""EfficientFAN (Gao et al., TNNLS 2023): Simple Baselines teacher -> EfficientNet-B0 student.

Two stages in one command: the teacher on Gaussian heatmaps, then the EfficientFAN student
(EfficientNet-B0 encoder, three bilinear ×2 + 3x3 conv stages, 1x1 head) with heatmap MSE +
feature-aligned (λ 0.01) + multiscale patch-similarity (λ 0.01) distillation (method.md §4, §6;
the paper's decoder, teacher and weights are unknown, §9 #13–17). Hyper-parameters live in
fkd/methods/fan/recipe.py with comments citing method.md.

Embedded synthetic dataset, CPU-sized:
  python -m fkd.main --config=configs/efficientfan.py --workdir=runs/efficientfan
Quick look:
  python -m fkd.main --config=configs/efficientfan.py:runlocal --workdir=/tmp/efficientfan
Paper scale (256², ResNet-50 teacher; needs `resnet50` in fkd.models):
  python -m fkd.main --config=configs/efficientfan.py:300w --workdir=runs/efficientfan_300w \
      --config.data.manual_dir=/data/300W
Args: as configs/mobilefan.py.
"""

from fkd.config_lib import parse_arg
from fkd.methods.fan import recipe as fan_config


def get_config(arg: str | None = None):
  arg = parse_arg(arg, dataset='synthetic', runlocal=False, tiny=False, baseline=False)
  config = fan_config.fan_base('efficientfan', arg.dataset, arg.runlocal, arg.tiny)
  if arg.baseline:
    config.stages = (*config.stages, 'student_baseline')
  return config
