"""fkd.models.fold on a convolution with a bias: a·(conv(x) + b − μ) + β folds into one conv."""

import flax.linen as nn
import jax
import numpy as np

from fkd.models import batch_norm, fold


class ConvBiasNet(nn.Module):
  """A foldable model whose convolution has a bias (no fkd model has one)."""

  folded: bool = False
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = batch_norm.factory(train, 0.9, self.bn_epsilon, folded=self.folded)
    x = nn.Conv(3, (1, 1), use_bias=not self.folded, name='stem_conv')(x)
    return bn('stem_bn')(x)


def test_conv_bias_folds_into_the_batch_norm_bias():
  model = ConvBiasNet()
  x = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype(np.float32)
  kernel = np.array([[[[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]]]], np.float32)  # (1, 1, 2, 3)
  params = {
    'stem_conv': {'kernel': kernel, 'bias': np.array([0.5, -1.0, 2.0], np.float32)},
    'stem_bn': {'scale': np.array([2.0, 1.0, 0.5], np.float32), 'bias': np.float32([1, 0, -1])},
  }
  stats = {'stem_bn': {'mean': np.array([1.0, 2.0, -1.0]), 'var': np.array([4.0, 1.0, 0.25])}}
  stats = jax.tree.map(lambda v: np.asarray(v, np.float32), stats)
  variables = {'params': params, 'batch_stats': stats}
  module, folded = fold.fold_batch_norm(model, variables)
  assert module.folded and set(folded) == {'params'}
  assert set(folded['params']['stem_conv']) == {'kernel'}  # the conv bias moved into the BN's
  # By hand: a = γ / sqrt(σ² + ε); the bias is β + a·(b − μ).
  eps = 1e-3
  a = np.array([2.0, 1.0, 0.5]) / np.sqrt(np.array([4.0, 1.0, 0.25]) + eps)
  want_bias = np.array([1.0, 0.0, -1.0]) + a * (np.array([0.5, -1.0, 2.0]) - [1.0, 2.0, -1.0])
  np.testing.assert_allclose(folded['params']['stem_bn']['bias'], want_bias, rtol=1e-6)
  np.testing.assert_allclose(folded['params']['stem_conv']['kernel'], kernel * a, rtol=1e-6)
  # And the two forms compute the same.
  got = module.apply(folded, x, train=False)
  want = model.apply(variables, x, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
