"""KD-Loss (Fard & Mahoor, CVIU 2022): Tolerant + Tough EfficientNet-B3 teachers -> MobileNetV2.

Three stages in one command: the Tolerant teacher on ASM soft landmarks, the Tough teacher on the
ground truth, then the student with KD-Loss (method.md §2). Every published hyper-parameter lives in
fkd/methods/kd/recipe.py with a comment citing method.md.

Embedded synthetic dataset, CPU-sized (the README quick start; ~10 min on 2 cores):
  python -m fkd.main --config=configs/kd.py --workdir=runs/kd
Quick look (a few minutes, tiny models); `tiny` is a few steps per stage (tests, smoke runs):
  python -m fkd.main --config=configs/kd.py:runlocal --workdir=/tmp/kd
Paper scale (224², batch 70, 150 epochs; TPU/GPU) on a real dataset:
  python -m fkd.main --config=configs/kd.py:300w --workdir=runs/kd_300w \
      --config.data.manual_dir=/data/300W
Real faces on a CPU: the three stages on the real 300W faces of a (partial) download, dataset
build included, sized for a 2-core CPU (README "Real faces on a CPU"):
  python -m fkd.main --config=configs/kd.py:300w,cpu --workdir=runs/kd_300w_cpu \
      --config.data.manual_dir=/data/300W --config.data.allow_partial=True
  Design decision: synthetic pretraining runs *inside* this command, as a pre-stage on the
  embedded synthetic_faces (built on first use, no download) into <workdir>/pretrain/, and every
  real stage starts from it (fkd/training/prestage.py). A cached checkpoint would not exist on a
  fresh
  machine; the pre-stage is paid for within the budget. `--config.pretrain.dataset=` turns it
  off; a hand-set `init_from` replaces it. Eval splits that a partial download lacks (e.g.
  `challenging`) are dropped with a note.
Args (comma-separated): synthetic (default) | 300w | wflw | cofw; runlocal; tiny; cpu (300w only).
"""

from fkd import config_lib
from fkd.methods.kd import recipe


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, dataset='synthetic', runlocal=False, tiny=False, cpu=False)
  config = recipe.kd_base(arg.dataset, arg.runlocal, arg.tiny, arg.cpu)
  config.stages = ('teacher_tolerant', 'teacher_tough', 'student_kd')
  return config
