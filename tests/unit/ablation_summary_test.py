"""fkd.ablation's summary: means and sample standard deviations over hand-made run results."""

import pytest

from configs import kd
from fkd import ablation


def _runs(nme, fr, auc):
  return [{'nme': a, 'fr': b, 'auc': c} for a, b, c in zip(nme, fr, auc, strict=True)]


def test_means_and_sample_stds_per_row():
  config = kd.get_config()
  rows = ablation.rows_for(config)
  per_row = {
    'kd': _runs([4.0, 5.0, 9.0], [1.0, 2.0, 6.0], [0.5, 0.6, 0.4]),
    'baseline_mse': _runs([6.0, 8.0], [3.0, 3.0], [0.3, 0.2]),
  }
  mean_shape = _runs([20.0, 22.0, 24.0], [80.0, 90.0, 100.0], [0.01, 0.02, 0.03])
  record = ablation.summarize(config, 'full', 3, per_row, rows, mean_shape)
  kd_row = record['rows']['kd']
  # NME 4, 5, 9: mean 6, squared deviations 4 + 1 + 9 = 14, sample variance 14 / 2 = 7.
  assert kd_row['nme_mean'] == 6.0 and kd_row['nme_std'] == pytest.approx(7**0.5, abs=1e-4)
  # FR 1, 2, 6: mean 3, deviations 4 + 1 + 9 = 14 -> sqrt(7) as well; AUC 0.5, 0.6, 0.4: mean 0.5,
  # deviations 0 + 0.01 + 0.01 -> sqrt(0.01) = 0.1.
  assert kd_row['fr_mean'] == 3.0 and kd_row['fr_std'] == pytest.approx(7**0.5, abs=1e-4)
  assert kd_row['auc_mean'] == pytest.approx(0.5) and kd_row['auc_std'] == pytest.approx(0.1)
  assert kd_row['nme_per_seed'] == [4.0, 5.0, 9.0] and kd_row['stage'] == 'student_kd'
  base = record['rows']['baseline_mse']
  # Two seeds 6, 8: mean 7, sample std sqrt(2) (the population std would be 1).
  assert base['nme_mean'] == 7.0 and base['nme_std'] == pytest.approx(2**0.5, abs=1e-4)
  assert base['fr_std'] == 0.0 and base['auc_mean'] == pytest.approx(0.25)
  assert record['mean_shape'] == {'nme_mean': 22.0, 'fr_mean': 90.0}
  assert record['seeds'] == 3 and record['split'] == 'full' and record['reference_row'] == 'kd'
  table = ablation.markdown(record)
  # baseline − kd = 7 − 6 = +1 NME, in units of max(sqrt 7, sqrt 2) = 2.6458: +0.4 σ; paired
  # per-seed differences (6 − 4, 8 − 5) = (2, 3): 2.50 ± 0.71.
  assert '| 7.00 ± 1.41 | 3.00 | 0.250 | 6.00, 8.00 | +1.00 (+0.4 σ) | +2.50 ± 0.71 |' in table
  assert '| 6.00 ± 2.65 | 3.00 | 0.500 | 4.00, 5.00, 9.00 |' in table


def test_one_seed_has_no_spread():
  assert ablation.mean_std([3.5]) == (3.5, 0.0)
  assert ablation.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
