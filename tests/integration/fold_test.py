"""fkd.models.fold: the folded inference form computes what the unfolded model computes."""

import jax
import numpy as np
import pytest

from fkd import inference
from fkd.models import EfficientNet, MobileNetV2, ResNet, fold, layers, native

X = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)

MODELS = {
  'mobilenet_v2': MobileNetV2(num_outputs=10, width=0.35, depth=0.25, dropout=0.5),
  'efficientnet': EfficientNet(
    num_outputs=10, width_coefficient=0.25, depth_coefficient=0.5, dropout=0.5
  ),
  'efficientnet_no_top_conv': EfficientNet(
    num_outputs=10, width_coefficient=0.25, depth_coefficient=0.5, include_top_conv=False
  ),
  'resnet': ResNet(num_outputs=10, stage_sizes=(1, 1), width=8),
}


def _trained_like(model):
  """Variables whose BatchNorm statistics and affine parameters are far from their init: the
  statistics of one batch (momentum 0), scale and bias drawn at random, so folding is not an
  identity and the outputs depend on the input."""
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(X[:1])
  _, mutated = jax.jit(
    lambda v, x: model.clone(bn_momentum=0.0).apply(
      v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)}
    )
  )(variables, X)
  rng = np.random.default_rng(1)

  def perturb(path, leaf):
    names = [getattr(k, 'key', None) for k in path]
    if names[-1] == 'scale':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if names[-1] == 'bias' and any('bn' in str(n) for n in names):  # BatchNorms only
      return rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)
    return np.asarray(leaf)

  params = jax.tree_util.tree_map_with_path(perturb, variables['params'])
  return {'params': params, 'batch_stats': jax.tree.map(np.asarray, mutated['batch_stats'])}


def _assert_close(got, want, what=''):
  """Float32 rounding, relative to each tensor's scale: the calibrated statistics of a few
  images leave some channels with a small variance, which amplifies the rounding of the
  reassociated products with depth (~1e-6 of the scale in early stages, up to ~3e-4 at 1x1)."""
  assert set(got) == set(want)
  for key, w in want.items():
    scale = float(np.abs(w).max())
    np.testing.assert_allclose(got[key], w, rtol=1e-3, atol=5e-4 * scale, err_msg=f'{what} {key}')


def _apply(module):
  return jax.jit(lambda v, x: module.apply(v, x, train=False))


@pytest.mark.parametrize('name', list(MODELS))
def test_folded_equals_unfolded(name):
  model = MODELS[name]
  variables = _trained_like(model)
  folded, folded_vars = fold.fold_batch_norm(model, variables)
  assert folded.folded and not model.folded
  assert set(folded_vars) == {'params'}  # no statistics left
  want_out, want_feats = _apply(model)(variables, X)
  got_out, got_feats = _apply(folded)(folded_vars, X)
  assert np.abs(np.asarray(want_out)[1:] - np.asarray(want_out)[:1]).max() > 1e-2  # sees input
  _assert_close({'out': got_out, **got_feats}, {'out': want_out, **want_feats})


@pytest.mark.skipif(native._compiler() is None, reason='no C++ compiler')
@pytest.mark.parametrize('pixels_from', [1, 10**9], ids=['scale_in_kernel', 'scale_input'])
def test_folded_efficientnet_native_equals_unfolded(monkeypatch, pixels_from):
  """The folded EfficientNet on the native kernels (expand activation, depthwise conv, bias, swish
  and SE pooling in one custom call; the SE gate in the projection's kernel or on its input)
  computes what the unfolded model computes with the XLA formulation."""
  monkeypatch.setattr(layers, 'SCALE_IN_KERNEL_PIXELS', pixels_from)
  reference = MODELS['efficientnet'].clone(depthwise_impl='shifted')
  variables = _trained_like(reference)
  folded, folded_vars = fold.fold_batch_norm(reference.clone(depthwise_impl='native'), variables)
  assert native.available(), native.status
  text = _apply(folded).lower(folded_vars, X).as_text()
  assert text.count('fkd_depthwise_bias_swish') >= 2  # every block's depthwise conv
  want_out, want_feats = _apply(reference)(variables, X)
  got_out, got_feats = _apply(folded)(folded_vars, X)
  _assert_close({'out': got_out, **got_feats}, {'out': want_out, **want_feats})


