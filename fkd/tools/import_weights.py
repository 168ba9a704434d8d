"""Converts ImageNet weights of a reference implementation into an fkd checkpoint (no download).

  python -m fkd.tools.import_weights --from=keras --arch=efficientnet_b3 b3.keras ckpt/b3
  python -m fkd.tools.import_weights --from=keras --arch=mobilenet_v2 mnv2.weights.h5 ckpt/mnv2
  python -m fkd.tools.import_weights --from=torch --arch=resnet50 resnet50.pth ckpt/r50
  python -m fkd.tools.import_weights --from=torch --arch=mobilenet_v2 mnv2.safetensors ckpt/mnv2

Sources:
- `--from=keras`: a Keras 3 `keras.applications` model saved as `.keras` or `.weights.h5`
  (`MobileNetV2(alpha=...)`, `EfficientNetB0` … `B7`; with or without the classifier top). Read
  with h5py: Keras itself is not needed. Make one with e.g.
  `keras.applications.EfficientNetB3(weights='imagenet').save('b3.keras')`.
- `--from=torch`: a torchvision or timm ResNet-50 state dict, or a torchvision MobileNetV2 one
  (also the older pytorch-mobilenet-v2 layout MobileFAN loads), `.pth` / `.pth.tar` (needs torch)
  or `.safetensors` (read with the `safetensors` numpy API, no torch).

DST becomes an Orbax checkpoint in the layout of a stage directory (items `model` = {'params',
'batch_stats'} and `meta`), which configs name as `config.student.init_from` /
`config.teacher.init_from`.

What follows the source so that fkd's outputs equal the reference's (tested to ≤ 1e-3 on logits):
- BatchNorm ε: Keras 1e-3 (read from the `.keras` config when there is one), PyTorch 1e-5;
- padding: Keras' `correct_pad` + 'valid' equals fkd's TF 'SAME' (MobileNetV2, EfficientNet);
  torchvision's symmetric `k // 2` is what fkd's ResNet uses, and MobileNetV2 gets
  `padding='symmetric'`;
- input normalisation, recorded as model kwargs `input_mean` / `input_std` on the [0, 1] input
  that fkd feeds (pixel/255), applied as the model's first operation:
  Keras MobileNetV2 → `preprocess_input` (x/127.5 − 1): mean = std = 0.5;
  Keras EfficientNet → its Rescaling(1/255) + Normalization layer (mean and variance stored in the
  file) and, for `weights='imagenet'` models, the extra Rescaling(1/√stddev) Keras adds (read from
  the `.keras` config; for a `.weights.h5`, assumed present exactly when the stored Normalization
  is not the identity, as `keras.applications` builds it);
  torchvision / timm → ImageNet mean/std.
`init_from` merges these kwargs into the stage's model kwargs (the config's own kwargs win).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import string
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from fkd.errors import FkdError

Path = tuple[str, ...]

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), the floor of Normalization's std
# keras.applications.efficientnet.IMAGENET_STDDEV_RGB: the extra Rescaling of weights='imagenet'.
KERAS_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------
# fkd side: the variables an architecture expects.


def model_kwargs_for(arch: str, width: float = 1.0) -> dict[str, Any]:
  from fkd import models

  if arch not in models.model_names() or arch in ('efficientnet', 'resnet'):
    raise FkdError(f'--arch={arch!r}: expected one of mobilenet_v2, efficientnet_b0 … b7, resnet50')
  return {'width': width} if arch == 'mobilenet_v2' else {}


def expected_shapes(
  arch: str, model_kwargs: dict[str, Any], num_classes: int | None
) -> dict[Path, tuple[int, ...]]:
  """{('params'|'batch_stats', module…, leaf): shape} of fkd's model (traced, not run)."""
  import jax
  import jax.numpy as jnp

  from fkd import models

  model = models.get_model(arch, num_outputs=num_classes, **model_kwargs)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def assemble(
  arch: str,
  model_kwargs: dict[str, Any],
  num_classes: int | None,
  arrays: dict[Path, np.ndarray],
  origin: dict[Path, str],
  src: str,
) -> dict[str, Any]:
  """Checks `arrays` against fkd's variables one to one and nests them into {'params', ...}."""
  expected = expected_shapes(arch, model_kwargs, num_classes)
  for path, a in arrays.items():  # in source order: the first error is the earliest layer
    if path not in expected:
      raise FkdError(
        f'{src}: {origin[path]} has no place in fkd {arch} (it would be '
        f'{"/".join(path)}): is --arch={arch} (and --width) right?'
      )
    if tuple(a.shape) != expected[path]:
      raise FkdError(
        f'{src}: {origin[path]} has shape {tuple(a.shape)}, fkd '
        f'{"/".join(path)} expects {expected[path]}: is --arch={arch} (and --width) '
        'right?'
      )
  missing = [p for p in expected if p not in arrays]
  if missing:
    raise FkdError(
      f'{src}: no source weights for fkd {"/".join(missing[0])} (and '
      f'{len(missing) - 1} more): is --arch={arch} (and --width) right?'
    )
  out: dict[str, Any] = {}
  for path in expected:
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = np.asarray(arrays[path], np.float32)
  out.setdefault('batch_stats', {})
  return out


