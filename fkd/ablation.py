"""Does distillation help? `python -m fkd.ablation --config=CONFIG --workdir=DIR --seeds=N`.

For each seed s (config.seed + 0 … N−1) it trains the method's teachers once, into
`DIR/seed_<s>/teachers/`, then every student row of the method into its own run directory
`DIR/seed_<s>/<row>/`, with the teachers of that seed passed by checkpoint path
(`config.teacher_*_ckpt` / `config.teacher_ckpt`). Every student row trains the same network on
the same data for the same budget, from the same initialisation and batch order (one stage seed for
all student rows of a seed); rows differ only in their config overrides. Each run is one
`fkd.training.trainer.run(config, workdir)` and is scored by its own `results.json`; a run whose
stages are
finished and whose results.json exists is skipped, so rerunning the command resumes.

It writes `DIR/ablation.json`:
  {"dataset": ..., "split": "test", "seeds": N,
   "rows": {"kd": {"nme_mean": ..., "nme_std": ..., "fr_mean": ..., "auc_mean": ..., ...}}}
and `DIR/ablation.md` (mean ± sample std over seeds, teachers beside the students).

Rows are data, owned by each method (`Method.ablation_rows`, `fkd/methods/<name>/ablation.py`): a
row name maps to the stage it trains and its config overrides, so a new method's row is one more
line there. A method may add rows to another's table (`Method.guest_rows`: output distillation
beside KD-Loss).

  python -m fkd.ablation --config=configs/kd.py --workdir=runs/ablation_kd --seeds=3
  python -m fkd.ablation --config=configs/mobilefan.py --workdir=runs/ablation_mobilefan --seeds=3
  python -m fkd.ablation --config=configs/kd.py:runlocal --workdir=/tmp/abl --seeds=2
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from typing import Any

import ml_collections

from fkd import inference, methods
from fkd.errors import FkdError
from fkd.infra import files
from fkd.training import prestage as pretrain
from fkd.training import trainer as train

Row = methods.Row  # one line of the table (fkd.methods.base.Row)


def method_of(config: Any) -> methods.Method:
  return methods.get(config)


def rows_for(config: Any) -> dict[str, Row]:
  """The method's rows, with the rows other methods add to it before its reference row."""
  method = method_of(config)
  if type(method).ablation_rows is methods.Method.ablation_rows:
    known = [
      k
      for k, m in methods.REGISTRY.items()
      if type(m).ablation_rows is not methods.Method.ablation_rows
    ]
    raise FkdError(
      f'fkd.ablation has no rows for config.method={method.name!r}; known: {", ".join(known)}'
    )
  own = method.ablation_rows(config)
  guests: dict[str, Row] = {}
  for other in methods.REGISTRY.values():
    if other is not method:
      guests.update(other.guest_rows(method, config))
  ref = method.reference_row
  out = {k: v for k, v in own.items() if k != ref}
  out.update(guests)
  if ref in own:
    out[ref] = own[ref]
  return out


def _new_blocks() -> tuple[str, ...]:
  """Top-level keys a row may add: the blocks of a method a row switches the config to."""
  return tuple(b for m in methods.REGISTRY.values() for b in m.new_blocks)


def _set(config: Any, key: str, value: Any) -> None:
  *path, leaf = key.split('.')
  node = config
  for p in path:
    node = node[p]
  if leaf not in node and not (not path and leaf in _new_blocks()):
    raise FkdError(f'ablation row override {key!r}: no such config key')
  node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def _stage_index(config: Any, stage: str) -> int:
  """The seed offset of a stage in its method (`Method.seed_offset`)."""
  return methods.get(config).seed_offset(stage)


def student_seed_offset(config: Any, rows: dict[str, Row]) -> int:
  """The stage seed of every student row of seed s is s + this."""
  return max(_stage_index(_with(config, r), r.stage) for r in rows.values() if not r.teacher)


