"""The ASM soft landmarks and worst.png with unlabelled points (a folder dataset's `visibility` 0,
stored at a stand-in position): the projection uses the labelled points only, the fit imputes the
unlabelled ones from the model, worst.png draws labelled points only. Paper datasets (no mask)
compute exactly what they computed before.

The toy model: N = 6 points, every shape exactly μ + V c with two known orthonormal modes V, so a
face's coefficients are recoverable from any labelled subset that determines them (here: at least
two points whose rows of V have rank 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.data import asm, face_builder, pipeline
from fkd.data import device_augment as da

N = 6


def _toy(m: int = 40, seed: int = 0):
  """(shapes (m, N, 2), μ (2N,), V (2N, 2), c (m, 2)): shapes = μ + V c exactly."""
  rng = np.random.default_rng(seed)
  mu = rng.uniform(20, 80, 2 * N)
  v = np.linalg.qr(rng.normal(size=(2 * N, 2)))[0]
  c = rng.normal(0, [10.0, 4.0], (m, 2))
  c -= c.mean(axis=0)  # the sample mean is μ exactly
  return (mu + c @ v.T).reshape(m, N, 2), mu, v, c


def _moved(shape: np.ndarray, labelled: np.ndarray, where) -> np.ndarray:
  out = shape.copy()
  out[~labelled] = where
  return out


# ---- the projection ----------------------------------------------------------------------------


@pytest.mark.parametrize('where', [(0.0, 0.0), (1e4, -3e3), (-7.0, 250.0)])
def test_masked_projection_ignores_the_stand_ins(where):
  """Face 3 with points 1 and 4 unlabelled, their stand-ins anywhere: the labelled points' soft
  targets are those of the fully labelled face (the shape is in the model: its own projection),
  and the unlabelled points get the model's reconstruction, i.e. the true positions."""
  shapes, _, _, _ = _toy()
  pca = asm.fit_pca(shapes, k=2)
  face = shapes[3]
  labelled = np.ones(N, bool)
  labelled[[1, 4]] = False
  full = asm.asm_project(pca, face)
  np.testing.assert_allclose(full, face, atol=1e-9)  # in the model: unchanged
  got = asm.asm_project(pca, _moved(face, labelled, where), labelled=labelled)
  # δ = UNLABELLED_WEIGHT pulls the unlabelled coordinates weakly to the mean: δ-sized bias.
  np.testing.assert_allclose(got, full, atol=1e-2)
  # Exactly the same whatever the stand-ins hold.
  ref = asm.asm_project(pca, _moved(face, labelled, (0.0, 0.0)), labelled=labelled)
  np.testing.assert_array_equal(got, ref)
  # The unmasked projection (the bug this guards against) is pulled by them.
  if where != (0.0, 0.0):
    bad = asm.asm_project(pca, _moved(face, labelled, where))
    assert np.abs(bad - full)[labelled].max() > 1.0


def test_masked_coefficients_by_hand():
  """Points 0 and 1 labelled only: b solves the 4 x 2 least squares of their rows of V exactly
  (c = (5, -3) planted); without the δ-term this is V_Lᵀ V_L b = V_Lᵀ (x_L − μ_L)."""
  _, mu, v, _ = _toy()
  pca = asm.fit_pca(_toy()[0], k=2)
  c = np.array([5.0, -3.0])
  # The fitted modes equal V up to sign (two exact modes): express c in the fitted basis.
  c_fit = pca.components.T @ v @ c
  x = mu + v @ c
  labelled = np.array([True, True, False, False, False, False])
  b = asm.masked_coefficients(pca, x.copy(), labelled)
  np.testing.assert_allclose(b, c_fit, atol=1e-2)
  vl = pca.components[:4]
  np.testing.assert_allclose(b, np.linalg.lstsq(vl, (x - pca.mean)[:4], rcond=None)[0], atol=1e-2)


def test_a_face_with_too_few_labelled_points_stays_finite_and_clipped():
  """One labelled point (2 coordinates) for two modes of a 4-mode model: under-determined; the
  δ-term keeps the system definite, every coefficient stays within ±3√λ."""
  rng = np.random.default_rng(1)
  pca = asm.fit_pca(rng.normal(0, 5, (50, N, 2)) + 40, k=4)
  labelled = np.zeros(N, bool)
  labelled[2] = True
  face = rng.normal(0, 50, (N, 2)) + 40
  out = asm.asm_project(pca, face, labelled=labelled)
  assert np.all(np.isfinite(out))
  b = (out.reshape(-1) - pca.mean) @ pca.components
  assert np.all(np.abs(b) <= 3 * np.sqrt(pca.eigenvalues) + 1e-9)


