"""Does a better teacher make a better student? The student's gain against the teacher's NME.

  python benchmarks/teacher_sweep.py --workdir=runs/teacher_sweep \
      [--epochs=1,3,6,12,24] [--seeds=2] [--rows=tough_only,output_kd] [--config=configs/kd.py]

Teacher quality is swept through the teachers' budget (`config.teacher_train.num_epochs`, with
`num_steps=-1`), all else fixed. For each budget E it runs `fkd.ablation` with `--rows` (each row
trains the teachers it reads, once per seed, into `DIR/teacher_epochs_E/`), and once `main_only`
(Loss_Main alone, no teacher: the reference the gain is measured from, into `DIR/reference/`).
Every student run of a seed has the same initialisation and batch order (the ablation's pairing),
so the gain `main_only − row` is a paired difference. Reruns skip finished runs.

Writes `DIR/teacher_sweep.json` ({"reference": {...}, "points": [{"epochs", "teacher_nme",
"row", "nme_mean", "gain_mean", "gain_std", "gain_per_seed"}]}) and `DIR/teacher_sweep.png`
(gain against the teacher's test NME; above zero the teacher helped).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fkd import ablation, cli, config_lib  # noqa: E402


def teacher_of(config, row: str) -> str | None:
  """The teacher a student row reads (the x axis of its points; the first in the table's order
  when it reads two), None for a row that reads none."""
  rows = ablation.rows_for(config)
  if row not in rows or rows[row].teacher:
    return None
  return next(iter(ablation.teachers_needed(config, rows, {row: rows[row]})), None)


def sweep(config, workdir: str, epochs: list[int], seeds: int, rows: list[str]) -> dict:
  ref = ablation.run(config, os.path.join(workdir, 'reference'), seeds, only=['main_only'])
  ref_nme = ref['rows']['main_only']['nme_per_seed']
  points = []
  for e in epochs:
    c = copy.deepcopy(config)
    c.teacher_train.num_epochs = e
    c.teacher_train.num_steps = -1  # the epochs decide (a config's fixed step count would not)
    record = ablation.run(c, os.path.join(workdir, f'teacher_epochs_{e}'), seeds, only=rows)
    for row in rows:
      r = record['rows'][row]
      teacher = teacher_of(config, row)
      gains = [a - b for a, b in zip(ref_nme, r['nme_per_seed'], strict=True)]
      gain, gain_std = ablation.mean_std(gains)
      points.append(
        {
          'epochs': e,
          'teacher': teacher,
          'teacher_nme': record['rows'][teacher]['nme_mean'],
          'row': row,
          'nme_mean': r['nme_mean'],
          'gain_mean': round(gain, 4),
          'gain_std': round(gain_std, 4),
          'gain_per_seed': [round(g, 4) for g in gains],
        }
      )
      print(
        f'[sweep] teacher {e:3d} epochs: {teacher} {points[-1]["teacher_nme"]:.2f} %, '
        f'{row} {r["nme_mean"]:.2f} %, gain over main_only {gain:+.2f} ± {gain_std:.2f}',
        flush=True,
      )
  return {
    'dataset': config.data.name,
    'split': ref['split'],
    'seeds': seeds,
    'reference': {'row': 'main_only', **ref['rows']['main_only']},
    'points': points,
  }


def plot(record: dict, path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for row in dict.fromkeys(p['row'] for p in record['points']):
    pts = sorted((p for p in record['points'] if p['row'] == row), key=lambda p: p['teacher_nme'])
    ax.errorbar(
      [p['teacher_nme'] for p in pts],
      [p['gain_mean'] for p in pts],
      yerr=[p['gain_std'] for p in pts],
      marker='o',
      capsize=3,
      label=f'{row} (teacher: {pts[0]["teacher"]})',
    )
    for p in pts:
      ax.annotate(
        f'{p["epochs"]} ep',
        (p['teacher_nme'], p['gain_mean']),
        fontsize=7,
        xytext=(3, 3),
        textcoords='offset points',
      )
  gains = [p['gain_mean'] for p in record['points']]
  low = max(min(gains), -3.0)  # a useless teacher's huge loss would flatten the rest
  if min(gains) < low:
    ax.set_ylim(low - 0.3, max(max(gains), 0) + 0.5)
    off = [
      f'{p["row"]} at {p["epochs"]} ep: {p["gain_mean"]:+.1f}'
      for p in record['points']
      if p['gain_mean'] < low
    ]
    ax.text(0.03, 0.04, 'off scale: ' + '; '.join(off), transform=ax.transAxes, fontsize=7)
  ref = record['reference']['nme_mean']
  ax.axhline(0, color='k', lw=0.8)
  ax.axvline(ref, color='gray', ls='--', lw=0.8, label=f'student alone (main_only) {ref:.2f} %')
  ax.set_xlabel(f'teacher NME % ({record["dataset"]} {record["split"]})')
  ax.set_ylabel('student gain over main_only (NME points)')
  ax.set_title(f'Student gain vs teacher quality ({record["seeds"]} seed(s), paired)')
  ax.invert_xaxis()  # better teachers to the right
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', default='configs/kd.py')
  parser.add_argument('--epochs', default='1,3,6,12,24')
  parser.add_argument('--seeds', type=int, default=2)
  parser.add_argument('--rows', default='tough_only,output_kd')
  parser.add_argument('--data_dir', default=None, help='TFDS data_dir (default: TFDS default)')
  args = parser.parse_args()
  cli.start()
  path, _, arg = args.config.partition(':')
  config = config_lib.load(path, arg or None)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  rows = args.rows.split(',')
  if unknown := [r for r in rows if teacher_of(config, r) is None]:
    readers = [r for r in ablation.rows_for(config) if teacher_of(config, r)]
    sys.exit(
      f'fkd: error: --rows: {unknown} not in {sorted(readers)} (student rows that read a teacher)'
    )
  epochs = [int(e) for e in args.epochs.split(',')]
  record = sweep(config, args.workdir, epochs, args.seeds, rows)
  with open(os.path.join(args.workdir, 'teacher_sweep.json'), 'w') as f:
    json.dump(record, f, indent=1)
  plot(record, os.path.join(args.workdir, 'teacher_sweep.png'))
  print(json.dumps({k: record[k] for k in ('dataset', 'seeds', 'points')}), flush=True)


if __name__ == '__main__':
  main()
