"""Bit-identical results.json of the tiny KD, MobileFAN and output_kd runs: this tree against a git
ref.

  python benchmarks/refactor_parity.py [--ref=8bfd57e] [--workdir=/tmp/fkd-parity]

Checks out REF into a temporary git worktree, runs the same two tiny jobs there and here
(`python -m fkd.main`, same seeds, one process each, same TFDS data_dir) and compares their
results.json byte for byte, `wall_time_s` aside, and keys this tree adds that REF's results lack
(named in the output). Exit 0 when every file is identical. When REF's config has no
`data.augment_on` (before the device augmentation), this tree runs with
`--config.data.augment_on=host`: REF's random stream.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
JOBS = {
  'kd': [
    '--config=configs/kd.py:runlocal',
    '--config.train.num_steps=6',
    '--config.teacher_train.num_steps=6',
  ],
  'mobilefan': ['--config=configs/mobilefan.py:tiny,baseline'],
  'output_kd': ['--config=configs/output_kd.py:tiny'],
}


def run_jobs(
  tree: pathlib.Path, out: pathlib.Path, data_dir: str, extra: tuple[str, ...] = ()
) -> dict[str, dict]:
  results = {}
  env = {**os.environ, 'PYTHONPATH': str(tree)}
  for name, flags in JOBS.items():
    workdir = out / name
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [
      sys.executable,
      '-m',
      'fkd.main',
      *flags,
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      *extra,
    ]
    print(f'[{tree.name}] {name}: {" ".join(cmd[1:])}', flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    record = json.loads((workdir / 'results.json').read_text())
    record.pop('wall_time_s', None)
    results[name] = record
  return results


def only_reference_keys(new: Any, ref: Any, ignored: list[str], path: str = '') -> Any:
  """`new` without the dict keys `ref` lacks at the same place (keys added since REF), whose
  dotted paths are appended to `ignored`; every other value is compared as it is."""
  if not isinstance(new, dict) or not isinstance(ref, dict):
    return new
  out = {}
  for key, value in new.items():
    if key not in ref:
      ignored.append(path + key)
      continue
    out[key] = only_reference_keys(value, ref[key], ignored, f'{path}{key}.')
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--ref', default='8bfd57e', help='git ref of the code to compare with')
  parser.add_argument('--workdir', default='/tmp/fkd-parity')
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  data_dir = str(work / 'tfds')
  sha = subprocess.run(
    ['git', 'rev-parse', args.ref], cwd=REPO, check=True, capture_output=True, text=True
  ).stdout.strip()
  cache = work / f'ref-{sha[:12]}.json'  # the reference runs, once per commit
  if cache.exists():
    ref = json.loads(cache.read_text())
  else:
    ref_tree = work / 'ref_tree'
    if ref_tree.exists():
      subprocess.run(['git', 'worktree', 'remove', '--force', str(ref_tree)], cwd=REPO)
    subprocess.run(['git', 'worktree', 'add', '--detach', str(ref_tree), sha], cwd=REPO, check=True)
    try:
      ref = run_jobs(ref_tree, work / 'ref', data_dir)
    finally:
      subprocess.run(['git', 'worktree', 'remove', '--force', str(ref_tree)], cwd=REPO)
    cache.write_text(json.dumps(ref))
  ref_config = subprocess.run(
    ['git', 'show', f'{sha}:fkd/config_lib.py'], cwd=REPO, capture_output=True, text=True
  ).stdout
  extra = () if 'augment_on=' in ref_config else ('--config.data.augment_on=host',)
  if extra:
    print(f'{args.ref} has no config.data.augment_on: this tree runs with {extra[0]}', flush=True)
  new = run_jobs(REPO, work / 'new', data_dir, extra)
  same = True
  for name in JOBS:
    ignored: list[str] = []
    kept = only_reference_keys(new[name], ref[name], ignored)
    if ignored:
      print(f'{name}: keys absent from the reference, not compared: {", ".join(ignored)}')
    a, b = json.dumps(ref[name], sort_keys=True), json.dumps(kept, sort_keys=True)
    equal = a == b
    same &= equal
    models = ', '.join(
      f'{m} {s["nme"]:.6f}'
      for m, per in new[name]['models'].items()
      for s in list(per.values())[:1]
    )
    print(f'{name}: {"bit-identical" if equal else "DIFFERENT"} ({models})', flush=True)
    if not equal:
      for key in sorted(set(ref[name]) | set(kept)):
        if ref[name].get(key) != kept.get(key):
          print(f'  differs: {key}', flush=True)
  print(json.dumps({'identical': same, 'ref': args.ref}), flush=True)
  sys.exit(0 if same else 1)


if __name__ == '__main__':
  main()