def test_no_mask_and_full_faces_are_bit_identical():
  """The paper datasets' soft landmarks: an all-True mask is the unmasked computation, and in a
  mixed batch the fully labelled faces are computed exactly as without a mask."""
  rng = np.random.default_rng(2)
  shapes = rng.normal(0, 4, (30, 68, 2)) + np.linspace(20, 200, 68)[:, None]
  pca = asm.fit_pca(shapes, acc=0.9)
  probe = (shapes[:8] + rng.normal(0, 20, (8, 68, 2))).astype(np.float32)
  want = asm.asm_project(pca, probe)
  np.testing.assert_array_equal(asm.asm_project(pca, probe, labelled=np.ones((8, 68), bool)), want)
  mask = np.ones((8, 68), bool)
  mask[[1, 5], 10] = False
  got = asm.asm_project(pca, probe, labelled=mask)
  np.testing.assert_array_equal(got[mask.all(axis=1)], want[mask.all(axis=1)])
  assert not np.array_equal(got[1], want[1])
  # The fit: no mask / all labelled is the plain fit, bit for bit.
  accs = face_builder.ASM_ACCS
  a = face_builder.fit_pcas(shapes, accs)
  b = face_builder.fit_pcas(shapes, accs, np.ones((30, 68), bool))
  for k in accs:
    np.testing.assert_array_equal(a[k].mean, b[k].mean)
    np.testing.assert_array_equal(a[k].components, b[k].components)
    np.testing.assert_array_equal(a[k].eigenvalues, b[k].eigenvalues)


# ---- the fit -----------------------------------------------------------------------------------


def test_the_fit_imputes_instead_of_learning_the_stand_ins():
  """A third of the faces miss a point (stored at the labelled points' mean, as the folder builder
  stores it): the fitted mean is the complete set's mean μ and the two modes span V, as the fit of
  the complete set; fitted on the stand-ins it is neither."""
  shapes, mu, v, _ = _toy(60)
  labelled = np.ones((60, N), bool)
  labelled[::3, 2] = False
  labelled[1::7, 5] = False
  stored = shapes.copy()
  for i in range(60):
    stored[i, ~labelled[i]] = shapes[i, labelled[i]].mean(axis=0)
  models = face_builder.fit_pcas(stored, {'p90': 0.9}, labelled)
  pca = models['p90']
  assert pca.k == 2
  np.testing.assert_allclose(pca.mean, mu, atol=5e-3)
  # The same subspace: the projector onto the fitted modes is V Vᵀ.
  np.testing.assert_allclose(pca.components @ pca.components.T, v @ v.T, atol=1e-4)
  naive = face_builder.fit_pcas(stored, {'p90': 0.9})['p90']
  assert np.abs(naive.mean - mu).max() > 0.5
  filled, iterations = asm.complete_shapes(stored, labelled, k=2)
  assert 1 <= iterations <= asm.IMPUTE_ITERATIONS
  np.testing.assert_allclose(filled, shapes, atol=5e-3)
  np.testing.assert_array_equal(filled[labelled], shapes[labelled])  # labelled: untouched


def test_the_imputation_note():
  labelled = np.ones((4, 3), bool)
  assert face_builder.imputed_note(labelled) == ''
  labelled[[0, 2], 1] = False
  assert 'the unlabelled points of 2 of the 4 shapes imputed' in face_builder.imputed_note(labelled)


# ---- the host and device batches ---------------------------------------------------------------