def test_folded_layout():
  model = MODELS['mobilenet_v2']
  variables = _trained_like(model)
  _, folded_vars = fold.fold_batch_norm(model, variables)
  p, q = variables['params']['block_1'], folded_vars['params']['block_1']
  assert set(q) == set(p)
  assert set(q['expand_bn']) == {'bias'} and set(p['expand_bn']) == {'bias', 'scale'}
  assert q['expand']['kernel'].shape == p['expand']['kernel'].shape
  assert q['expand']['kernel'].dtype == np.float32
  stats = variables['batch_stats']['block_1']['expand_bn']
  a = p['expand_bn']['scale'] / np.sqrt(stats['var'] + model.bn_epsilon)
  np.testing.assert_allclose(q['expand']['kernel'], p['expand']['kernel'] * a, rtol=1e-6)
  np.testing.assert_allclose(
    q['expand_bn']['bias'], p['expand_bn']['bias'] - stats['mean'] * a, rtol=1e-5, atol=1e-6
  )


def test_folded_is_inference_only_and_errors():
  model = MODELS['mobilenet_v2']
  variables = _trained_like(model)
  folded, folded_vars = fold.fold_batch_norm(model, variables)
  with pytest.raises(ValueError, match='inference only'):
    folded.apply(folded_vars, X, train=True, rngs={'dropout': jax.random.key(0)})
  assert not fold.can_fold(folded)
  with pytest.raises(ValueError, match='no folded inference form'):
    fold.fold_batch_norm(folded, folded_vars)
  broken = dict(variables['params'])
  broken['stem_conv_renamed'] = broken.pop('stem_conv')
  with pytest.raises(ValueError, match='stem_bn: no single preceding convolution'):
    fold.fold_batch_norm(model, {**variables, 'params': broken})


def test_load_frozen_folds(run_dir):
  """The fixture run's teacher (EfficientNet) and student (MobileNetV2), folded at load, give
  the checkpoint's unfolded outputs and features."""
  images = np.random.default_rng(2).uniform(size=(3, 32, 32, 3)).astype(np.float32)
  for stage in ('teacher_tough', 'student_kd'):
    folded, folded_vars = inference.load_frozen(str(run_dir / stage))
    plain, plain_vars = inference.load_frozen(str(run_dir / stage), fold=False)
    assert folded.module.folded and not plain.module.folded, stage
    assert set(folded_vars) == {'params'} and set(plain_vars) == {'params', 'batch_stats'}
    want_out, want_feats = _apply(plain.module)(plain_vars, images)
    got_out, got_feats = _apply(folded.module)(folded_vars, images)
    _assert_close({'out': got_out, **got_feats}, {'out': want_out, **want_feats}, stage)


def test_frozen_apply_in_chunks_equals_one_call(monkeypatch):
  """The train step runs frozen teachers a few images at a time on CPU (`train.frozen_apply`):
  the same outputs and features as one call on the batch, and the chunked path is really taken
  (a `lax.map` loop) when the chunk divides the batch, not otherwise."""
  from fkd.training import trainer as train

  model = MODELS['efficientnet']
  folded, variables = fold.fold_batch_norm(model, _trained_like(model))
  x = np.random.default_rng(2).uniform(size=(6, 32, 32, 3)).astype(np.float32)
  want_out, want_feats = _apply(folded)(variables, x)
  for chunk, loops in ((2, True), (3, True), (4, False), (6, False)):
    fn = lambda v, x, chunk=chunk: train.frozen_apply(folded, v, x, chunk)
    assert ('scan[' in str(jax.make_jaxpr(fn)(variables, x))) == loops, chunk
    got_out, got_feats = jax.jit(fn)(variables, x)
    assert got_out.shape == want_out.shape
    _assert_close({'out': got_out, **got_feats}, {'out': want_out, **want_feats}, f'chunk {chunk}')
  # The default: chunks of 4 on one CPU device (else one call); FKD_FROZEN_CHUNK=0: one call.
  x8 = np.concatenate([x, x[:2]])
  trace = lambda: str(jax.make_jaxpr(lambda v, x: train.frozen_apply(folded, v, x))(variables, x8))
  monkeypatch.delenv('FKD_FROZEN_CHUNK', raising=False)
  cpu_single = jax.default_backend() == 'cpu' and jax.device_count() == 1
  assert ('scan[' in trace()) == cpu_single and train.CPU_FROZEN_CHUNK == 4
  monkeypatch.setenv('FKD_FROZEN_CHUNK', '0')
  assert 'scan[' not in trace()
