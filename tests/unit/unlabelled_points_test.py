"""Unlabelled points (a folder dataset's COCO v = 0, `.pts` `-1 -1`, empty CSV cells) are masked
in training: the batch carries `pipeline.LABELLED`, every flip re-indexes it with the points, and
no method's loss sees a masked point (moved anywhere: same loss, same gradient, same step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd import config_lib, methods
from fkd.data import pipeline, schemes
from fkd.heads import heatmaps
from fkd.losses import kd_loss
from fkd.training import trainer as train

CONFIGS = {
  'kd': 'configs/kd.py',
  'fan': 'configs/mobilefan.py',
  'output_kd': 'configs/output_kd.py',
}


# ---- the losses by hand, on three points -------------------------------------------------------


def test_regression_losses_by_hand():
  """Face 0: point errors (1, 2), (0, 3) and a masked point 100 px off; face 1: only point 0
  labelled, errors (2, 2). Per face over its labelled entries, then over the faces."""
  pred = jnp.array([[1.0, 2, 0, 3, 100, -50], [2, -2, 7, 7, 9, 9]])
  gt = jnp.zeros((2, 6))
  mask = jnp.array([[1.0, 1, 0], [1, 0, 0]])
  # MSE: face 0 (1 + 4 + 0 + 9) / 4 = 3.5, face 1 (4 + 4) / 2 = 4.
  assert float(kd_loss.mse(pred, gt, mask)) == pytest.approx((3.5 + 4) / 2)
  # L1: face 0 (1 + 2 + 0 + 3) / 4 = 1.5, face 1 (2 + 2) / 2 = 2.
  assert float(kd_loss.l1(pred, gt, mask)) == pytest.approx((1.5 + 2) / 2)
  # Without a mask: every entry.
  assert float(kd_loss.mse(pred, gt)) == pytest.approx(float(np.mean(np.square(pred))))
  assert float(kd_loss.mse(pred, gt, jnp.ones((2, 3)))) == pytest.approx(
    float(kd_loss.mse(pred, gt))
  )


def _kd_example(masked=(0.0, 0.0)):
  """One face, three points, gt 0; point 2 masked, its values `masked` everywhere."""
  x, y = masked
  pred = jnp.array([[0.1, 0.5, 0.0, 0.0, x, y]])
  gt = jnp.array([[0.0, 0.0, 0.0, 0.0, -y, x]])
  tolerant = jnp.array([[0.2, 0.2, 0.0, 0.0, 3 * x, y]])
  tough = jnp.array([[0.05, 0.05, 0.0, 0.0, y, 2 * x]])
  return pred, gt, tough, tolerant, jnp.array([[1.0, 1.0, 0.0]])


def test_kd_loss_by_hand():
  """Released-code constants (slope 3, α_tou 1.9, α⁻_tol −0.4, β 0.15, w_main 2) on the four
  labelled entries; point 1 is exact (every term 0 there)."""
  pred, gt, tough, tolerant, mask = _kd_example((40.0, -7.0))
  loss, terms = kd_loss.kd_loss(pred, gt, tough, tolerant, kd_loss.KDParams.code(), mask)
  # x0: e 0.1 <= λ 0.2: 3e = 0.3; y0: e 0.5 > λ 0.2: e² + 3λ − λ² = 0.25 + 0.6 − 0.04 = 0.81.
  main = 2.0 * (0.3 + 0.81) / 4
  # Tough (d 0.05): both e > d: 1.9·|d − e| = 1.9·0.05 and 1.9·0.45.
  tou = (1.9 * 0.05 + 1.9 * 0.45) / 4
  # Tolerant (d 0.2, β·d 0.03): x0 in [β·d, d]: −0.4·0.1; y0 > d: 1.8·0.3.
  tol = (-0.4 * 0.1 + 1.8 * 0.3) / 4
  assert float(terms['main']) == pytest.approx(main, rel=1e-5)
  assert float(terms['aloss_tough']) == pytest.approx(tou, rel=1e-5)
  assert float(terms['aloss_tolerant']) == pytest.approx(tol, rel=1e-5)
  assert float(loss) == pytest.approx(main + tou + tol, rel=1e-5)


@pytest.mark.parametrize('masked', [(0.0, 0.0), (40.0, -7.0), (1e30, -1e30), (np.nan, np.inf)])
def test_a_masked_point_moved_anywhere_changes_nothing(masked):
  """Prediction, ground truth and both teachers at the masked point: any values, NaN included;
  the loss, its terms and its gradient (zero at the masked entries) stay the same."""
  params = kd_loss.KDParams.code()

  def run(values):
    pred, gt, tough, tolerant, mask = _kd_example(values)
    f = lambda p: kd_loss.kd_loss(p, gt, tough, tolerant, params, mask)
    return f(pred), jax.grad(lambda p: f(p)[0])(pred)

  (loss, terms), grad = run(masked)
  (ref, ref_terms), ref_grad = run((0.0, 0.0))
  assert float(loss) == float(ref) and np.isfinite(float(loss))
  assert {k: float(v) for k, v in terms.items()} == {k: float(v) for k, v in ref_terms.items()}
  np.testing.assert_array_equal(grad[0, 4:], 0.0)
  np.testing.assert_array_equal(grad, ref_grad)
  assert np.all(grad[0, :2] != 0)


def test_heatmap_mse_by_hand():
  """2x2 maps of three points: map 0 off by 1 everywhere, map 1 by 0.5, map 2 masked."""
  pred = jnp.zeros((1, 2, 2, 3))
  target = jnp.stack([jnp.ones((2, 2)), jnp.full((2, 2), 0.5), jnp.full((2, 2), 1e30)], -1)[None]
  mask = jnp.array([[1.0, 1.0, 0.0]])
  # (4·1 + 4·0.25) / (2 maps · 4 pixels)
  assert float(heatmaps.heatmap_mse(pred, target, mask)) == pytest.approx(5 / 8)
  grad = jax.grad(lambda p: heatmaps.heatmap_mse(p, target, mask))(pred)
  np.testing.assert_array_equal(grad[..., 2], 0.0)
  assert np.all(grad[..., :2] != 0)


def test_the_padded_batch_mean_is_the_unpadded_one():
  """Per-face normalisation keeps every loss a mean of per-example terms: the trainer's padded
  batches (`weighted_mean`, padding of weight 0 and an all-zero mask) give the unpadded loss."""
  rng = np.random.default_rng(0)
  pred, gt = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
  mask = np.array([[1.0, 0, 1], [1, 1, 0], [0, 0, 0]])  # the third row is padding
  padded = train.weighted_mean(kd_loss.mse, jnp.array([1.0, 1, 0]), pred, gt, mask)
  assert float(padded) == pytest.approx(float(kd_loss.mse(pred[:2], gt[:2], mask[:2])), rel=1e-6)


# ---- every method's every stage ----------------------------------------------------------------


def _batch(size: int, n: int, moved: bool) -> dict[str, np.ndarray]:
  """Four faces; point 1 masked in faces 0 and 2, point 0 in face 1; `moved`: the masked points'
  ground truth (and soft targets) far away."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
  points = rng.uniform(0.2 * size, 0.8 * size, (4, n, 2)).astype(np.float32)
  mask = np.ones((4, n), np.float32)
  mask[[0, 2], 1] = 0
  mask[1, 0] = 0
  soft = points + 0.5
  if moved:
    far = rng.uniform(-5 * size, 5 * size, points.shape).astype(np.float32)
    points = np.where(mask[..., None] > 0, points, far)
    soft = np.where(mask[..., None] > 0, soft, -far)
  return {
    'image': image,
    'landmarks': points,
    'soft_landmarks': soft,
    pipeline.LABELLED: mask,
  }