def _data(size: int = 96):
  """Eight faces of the toy model scaled into a size² crop; point 0 unlabelled in faces 0, 3, 6
  (stored at the labelled points' mean); the flip swaps points 0 and 1 and 3 and 4."""
  shapes, _, _, _ = _toy(8, seed=4)
  shapes = shapes * size / 100.0
  labelled = np.ones((8, N), bool)
  labelled[[0, 3, 6], 0] = False
  for i in range(8):
    shapes[i, ~labelled[i]] = shapes[i, labelled[i]].mean(axis=0)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
  split = pipeline.Split(
    images, shapes.astype(np.float32), None, [str(i) for i in range(8)], labelled=labelled
  )
  fit, _, _, _ = _toy(60, seed=5)
  pca = asm.fit_pca(fit * size / 100.0, k=3)
  perm = np.array([1, 0, 2, 4, 3, 5])
  return pipeline.Data('folder', {'train': split}, size, N, perm, pca, scheme='300w')


@pytest.mark.parametrize('augment', ['kd', 'flip', 'none'])
def test_host_and_device_batches_project_the_labelled_points(augment):
  """Every batch's soft landmarks are the masked projection of its (augmented) landmarks with its
  (flipped) mask, on the host (float64) and on the device (float32) alike."""
  data = _data()
  for step in range(3):
    host = pipeline.train_batch(data, 'train', 8, step, 0, augment)
    want = asm.asm_project(
      data.pca, host['landmarks'].astype(np.float64), labelled=host[pipeline.LABELLED] > 0
    )
    np.testing.assert_allclose(host['soft_landmarks'], want, atol=1e-4)
    batch = pipeline.train_batch(data, 'train', 8, step, 0, augment, augment_on='device')
    aug = pipeline.device_augmentation(data, augment)
    dev = jax.device_get(da.augment_batch(batch, 0, step, aug, data.pca))
    mask = dev[pipeline.LABELLED] > 0
    assert not mask.all()
    want = asm.asm_project(data.pca, dev['landmarks'].astype(np.float64), labelled=mask)
    np.testing.assert_allclose(dev['soft_landmarks'], want, atol=2e-3)
    unmasked = asm.asm_project(data.pca, dev['landmarks'].astype(np.float64))
    assert np.abs(unmasked - want)[~mask.all(axis=1)].max() > 0.1  # the mask matters here


def test_device_masked_projection_matches_the_host():
  """`asm_project_masked` (Gauss-Jordan in float32, no custom call) against NumPy's float64 solve,
  on 68-point shapes of a face-like model (12 modes and noise) with 15 % of the points masked
  and stand-ins far away."""
  rng = np.random.default_rng(0)
  base = np.stack([np.linspace(20, 200, 68), np.sin(np.arange(68)) * 50 + 112], 1)
  modes = np.linalg.qr(rng.normal(size=(136, 12)))[0]
  coef = rng.normal(0, np.geomspace(40, 2, 12), (200, 12))
  shapes = base + (coef @ modes.T).reshape(200, 68, 2) + rng.normal(0, 0.5, (200, 68, 2))
  pca = asm.fit_pca(shapes, acc=0.97)
  assert 5 < pca.k < 40
  probe = shapes[:16] + rng.normal(0, 10, (16, 68, 2))
  mask = rng.random((16, 68)) > 0.15
  mask[0] = True
  probe[~mask] = 1e3
  want = asm.asm_project(pca, probe, labelled=mask)
  fn = jax.jit(lambda x, m: da.asm_project_masked(pca, x, m))
  got = np.asarray(fn(probe.astype(np.float32), mask.astype(np.float32)))
  np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
  np.testing.assert_allclose(got[0], asm.asm_project(pca, probe[0]), atol=1e-4)


def test_solve_spd_by_hand():
  a = jnp.array([[4.0, 2.0], [2.0, 3.0]])
  # [[4, 2], [2, 3]] x = (2, 5): x = (−0.5, 2).
  np.testing.assert_allclose(da._solve_spd(a, jnp.array([2.0, 5.0])), [-0.5, 2.0], atol=1e-6)


@pytest.mark.parametrize('platform', ['tpu', 'cuda'])
def test_the_masked_device_projection_lowers_without_custom_calls(platform):
  from fkd.tools import programs

  data = _data()
  aug = pipeline.device_augmentation(data, 'kd')
  batch = pipeline.train_batch(data, 'train', 8, 0, 0, 'kd', augment_on='device')
  spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  fn = jax.jit(da.make_augment(aug, data.pca))
  text = fn.trace(spec, 0, 0).lower(lowering_platforms=(platform,)).as_text()
  assert programs.custom_calls(text) == {}


