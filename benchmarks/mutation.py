"""Mutation testing of fkd's core: plant one bug at a time and check that the tests guarding that
code fail.

    python benchmarks/mutation.py [--jobs 2] [--only losses,Tough] [--list] [--no-baseline]

Each mutant is one textual change (an operator, a constant, which teacher or target feeds a term)
in a temporary copy of the repository, never in the working tree; the copy is deleted on exit,
Ctrl-C included. For each mutant only the few test files that should catch it run (`pytest -x`,
imports resolved from the copy), so a mutant costs seconds. A mutant is *killed* when its tests fail
(or error); it *survives* when they pass. Before mutating, the selected tests run once on the
unmutated copy and must pass.

Prints a table and, last, one JSON line:
`{"killed": K, "total": N, "survivors": ["file:line description", ...]}`. A survivor known to be
equivalent (no output can change) carries its reason in the list.
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
    'return jnp.mean(jnp.square(pred - target))',
    'return jnp.mean(jnp.abs(pred - target))',
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
    'losses.kd_loss(outputs, gt, tough, tolerant, params)',
    'losses.kd_loss(outputs, gt, tolerant, tough, params)',
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
    "distance(outputs, teachers['teacher_tough'][0])",
    "distance(outputs, stage.head.targets(batch['landmarks']))",
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
    'return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))',
    'return jnp.sum(jnp.square(pred.astype(jnp.float32) - target))',
    'heatmap MSE mean → sum',
    HEATMAPS_T,
  ),
  M(
    'fkd/heads/heatmaps.py',
    'np.asarray(points, np.float64) - shift[..., None, :]',
    'np.asarray(points, np.float64) + shift[..., None, :]',
    'to_original adds the shift',
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
  parser.add_argument('--list', action='store_true', help='list the mutants and exit')
  parser.add_argument('--no-baseline', action='store_true', help='skip the unmutated test run')
  parser.add_argument('--timeout', type=float, default=600.0, help='seconds per mutant')
  args = parser.parse_args()

  wanted = [w.strip() for w in args.only.split(',')]
  mutants = [m for m in MUTANTS if any(w in m.path or w in m.what for w in wanted)]
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