# ---------------------------------------------------------------------------------------------
# Keras 3 `keras.applications` files.


def _snake(name: str) -> str:
  """keras.src.utils.naming.to_snake_case: the per-class key of a layer in a Keras 3 h5 file."""
  name = re.sub(r'\W+', '', name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  name = re.sub('([a-z])([A-Z])', r'\1_\2', name).lower()
  return name


def keras_layers(arch: str, width: float = 1.0) -> Iterator[tuple[str, str]]:
  """(class, name) of the weighted layers of a keras.applications model, in model order."""
  from fkd.models.efficientnet import EFFICIENTNET_BLOCKS, EFFICIENTNET_PARAMS
  from fkd.models.mobilenet_v2 import MOBILENET_V2_BLOCKS

  conv, dw, bn = 'Conv2D', 'DepthwiseConv2D', 'BatchNormalization'
  if arch == 'mobilenet_v2':
    del width  # channel counts do not change the names
    yield from ((conv, 'Conv1'), (bn, 'bn_Conv1'))
    num_blocks = sum(n for _, _, n, _ in MOBILENET_V2_BLOCKS)
    for i in range(num_blocks):
      prefix = 'expanded_conv_' if i == 0 else f'block_{i}_'
      if i > 0:
        yield from ((conv, prefix + 'expand'), (bn, prefix + 'expand_BN'))
      yield from (
        (dw, prefix + 'depthwise'),
        (bn, prefix + 'depthwise_BN'),
        (conv, prefix + 'project'),
        (bn, prefix + 'project_BN'),
      )
    yield from ((conv, 'Conv_1'), (bn, 'Conv_1_bn'), ('Dense', 'predictions'))
    return
  depth = EFFICIENTNET_PARAMS[arch.removeprefix('efficientnet_')][1]
  yield from (('Normalization', 'normalization'), (conv, 'stem_conv'), (bn, 'stem_bn'))
  for stage, (t, _, _, _, _, n) in enumerate(EFFICIENTNET_BLOCKS, start=1):
    for j in range(int(math.ceil(depth * n))):
      p = f'block{stage}{string.ascii_lowercase[j]}_'
      if t != 1:
        yield from ((conv, p + 'expand_conv'), (bn, p + 'expand_bn'))
      yield from (
        (dw, p + 'dwconv'),
        (bn, p + 'bn'),
        (conv, p + 'se_reduce'),
        (conv, p + 'se_expand'),
        (conv, p + 'project_conv'),
        (bn, p + 'project_bn'),
      )
  yield from ((conv, 'top_conv'), (bn, 'top_bn'), ('Dense', 'predictions'))


_MNV2_SUB = {
  'expand': 'expand',
  'expand_BN': 'expand_bn',
  'depthwise': 'depthwise',
  'depthwise_BN': 'depthwise_bn',
  'project': 'project',
  'project_BN': 'project_bn',
}
_EFN_SUB = {
  'expand_conv': 'expand',
  'expand_bn': 'expand_bn',
  'dwconv': 'depthwise',
  'bn': 'depthwise_bn',
  'se_reduce': 'se_reduce',
  'se_expand': 'se_expand',
  'project_conv': 'project',
  'project_bn': 'project_bn',
}
_TOP = {
  'Conv1': 'stem_conv',
  'bn_Conv1': 'stem_bn',
  'Conv_1': 'last_conv',
  'Conv_1_bn': 'last_bn',
  'stem_conv': 'stem_conv',
  'stem_bn': 'stem_bn',
  'top_conv': 'top_conv',
  'top_bn': 'top_bn',
  'predictions': 'head',
}


def keras_to_fkd(arch: str, name: str) -> Path | None:
  """fkd module path of a Keras layer name (None: no fkd parameters, e.g. Normalization)."""
  if name in _TOP:
    return (_TOP[name],)
  if arch == 'mobilenet_v2':
    m = re.fullmatch(r'(?:expanded_conv|block_(\d+))_(\w+)', name)
    if m and m.group(2) in _MNV2_SUB:
      return (f'block_{m.group(1) or 0}', _MNV2_SUB[m.group(2)])
  else:
    m = re.fullmatch(r'(block\d[a-z])_(\w+)', name)
    if m and m.group(2) in _EFN_SUB:
      return (m.group(1), _EFN_SUB[m.group(2)])
  return None


def _read_h5_groups(h5) -> dict[str, list[np.ndarray]]:
  out = {}
  for key, group in h5['layers'].items():
    if 'vars' in group and len(group['vars']):
      out[key] = [np.asarray(group['vars'][str(i)]) for i in range(len(group['vars']))]
  return out


def read_keras(src: str) -> tuple[dict[str, list[np.ndarray]], list[dict[str, Any]] | None]:
  """(weights by h5 layer key, layer configs in model order or None for a `.weights.h5`)."""
  import h5py

  if not os.path.isfile(src):
    raise FkdError(f'{src}: no such file')
  try:
    if src.endswith('.keras'):
      with zipfile.ZipFile(src) as z:
        config = json.loads(z.read('config.json'))
        with h5py.File(io.BytesIO(z.read('model.weights.h5')), 'r') as h5:
          groups = _read_h5_groups(h5)
      return groups, config['config']['layers']
    if src.endswith('.h5'):
      with h5py.File(src, 'r') as h5:
        if 'layers' not in h5:
          raise FkdError(
            f'{src}: not a Keras 3 weights file (no "layers" group); legacy Keras 2 '
            '.h5 files are not supported: load them in Keras 3 and save .weights.h5'
          )
        return _read_h5_groups(h5), None
  except FkdError:
    raise
  except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as e:
    reason = ' '.join(str(e).split())[:160]
    raise FkdError(
      f'{src}: not a readable Keras 3 file ({type(e).__name__}: {reason}); expected a .keras '
      'archive (config.json + model.weights.h5) or a .weights.h5 file'
    ) from None
  raise FkdError(f'{src}: expected a Keras 3 .keras or .weights.h5 file')


def convert_keras(arch: str, src: str, width: float = 1.0) -> tuple[dict[str, Any], dict]:
  """Reads a keras.applications file into fkd variables and the checkpoint meta."""
  if arch == 'resnet50' or not (arch == 'mobilenet_v2' or arch.startswith('efficientnet_b')):
    raise FkdError(f'--from=keras supports mobilenet_v2 and efficientnet_b0 … b7, not {arch!r}')
  model_kwargs = model_kwargs_for(arch, width)
  groups, config_layers = read_keras(src)
  if config_layers is None:
    layers = [(cls, name, {}) for cls, name in keras_layers(arch, width)]
    if not any(k.startswith('dense') for k in groups):
      layers = [x for x in layers if x[0] != 'Dense']  # saved with include_top=False
  else:
    layers = [(c['class_name'], c['config']['name'], c['config']) for c in config_layers]
  counts: dict[str, int] = {}
  arrays: dict[Path, np.ndarray] = {}
  origin: dict[Path, str] = {}
  norm_vars, rescalings, bn_eps = None, [], set()
  for cls, name, cfg in layers:
    n = counts.get(cls, 0)
    counts[cls] = n + 1
    key = _snake(cls) + (f'_{n}' if n else '')
    if cls == 'Rescaling':
      rescalings.append(cfg.get('scale'))
      continue
    if cls not in ('Conv2D', 'DepthwiseConv2D', 'BatchNormalization', 'Dense', 'Normalization'):
      continue
    if cls == 'BatchNormalization' and 'epsilon' in cfg:
      bn_eps.add(float(cfg['epsilon']))
    if key not in groups:
      raise FkdError(
        f'{src}: Keras layer {name!r} ({cls}) has no weights ({key}) in the file: '
        f'is --arch={arch} right?'
      )
    vs = groups.pop(key)
    if cls == 'Normalization':
      norm_vars = vs
      continue
    module = keras_to_fkd(arch, name)
    if module is None:
      raise FkdError(f'{src}: Keras layer {name!r} ({cls}) is not part of fkd {arch}')
    where = f'Keras layer {name!r} ({key})'
    if cls == 'BatchNormalization':
      leaves = [
        ('params', 'scale'),
        ('params', 'bias'),
        ('batch_stats', 'mean'),
        ('batch_stats', 'var'),
      ]
    else:
      leaves = [('params', 'kernel'), ('params', 'bias')][: len(vs)]
    if len(vs) != len(leaves):
      raise FkdError(f'{src}: {where} holds {len(vs)} arrays, expected {len(leaves)}')
    for (collection, leaf), a in zip(leaves, vs, strict=True):
      if cls == 'DepthwiseConv2D' and leaf == 'kernel':
        a = a.transpose(0, 1, 3, 2)  # Keras (k, k, C, 1) -> fkd/Flax (k, k, 1, C)
      path = (collection, *module, leaf)
      arrays[path], origin[path] = a, where
  if groups:
    raise FkdError(f'{src}: weights {sorted(groups)[:3]} have no place in fkd {arch}')

  if len(bn_eps) > 1:
    raise FkdError(f'{src}: BatchNorm layers with different epsilons {sorted(bn_eps)}')
  model_kwargs['bn_epsilon'] = bn_eps.pop() if bn_eps else 1e-3  # Keras' default
  if arch == 'mobilenet_v2':
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # mobilenet_v2.preprocess_input on [0, 1]
  else:
    if norm_vars is None:
      raise FkdError(f'{src}: no Normalization layer, not a keras.applications EfficientNet')
    mean = np.asarray(norm_vars[0], np.float64).reshape(-1)
    var = np.asarray(norm_vars[1], np.float64).reshape(-1)
    std = np.maximum(np.sqrt(var), KERAS_EPSILON)
    if config_layers is None:  # weights='imagenet' models carry one more Rescaling (see above)
      extra = (
        None
        if np.allclose(mean, 0) and np.allclose(var, 1)
        else [1.0 / math.sqrt(s) for s in KERAS_IMAGENET_STDDEV_RGB]
      )
    else:  # the first Rescaling is 1/255, which fkd's [0, 1] input already is
      extra = rescalings[1] if len(rescalings) > 1 else None
    if extra is not None:
      std = std / np.broadcast_to(np.asarray(extra, np.float64).reshape(-1), std.shape)
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
  model_kwargs.update(input_mean=mean, input_std=std)

  head = arrays.get(('params', 'head', 'kernel'))
  num_classes = None if head is None else int(head.shape[-1])
  variables = assemble(arch, model_kwargs, num_classes, arrays, origin, src)
  return variables, _meta(arch, model_kwargs, num_classes, src, 'keras')


# ---------------------------------------------------------------------------------------------
# torchvision / timm state dicts.


def read_torch(src: str) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays (`module.` prefixes and {'state_dict': …} wrappers removed)."""
  if not os.path.isfile(src):
    raise FkdError(f'{src}: no such file')
  if src.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise FkdError(f'{src}: reading .safetensors needs `pip install safetensors`') from e
    try:
      state = load_file(src)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a bad file
      raise FkdError(f'{src}: not a readable .safetensors file ({type(e).__name__}: {e})') from None
  else:
    try:
      import torch
    except ImportError as e:
      raise FkdError(
        f'{src}: reading a .pth needs torch (`pip install torch`), or save the '
        'state dict as .safetensors, which needs only `safetensors`'
      ) from e
    try:
      state = torch.load(src, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
      reason = ' '.join(str(e).split())[:160]
      raise FkdError(
        f'{src}: not a readable PyTorch state dict ({type(e).__name__}: {reason})'
      ) from None
    if not isinstance(state, dict):
      raise FkdError(f'{src}: holds a {type(state).__name__}; expected a state dict')
    for wrapper in ('state_dict', 'model', 'model_state_dict'):
      if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
        state = state[wrapper]
    state = {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, 'detach')}
  return {k.removeprefix('module.'): np.asarray(v) for k, v in state.items()}


_TORCH_BN = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}


def torch_resnet_to_fkd(key: str) -> tuple[Path, bool] | None:
  """(fkd path, is a conv kernel) of a torchvision/timm ResNet key; None = not a parameter."""
  if key.endswith('num_batches_tracked'):
    return None
  if key == 'fc.weight':
    return ('params', 'head', 'kernel'), False
  if key == 'fc.bias':
    return ('params', 'head', 'bias'), False
  m = re.fullmatch(r'(?:layer(\d)\.(\d+)\.)?(conv\d|bn\d|downsample\.[01])\.(\w+)', key)
  if not m:
    raise FkdError(f'state dict key {key!r} is not part of a torchvision ResNet')
  block = () if m.group(1) is None else (f'layer{m.group(1)}_{m.group(2)}',)
  layer = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(
    m.group(3), m.group(3)
  )
  if layer.endswith('conv') or layer.startswith('conv'):
    return ('params', *block, layer, 'kernel'), True
  collection, leaf = _TORCH_BN[m.group(4)]
  return (collection, *block, layer, leaf), False


def _numeric_order(key: str) -> list:
  return [int(p) if p.isdigit() else p for p in key.split('.')]


def torch_mobilenet_v2_paths(state: dict[str, np.ndarray]) -> dict[str, tuple[Path, bool]]:
  """{key: (fkd path, is a conv kernel)} of a torchvision MobileNetV2 state dict.

  Within `features.{i}` the convolutions and BatchNorms are taken in order ([expand], depthwise,
  project), so both torchvision's nesting (`conv.0.0`, `conv.0.1`, …) and the flat layout of the
  older pytorch-mobilenet-v2 checkpoints (`conv.0`, `conv.1`, `conv.3`, …) map.
  """
  groups: dict[int, dict[str, list[str]]] = {}
  out: dict[str, tuple[Path, bool]] = {}
  for key in sorted(state, key=_numeric_order):
    if key.endswith('num_batches_tracked'):
      continue
    m = re.fullmatch(r'features\.(\d+)\.(.+)\.(weight|bias|running_mean|running_var)', key)
    if m:
      layer = f'features.{m.group(1)}.{m.group(2)}'
      kind = 'conv' if state[key].ndim == 4 else 'bn'
      names = groups.setdefault(int(m.group(1)), {'conv': [], 'bn': []})[kind]
      if layer not in names:
        names.append(layer)
    elif re.fullmatch(r'classifier(\.1)?\.weight', key):
      out[key] = ('params', 'head', 'kernel'), False
    elif re.fullmatch(r'classifier(\.1)?\.bias', key):
      out[key] = ('params', 'head', 'bias'), False
    else:
      raise FkdError(f'state dict key {key!r} is not part of a torchvision MobileNetV2')
  last = max(groups, default=0)
  for i, layers in groups.items():
    if i == 0:
      modules = ['stem_conv'], ['stem_bn']
    elif i == last:
      modules = ['last_conv'], ['last_bn']
    else:
      block = f'block_{i - 1}/'
      sub = (
        ['depthwise', 'project'] if len(layers['conv']) == 2 else ['expand', 'depthwise', 'project']
      )
      modules = [block + s for s in sub], [block + s + '_bn' for s in sub]
    for kind, names in (('conv', modules[0]), ('bn', modules[1])):
      if len(layers[kind]) != len(names):
        raise FkdError(
          f'features.{i} holds {len(layers[kind])} {kind} layers, a MobileNetV2 block {len(names)}'
        )
      for layer, module in zip(layers[kind], names, strict=True):
        module = tuple(module.split('/'))
        for leaf, (collection, fkd_leaf) in (
          _TORCH_BN.items() if kind == 'bn' else [('weight', ('params', 'kernel'))]
        ):
          if f'{layer}.{leaf}' in state:
            out[f'{layer}.{leaf}'] = (collection, *module, fkd_leaf), kind == 'conv'
  return out


def convert_torch(arch: str, src: str, width: float = 1.0) -> tuple[dict[str, Any], dict]:
  """Reads a torchvision / timm ResNet-50 or torchvision MobileNetV2 state dict into fkd
  variables and the checkpoint meta."""
  if arch not in ('resnet50', 'mobilenet_v2'):
    raise FkdError(f'--from=torch supports resnet50 and mobilenet_v2, not {arch!r}')
  from fkd.models.resnet import IMAGENET_MEAN, IMAGENET_STD

  state = read_torch(src)
  if arch == 'mobilenet_v2':
    paths = torch_mobilenet_v2_paths(state)
  else:
    paths = {k: got for k in state if (got := torch_resnet_to_fkd(k)) is not None}
  arrays: dict[Path, np.ndarray] = {}
  origin: dict[Path, str] = {}
  for key, (path, is_conv) in paths.items():
    a = state[key]
    if is_conv:  # (out, in, kh, kw) -> (kh, kw, in, out); depthwise (C, 1, k, k) -> (k, k, 1, C)
      a = a.transpose(2, 3, 1, 0)
    elif path[-2:] == ('head', 'kernel'):
      a = a.T
    arrays[path], origin[path] = a, f'state dict key {key!r}'
  model_kwargs = {'bn_epsilon': 1e-5, 'input_mean': IMAGENET_MEAN, 'input_std': IMAGENET_STD}
  if arch == 'mobilenet_v2':
    model_kwargs = {'width': width, 'padding': 'symmetric', **model_kwargs}
  head = arrays.get(('params', 'head', 'kernel'))
  num_classes = None if head is None else int(head.shape[-1])
  variables = assemble(arch, model_kwargs, num_classes, arrays, origin, src)
  return variables, _meta(arch, model_kwargs, num_classes, src, 'torch')


# ---------------------------------------------------------------------------------------------


def _meta(
  arch: str, model_kwargs: dict[str, Any], num_classes: int | None, src: str, source_format: str
) -> dict[str, Any]:
  return {
    'stage': 'import_weights',
    'model': arch,
    'model_kwargs': model_kwargs,
    'num_classes': num_classes,
    'source': os.path.abspath(src),
    'source_format': source_format,
  }


def import_weights(
  source_format: str, arch: str, src: str, dst: str, width: float = 1.0
) -> dict[str, Any]:
  """Converts `src` and writes the checkpoint `dst`; returns its meta."""
  from fkd.infra import checkpoint

  if os.path.exists(dst) and not os.path.isdir(dst):
    raise FkdError(f'{dst} is a file, not a folder; choose a new directory')
  if os.path.isdir(dst) and os.listdir(dst):
    raise FkdError(f'{dst} exists and is not empty; choose a new directory')
  if source_format == 'keras':
    variables, meta = convert_keras(arch, src, width)
  elif source_format == 'torch':
    variables, meta = convert_torch(arch, src, width)
  else:
    raise FkdError(f"--from must be 'keras' or 'torch', got {source_format!r}")
  checkpoint.save_model(dst, variables, meta)
  return meta


def main(argv: list[str]) -> None:
  from absl import flags

  f = flags.FLAGS
  if len(argv) != 3:
    raise FkdError(
      'usage: python -m fkd.tools.import_weights --from=keras|torch --arch=NAME SRC DST'
    )
  if not (math.isfinite(f.width) and 0 < f.width <= 4):
    raise FkdError(f'--width must be a number in (0, 4] (the Keras alpha), got {f.width!r}')
  meta = import_weights(f['from'].value, f.arch, argv[1], argv[2], f.width)
  shapes = expected_shapes(meta['model'], meta['model_kwargs'], meta['num_classes'])
  variables_count = sum(math.prod(s) for s in shapes.values())
  print(
    f'{argv[2]}: {meta["model"]} {meta["model_kwargs"]}, '
    f'{meta["num_classes"] or "no"} classes, {variables_count:,} variables'
  )


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_enum('from', None, ['keras', 'torch'], 'Source format.')
  flags.DEFINE_string('arch', None, 'fkd model name: mobilenet_v2, efficientnet_b0 … b7, resnet50.')
  flags.DEFINE_float('width', 1.0, 'MobileNetV2 width (Keras alpha) of the source.')
  flags.mark_flags_as_required(['from', 'arch'])


if __name__ == '__main__':
  from fkd import cli

  _define_flags()
  cli.run(main, positional_args=True)