def test_without_a_mask_the_device_program_is_unchanged(monkeypatch):
  """No `LABELLED` key (the paper datasets): the unmasked projection, never the masked one."""
  data = _data()
  aug = pipeline.device_augmentation(data, 'kd')
  batch = pipeline.train_batch(data, 'train', 8, 0, 0, 'kd', augment_on='device')
  del batch[pipeline.LABELLED]

  def fail(*args, **kwargs):
    raise AssertionError('the masked projection on a batch without a mask')

  monkeypatch.setattr(da, 'asm_project_masked', fail)
  out = da.augment_batch(batch, 0, 0, aug, data.pca)
  np.testing.assert_array_equal(out['soft_landmarks'], da.asm_project(data.pca, out['landmarks']))


# ---- worst.png ---------------------------------------------------------------------------------


def _overlay(labelled):
  """Two faces (one best, one worst) on a grey 64² image: points at (10, 10), (50, 12), (30, 50),
  the prediction 2 px right; point 2 of face 0 unlabelled, its stand-in and prediction moved to
  (30, 30), where nothing else is drawn."""
  gt = np.array([[[10.0, 10], [50, 12], [30, 50]]] * 2)
  pred = gt + [2.0, 0.0]
  gt[0, 2] = pred[0, 2] = (30.0, 30.0)
  overlay = {
    'model': 'student',
    'split': 'test',
    'rows': {'best': 1, 'worst': 1},
    'images': np.full((2, 64, 64, 3), 128, np.uint8),
    'gt': gt,
    'pred': pred,
    'nme': np.array([0.01, 0.2]),
    'names': ['a.png', 'b.png'],
  }
  if labelled is not None:
    overlay['labelled'] = labelled
  return overlay


def _pixels(fig, ax, xy, r: int = 3) -> np.ndarray:
  """The rendered RGB pixels within r of data point xy of `ax`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  img = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
  x, y = ax.transData.transform(xy)
  row, col = int(round(img.shape[0] - y)), int(round(x))
  return img[row - r : row + r + 1, col - r : col + r + 1].reshape(-1, 3)


def test_worst_png_draws_labelled_points_only():
  from fkd.evaluation import evaluate

  labelled = np.array([[True, True, False], [True, True, True]])
  overlay = _overlay(labelled)
  gt, pred = evaluate.overlay_points(overlay, 0)
  np.testing.assert_array_equal(gt, [[10, 10], [50, 12]])
  np.testing.assert_array_equal(pred, [[12, 10], [52, 12]])
  assert len(evaluate.overlay_points(overlay, 1)[0]) == 3
  fig = evaluate.overlay_figure(overlay)
  ax = fig.axes[0]
  # Nothing but the grey image at the stand-in; the green dot at a labelled point.
  stand_in = _pixels(fig, ax, (30.0, 30.0))
  assert np.all(np.abs(stand_in - 128) <= 2), stand_in
  labelled_spot = _pixels(fig, ax, (10.0, 10.0), r=1)
  assert np.any((labelled_spot[:, 1] > 200) & (labelled_spot[:, 0] < 100))
  # Without a mask (the paper datasets) every point is drawn, the stand-in spot included.
  fig = evaluate.overlay_figure(_overlay(None))
  assert np.any(np.abs(_pixels(fig, fig.axes[0], (30.0, 30.0)) - 128) > 50)


def test_the_overlay_carries_the_mask(tmp_path):
  """The best and worst faces keep their rows of the split's mask; no mask, no key."""
  from fkd.evaluation import evaluate

  data = _data()
  sp = data.splits['train']
  nme = np.arange(8) / 100.0  # best: faces 0, 1, ...; worst: 7, 6, ...
  pred = sp.landmarks + 1.0
  record = evaluate.overlay_record('student', 'train', sp, pred, nme)
  sel = [*range(evaluate.OVERLAY_COUNT), *range(7, 7 - evaluate.OVERLAY_COUNT, -1)]
  np.testing.assert_array_equal(record['labelled'], sp.labelled[sel])
  np.testing.assert_array_equal(record['gt'], sp.landmarks[sel])
  evaluate.plot_overlays(record, str(tmp_path / 'worst.png'))
  assert (tmp_path / 'worst.png').stat().st_size > 0
  sp.labelled = None
  assert 'labelled' not in evaluate.overlay_record('student', 'train', sp, pred, nme)
