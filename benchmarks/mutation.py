"""Mutation testing: plant one bug at a time and check that the tests guarding that code fail.

    python benchmarks/mutation.py [--jobs 2] [--fast] [--only losses,Tough] [--list] [--no-baseline]

Each mutant is one textual change (an operator, a constant, an index, which teacher or split feeds
a value, a dropped argument) in a temporary copy of the repository, never in the working tree; the
copy is deleted on exit, Ctrl-C included. For each mutant only the few test files that should
catch it run (`pytest -x`, imports resolved from the copy), so a mutant costs seconds. A mutant is
*killed* when its tests fail (or error); it *survives* when they pass. Before mutating, the
selected tests run once on the unmutated copy and must pass.

Mutants cover the core (KD-Loss, method wiring, heads, normalisers, metrics, ASM, affinity,
heatmaps, crops) and the serving, data and bookkeeping code around it (smoothing, box
calibration, video, overlays, detection, export, stage choice, checkpoints, ablation summaries,
the mean-shape baseline, augmentation, the input pipeline, folder datasets, the workdir lock and
config record, BatchNorm folding, config checks, multi-host start-up, sharding, TFDS builders).

`--fast`: every third mutant, leaving out the `slow` ones (whose tests train a model or run
the detector on real video) and the known equivalent ones: about a third of the mutants from every
part, the subset `.ci/run` runs (a few minutes with --jobs 2 on 2 cores; the full run is about
half an hour there).
`--only a,b`: the mutants whose file or description contains one of the words.

Prints a table and, last, one JSON line:
`{"killed": K, "total": N, "survivors": ["file:line description", ...]}`. A survivor known to be
equivalent (no output can change) carries its reason (its `equivalent` field) in the list.

Known equivalent mutants (kept to show the limit; no test can kill them):
- `fkd/data/augment.py` mirror x ↦ W − x instead of W − 1 − x in `geometry`: the rotation centre
  and the re-crop box are taken from the mirrored landmarks, so the extra pixel of shift cancels in
  the final affine (same warp, same landmarks). A plain flip (`flip_crop`, the pipeline's `_flip`,
  `schemes.flip_points`) has no re-crop, and its off-by-one mutants are killed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COPIED = ('fkd', 'tests', 'configs', 'tfds_builders', 'docs', 'pyproject.toml')

LOSSES_T = ('tests/unit/losses_test.py', 'tests/unit/wiring_test.py')
WIRING_T = ('tests/unit/wiring_test.py',)
METRICS_T = ('tests/unit/metrics_test.py', 'tests/unit/normalisers_test.py')
ASM_T = ('tests/unit/asm_test.py',)
AFFINITY_T = ('tests/unit/affinity_test.py',)
HEATMAPS_T = ('tests/unit/heatmaps_test.py',)
CROPS_T = ('tests/unit/crops_test.py',)
HEADS_T = (
  'tests/unit/wiring_test.py',
  'tests/unit/methods_test.py::test_regression_head_hand_values',
  'tests/unit/methods_test.py::test_heatmap_head_decodes_its_targets',
)


@dataclasses.dataclass(frozen=True)
class Mutant:
  path: str  # repository-relative file
  old: str  # exact text to replace (its `nth` occurrence, 0-based)
  new: str
  what: str  # one-line description
  tests: tuple[str, ...]
  nth: int = 0
  equivalent: str = ''  # why no output can change, when that is known
  slow: bool = False  # its tests train a model or read real videos (left out by --fast)


M = Mutant
MUTANTS = [
  # --- KD-Loss constants (method.md §2.5.2 weight table, §2.5.3 figure variant) -----------------
  M(
    'fkd/losses/kd_loss.py',
    'alpha_tou: float = 1.9',
    'alpha_tou: float = 1.8',
    'α_tou 1.9 → 1.8',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'alpha_neg_tou: float = -0.45',
    'alpha_neg_tou: float = -0.4',
    'α⁻_tou → −0.4',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'alpha_tol: float = 1.8',
    'alpha_tol: float = 1.9',
    'α_tol 1.8 → 1.9',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'alpha_neg_tol: float = -0.4',
    'alpha_neg_tol: float = -0.45',
    'α⁻_tol −0.4 → −0.45',
    LOSSES_T,
  ),
  M('fkd/losses/kd_loss.py', 'beta: float = 0.15', 'beta: float = 0.2', 'β 0.15 → 0.2', LOSSES_T),
  M(
    'fkd/losses/kd_loss.py',
    'main_slope: float = 3.0',
    'main_slope: float = 2.0',
    'Loss_Main slope 3 → 2',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    "lambda_source: str = 'tolerant'",
    "lambda_source: str = 'tough'",
    'default λ source Tolerant → Tough',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py', 'w_main: float = 2.0', 'w_main: float = 1.0', 'w_main 2 → 1', LOSSES_T
  ),
  M('fkd/losses/kd_loss.py', 'w_tou: float = 1.0', 'w_tou: float = 0.5', 'w_tou 1 → 0.5', LOSSES_T),
  M('fkd/losses/kd_loss.py', 'beta=0.4,', 'beta=0.15,', 'figure β 0.4 → 0.15', LOSSES_T),
  M('fkd/losses/kd_loss.py', 'main_slope=1.0,', 'main_slope=3.0,', 'figure slope 1 → 3', LOSSES_T),
  M('fkd/losses/kd_loss.py', 'w_main=2.5,', 'w_main=2.0,', 'figure w_main 2.5 → 2', LOSSES_T),
  # --- ALoss and Loss_Main ----------------------------------------------------------------------
  M(
    'fkd/losses/kd_loss.py',
    'jnp.where(e >= beta * d, alpha_neg, 0.0)',
    'jnp.where(e > beta * d, alpha_neg, 0.0)',
    'R_N lower bound ≥ β·d → > β·d',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'jnp.where((d == 0) | (e == 0), 0.0, w)',
    'jnp.where((e == 0), 0.0, w)',
    'ω ≠ 0 when d = 0',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'w = jnp.where(e > d, alpha,',
    'w = jnp.where(e > d, alpha_neg,',
    'R_P weight α → α⁻',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'ramp = alpha_neg * e / safe',
    'ramp = alpha * e / safe',
    'figure R_L ramp towards α instead of α⁻',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'd = jnp.abs(teacher - gt)',
    'd = jnp.abs(teacher - pred)',
    'teacher distance to the student instead of g',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    '* jnp.abs(d - e)',
    '* jnp.abs(d + e)',
    'ALoss |d − e| → |d + e|',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'teacher = jax.lax.stop_gradient(teacher)',
    'teacher = teacher',
    'gradient flows into the teacher',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'jnp.square(e) + slope * lam - jnp.square(lam)',
    'jnp.square(e) + slope * lam + jnp.square(lam)',
    'Loss_Main quadratic branch − λ² → + λ²',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'jnp.where(e <= lam, slope * e,',
    'jnp.where(e <= lam, slope * lam,',
    'Loss_Main linear branch slope·e → slope·λ',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    "source = tolerant if params.lambda_source == 'tolerant' else tough",
    "source = tough if params.lambda_source == 'tolerant' else tolerant",
    'λ from the Tough teacher (sources crossed)',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    "terms['aloss_tough'] = params.w_tou *",
    "terms['aloss_tough'] = params.w_tol *",
    'Tough term weighted by w_tol',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'aloss(pred, tough, gt, params.alpha_tou',
    'aloss(pred, tolerant, gt, params.alpha_tou',
    'Tough ALoss term fed the Tolerant teacher',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'params.alpha_tol, params.alpha_neg_tol',
    'params.alpha_tol, params.alpha_neg_tou',
    'Tolerant R_N weight from the Tough constants',
    LOSSES_T,
  ),
  M(
    'fkd/losses/kd_loss.py',
    'return masked_mean(jnp.square(pred - target), mask)',
    'return masked_mean(jnp.abs(pred - target), mask)',
    'mse → l1',
    LOSSES_T,
  ),
  # --- method wiring (fkd/methods) ----------------------------------------------------------
  M(
    'fkd/methods/kd/method.py',
    "key = 'soft_landmarks' if stage.name == 'teacher_tolerant' else 'landmarks'",
    "key = 'soft_landmarks' if stage.name == 'teacher_tough' else 'landmarks'",
    'Tough teacher trains on the soft landmarks, Tolerant on g',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    "key = 'soft_landmarks' if stage.name == 'teacher_tolerant' else 'landmarks'",
    "key = 'landmarks'",
    'Tolerant teacher trains on the ground truth',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    "gt = stage.head.targets(batch['landmarks'])",
    "gt = stage.head.targets(batch['soft_landmarks'])",
    'KD student against the soft landmarks',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    'losses.kd_loss(outputs, gt, tough, tolerant, params,',
    'losses.kd_loss(outputs, gt, tolerant, tough, params,',
    'KD-Loss teachers swapped',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    "name, 'teacher', config.teacher, config.teacher_train, head",
    "name, 'teacher', config.student, config.teacher_train, head",
    'Tolerant teacher built from the student config',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    "name, 'teacher', config.teacher, config.teacher_train, head",
    "name, 'teacher', config.teacher, config.train, head",
    'Tough teacher trained with the student optimizer',
    WIRING_T,
    nth=1,
  ),
  M(
    'fkd/methods/kd/method.py',
    'loss=config.loss.baseline',
    'loss=config.loss.teacher',
    'baseline student with the teacher loss',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    'teachers=tuple(config.kd.teachers)',
    "teachers=('teacher_tough',)",
    'student_kd ignores config.kd.teachers',
    WIRING_T,
  ),
  M(
    'fkd/methods/kd/method.py',
    "stages = ('teacher_tolerant', 'teacher_tough',",
    "stages = ('teacher_tough', 'teacher_tolerant',",
    'stage order (seed offsets) swapped',
    WIRING_T,
  ),
  M(
    'fkd/methods/output_kd/method.py',
    "'gt': (1.0 - alpha) *",
    "'gt': alpha *",
    'output_kd weights crossed',
    WIRING_T,
  ),
  M(
    'fkd/methods/output_kd/method.py',
    "distance(outputs, teachers['teacher_tough'][0], mask)",
    "distance(outputs, stage.head.targets(batch['landmarks']), mask)",
    'output_kd ignores the teacher',
    WIRING_T,
  ),
  M(
    'fkd/methods/output_kd/method.py',
    "teachers=('teacher_tough',)",
    "teachers=('teacher_tolerant',)",
    'output_kd loads the Tolerant teacher',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    "layers = [f'decoder_{i}' for i in fan.layers]",
    "layers = [f'decoder_{i}' for i in fan.layers[:-1]]",
    'FAN terms skip the last decoder stage',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    'affinity.affinity_mse(student[k], teacher[k])',
    'affinity.affinity_mse(student[k], student[k])',
    'L_FS against the student itself',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    'student[k], teacher[k], fan.ps_min_scale, fan.ps_pool',
    'student[k], teacher[k], fan.ps_min_scale + 1, fan.ps_pool',
    'L_PS drops the finest scale',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    "distill_terms(features, teachers['teacher'][1], fan)",
    'distill_terms(features, features, fan)',
    'FAN terms fed the student features as teacher',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    'loss = loss + weights[k] * v',
    'loss = loss + v',
    'FAN λ weights ignored',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    "'fs': fan.lambda_fs, 'ps': fan.lambda_ps",
    "'fs': fan.lambda_ps, 'ps': fan.lambda_fs",
    'λ_FS and λ_PS crossed',
    WIRING_T,
  ),
  M(
    'fkd/methods/fan/method.py',
    "points = batch['landmarks']",
    "points = batch['soft_landmarks']",
    'heatmap student on the soft landmarks',
    WIRING_T,
  ),
  # --- regression / heatmap heads (targets) -----------------------------------------------------
  M(
    'fkd/heads/__init__.py',
    'return ((size / 2.0 - flat) / size)',
    'return ((flat - size / 2.0) / size)',
    'normalised target sign u = (x − S/2)/S',
    HEADS_T,
  ),
  M(
    'fkd/heads/__init__.py',
    'flat = size / 2.0 - size * flat',
    'flat = size / 2.0 + size * flat',
    'normalised decoding sign',
    HEADS_T,
  ),
  # --- NME normalisers (datasets.md §6) and metrics -----------------------------------------
  M(
    'fkd/data/schemes.py',
    "Scheme('300w', 68, _FLIP_68, (36, 45)",
    "Scheme('300w', 68, _FLIP_68, (37, 45)",
    '300W inter-ocular 36 → 37',
    METRICS_T,
  ),
  M(
    'fkd/data/schemes.py',
    "Scheme('300w', 68, _FLIP_68, (36, 45)",
    "Scheme('300w', 68, _FLIP_68, (36, 44)",
    '300W inter-ocular 45 → 44',
    METRICS_T,
  ),
  M('fkd/data/schemes.py', '(60, 72)', '(60, 73)', 'WFLW inter-ocular 72 → 73', METRICS_T),
  M('fkd/data/schemes.py', '(60, 72)', '(61, 72)', 'WFLW inter-ocular 60 → 61', METRICS_T),
  M(
    'fkd/data/schemes.py', '((96,), (97,))', '((95,), (97,))', 'WFLW inter-pupil 96 → 95', METRICS_T
  ),
  M(
    'fkd/data/schemes.py',
    '(8, 9), ((16,), (17,))',
    '(8, 10), ((16,), (17,))',
    'COFW inter-ocular 9 → 10',
    METRICS_T,
  ),
  M(
    'fkd/data/schemes.py',
    '(8, 9), ((16,), (17,))',
    '(8, 9), ((16,), (15,))',
    'COFW inter-pupil 17 → 15',
    METRICS_T,
  ),
  M(
    'fkd/data/schemes.py',
    '_EYES_68 = (tuple(range(36, 42))',
    '_EYES_68 = (tuple(range(36, 41))',
    '300W eye centre drops point 41',
    METRICS_T,
  ),
  M(
    'fkd/data/schemes.py',
    "Scheme('cofw68', 68, _FLIP_68, (36, 45)",
    "Scheme('cofw68', 68, _FLIP_68, (36, 46)",
    'COFW-68 inter-ocular 45 → 46',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    'return float(100.0 * np.mean(np.asarray(nme) > threshold))',
    'return float(100.0 * np.mean(np.asarray(nme) >= threshold))',
    'FR counts NME = θ',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    '1.0 - np.asarray(nme) / threshold',
    '1.0 - np.asarray(nme) * threshold',
    'AUC divides by θ → multiplies',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    'np.mean(np.maximum(0.0,',
    'np.mean(np.maximum(-1.0,',
    'AUC floor 0 → −1',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    'np.arange(20) / 19.0',
    'np.arange(20) / 20.0',
    'AUC_kd grid 19 → 20 steps',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    'c = np.mean(nme[None, :] <= t[:, None], axis=1)',
    'c = np.mean(nme[None, :] < t[:, None], axis=1)',
    'AUC_kd CED strict',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    '.mean(axis=-1) / d',
    '.sum(axis=-1) / d',
    'NME sums over points',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    'return np.sqrt(np.sum(extent**2, axis=-1))',
    'return np.sum(extent, axis=-1)',
    'box diagonal → width + height',
    METRICS_T,
  ),
  M(
    'fkd/evaluation/metrics.py',
    "'nme': float(100.0 * np.mean(nme))",
    "'nme': float(np.mean(nme))",
    'summary NME not in %',
    METRICS_T,
  ),
  # --- ASM (method.md §2.3) --------------------------------------------------------------------
  M(
    'fkd/data/asm.py',
    'lam = s**2 / (m - 1)',
    'lam = s**2 / m',
    'eigenvalue denominator M − 1 → M',
    ASM_T,
  ),
  M(
    'fkd/data/asm.py',
    "acc, side='right'",
    "acc, side='left'",
    'k: cumulative ratio ≥ acc instead of >',
    ASM_T,
  ),
  M('fkd/data/asm.py', "side='right')) + 1", "side='right')) + 2", 'one component too many', ASM_T),
  M(
    'fkd/data/asm.py',
    'lim = clip_sigmas * np.sqrt(lam)',
    'lim = clip_sigmas * lam',
    'clip at 3λ instead of 3√λ',
    ASM_T,
  ),
  M(
    'fkd/data/asm.py',
    'b = (flat - mean) @ comps',
    'b = flat @ comps',
    'projection without centring',
    ASM_T,
  ),
  M(
    'fkd/data/asm.py',
    'out = (mean + b @ comps.T)',
    'out = (b @ comps.T)',
    'reconstruction without mean',
    ASM_T,
  ),
  M(
    'fkd/data/asm.py',
    'mean = x.mean(axis=0)',
    'mean = np.median(x, axis=0)',
    'mean shape → median',
    ASM_T,
  ),
  M(
    'fkd/data/asm.py',
    '.argmax(1)] < 0, -1.0, 1.0)',
    '.argmax(1)] > 0, -1.0, 1.0)',
    'component sign convention flipped',
    ASM_T,
  ),
  # --- affinity losses (method.md §5.4, §6.4) --------------------------------------------------
  M('fkd/losses/affinity.py', 'EPS = 1e-6', 'EPS = 1e-2', 'ε 1e-6 → 1e-2', AFFINITY_T),
  M(
    'fkd/losses/affinity.py',
    'return sq(gss) + sq(gtt) - 2.0 * sq(gst)',
    'return sq(gss) + sq(gtt) - 1.0 * sq(gst)',
    'plain Gram form −2 → −1',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'loss = (sq(gss) + sq(gtt) - 2.0 * sq(gts)) / (b * n * n)',
    'loss = (sq(gss) + sq(gtt) - 2.0 * sq(gts)) / (b * n)',
    'streamed loss / (B·N) instead of B·N²',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'scale = ct * 4.0 / (b * n * n)',
    'scale = ct * 2.0 / (b * n * n)',
    'custom VJP factor 4 → 2',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'g = (g - s * jnp.sum(s * g, axis=-1, keepdims=True)) * ib',
    'g = g * ib',
    'VJP drops the normalisation projection',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    "      - jnp.einsum('bne,bed->bnd', t, cross, precision=_HI)",
    "      + jnp.einsum('bne,bed->bnd', t, cross, precision=_HI)",
    'VJP cross term sign',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'return jnp.mean(jnp.square(adapted.astype(jnp.float32)',
    'return jnp.sum(jnp.square(adapted.astype(jnp.float32)',
    'L_FA mean → sum',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'return nn.avg_pool(f, (w, w), (w, w))',
    'return nn.max_pool(f, (w, w), (w, w))',
    'patch pooling avg → max',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'return list(range(min_scale, n))',
    'return list(range(min_scale, n + 1))',
    'patch scales include the 1x1 grid',
    AFFINITY_T,
  ),
  M(
    'fkd/losses/affinity.py',
    'return lax.rsqrt(jnp.sum(f * f, axis=-1) + eps * eps)',
    'return lax.rsqrt(jnp.sum(f * f, axis=-1) + eps)',
    'norm regulariser ε² → ε',
    AFFINITY_T,
  ),
  # --- heatmap encoding and decoding (method.md §4.4, §4.6) -------------------------------------
  M(
    'fkd/heads/heatmaps.py',
    'return (points + 0.5) / stride - 0.5',
    'return points / stride',
    'crop → heatmap without the half-pixel shift',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'return stride * (points + 0.5) - 0.5',
    'return stride * points',
    'heatmap → crop without the half-pixel shift',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'radius = 3.0 * sigma',
    'radius = 2.0 * sigma',
    'Gaussian window 3σ → 2σ',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'gx = jnp.exp(-((grid - x) ** 2) / (2 * sigma**2))',
    'gx = jnp.exp(-((grid - x) ** 2) / (sigma**2))',
    'Gaussian x width σ/√2',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'window = jnp.trunc(points) if quantize else jnp.round(points)',
    'window = jnp.trunc(points)',
    'window centred on the truncated point',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'dx = 0.25 * jnp.sign(right - left)',
    'dx = 0.5 * jnp.sign(right - left)',
    'reference shift ¼ → ½',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'dy = 0.25 * jnp.sign(down - up)',
    'dy = 0.25 * jnp.sign(up - down)',
    'reference y shift away from the larger neighbour',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'return flat % w, flat // w, maps',
    'return flat // w, flat % w, maps',
    'argmax x and y swapped',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'curv = la - 2 * lc + lb',
    'curv = la - lc + lb',
    'quadratic curvature',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'inside_x = (xi > 0) & (xi < w - 1)',
    'inside_x = (xi >= 0) & (xi < w - 1)',
    'sub-pixel shift at the left border',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'return jnp.mean(jnp.square(pred - target))',
    'return jnp.sum(jnp.square(pred - target))',
    'heatmap MSE mean → sum',
    HEATMAPS_T,
  ),
  # --- crop transforms (method.md §1.2) ---------------------------------------------------------
  M(
    'fkd/data/crops.py',
    'pad = margin * (hi - lo)',
    'pad = margin * (hi - lo) / 2',
    'landmark box margin halved',
    CROPS_T,
  ),
  M(
    'fkd/data/crops.py',
    '-box[0] / sx - 0.5]',
    '-box[0] / sx + 0.5]',
    'crop x offset −½ → +½',
    CROPS_T,
  ),
  M(
    'fkd/data/crops.py',
    'sy = (box[2] - box[0]) / size, (box[3] - box[1]) / size',
    'sy = (box[2] - box[0]) / size, (box[2] - box[0]) / size',
    'isotropic crop (y scale from width)',
    CROPS_T,
  ),
  M(
    'fkd/data/crops.py',
    'shift = inv[:, 2] + 0.5 - inv[:, :2] @ np.array([0.5, 0.5])',
    'shift = inv[:, 2] - inv[:, :2] @ np.array([0.5, 0.5])',
    'warp sampling half-pixel shift',
    CROPS_T,
  ),
  M(
    'fkd/data/crops.py', '@ a[:, :2].T + a[:, 2]', '@ a[:, :2] + a[:, 2]', 'apply with Aᵀ', CROPS_T
  ),
  M(
    'fkd/data/crops.py',
    'return np.linalg.inv(np.vstack([a, [0.0, 0.0, 1.0]]))[:2]',
    'return np.linalg.inv(np.vstack([a, [0.0, 0.0, 2.0]]))[:2]',
    'invert halves the shift (predictions mapped back off)',
    CROPS_T,
  ),
]

# --- serving, data and bookkeeping (outside the core) ------------------------------------------
SMOOTH_T = ('tests/unit/smoothing_test.py',)
BOXCAL_T = tuple(
  f'tests/unit/box_calibration_test.py::{t}'
  for t in (
    'test_landmark_box_convention',
    'test_apply_hand_computed',
    'test_fit_recovers_a_known_map',
    'test_views_get_their_own_numbers',
    'test_size_is_a_geometric_mean_and_offsets_are_in_detector_sizes',
    'test_a_view_at_the_face_threshold_gets_its_numbers',
    'test_leave_one_folder_out_fits_on_the_other_folders_only',
  )
)
VIDEO_T = ('tests/unit/video_test.py',)
OVERLAY_T = ('tests/unit/predict_overlay_test.py',)
VIDEO_PATH_T = (
  'tests/integration/predict_faces_test.py::test_video_round_trip_smoothing_and_truncation',
)
CKPT_T = ('tests/integration/checkpoint_steps_test.py',)
ABLATION_T = ('tests/unit/ablation_summary_test.py',)
EVAL_T = ('tests/integration/evaluate_mean_shape_test.py',)
AUGMENT_T = ('tests/unit/augment_test.py',)
DEVAUG_T = ('tests/unit/device_augment_test.py',)
UNLABELLED_T = ('tests/unit/unlabelled_points_test.py',)
PREDICT_FLIP_T = ('tests/unit/predict_flip_test.py',)
PIPELINE_T = ('tests/unit/pipeline_test.py',)
FOLDER_T = ('tests/unit/folder_spec_test.py',)
WORKDIR_T = ('tests/unit/workdir_test.py',)
FOLD_T = ('tests/unit/fold_bias_test.py',)
CONFIG_T = ('tests/unit/config_check_test.py',)
DIST_T = ('tests/unit/distributed_test.py',)
DETECT_T = (
  'tests/unit/detect_test.py::test_iou_hand_computed',
  'tests/unit/detect_test.py::test_boxes_scores_and_views_by_hand',
)
EXPORT_T = ('tests/unit/export_output_test.py',)
IBUG_T = ('tfds_builders/ibug_300w/ibug_300w_dataset_builder_test.py',)
COFW_T = ('tfds_builders/cofw/cofw_dataset_builder_test.py',)
WFLW_T = ('tfds_builders/wflw/wflw_dataset_builder_test.py',)
SYNTH_T = ('tfds_builders/synthetic_faces/synthetic_faces_dataset_builder_test.py',)

SERVE = 'fkd/serve/'
MUTANTS += [
  # --- One Euro filter and tracker --------------------------------------------------------------
  M(
    SERVE + 'smoothing.py',
    'a_d = alpha(self.d_cutoff, dt)',
    'a_d = alpha(self.min_cutoff, dt)',
    'speed estimate at min_cutoff instead of d_cutoff',
    SMOOTH_T,
  ),
  M(
    SERVE + 'smoothing.py',
    'np.sqrt(box[2] * box[3])',
    'np.sqrt(box[2] * box[2])',
    'face size from the box width alone',
    SMOOTH_T,
  ),
  M(
    SERVE + 'smoothing.py',
    'tr.missed <= self.max_missed',
    'tr.missed < self.max_missed',
    'missed track dropped a frame early',
    SMOOTH_T,
  ),
  M(
    SERVE + 'smoothing.py',
    'if ious[i, j] < threshold:',
    'if ious[i, j] <= threshold:',
    'IoU equal to the threshold not matched',
    SMOOTH_T,
  ),
  M(
    SERVE + 'smoothing.py',
    'np.abs(self.dx_hat) / scale',
    'np.abs(self.dx_hat) * scale',
    'speed multiplied by the face size',
    SMOOTH_T,
  ),
  M(
    SERVE + 'smoothing.py',
    '    self.t = t\n    return self.x_hat.copy()',
    '    return self.x_hat.copy()',
    'filter keeps the first timestamp',
    SMOOTH_T,
  ),
  M(
    SERVE + 'smoothing.py',
    'order = np.argsort(-ious,',
    'order = np.argsort(ious,',
    'greedy matching lowest IoU first',
    SMOOTH_T,
  ),
  # --- detector box -> landmark box calibration --------------------------------------------------
  M(
    SERVE + 'box_calibration.py',
    'rest = [q for k, q in used.items() if k != held]',
    'rest = list(used.values())',
    'leave-one-folder-out fits on the held-out folder too',
    BOXCAL_T,
  ),
  M(
    SERVE + 'box_calibration.py',
    'np.exp(log_ratio.mean(0))',
    'np.exp(log_ratio).mean(0)',
    'size scale: arithmetic instead of geometric mean',
    BOXCAL_T,
  ),
  M(
    SERVE + 'box_calibration.py',
    'if mask.sum() >= min_view_faces:',
    'if mask.sum() > min_view_faces:',
    'a view needs one face more than MIN_VIEW_FACES',
    BOXCAL_T,
  ),
  M(
    SERVE + 'box_calibration.py',
    '- det[:, 2:] / 2) / det[:, 2:]',
    '- det[:, 2:] / 2) / tgt[:, 2:]',
    'offsets in landmark-box sizes instead of detector sizes',
    BOXCAL_T,
  ),
  M(
    SERVE + 'box_calibration.py',
    'centre - new_size / 2, new_size',
    'centre - size / 2, new_size',
    'apply: corner from the detector size',
    BOXCAL_T,
  ),
  M(
    SERVE + 'box_calibration.py',
    'return np.array([left + 0.5, top + 0.5, right - left, bottom - top])',
    'return np.array([left, top, right - left, bottom - top])',
    'landmark box half a pixel left / up',
    BOXCAL_T,
  ),
  # --- video I/O and predict's video path, overlays ----------------------------------------------
  M(
    SERVE + 'video.py',
    'count - self.frames_read > max(1, count // 100)',
    'count - self.frames_read >= max(1, count // 100)',
    'truncation tolerance one frame short',
    VIDEO_T,
  ),
  M(
    SERVE + 'video.py',
    'max(1, count // 100)',
    'max(1, count // 10)',
    'truncation tolerance 10 % instead of 1 %',
    VIDEO_T,
  ),
  M(
    SERVE + 'video.py',
    'else self.frames_read / self.info.fps',
    'else float(self.frames_read)',
    'file frame time in frames, not seconds',
    VIDEO_T,
  ),
  M(
    SERVE + 'predict.py',
    '    for px, py in pts:',
    '    for py, px in pts:',
    'landmarks drawn at (y, x)',
    OVERLAY_T,
  ),
  M(
    SERVE + 'predict.py',
    'box = [x, y, x + w, y + h]',
    'box = [x, y, x + h, y + w]',
    'landmark box drawn with w and h swapped',
    OVERLAY_T,
  ),
  M(
    SERVE + 'smoothing.py',
    '{s[0] / s[2]:.2f} px raw',
    '{s[1] / s[2]:.2f} px raw',
    'jitter report prints the smoothed figure as raw',
    OVERLAY_T,
  ),
  M(
    SERVE + 'smoothing.py',
    'if prev is not None and prev[0] == frame - 1:',
    'if prev is not None:',
    'jitter counts motion across frames without the face',
    OVERLAY_T + SMOOTH_T,
  ),
  M(
    SERVE + 'predict.py',
    '[fc.landmarks for fc in faces], frame.time',
    '[fc.landmarks for fc in faces], frame.index',
    'video smoothing with frame indices as times',
    VIDEO_PATH_T,
    slow=True,
  ),
  # --- face detection ---------------------------------------------------------------------------
  M(
    SERVE + 'detect.py',
    'self.min_face_fraction * min(width, height))',
    'self.min_face_fraction * max(width, height))',
    'smallest face from the longer image side',
    DETECT_T,
  ),
  M(
    SERVE + 'detect.py',
    '(r.right() + 1 - r.left()) / sx',
    '(r.right() - r.left()) / sx',
    'box width without the inclusive right pixel',
    DETECT_T,
  ),
  M(SERVE + 'detect.py', 'r.top() / sy,', 'r.top() / sx,', 'box top scaled by sx', DETECT_T),
  M(
    SERVE + 'detect.py',
    'math.log(self.min_score / (1 - self.min_score))',
    'math.log(self.min_score)',
    'score threshold: log p instead of the logit',
    DETECT_T,
  ),
  M(
    SERVE + 'detect.py',
    'out.sort(key=lambda d: (-d.score, d.box))',
    'out.sort(key=lambda d: (d.score, d.box))',
    'detections worst first',
    DETECT_T,
  ),
  M(
    SERVE + 'detect.py',
    'np.clip(hi - lo, 0, None)',
    'np.abs(hi - lo)',
    'IoU of disjoint boxes not zero',
    DETECT_T,
  ),
  M(
    SERVE + 'detect.py',
    "VIEWS = ('front', 'left', 'right',",
    "VIEWS = ('front', 'right', 'left',",
    'left and right views swapped',
    DETECT_T,
  ),
  # --- export outputs ---------------------------------------------------------------------------
  M(
    SERVE + 'export.py',
    'if not _is_export_record(record):\n      return False',
    'if not _is_export_record(record):\n      return True',
    "another export's record lets a user file be replaced",
    EXPORT_T,
  ),
  M(
    SERVE + 'export.py',
    "{'artifact', 'format', 'input', 'output'} <= set(record)",
    "'format' in record",
    'any JSON with a format key taken for a record',
    EXPORT_T,
  ),
  M(
    SERVE + 'export.py',
    "return os.path.splitext(output)[0] + '.json'",
    "return output + '.json'",
    'record named artifact.ext.json',
    EXPORT_T,
  ),
  # --- which stage serves, checkpoint steps -----------------------------------------------------
  M(
    'fkd/inference.py',
    ">= meta['total_steps']",
    "> meta['total_steps']",
    'a stage at its last step is not finished',
    CKPT_T,
  ),
  M(
    'fkd/inference.py',
    '    if is_finished(path):\n      return path',
    '    if checkpoint.read_meta(path) is not None:\n      return path',
    'find_stage serves an unfinished student before finished teachers',
    CKPT_T,
  ),
  M(
    'fkd/infra/checkpoint.py',
    'for step in reversed(steps):',
    'for step in steps:',
    'oldest good step instead of the newest',
    CKPT_T,
  ),
  M(
    'fkd/infra/checkpoint.py',
    '  n = 1\n  while os.path.exists',
    '  n = 0\n  while os.path.exists',
    'set-aside names start at corrupt-0',
    CKPT_T,
  ),
  M(
    'fkd/infra/checkpoint.py',
    "for item in ('model', 'train'):",
    "for item in ('train',):",
    "verify skips the model's arrays",
    CKPT_T,
  ),
  M(
    'fkd/infra/checkpoint.py',
    '  if steps:\n    raise FkdError',
    '  if not steps:\n    raise FkdError',
    'all steps broken: None instead of an error',
    CKPT_T,
  ),
  # --- ablation summary -------------------------------------------------------------------------
  M(
    'fkd/ablation.py',
    '/ (n - 1)) if n > 1',
    '/ n) if n > 1',
    'population std instead of the sample std',
    ABLATION_T,
  ),
  M(
    'fkd/ablation.py',
    "auc_mean, auc_std = mean_std([r['auc'] for r in runs])",
    "auc_mean, auc_std = mean_std([r['fr'] for r in runs])",
    'AUC aggregated from the FR values',
    ABLATION_T,
  ),
  M(
    'fkd/ablation.py',
    "'fr_mean': round(mean_std([r['fr'] for r in mean_shape])[0], 4)",
    "'fr_mean': round(mean_std([r['nme'] for r in mean_shape])[0], 4)",
    'mean-shape FR from its NME',
    ABLATION_T,
  ),
  M(
    'fkd/ablation.py',
    "s = max(r['nme_std'], base['nme_std'])",
    "s = min(r['nme_std'], base['nme_std'])",
    'σ units from the smaller std',
    ABLATION_T,
  ),
  M(
    'fkd/ablation.py',
    'diffs = [a - b for a, b in zip(',
    'diffs = [b - a for a, b in zip(',
    'paired difference reference − row',
    ABLATION_T,
  ),
  # --- evaluation's mean-shape baseline ---------------------------------------------------------
  M(
    'fkd/evaluation/evaluate.py',
    'mean_shape = _mean_shape(data.splits[config.data.train_split])',
    'mean_shape = _mean_shape(data.splits[eval_splits[0]])',
    'mean shape fitted on the eval split',
    EVAL_T,
  ),
  M(
    'fkd/evaluation/evaluate.py',
    '/ (len(sums) * per_shard.shape[1])',
    '/ per_shard.shape[1]',
    'mean shape divided by one shard only',
    EVAL_T,
  ),
  # --- augmentation and the input pipeline ------------------------------------------------------
  M(
    'fkd/data/augment.py',
    'rng.integers(5, 11)',
    'rng.integers(5, 10)',
    'COFW re-crop margin never 10',
    AUGMENT_T,
  ),
  M(
    'fkd/data/augment.py',
    '[[-1.0, 0.0, width - 1.0]',
    '[[-1.0, 0.0, width]',
    'mirror x ↦ W − x',
    AUGMENT_T,
    equivalent='the re-crop box follows the mirrored landmarks, so a shift of the mirror cancels '
    'in the final affine: same pixels, same landmarks',
  ),
  M(
    'fkd/data/augment.py',
    '    p = p[list(flip_permutation)]',
    '    pass',
    'flip without re-indexing',
    AUGMENT_T,
  ),
  M(
    'fkd/data/augment.py',
    'box = np.concatenate([lo - margin, hi + margin])',
    'box = np.concatenate([lo - margin, hi - margin])',
    're-crop shrinks at the bottom right',
    AUGMENT_T,
  ),
  M(
    'fkd/data/augment.py',
    'flip = bool(rng.random() < flip_prob)',
    'flip = bool(rng.random() > flip_prob)',
    'flip probability inverted',
    AUGMENT_T,
  ),
  M(
    'fkd/data/pipeline.py',
    'return images[:, :, ::-1], schemes.flip_points',
    'return images[:, ::-1], schemes.flip_points',
    'batch flip on the row axis',
    PIPELINE_T,
  ),
  M(
    'fkd/data/pipeline.py',
    '(s * (points + 0.5) - 0.5)',
    '(s * points)',
    'resampled points without the half-pixel shift',
    PIPELINE_T,
  ),
  M(
    'fkd/data/pipeline.py',
    'return num_train // batch_size',
    'return -(-num_train // batch_size)',
    'epoch counts a partial batch',
    PIPELINE_T,
  ),
  M(
    'fkd/data/pipeline.py',
    '    yield images, n',
    '    yield images, len(images)',
    'eval batch counts its padding as real',
    PIPELINE_T,
  ),
  M(
    'fkd/data/pipeline.py',
    '[offset * per_shard : (offset + 1) * per_shard]',
    '[offset : offset + per_shard]',
    'batches of an epoch overlap',
    PIPELINE_T,
  ),
  # --- folder datasets --------------------------------------------------------------------------
  M(
    'fkd/data/folder.py',
    'record.points[record.visibility > 0] if',
    'record.points[record.visibility >= 0] if',
    'v = 0 points in the face extent',
    FOLDER_T,
  ),
  M(
    'fkd/data/folder.py',
    'return record.box + spec.origin_offset',
    'return record.box',
    'annotation box without the origin offset',
    FOLDER_T,
  ),
  M(
    'fkd/data/folder.py',
    '-float(margin.strip()[:-1]) / 100.0',
    '-float(margin.strip()[:-1]) / 10.0',
    "crop_margin '10%' read as 100 %",
    FOLDER_T,
  ),
  M(
    'fkd/data/folder.py',
    'max(box[2] - box[0], box[3] - box[1])',
    'min(box[2] - box[0], box[3] - box[1])',
    'percentage margin of the shorter side',
    FOLDER_T,
  ),
  M(
    'tfds_builders/landmarks_folder/landmarks_folder_dataset_builder.py',
    'box + np.array([-m, -m, m, m])',
    'box + np.array([-m, -m, m, m]) / 2',
    'folder crop margin halved',
    FOLDER_T,
  ),
  M(
    'fkd/data/folder.py',
    'kp[:, 2].astype(np.int32)',
    'np.full(n, 2, np.int32)',
    'COCO visibility dropped',
    ('tests/integration/landmarks_folder_test.py::test_no_flip_and_visibility',),
  ),
  # --- workdir lock and config record -----------------------------------------------------------
  M(
    'fkd/infra/workdir.py',
    "return True  # someone else's live process",
    "return False  # someone else's live process",
    "another user's live run taken for dead",
    WORKDIR_T,
  ),
  M(
    'fkd/infra/workdir.py',
    "  'eval.batch_size',",
    "  'eval.*',",
    'every eval field operational',
    WORKDIR_T,
  ),
  M(
    'fkd/infra/workdir.py',
    "  '*.log_every_steps',",
    "  '*_steps',",
    'num_steps / warmup_steps operational',
    WORKDIR_T,
  ),
  M(
    'fkd/infra/workdir.py',
    "  'data.max_eval_examples',",
    "  'data.max_*_examples',",
    'max_train_examples operational',
    WORKDIR_T,
  ),
  M(
    'fkd/infra/workdir.py',
    'return started is None or _start_time(pid) in (None, started)',
    'return True',
    'a reused pid keeps a stale lock',
    WORKDIR_T,
  ),
  M(
    'fkd/infra/workdir.py',
    "if owner.get('host') not in (None, me['host']):",
    "if owner.get('host') is None:",
    "another host's lock checked as a local pid",
    WORKDIR_T,
  ),
  M(
    'fkd/infra/workdir.py',
    'if k in record and matters(k) and now[k] != record[k]',
    'if k in record and now[k] != record[k]',
    'operational fields compared',
    WORKDIR_T,
  ),
  # --- BatchNorm folding with a conv bias -------------------------------------------------------
  M(
    'fkd/models/fold.py',
    "shift = mean - np.asarray(params[conv]['bias']",
    "shift = mean + np.asarray(params[conv]['bias']",
    'conv bias folded with the wrong sign',
    FOLD_T,
  ),
  M(
    'fkd/models/fold.py',
    "      del folded_conv['bias']",
    '      pass',
    'conv bias kept beside the folded bias',
    FOLD_T,
  ),
  M(
    'fkd/models/fold.py',
    'a = scale / np.sqrt(var + epsilon)',
    'a = scale / np.sqrt(var)',
    'fold without ε',
    FOLD_T,
  ),
  # --- config checks ----------------------------------------------------------------------------
  M(
    'fkd/infra/config_check.py',
    'not 0 <= tc[beta] < 1',
    'not 0 <= tc[beta] <= 1',
    'Adam β = 1 accepted',
    CONFIG_T,
  ),
  M(
    'fkd/infra/config_check.py',
    'if tc.num_steps <= 0:  # the epochs count',
    'if tc.num_steps < 0:  # the epochs count',
    'num_steps 0 with num_epochs 0 accepted',
    CONFIG_T,
  ),
  M(
    'fkd/infra/config_check.py',
    '(value <= 0 and value != -1)',
    '(value < 0 and value != -1)',
    'max_*_examples 0 accepted',
    CONFIG_T,
  ),
  M(
    'fkd/infra/config_check.py',
    'tc.lr < 0:',
    'tc.lr <= 0:',
    'lr 0 rejected',
    CONFIG_T,
  ),
  M(
    'fkd/infra/config_check.py',
    "out += _blocks(value, prefix + key + '.')",
    'out += []',
    'nested optimizer blocks unchecked',
    CONFIG_T,
  ),
  M(
    'fkd/infra/config_check.py',
    'if tc.batch_size % process_count:',
    'if process_count % tc.batch_size:',
    'batch divisibility reversed',
    CONFIG_T,
  ),
  # --- multi-host start-up and sharding ---------------------------------------------------------
  M(
    'fkd/infra/distributed.py',
    "in ('', '0') and not address",
    "in ('',) and not address",
    'FKD_DISTRIBUTED=0 starts a cluster',
    DIST_T,
  ),
  M(
    'fkd/infra/distributed.py',
    "int(os.environ['JAX_PROCESS_ID'])",
    "int(os.environ['JAX_NUM_PROCESSES'])",
    'process id read from JAX_NUM_PROCESSES',
    DIST_T,
  ),
  M(
    'fkd/infra/sharding.py',
    'return NamedSharding(mesh, P(DATA_AXIS))',
    'return NamedSharding(mesh, P())',
    'batches replicated instead of sharded',
    DIST_T,
  ),
  M(
    'fkd/infra/sharding.py',
    'np.concatenate([np.ones(size, np.float32), np.zeros(extra, np.float32)])',
    'np.ones(size + extra, np.float32)',
    'padding examples weigh 1 in the step',
    ('tests/integration/padded_batch_test.py::test_pad_batch',),
  ),
  M(
    'fkd/infra/sharding.py',
    'np.asarray(devices), (DATA_AXIS,)',
    'np.asarray(jax.devices()), (DATA_AXIS,)',
    'make_mesh ignores the given devices',
    DIST_T,
  ),
  # --- TFDS builders ----------------------------------------------------------------------------
  M(
    'tfds_builders/ibug_300w/ibug_300w_dataset_builder.py',
    "splits['full'] = splits['common'] + splits['challenging']",
    "splits['full'] = splits['common']",
    '300-W full split without the challenging subset',
    IBUG_T,
  ),
  M(
    'tfds_builders/ibug_300w/ibug_300w_dataset_builder.py',
    'points.min(0) - MARGIN, points.max(0) + MARGIN',
    'points.min(0) - MARGIN, points.max(0) - MARGIN',
    '300-W crop shrinks at the bottom right',
    IBUG_T,
  ),
  M(
    'tfds_builders/cofw/cofw_dataset_builder.py',
    'points.min(0) - MARGIN_68, points.max(0) + MARGIN_68',
    'points.min(0) + MARGIN_68, points.max(0) + MARGIN_68',
    'COFW-68 crop shifted instead of widened',
    COFW_T,
  ),
  M(
    'tfds_builders/cofw/cofw_dataset_builder.py',
    'load=_mat_loader(mat, i - 1)',
    'load=_mat_loader(mat, i)',
    'COFW-68 images off by one',
    COFW_T,
  ),
  M(
    'tfds_builders/wflw/wflw_dataset_builder.py',
    "if f.extras['attributes'][j]]",
    "if not f.extras['attributes'][j]]",
    'WFLW subsets hold the faces without the attribute',
    WFLW_T,
  ),
  M(
    'tfds_builders/wflw/wflw_dataset_builder.py',
    'lo, hi = points.min(0) - MARGIN, points.max(0) + MARGIN',
    'lo, hi = points.min(0) + MARGIN, points.max(0) + MARGIN',
    'WFLW crop extent shifted',
    WFLW_T,
  ),
  M(
    'tfds_builders/synthetic_faces/synthetic_faces_dataset_builder.py',
    "n, seed = cfg.splits['train']",
    "n, seed = cfg.splits['test']",
    'synthetic PCA fitted on the test split',
    SYNTH_T,
  ),
  # --- the KD augmentation on the device (fkd/data/device_augment.py) -------------------------
  M(
    'fkd/data/device_augment.py',
    'p = jnp.where(flip, points[perm], points)',
    'p = jnp.where(flip, points, points)',
    'device flip without the permutation',
    DEVAUG_T,
  ),
  M(
    'fkd/data/device_augment.py',
    'apply_gamma = u(6) < 2 / 3',
    'apply_gamma = u(6) < 1 / 3',
    'device gamma applied w.p. 1/3',
    DEVAUG_T,
  ),
  M(
    'fkd/data/device_augment.py',
    "params['amount'] = jnp.where(v < 1 / 9, 0.1,",
    "params['amount'] = jnp.where(v < 1 / 9, 0.04,",
    'device salt-and-pepper amount 0.1 → 0.04',
    DEVAUG_T,
  ),
  M(
    'fkd/data/device_augment.py',
    'base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAM), step)',
    'base = jax.random.fold_in(jax.random.key(seed), STREAM)',
    'device augmentation key ignores the step',
    DEVAUG_T,
  ),
  M(
    'fkd/data/device_augment.py',
    'centre = (lo + hi) / 2 + jitter[:2] * (hi - lo)',
    'centre = (lo + hi) / 2 + jitter[:2]',
    'device box jitter in pixels, not box fractions',
    DEVAUG_T,
  ),
  M(
    'fkd/data/device_augment.py',
    'schemes.flip_mask(mask, aug.flip_permutation), mask)',
    'mask, mask)',
    'device flip leaves the labelled mask in place',
    UNLABELLED_T,
  ),
  # --- unlabelled points (fkd/losses) and flip averaging (fkd/serve/predict.py) ---------------
  M(
    'fkd/losses/kd_loss.py',
    'per_face = total / jnp.maximum(jnp.sum(w, axis=-1), 1.0)',
    'per_face = total / w.shape[-1]',
    'masked mean divides by every point, not the labelled ones',
    UNLABELLED_T,
  ),
  M(
    'fkd/serve/predict.py',
    'back = schemes.flip_points(mirrored, perm, size)',
    'back = schemes.flip_points(mirrored, range(len(perm)), size)',
    'flip averaging without the permutation',
    PREDICT_FLIP_T,
  ),
]


def _copy_tree(dest: pathlib.Path) -> None:
  for name in COPIED:
    src = REPO / name
    if src.is_dir():
      shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    else:
      shutil.copy2(src, dest / name)


def _env(shared: str) -> dict[str, str]:
  env = dict(os.environ)
  env['PYTHONDONTWRITEBYTECODE'] = '1'  # a restored file must never meet a mutant's .pyc
  env['FKD_SHARED_DATA'] = shared
  env.pop('PYTHONPATH', None)
  return env


def _pytest(root: pathlib.Path, tests, env, timeout: float) -> tuple[int | str, float]:
  cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *tests]
  start = time.time()
  try:
    rc = subprocess.run(
      cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    ).returncode
  except subprocess.TimeoutExpired:
    rc = 'timeout'
  return rc, time.time() - start


def _locate(m: Mutant) -> tuple[int, int]:
  """(offset, line) of the mutant's `old` text in the pristine file; raises when absent."""
  text = (REPO / m.path).read_text()
  pos = -1
  for _ in range(m.nth + 1):
    pos = text.find(m.old, pos + 1)
    if pos < 0:
      raise SystemExit(f'mutation.py: {m.path}: {m.old!r} (occurrence {m.nth}) not found')
  return pos, text.count('\n', 0, pos) + 1


