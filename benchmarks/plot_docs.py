"""Draws the documentation's charts from small data files, so a figure is remade by a command.

  python benchmarks/plot_docs.py                   # docs/img/levers.png from benchmarks/levers.json
  python benchmarks/plot_docs.py --out=/tmp/x.png  # elsewhere

The numbers are copied from the measured tables (docs/results/real-faces.md); this script only
draws them.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def plot_levers(data: dict, out: pathlib.Path) -> None:
  """A horizontal bar per lever (student NME), the base and the mean shape as vertical lines."""
  levers = data['levers']
  names = [lv['name'] for lv in levers]
  nme = [lv['nme'] for lv in levers]
  base = next(lv['nme'] for lv in levers if lv['name'] == 'base')
  colours = ['tab:green' if lv['name'] == 'base' else 'tab:blue' for lv in levers]
  fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
  y = range(len(levers))
  ax.barh(y, nme, color=colours)
  ax.set_yticks(list(y), names, fontsize=8)
  ax.invert_yaxis()
  ax.axvline(base, color='tab:green', linestyle='--', linewidth=1, label=f'base {base:.2f}')
  ax.axvline(
    data['mean_shape'],
    color='tab:red',
    linestyle=':',
    linewidth=1,
    label=f'mean shape {data["mean_shape"]:.2f}',
  )
  for i, v in enumerate(nme):
    ax.text(v + 0.15, i, f'{v:.2f}', va='center', fontsize=7)
  ax.set_xlabel(f'student_kd NME % on {data["fold"]} (lower is better)')
  ax.set_xlim(0, max(nme + [data['mean_shape']]) * 1.12)
  ax.legend(fontsize=7, loc='upper right')
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default=str(ROOT / 'benchmarks' / 'levers.json'))
  parser.add_argument('--out', default=str(ROOT / 'docs' / 'img' / 'levers.png'))
  args = parser.parse_args()
  plot_levers(json.loads(pathlib.Path(args.data).read_text()), pathlib.Path(args.out))
  print(args.out)


if __name__ == '__main__':
  main()