def _with(config: Any, row: Row) -> Any:
  """The config with a row's overrides (its method may differ: the output_kd row)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    for key, value in row.overrides.items():
      _set(c, key, value)
  return c


def teachers_needed(config: Any, rows: dict[str, Row], chosen: dict[str, Row]) -> tuple[str, ...]:
  """The teacher stages the chosen rows read (a chosen teacher row counts), in table order."""
  needed = {r.stage for r in chosen.values() if r.teacher}
  for r in chosen.values():
    if not r.teacher:
      c = _with(config, r)
      needed |= set(methods.get(c).stage(r.stage, c).teachers)
  return tuple(r.stage for r in rows.values() if r.teacher and r.stage in needed)


def run_config(
  config: Any,
  seed: int,
  row: Row | None,
  rows: dict[str, Row],
  teachers_dir: str,
  teacher_stages: tuple[str, ...] | None = None,
) -> Any:
  """The config of one run: the teachers' (row None; `teacher_stages`, default all) or a
  student row's."""
  c = copy.deepcopy(config)
  with c.unlocked():
    if row is None:
      if teacher_stages is None:
        teacher_stages = tuple(r.stage for r in rows.values() if r.teacher)
      c.stages = teacher_stages
      c.seed = seed
      return c
    c.stages = (row.stage,)
    for key, value in row.overrides.items():
      _set(c, key, value)
    # Same stage seed (init, dropout and batch order) for every student row: the trainer offsets
    # config.seed by the stage's seed offset, so every row gets seed + (the largest offset of a
    # student stage), which keeps config.seed >= 0 (numpy seeds must be).
    c.seed = seed + student_seed_offset(config, rows) - _stage_index(c, row.stage)
    for r in rows.values():
      if r.teacher and f'{r.stage}_ckpt' in c:
        _set(c, f'{r.stage}_ckpt', os.path.join(teachers_dir, r.stage))
  return c


def _finished(config: Any, workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, 'results.json')) and all(
    inference.is_finished(os.path.join(workdir, s)) for s in config.stages
  )


# Config fields that may change between reruns without changing what a run trains.
MAX_SEEDS = 100
_IGNORED = ('data.data_dir', 'data.manual_dir', 'data.num_workers')


def _fingerprint(config: Any) -> dict[str, Any]:
  flat = json.loads(config.to_json_best_effort())
  for key in _IGNORED:
    *path, leaf = key.split('.')
    node = flat
    for p in path:
      node = node.get(p, {})
    node.pop(leaf, None)
  return flat


def _run(config: Any, workdir: str, label: str, any_stages: bool = False) -> dict[str, Any]:
  """One run (skipped when finished). `any_stages`: the teachers' run, which `--rows` may have
  started with fewer teacher stages; the others are added to it."""
  stamp = os.path.join(workdir, 'ablation_run.json')
  if os.path.exists(workdir) and os.listdir(workdir):
    # A run dir is reused (skipped or resumed) only if this command made it with the same config.
    old = json.load(open(stamp)) if os.path.exists(stamp) else None
    new = json.loads(json.dumps(_fingerprint(config)))
    for stamp_dict in (old or {}, new):  # where the teachers are, not what they are
      for key in [k for k in stamp_dict if k.endswith('_ckpt')]:
        stamp_dict.pop(key)
    if any_stages and old is not None:
      old.pop('stages', None)
      new.pop('stages', None)
    if old != new:
      raise FkdError(
        f'{workdir} holds a run with another config (or one not made by '
        'fkd.ablation): remove it or use another --workdir'
      )
  if _finished(config, workdir):
    print(f'[ablation] {label}: finished, skipping ({workdir})', flush=True)
  else:
    print(f'[ablation] {label}: training {", ".join(config.stages)} into {workdir}', flush=True)
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    with open(stamp, 'w') as f:
      json.dump(_fingerprint(config), f, indent=1)
    train.run(config, workdir)
    train.stop_if_signalled(label)
    print(f'[ablation] {label}: done in {time.time() - t0:.0f}s', flush=True)
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _pretrained(config: Any, seed: int, seed_dir: str, stages: tuple[str, ...]) -> Any:
  """With a synthetic pre-stage (`config.pretrain`, the `300w,cpu` preset): trains it once per
  seed into `seed_dir/pretrain` and returns the config whose networks start from it, so that every
  row of the seed starts from the same weights (rather than each row repeating the pre-stage)."""
  if not pretrain.enabled(config):
    return config
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed, c.stages = seed, stages
  out = pretrain.run(c, seed_dir, train.run)
  with out.unlocked():
    out.seed, out.stages, out.pretrain.dataset = config.seed, config.stages, None
  return out


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return mean, std