def _outputs(stage, n: int, size: int, seed: int):
  """Random outputs of a stage's head for four faces, and decoder features for fan's terms."""
  rng = np.random.default_rng(seed)
  if stage.head.kind == 'regression':
    return jnp.asarray(rng.normal(0, 0.3, (4, 2 * n)), jnp.float32), {}
  out = jnp.asarray(rng.uniform(0, 1, (4, size // 4, size // 4, n)), jnp.float32)
  features = {
    f'{kind}_{i}': jnp.asarray(rng.normal(size=(4, 4, 4, 8)), jnp.float32)
    for kind in ('decoder', 'adapted')
    for i in (1, 2, 3)
  }
  return out, features


def _masked_grad(stage, grad, mask):
  """The gradient at the masked and at the labelled points, (K, ...) each."""
  if stage.head.kind == 'regression':
    per_point = grad.reshape(grad.shape[0], -1, 2)
  else:  # (B, H, W, N) -> (B, N, H, W)
    per_point = jnp.moveaxis(grad, -1, 1)
  return per_point[mask == 0], per_point[mask > 0]


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_loss_ignores_masked_points(name):
  """Every stage's loss of every method, on random outputs and teacher outputs: the masked
  points' ground truth and soft targets moved far away give the same loss and terms; the
  gradient at the masked points' outputs is zero (teacher terms included), not elsewhere.
  Without the mask the loss changes (the test can fail)."""
  config = config_lib.load(CONFIGS[name], 'tiny')
  method = methods.get(config)
  n, size = config.data.num_landmarks, config.data.image_size
  for k, stage_name in enumerate(method.stages):
    stage = method.stage(stage_name, config)
    loss_fn = method.loss_fn(stage, config)
    outputs, features = _outputs(stage, n, size, k)
    teachers = {t: _outputs(stage, n, size, 10 + j) for j, t in enumerate(stage.teachers)}
    value = {}
    for moved in (False, True):
      batch = jax.tree.map(jnp.asarray, _batch(size, n, moved))
      f = lambda o, b=batch, fn=loss_fn, ft=features, t=teachers: fn(o, ft, b, t)
      (loss, terms), grad = jax.value_and_grad(f, has_aux=True)(outputs)
      value[moved] = (float(loss), {t: float(v) for t, v in terms.items()}, np.asarray(grad))
    assert value[True][:2] == value[False][:2], stage_name
    np.testing.assert_array_equal(value[True][2], value[False][2])
    masked, labelled = _masked_grad(stage, value[True][2], np.asarray(batch[pipeline.LABELLED]))
    np.testing.assert_array_equal(masked, 0.0)
    assert np.all(np.abs(labelled).sum(axis=tuple(range(1, labelled.ndim))) > 0), stage_name
    unmasked = {k: v for k, v in batch.items() if k != pipeline.LABELLED}  # the planted bug
    assert float(loss_fn(outputs, features, unmasked, teachers)[0]) != value[True][0], stage_name


def _step_results(name: str, stage_name: str):
  """One jitted train step of a stage without teachers on its tiny model: (reference, moved,
  unmasked) (state, metrics) on `_batch`."""
  config = config_lib.load(CONFIGS[name], 'tiny')
  method = methods.get(config)
  n, size = config.data.num_landmarks, config.data.image_size
  stage = method.stage(stage_name, config)
  assert not stage.teachers
  model = train.build_model(stage, n, **method.model_kwargs(stage, config, {}))
  optimizer = train.make_optimizer(stage.train_config, 10)
  apply_kwargs = method.train_apply_kwargs(stage, config)
  state = train.init_state(model, optimizer, size, method.seed_offset(stage_name), apply_kwargs)
  loss_fn = method.loss_fn(stage, config)
  step = jax.jit(train.make_train_step(model, optimizer, stage, loss_fn, {}, apply_kwargs))
  key = jax.random.key_data(jax.random.key(0))
  unmasked = dict(_batch(size, n, True))
  del unmasked[pipeline.LABELLED]
  return [
    jax.device_get(step(state, b, key, {}))
    for b in (_batch(size, n, False), _batch(size, n, True), unmasked)
  ]


def _same_step(results) -> None:
  (ref_state, ref), (new_state, metrics), (_, bad) = results
  jax.tree.map(np.testing.assert_array_equal, new_state['params'], ref_state['params'])
  assert metrics == ref  # loss, terms, gradient norm, train metrics
  # Adam's first step is about lr·sign(gradient): the parameters may not tell; the loss does.
  assert bad['loss'] != ref['loss'] and bad['grad_norm'] != ref['grad_norm']


def test_a_train_step_ignores_masked_points():
  """The jitted step on a tiny regression model: same gradient norm, loss, metrics and new
  parameters with the masked points far away; different without the mask."""
  _same_step(_step_results('kd', 'student_baseline'))


@pytest.mark.slow
@pytest.mark.parametrize('name, stage', [('fan', 'teacher'), ('kd', 'teacher_tolerant')])
def test_more_train_steps_ignore_masked_points(name, stage):
  """As `test_a_train_step_ignores_masked_points`, on a heatmap model and the soft targets."""
  _same_step(_step_results(name, stage))


# ---- the batch carries the mask through every flip ---------------------------------------------


def _data(n: int = 5, size: int = 32) -> pipeline.Data:
  """Eight faces of five points; point 0 unlabelled in every face, stored (as the folder builder
  stores it) at the mean of the labelled points; the flip swaps points 0 and 1."""
  rng = np.random.default_rng(3)
  points = rng.uniform(8, 24, (8, n, 2)).astype(np.float32)
  points[:, 0] = points[:, 1:].mean(axis=1)
  labelled = np.ones((8, n), bool)
  labelled[:, 0] = False
  images = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
  split = pipeline.Split(images, points, None, [str(i) for i in range(8)], labelled=labelled)
  perm = np.array([1, 0, 2, 4, 3])
  return pipeline.Data('folder', {'train': split}, size, n, perm, None, scheme='300w')


def _augmented_batch(data: pipeline.Data, step: int, augment: str, on: str) -> dict:
  batch = pipeline.train_batch(data, 'train', 8, step, 0, augment, augment_on=on)
  if on == 'device':
    from fkd.data import device_augment

    aug = pipeline.device_augmentation(data, augment)
    batch = jax.device_get(device_augment.augment_batch(batch, 0, step, aug))
  return batch


@pytest.mark.parametrize('on', ['host', 'device'])
@pytest.mark.parametrize('augment', ['flip', 'kd', 'none'])
def test_the_mask_follows_the_flip(augment, on):
  """Where a face was flipped, point 1 is the unlabelled one; the masked index always holds the
  stand-in (the labelled points' mean, kept by every affine map), which it would not if the mask
  had stayed put. On the host and on the device."""
  from fkd.data import device_augment

  assert device_augment.LABELLED == pipeline.LABELLED
  data = _data()
  flipped = []
  for step in range(4):
    batch = _augmented_batch(data, step, augment, on)
    mask = np.asarray(batch[pipeline.LABELLED])
    assert mask.dtype == np.float32 and mask.shape == (8, 5)
    assert np.all(mask.sum(axis=1) == 4)
    for pts, m in zip(batch['landmarks'], mask, strict=True):
      np.testing.assert_allclose(pts[m == 0][0], pts[m > 0].mean(axis=0), atol=1e-3)
      flipped.append(m[1] == 0)
  if augment == 'none':
    assert not any(flipped)
  else:
    assert any(flipped) and not all(flipped)


def test_no_mask_no_key():
  """A split without unlabelled points (the paper datasets) gives the batches it always gave."""
  data = _data()
  data.splits['train'].labelled = None
  assert pipeline.LABELLED not in pipeline.train_batch(data, 'train', 8, 0, 0, 'kd')


def test_flip_mask_is_the_points_reindexing():
  perm = np.array([1, 0, 2, 4, 3])
  mask = np.array([[0.0, 1, 1, 1, 0]])
  np.testing.assert_array_equal(schemes.flip_mask(mask, perm), [[1.0, 0, 1, 0, 1]])
  np.testing.assert_array_equal(schemes.flip_mask(jnp.asarray(mask), perm), [[1.0, 0, 1, 0, 1]])
  points = np.arange(10.0).reshape(1, 5, 2)
  flipped = schemes.flip_points(points, perm, 10)
  # The point a flip puts at index i is the one the mask now says about index i.
  np.testing.assert_array_equal(flipped[0, :, 1], points[0, perm, 1])


def test_hold_out_keeps_the_mask():
  split = _data().splits['train']
  kept, held = pipeline.hold_out(split, 0.25, 0)
  assert kept.labelled.shape == (6, 5) and held.labelled.shape == (2, 5)


# ---- the NME normaliser of a face with an unlabelled normalising point -------------------------


def test_a_face_without_its_normaliser_is_not_scored():
  """Face 1's normalising point 0 is unlabelled: no normaliser (NaN), not another one; the box
  diagonal spans the labelled points; a group normaliser needs every member."""
  from fkd.evaluation import metrics

  gt = np.array([[[0.0, 0], [10, 0], [5, 5]], [[0.0, 0], [6, 8], [30, 40]]])
  pred = gt + 1.0  # every point off by √2
  mask = np.array([[True, True, False], [False, True, True]])
  d = metrics.normalising_distance(gt, (0, 1), mask)
  assert d[0] == 10 and np.isnan(d[1])
  nme = metrics.nme_per_image(pred, gt, (0, 1), mask)
  assert nme[0] == pytest.approx(np.sqrt(2) / 10) and np.isnan(nme[1])
  assert metrics.unscorable(gt, (0, 1), mask).tolist() == [False, True]
  assert metrics.unscorable(gt, (0, 1), None).tolist() == [False, False]
  # Box diagonal over the labelled points: face 0 (0, 0)-(10, 0) = 10; face 1 (6, 8)-(30, 40) = 40.
  np.testing.assert_allclose(metrics.normalising_distance(gt, 'box_diagonal', mask), [10, 40])
  # Groups: the mean of [1, 2] needs both.
  d = metrics.normalising_distance(gt, ([0], [1, 2]), mask)
  assert np.isnan(d).tolist() == [True, True]
  d = metrics.normalising_distance(gt, (1, [2]), mask)
  assert np.isnan(d[0]) and d[1] == pytest.approx(40)


def test_the_evaluation_leaves_such_faces_out_with_a_note(capsys):
  """Faces 2 and 5 of 'test' lack normalising point 0: left out of the split's metrics, with one
  note naming them; a split where every face lacks it is one error line."""
  from fkd.errors import FkdError
  from fkd.evaluation import evaluate

  data = _eval_data()
  out = evaluate.scored_faces(data, ['test'], '[0, 1]')
  assert out.splits['test'].names == ['0', '1', '3', '4', '6', '7']
  assert out.splits['test'].labelled.shape == (6, 5) and out.splits['test'].labelled.all()
  assert out.splits['train'] is data.splits['train']
  lines = capsys.readouterr().out.splitlines()
  assert lines == [
    'fkd: note: test: 2 face(s) left out of the metrics, a point of the NME normaliser '
    '[0, 1] is unlabelled: 2, 5'
  ]
  assert evaluate.scored_faces(data, ['test'], '[1, 2]').splits['test'] is data.splits['test']
  data.splits['test'].labelled[:, 0] = False
  with pytest.raises(FkdError, match="eval split 'test': every face has an unlabelled point"):
    evaluate.scored_faces(data, ['test'], '[0, 1]')


def _eval_data():
  data = _data()
  split = data.splits['train']
  labelled = np.ones_like(split.labelled)
  labelled[[2, 5], 0] = False
  data.splits['test'] = pipeline.take(split, np.arange(8))
  data.splits['test'].labelled = labelled
  return data


@pytest.mark.parametrize('platform', ['tpu', 'cuda'])
def test_the_masked_losses_lower_for_accelerators(platform):
  """The masks add no custom call on TPU or GPU (the losses, the heatmap MSE, the device flip)."""
  from fkd.tools import programs

  pred = jax.ShapeDtypeStruct((4, 10), jnp.float32)
  mask = jax.ShapeDtypeStruct((4, 5), jnp.float32)
  maps = jax.ShapeDtypeStruct((4, 8, 8, 5), jnp.float32)
  params = kd_loss.KDParams.code()
  fns = {
    'kd_loss': (lambda p, g, m: kd_loss.kd_loss(p, g, g, g, params, m)[0], (pred, pred, mask)),
    'heatmap_mse': (heatmaps.heatmap_mse, (maps, maps, mask)),
    'flip_mask': (lambda m: schemes.flip_mask(m, [1, 0, 2, 4, 3]), (mask,)),
  }
  for name, (fn, args) in fns.items():
    lowered = jax.jit(jax.value_and_grad(fn) if name != 'flip_mask' else fn).trace(*args)
    text = lowered.lower(lowering_platforms=(platform,)).as_text()
    assert programs.custom_calls(text) == {}, name
