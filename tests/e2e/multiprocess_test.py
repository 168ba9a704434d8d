"""Several hosts: two processes (CPU, loopback coordinator, gloo) train like one process (issue 7).

The multi-host path is exercised end to end by real `python -m fkd.main` processes: jax.distributed
start-up, sharded reading, global batches, collective Orbax saves, preemption at a common step,
resumption, evaluation and process-0-only reports.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fkd.data import pipeline as ip
from fkd.infra import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE = 'student_baseline'


# ---------------------------------------------------------------------------------------------
# Sharded reading, without processes.


def _split(num_records: int, records: range, shards: range, num_shards: int) -> ip.Split:
  ids = np.arange(num_records)[records.start : records.stop]
  images = np.broadcast_to(ids[:, None, None, None], (len(ids), 4, 4, 3)).astype(np.uint8)
  landmarks = np.stack([ids, -ids], axis=-1)[:, None, :].repeat(3, axis=1).astype(np.float32)
  return ip.Split(
    images, landmarks, None, [str(i) for i in ids], shards=shards, num_shards=num_shards
  )


def _data(split: ip.Split) -> ip.Data:
  return ip.Data('toy', {'train': split}, 4, 3, np.array([2, 1, 0]), None)


def test_each_process_reads_its_shards_and_their_batches_make_the_global_batch():
  n, batch = 23, 6  # 23 = 2 shards of 11 + 1 dropped record; 3 examples per shard and batch
  assert ip.shard_records(n, 2, 0, 2) == range(0, 11)
  assert ip.shard_records(n, 2, 1, 2) == range(11, 22)
  assert ip.shard_records(n, 4, 1, 2) == range(10, 20)  # two shards of 5 per process
  parts = [_data(_split(n, ip.shard_records(n, 2, p, 2), range(p, p + 1), 2)) for p in range(2)]
  whole = _data(_split(n, ip.shard_records(n, 2, 0, 1), range(2), 2))  # one process, 2 shards
  assert ip.num_examples(parts[0].splits['train']) == ip.num_examples(whole.splits['train']) == 22
  seen = set()
  for step in range(8):  # 3 steps per epoch: crosses two epoch boundaries
    local = [ip.train_batch(d, 'train', batch, step, 5, 'flip', p, 2) for p, d in enumerate(parts)]
    one = ip.train_batch(whole, 'train', batch, step, 5, 'flip', 0, 1)
    for k in one:
      np.testing.assert_array_equal(np.concatenate([b[k] for b in local]), one[k])
    ids = one['image'][:, 0, 0, 0]  # flips move pixels, not this constant image's value
    assert set(ids[:3]) <= set(range(11)) and set(ids[3:]) <= set(range(11, 22)), ids
    assert len(set(ids)) == batch
    seen |= set(ids) if step < 3 else set()
  assert len(seen) == 18  # the first epoch draws 3 of the 11 per shard, 3 times, no repeats


def test_one_shard_keeps_the_single_process_order():
  split = _split(10, range(10), range(1), 1)
  batch = ip.train_batch(_data(split), 'train', 4, 3, 7, 'none')  # epoch 1, offset 1 (2 / epoch)
  expected = np.random.default_rng([7, 1]).permutation(10)[4:8]
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], expected)


# ---------------------------------------------------------------------------------------------
# Real processes.

TIMEOUT_S = 420  # per launch; a healthy launch takes ~15-60 s (compiles), CI must never hang


# Steps of the tiny runs: enough that a SIGTERM seen at step 2 still finds the stage running once
# JAX's preemption sync point has agreed on a step (on a quiet machine 8 steps of ~0.1 s ran out
# before it did).
STEPS = 40


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, *extra):
  return [
    sys.executable,
    '-m',
    'fkd.main',
    '--config=configs/baseline.py:runlocal',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    f'--config.train.num_steps={STEPS}',
    '--config.train.log_every_steps=1',
    '--config.train.checkpoint_every_steps=100',
    '--config.student.kwargs.depth=0.1',  # one block per stage: compiles faster
    *extra,
  ]


class _Launch:
  """Child processes writing to files (pipes that nobody drains could block a child and with it
  every collective of the other one); killed by pid on timeout or when one of them fails."""

  def __init__(self, tmp_path, name, commands_envs):
    self.procs, self.logs = [], []
    for i, (cmd, env) in enumerate(commands_envs):
      out, err = tmp_path / f'{name}.{i}.out', tmp_path / f'{name}.{i}.err'
      self.logs.append((out, err))
      with open(out, 'w') as fo, open(err, 'w') as fe:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fo, stderr=fe))
    self.deadline = time.time() + TIMEOUT_S

  def text(self, i: int) -> tuple[str, str]:
    return tuple(p.read_text() for p in self.logs[i])

  def _fail(self, why: str):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    tails = '\n'.join(
      f'--- process {i} stdout:\n{o[-1500:]}\n--- stderr:\n{e[-2500:]}'
      for i, (o, e) in enumerate(map(self.text, range(len(self.procs))))
    )
    raise AssertionError(f'{why}\n{tails}')

  def wait_for(self, i: int, needle: str) -> None:
    while needle not in self.text(i)[0]:
      if any(p.poll() is not None for p in self.procs):
        self._fail(f'process {i} never printed {needle!r}')
      if time.time() > self.deadline:
        self._fail(f'timeout waiting for {needle!r}')
      time.sleep(0.2)

  def finish(self, expected_rc: int = 0) -> list[tuple[str, str]]:
    while any(p.poll() is None for p in self.procs):
      if any(p.poll() not in (None, expected_rc) for p in self.procs):
        self._fail('a process failed while the other ran on')
      if time.time() > self.deadline:
        self._fail(f'timeout after {TIMEOUT_S} s')
      time.sleep(0.2)
    if any(p.returncode != expected_rc for p in self.procs):
      self._fail(f'exit codes {[p.returncode for p in self.procs]}, expected {expected_rc}')
    return [self.text(i) for i in range(len(self.procs))]


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **extra)
  env.pop('XLA_FLAGS', None)
  for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'FKD_DISTRIBUTED'):
    env.pop(k, None)
  env.update(extra)
  return env


def _two_processes(tmp_path, name, workdir, data_dir):
  port = _free_port()
  return _Launch(
    tmp_path,
    name,
    [
      (
        _command(workdir, data_dir),
        _env(
          JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)
        ),
      )
      for i in range(2)
    ],
  )


@pytest.mark.slow  # three training runs in subprocesses; `pytest -m slow` and .ci/run run it
def test_two_processes_match_one_through_preemption_and_resume(data_dir, tmp_path):
  # Reference: ONE process with the same global batches (2 data shards) on 2 CPU devices, i.e.
  # the same SPMD program as the two processes with their 1 device each. The only cross-device
  # reductions are sums of 2 operands, which float addition gives exactly in either order, so the
  # parameters must agree bit for bit (1 device vs several: tests/integration/sharding_test.py).
  # The reference also builds the dataset before the two processes start.
  single = _Launch(
    tmp_path,
    'single',
    [
      (
        _command(tmp_path / 'single', data_dir, '--config.data.num_shards=2'),
        _env(XLA_FLAGS='--xla_force_host_platform_device_count=2'),
      )
    ],
  )
  out, _ = single.finish()[0]
  assert 'on 2 device(s)' in out

  # Two processes; SIGTERM to process 0 mid-stage: JAX's preemption sync point stops both at the
  # same step, they save one checkpoint together and exit with 143.
  workdir = tmp_path / 'multi'
  first = _two_processes(tmp_path, 'first', workdir, data_dir)
  first.wait_for(0, f'step 2/{STEPS}')
  first.procs[0].send_signal(signal.SIGTERM)
  logs = first.finish(expected_rc=143)
  stopped = {e.strip().splitlines()[-1].split(' at step ')[1].split('/')[0] for _, e in logs}
  assert len(stopped) == 1, logs  # one common step
  stop = int(stopped.pop())
  assert 2 <= stop < STEPS
  assert checkpoint.latest_step(str(workdir / STAGE)) == stop
  for p, (o, _) in enumerate(logs):
    # Each process decoded only its half of the 256 runlocal training crops.
    assert f'reads train records [{128 * p}, {128 * (p + 1)}) of 256' in o, o

  # The rerun resumes from that step, finishes, evaluates; process 0 alone writes the reports.
  second = _two_processes(tmp_path, 'second', workdir, data_dir)
  (out0, _), (out1, _) = second.finish()
  assert f'resuming from step {stop}' in out0 and f'resuming from step {stop}' in out1
  assert '| student_baseline |' in out0 and '| student_baseline |' not in out1
  logged = [json.loads(line)['step'] for line in (workdir / STAGE / 'metrics.jsonl').open()]
  # One writer, no repeats.
  assert logged == [*range(1, stop + 1), *range(stop + 1, STEPS + 1)], logged

  one, _ = checkpoint.load_model(str(tmp_path / 'single' / STAGE))
  two, _ = checkpoint.load_model(str(workdir / STAGE))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
    np.testing.assert_array_equal(a, b)
  results = [
    json.loads((tmp_path / d / 'results.json').read_text())['models'] for d in ('single', 'multi')
  ]
  assert results[0] == results[1]