def default_split(config: Any) -> str:
  splits = list(config.data.eval_splits)
  return next((s for s in ('test', 'full') if s in splits), splits[-1])


def run(
  config: Any,
  workdir: str,
  seeds: int,
  split: str | None = None,
  only: list[str] | None = None,
  command: str = '',
) -> dict[str, Any]:
  """Trains and scores every row for `seeds` seeds; writes DIR/ablation.{json,md}."""
  if seeds < 1:
    raise FkdError(f'--seeds must be >= 1, got {seeds}')
  if seeds > MAX_SEEDS:
    raise FkdError(f'--seeds must be at most {MAX_SEEDS} (a run per row and seed), got {seeds}')
  table = os.path.join(workdir, 'ablation.json')
  old = files.json_object(table)
  if old is not None and isinstance(old.get('seeds'), int) and old['seeds'] > seeds:
    raise FkdError(
      f'{table} holds a {old["seeds"]}-seed table; --seeds={seeds} would replace it with a '
      f'{seeds}-seed one: pass --seeds={old["seeds"]} (finished runs are reused), or move the '
      'table aside first'
    )
  rows = rows_for(config)
  split = split or default_split(config)
  if split not in config.data.eval_splits:
    raise FkdError(
      f'--split={split!r} is not among config.data.eval_splits {list(config.data.eval_splits)}'
    )
  if only:
    unknown = [r for r in only if r not in rows]
    if unknown:
      raise FkdError(f'--rows: unknown row(s) {", ".join(unknown)}; known: {", ".join(rows)}')
    chosen = {k: v for k, v in rows.items() if k in only}
  else:
    chosen = {k: v for k, v in rows.items() if not v.extra}  # every teacher row among them
  # The teachers the chosen rows read: `--rows=tough_only` trains the Tough teacher alone.
  teacher_stages = teachers_needed(config, rows, chosen)
  rows_run = {
    k: v for k, v in rows.items() if k in chosen or (v.teacher and v.stage in teacher_stages)
  }
  for row in rows_run.values():  # every override names a real key, before any training
    if not row.teacher:
      run_config(config, config.seed, row, rows, workdir)
  # The stages the seed's pre-stage (if any) pretrains networks for.
  student_stages = tuple(dict.fromkeys(r.stage for r in rows_run.values() if not r.teacher))
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  per_row: dict[str, list[dict[str, float]]] = {}
  mean_shape: list[dict[str, float]] = []
  for i in range(seeds):
    seed = config.seed + i
    seed_dir = os.path.join(workdir, f'seed_{seed}')
    teachers_dir = os.path.join(seed_dir, 'teachers')
    seed_config = _pretrained(config, seed, seed_dir, teacher_stages + student_stages)
    if teacher_stages:
      res = _run(
        run_config(seed_config, seed, None, rows, teachers_dir, teacher_stages),
        teachers_dir,
        f'seed {seed} teachers',
        any_stages=True,
      )
    for name, row in rows_run.items():
      if not row.teacher:
        res = _run(
          run_config(seed_config, seed, row, rows, teachers_dir),
          os.path.join(seed_dir, name),
          f'seed {seed} {name}',
        )
      per_row.setdefault(name, []).append(res['models'][row.stage][split])
    mean_shape.append(res['models']['mean_shape'][split])  # the same faces in every run
  record = summarize(config, split, seeds, per_row, rows_run, mean_shape)
  record['wall_time_s'] = round(time.time() - t0, 1)
  with open(os.path.join(workdir, 'ablation.json'), 'w') as f:
    json.dump(record, f, indent=1)
  with open(os.path.join(workdir, 'ablation.md'), 'w') as f:
    f.write(markdown(record, command))
  print(markdown(record, command), flush=True)
  return record


