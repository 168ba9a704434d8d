"""fkd.infra.config_check: the bounds of each kind of field, on the edge values."""

import ml_collections
import pytest

from configs import kd
from fkd import models
from fkd.errors import FkdError
from fkd.infra import config_check

NAMES = models.model_names()


def _check(config, devices=1):
  config_check.check(config, devices, NAMES)


def test_the_shipped_config_passes():
  _check(kd.get_config())


@pytest.mark.parametrize(
  'field, value, ok',
  [
    ('train.adam_b2', 0.0, True),
    ('train.adam_b2', 1.0, False),  # [0, 1)
    ('train.adam_b1', -0.1, False),
    ('train.lr', 0.0, True),  # the model stays as initialised
    ('train.lr', -1e-3, False),
    ('train.warmup_steps', 0, True),
    ('train.warmup_steps', -1, False),
    ('train.adam_eps', 0.0, False),
    ('data.max_train_examples', -1, True),  # all
    ('data.max_train_examples', 0, False),
    ('data.max_eval_examples', 1, True),
    ('data.num_workers', 0, True),
    ('data.image_size', 0, False),
    ('eval.fr_threshold', 0.0, False),
    ('eval.batch_size', 1, True),
    ('teacher_train.log_every_steps', 0, False),
    ('student.name', 'no_such_model', False),
  ],
)
def test_edge_values(field, value, ok):
  config = kd.get_config()
  block, key = field.rsplit('.', 1) if '.' in field else ('', field)
  target = config
  for part in filter(None, block.split('.')):
    target = target[part]
  with config.unlocked(), target.unlocked():
    target[key] = value
  if ok:
    _check(config)
  else:
    with pytest.raises(FkdError, match=f'config.{field}'):
      _check(config)


def test_steps_or_epochs_set_the_length():
  config = kd.get_config()
  config.train.num_steps, config.train.num_epochs = 0, 0  # neither: no length
  with pytest.raises(FkdError, match='config.train.num_epochs must be a positive number'):
    _check(config)
  config.train.num_epochs = 2
  _check(config)
  config.train.num_steps, config.train.num_epochs = 10, -1
  with pytest.raises(FkdError, match='config.train.num_epochs must be a number >= 0'):
    _check(config)


def test_batch_size_per_process_and_nested_blocks():
  config = kd.get_config()
  _check(config, devices=33)  # any device count: the trainer pads the batch (sharding.pad_batch)
  with pytest.raises(
    FkdError, match=r'config.(teacher_)?train.batch_size \(32\) must be divisible by the 33 proc'
  ):
    config_check.check(config, 1, NAMES, process_count=33)
  # An optimizer block nested two levels down is checked as well.
  with config.unlocked():
    config.extra = ml_collections.ConfigDict({'inner': dict(config.train.to_dict())})
  config.extra.inner.lr = -1.0
  with pytest.raises(FkdError, match='config.extra.inner.lr'):
    _check(config)
