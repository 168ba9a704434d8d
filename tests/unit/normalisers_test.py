"""NME normalisers from sources independent of the code: the index sets of datasets.md §6, checked
against the published mean shapes (../shared/data/pipnet-meanfaces, datasets.md §8.8).

The tables of `fkd.data.schemes` / `fkd.evaluation.metrics` are only ever compared with these
literals and with
distances computed here by hand, never used to build the expected values.
"""

import numpy as np
import pytest

from fkd.data import schemes
from fkd.evaluation import metrics

# datasets.md §6 (0-based): inter-ocular = outer eye corners; inter-pupil = pupils or eye centres.
DOCS = {
  # name: (mean-face folder, N, outer corners, pupil groups, eye points of datasets.md §1.4/2.4/3.3)
  '300w': ('data_300W', 68, (36, 45), (range(36, 42), range(42, 48)), range(36, 48)),
  'wflw': ('WFLW', 98, (60, 72), ([96], [97]), [*range(60, 76), 96, 97]),
  'cofw': ('COFW', 29, (8, 9), ([16], [17]), range(8, 18)),
}
# datasets.md §6 "Scale": inter-ocular / inter-pupil on the published mean shapes.
RATIOS = {'300w': 1.39, 'wflw': 1.43, 'cofw': 1.45}


def _mean_face(shared_data, name):
  folder, n = DOCS[name][:2]
  m = np.loadtxt(shared_data / 'pipnet-meanfaces' / folder / 'meanface.txt').reshape(-1, 2)
  assert m.shape == (n, 2)
  return m


def _hand_distances(m, name):
  _, _, (i, j), (left, right), _ = DOCS[name]
  iod = float(np.hypot(*(m[i] - m[j])))
  ipd = float(np.hypot(*(m[list(left)].mean(0) - m[list(right)].mean(0))))
  return iod, ipd


@pytest.mark.parametrize('name', sorted(DOCS))
def test_documented_outer_corners_are_the_extreme_eye_points(shared_data, name):
  # The docs' indices mean what they say on real data: the outer corners are the leftmost and
  # rightmost eye points of the mean face, and the pupils lie between them.
  m = _mean_face(shared_data, name)
  _, _, (i, j), (left, right), eyes = DOCS[name]
  eyes = list(eyes)
  assert eyes[int(np.argmin(m[eyes, 0]))] == i
  assert eyes[int(np.argmax(m[eyes, 0]))] == j
  assert m[i, 0] < m[list(left), 0].mean() < m[list(right), 0].mean() < m[j, 0]


@pytest.mark.parametrize('name', sorted(DOCS))
def test_normalising_distances_on_the_mean_face(shared_data, name):
  m = _mean_face(shared_data, name)
  iod, ipd = _hand_distances(m, name)
  assert iod / ipd == pytest.approx(RATIOS[name], abs=0.006)
  got_iod = metrics.normalising_distance(m[None], 'inter_ocular')
  got_ipd = metrics.normalising_distance(m[None], 'inter_pupil')
  np.testing.assert_allclose(got_iod, [iod], rtol=1e-12)
  np.testing.assert_allclose(got_ipd, [ipd], rtol=1e-12)
  # The builders' metadata and Scheme.distances (what the datasets record) agree too.
  scheme = schemes.SCHEMES[name]
  np.testing.assert_allclose(scheme.distances(m), (iod, ipd), rtol=1e-12)
  meta = scheme.metadata()
  np.testing.assert_allclose(metrics.normalising_distance(m[None], meta['inter_ocular']), [iod])
  np.testing.assert_allclose(metrics.normalising_distance(m[None], meta['inter_pupil']), [ipd])


def test_cofw68_uses_the_300w_markup(shared_data):
  m = _mean_face(shared_data, '300w')
  np.testing.assert_allclose(
    schemes.SCHEMES['cofw68'].distances(m), _hand_distances(m, '300w'), rtol=1e-12
  )


@pytest.mark.parametrize('name', sorted(DOCS))
@pytest.mark.parametrize('norm', ['inter_ocular', 'inter_pupil'])
def test_nme_on_the_mean_face(shared_data, name, norm):
  # Every point off by (3, 4) → error 5 per point; NME = 5 / d with d from the docs' indices.
  gt = _mean_face(shared_data, name)[None] * 200.0  # a 200-pixel face
  pred = gt + np.array([3.0, 4.0])
  iod, ipd = _hand_distances(gt[0], name)
  d = iod if norm == 'inter_ocular' else ipd
  np.testing.assert_allclose(metrics.nme_per_image(pred, gt, norm), [5.0 / d], rtol=1e-12)


def test_cofw_inter_ocular_nme_by_hand():
  # COFW (29 points): outer eye corners 8 and 9 (datasets.md §3.3, §3.4) 60 px apart; pupils
  # 16 / 17 40 px apart; every other point far away so that any other pair gives another d.
  rng = np.random.default_rng(0)
  gt = rng.uniform(-500, 500, size=(1, 29, 2))
  gt[0, 8], gt[0, 9] = (100.0, 50.0), (160.0, 50.0)
  gt[0, 16], gt[0, 17] = (110.0, 50.0), (150.0, 50.0)
  pred = gt.copy()
  pred[0, 0] += (6.0, 8.0)  # one point 10 px off: mean error 10/29
  assert metrics.nme_per_image(pred, gt, 'inter_ocular')[0] == pytest.approx(10 / 29 / 60)
  assert metrics.nme_per_image(pred, gt, 'inter_pupil')[0] == pytest.approx(10 / 29 / 40)
  summary = metrics.summarize(metrics.nme_per_image(pred, gt, 'inter_ocular'))
  assert summary['nme'] == pytest.approx(100 * 10 / 29 / 60)