def _run_mutant(root: pathlib.Path, m: Mutant, env, timeout: float) -> tuple[str, float]:
  path = root / m.path
  original = path.read_text()
  pos, _ = _locate(m)
  path.write_text(original[:pos] + m.new + original[pos + len(m.old) :])
  try:
    rc, secs = _pytest(root, m.tests, env, timeout)
  finally:
    path.write_text(original)
  if rc == 0:
    return 'survived', secs
  if rc == 5:
    return 'no tests', secs
  return ('timeout' if rc == 'timeout' else 'killed'), secs


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--jobs', type=int, default=1, help='mutants run at once (one copy each)')
  parser.add_argument(
    '--only', default='', help='comma-separated: only mutants whose file or text contains one'
  )
  parser.add_argument(
    '--fast', action='store_true', help='every third mutant, no slow or equivalent one (CI)'
  )
  parser.add_argument('--list', action='store_true', help='list the mutants and exit')
  parser.add_argument('--no-baseline', action='store_true', help='skip the unmutated test run')
  parser.add_argument('--timeout', type=float, default=600.0, help='seconds per mutant')
  args = parser.parse_args()

  wanted = [w.strip() for w in args.only.split(',')]
  mutants = [m for m in MUTANTS if any(w in m.path or w in m.what for w in wanted)]
  if args.fast:
    mutants = [m for m in mutants if not (m.slow or m.equivalent)][::3]
  lines = {id(m): _locate(m)[1] for m in mutants}
  if args.list:
    for i, m in enumerate(mutants):
      print(f'{i:3d} {m.path}:{lines[id(m)]} {m.what}  [{" ".join(m.tests)}]')
    return 0
  shared = os.environ.get('FKD_SHARED_DATA', str(REPO.parent / 'shared' / 'data'))
  env = _env(shared)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='fkd-mutation-'))
  try:
    roots = []
    for j in range(max(1, args.jobs)):
      roots.append(tmp / f'copy{j}')
      roots[-1].mkdir()
      _copy_tree(roots[-1])
    check = subprocess.run(
      [sys.executable, '-c', 'import fkd; print(fkd.__file__)'],
      cwd=roots[0],
      env=env,
      capture_output=True,
      text=True,
    )
    if not check.stdout.strip().startswith(str(roots[0])):
      print(f'mutation.py: the copy does not import its own fkd: {check.stdout}{check.stderr}')
      return 2
    if not args.no_baseline:
      selected = sorted({t for m in mutants for t in m.tests})
      rc, secs = _pytest(roots[0], selected, env, args.timeout * 3)
      print(f'baseline (unmutated, {len(selected)} test selections): rc={rc} in {secs:.0f} s')
      if rc != 0:
        print('mutation.py: the tests fail without a mutant; fix them first')
        return 2

    free: queue.Queue = queue.Queue()
    for r in roots:
      free.put(r)

    def job(m):
      root = free.get()
      try:
        return _run_mutant(root, m, env, args.timeout)
      finally:
        free.put(root)

    results = {}
    header = f'{"#":>3} {"result":8} {"secs":>5}  {"where":28} mutation'
    print(header)
    print('-' * len(header))
    with concurrent.futures.ThreadPoolExecutor(len(roots)) as pool:
      futures = {pool.submit(job, m): i for i, m in enumerate(mutants)}
      for f in concurrent.futures.as_completed(futures):
        i = futures[f]
        m = mutants[i]
        results[i] = f.result()
        status, secs = results[i]
        where = f'{m.path.removeprefix("fkd/")}:{lines[id(m)]}'
        print(f'{i:3d} {status:8} {secs:5.0f}  {where:28} {m.what}', flush=True)
  except KeyboardInterrupt:
    print('mutation.py: interrupted; the working tree was never touched', file=sys.stderr)
    return 130
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  killed = sum(1 for s, _ in results.values() if s in ('killed', 'timeout'))
  survivors = []
  for i in sorted(results):
    if results[i][0] not in ('killed', 'timeout'):
      m = mutants[i]
      note = f' [{results[i][0]}]' if results[i][0] != 'survived' else ''
      note += f' (equivalent: {m.equivalent})' if m.equivalent else ''
      survivors.append(f'{m.path}:{lines[id(m)]} {m.what}{note}')
  total = len(results)
  print(f'\nkilled {killed} of {total} ({100.0 * killed / max(total, 1):.1f} %)')
  print(json.dumps({'killed': killed, 'total': total, 'survivors': survivors}, ensure_ascii=False))
  return 0


if __name__ == '__main__':
  sys.exit(main())