def summarize(
  config: Any,
  split: str,
  seeds: int,
  per_row: dict[str, list[dict[str, float]]],
  rows: dict[str, Row],
  mean_shape: list[dict[str, float]],
) -> dict[str, Any]:
  out_rows = {}
  for name, runs in per_row.items():
    nme_mean, nme_std = mean_std([r['nme'] for r in runs])
    fr_mean, fr_std = mean_std([r['fr'] for r in runs])
    auc_mean, auc_std = mean_std([r['auc'] for r in runs])
    out_rows[name] = {
      'nme_mean': round(nme_mean, 4),
      'nme_std': round(nme_std, 4),
      'fr_mean': round(fr_mean, 4),
      'fr_std': round(fr_std, 4),
      'auc_mean': round(auc_mean, 5),
      'auc_std': round(auc_std, 5),
      'nme_per_seed': [round(r['nme'], 4) for r in runs],
      'stage': rows[name].stage,
      'what': rows[name].what,
      'overrides': methods.base.plain(rows[name].overrides),
    }
  ms_mean, ms_std = mean_std([r['nme'] for r in mean_shape])
  return {
    'dataset': config.data.name,
    'split': split,
    'seeds': seeds,
    'method': method_of(config).name,
    'reference_row': method_of(config).reference_row,
    'first_seed': config.seed,
    'rows': out_rows,
    'mean_shape': {
      'nme_mean': round(ms_mean, 4),
      'fr_mean': round(mean_std([r['fr'] for r in mean_shape])[0], 4),
    },
  }


def markdown(record: dict[str, Any], command: str = '') -> str:
  rows = record['rows']
  ref = record['reference_row']
  lines = [
    f'# fkd ablation: {record["dataset"]} / {record["split"]}, {record["seeds"]} seed(s)',
    '',
  ]
  if command:
    lines += [f'Made by `{command}`.', '']
  lines += [
    "NME % (mean ± sample std over seeds), FR % and AUC at the config's threshold "
    '(means). '
    f'"vs {ref}": (row − {ref}) mean NME difference, and that difference in units of the '
    'larger of the two seed stds (> 2 is the bar of issue 15); "paired": mean ± std over '
    f'seeds of the per-seed difference row − {ref} (student rows of a seed share their '
    'initialisation and batches).',
    '',
    f'| row | what | NME % | FR % | AUC | NME per seed | vs {ref} | paired |',
    '|---|---|---|---|---|---|---|---|',
  ]
  base = rows.get(ref)
  for name, r in rows.items():
    vs = paired = ''
    if base is not None and name != ref:
      d = r['nme_mean'] - base['nme_mean']
      s = max(r['nme_std'], base['nme_std'])
      vs = f'{d:+.2f}' + (f' ({d / s:+.1f} σ)' if s > 0 else '')
      diffs = [a - b for a, b in zip(r['nme_per_seed'], base['nme_per_seed'], strict=False)]
      m, sd = mean_std(diffs)
      paired = f'{m:+.2f} ± {sd:.2f}'
    per = ', '.join(f'{v:.2f}' for v in r['nme_per_seed'])
    what = r['what'].replace('|', '\\|')
    lines.append(
      f'| `{name}` | {what} | {r["nme_mean"]:.2f} ± {r["nme_std"]:.2f} | '
      f'{r["fr_mean"]:.2f} | {r["auc_mean"]:.3f} | {per} | {vs} | {paired} |'
    )
  ms = record['mean_shape']
  lines.append(
    f'| `mean_shape` | the mean training shape for every face | {ms["nme_mean"]:.2f} | '
    f'{ms["fr_mean"]:.2f} | | | | |'
  )
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------
# Command line.


def _main(argv: list[str]) -> None:
  from absl import flags

  f = flags.FLAGS
  command = 'python -m fkd.ablation ' + ' '.join(sys.argv[1:])
  try:
    run(_CONFIG.value, _WORKDIR.value, f.seeds, f.split, f.rows, command)
  except train.Preempted as e:
    print(f'fkd: {e}', file=sys.stderr, flush=True)
    sys.exit(128 + int(e.signum))  # 130 Ctrl-C, 143 SIGTERM (as fkd.main)


if __name__ == '__main__':
  from absl import flags

  from fkd import cli

  _CONFIG, _WORKDIR = cli.define_run_flags()
  flags.DEFINE_integer('seeds', 3, 'Number of seeds: config.seed + 0 … N−1.')
  flags.DEFINE_string('split', None, 'Eval split of the table (default: test, or 300W full).')
  flags.DEFINE_list('rows', None, 'Only these rows (the teachers are always trained).')
  cli.run(_main, distributed=True)
