"""The data-parallel jit step on 4 (fake CPU) devices matches the same step on 1 device."""

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    from fkd import methods
    from fkd.methods.kd import recipe as kd_recipe
    from fkd.infra import sharding
    from fkd.training import trainer as train
    config = kd_recipe.kd_base('synthetic', runlocal=True)
    config.student.kwargs = dict(width=0.35, depth=0.2)
    config.teacher.name = 'efficientnet_b3'  # the paper's teacher family in the KD step
    config.teacher.kwargs = dict(width_scale=0.25, depth_scale=0.15, dropout=0.2)
    size = 32
    method = methods.get(config)
    stage = method.stage('student_kd', config)
    student = train.build_model(stage, 68)
    teacher_stage = method.stage('teacher_tough', config)
    teacher_model = train.build_model(teacher_stage, 68)
    # SGD: Adam's m/sqrt(v) turns float32 noise in near-zero gradients into +-lr steps, which
    # would hide real mismatches behind tolerance; the step code is the same for any optimizer.
    # lr 0.01: at 0.05 the second step lands where the gradient norm is ill-conditioned (a BN
    # channel of near-zero batch variance) and float32 summation order alone moved it by 0.7 %.
    import optax
    opt = optax.sgd(0.01)
    rng = np.random.default_rng(0)
    batch = {'image': rng.integers(0, 255, (8, size, size, 3), dtype=np.uint8),
             'landmarks': rng.uniform(0, size, (8, 68, 2)).astype(np.float32)}
    teachers = {}
    for i, which in enumerate(stage.teachers):
      s = train.init_state(teacher_model, opt, size, seed=10 + i)
      teachers[which] = {'params': s['params'], 'batch_stats': s['batch_stats']}
    frozen = {t: methods.Frozen(teacher_model, teacher_stage.head, {}) for t in stage.teachers}
    step = train.make_train_step(student, opt, stage, method.loss_fn(stage, config), frozen)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = sharding.make_mesh(devices)
      state = sharding.replicate(train.init_state(student, opt, size, seed=0), mesh)
      t = sharding.replicate(teachers, mesh)
      key = sharding.replicate(jax.random.key(0), mesh)
      f = jax.jit(step, donate_argnums=(0,))
      for _ in range(2):
        sb = sharding.shard_batch(batch, mesh)
        assert len(sb['image'].sharding.device_set) == len(devices)
        state, metrics = f(state, sb, key, t)
      results.append(jax.device_get((state['params'], state['batch_stats'], metrics)))
    (p1, s1, m1), (p4, s4, m4) = results
    # Same loss terms and BN statistics (global batch statistics under jit), and parameters equal
    # to float32 summation order: Adam moves each weight by ~lr = 1e-3 per step.
    for k in m1:
      np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, err_msg=k)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Parameters: the 1- and 4-device updates agree to float32 summation order, i.e. to 3 % of how
    # far each weight moved (plus 1e-6 for weights whose true gradient is 0, e.g. a BN bias that
    # feeds another BN). Rounding that moves a ReLU6 input across a kink flips its derivative
    # (docs/accelerators.md, "The 8-device gradient"): one kernel differs by 1.45 % on an Intel
    # Xeon CPU; a step that lost a shard or a device's gradient would differ by tens of percent.
    p0 = train.init_state(student, opt, size, 0)['params']
    moved = 0.0
    for a, b, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), jax.tree.leaves(p0)):
      step_norm = float(np.linalg.norm(a - c))
      assert float(np.linalg.norm(a - b)) <= 3e-2 * step_norm + 1e-6, (step_norm, a.shape)
      moved = max(moved, step_norm)
    assert moved > 1e-2, moved  # the steps really trained
    one, four = results
    print('MATCH', float(one[2]['loss']), float(four[2]['loss']))
""")


def test_four_device_steps_match_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
    [sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'MATCH' in proc.stdout
