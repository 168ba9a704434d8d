"""The device augmentation in training (config.data.augment_on='device', what the default 'auto'
is on a TPU / GPU): a resumed KD-augmented run ends where an uninterrupted one does, the host
path still runs, and the augmented batch on 8 devices (padded) is the one of 1 device."""

from __future__ import annotations

import os
import shutil
import textwrap

import helpers
import numpy as np
import pytest

from configs import baseline as baseline_config
from fkd.infra import checkpoint
from fkd.training import trainer as train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE = 'student_baseline'


def _config(data_dir, augment_on='device'):
  config = baseline_config.get_config('tiny')
  config.data.data_dir = data_dir
  config.data.augment = 'kd'
  config.data.augment_on = augment_on
  config.train.num_steps = 4
  config.train.checkpoint_every_steps = 2
  return config


@pytest.mark.slow  # three tiny runs; train_test resumes device 'flip' runs in the default suite
def test_resumed_device_augmented_run_equals_the_uninterrupted_one(data_dir, tmp_path, capsys):
  straight = str(tmp_path / 'straight')
  results = train.run(_config(data_dir), straight)
  meta = checkpoint.read_meta(os.path.join(straight, STAGE))
  assert meta['program']['augment_on'] == 'device'
  assert 'augmentation on the device' in capsys.readouterr().out
  copy = str(tmp_path / 'resumed')
  shutil.copytree(straight, copy)
  shutil.rmtree(os.path.join(copy, STAGE, '4'))  # as if killed before the last save
  resumed = train.run(_config(data_dir), copy)
  assert 'resuming from step 2' in capsys.readouterr().out
  np.testing.assert_allclose(
    resumed['models'][STAGE]['test']['nme'], results['models'][STAGE]['test']['nme'], rtol=1e-6
  )
  # The host path (the old random stream) trains too, to another model.
  host = train.run(_config(data_dir, 'host'), str(tmp_path / 'host'))
  assert checkpoint.read_meta(os.path.join(tmp_path, 'host', STAGE))['program']['augment_on'] == (
    'host'
  )
  assert host['models'][STAGE]['test']['nme'] != results['models'][STAGE]['test']['nme']


SCRIPT = textwrap.dedent(
  """
  import json
  import jax, numpy as np
  from fkd.data import asm, device_augment, pipeline, schemes, testing
  from fkd.infra import sharding

  n, size = 6, 48
  faces = [testing.render(i, size) for i in range(n)]
  images = np.stack([f[0] for f in faces])
  points = np.stack([f[1] for f in faces]).astype(np.float32)
  perm = np.asarray(schemes.SCHEMES['300w'].flip_permutation)
  split = pipeline.Split(images, points, None, [str(i) for i in range(n)])
  pca = asm.fit_pca(points, acc=0.9)
  data = pipeline.Data('t', {'train': split}, size, 68, perm, pca, '300w')
  aug = pipeline.device_augmentation(data, 'kd', (0.05, 0.05, 0.1, 0.1))
  host = pipeline.train_batch(data, 'train', n, 0, 3, 'kd', augment_on='device')

  def run(devices):
    mesh = sharding.make_mesh(devices)
    batch = sharding.shard_batch(sharding.pad_batch(host, len(devices)), mesh)
    fn = jax.jit(device_augment.make_augment(aug, pca),
                 out_shardings=sharding.batch_sharded(mesh))
    out = fn(batch, 3, 5)
    assert len(out['image'].sharding.device_set) == len(devices)
    return {k: np.asarray(v)[:n] for k, v in out.items() if k != 'weight'}

  one, many = run(jax.devices()[:1]), run(jax.devices())
  print(json.dumps({
    'devices': jax.device_count(),
    'keys': sorted(many),
    'equal': {k: bool(np.array_equal(one[k], many[k])) for k in one},
    'max_diff': {k: float(np.abs(one[k].astype(float) - many[k]).max()) for k in one},
    'augmented': int((one['image'] != host['image']).any(axis=(1, 2, 3)).sum()),
  }))
  """
)


def test_augmented_batch_on_8_devices_is_the_1_device_one():
  got = helpers.run_on_cpu_devices(SCRIPT)
  assert got['devices'] == 8
  assert got['keys'] == ['image', 'landmarks', 'soft_landmarks']
  assert got['augmented'] >= 2  # the batch of 6 (padded to 8) was augmented
  for k in ('image', 'landmarks'):
    assert got['equal'][k], got
  assert got['max_diff']['soft_landmarks'] < 1e-4, got  # sharded matmul sums: rounding only
