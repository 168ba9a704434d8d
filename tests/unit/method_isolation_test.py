"""Methods are isolated: no module of the library outside `fkd/methods/<name>/` names a method.

A method's names are its REGISTRY key, the stage names only it has (not another method's, nor a
model role: `teacher_tough` and `student_baseline` are shared by the regression methods) and its
published.json key. None of them may appear as a string literal in `fkd/` outside the method's own
package, except the REGISTRY lines of `fkd/methods/__init__.py` and the homonyms of `HOMONYMS`.
Everything else asks the method (`fkd.methods.Method`), so adding one is one folder, one REGISTRY
line and one config file.
"""

from __future__ import annotations

import ast
import pathlib
import shutil
import sys

from fkd import methods

REPO = pathlib.Path(__file__).resolve().parents[2]
ROLES = ('teacher', 'student')  # Stage.role values, also words of the generic trainer

# (file, literal) -> why the same word is not the method there.
HOMONYMS = {
  ('fkd/data/pipeline.py', 'kd'): "config.data.augment='kd', KD-Loss' augmentation protocol",
  ('fkd/data/device_augment.py', 'kd'): 'the same augmentation protocol, run on the device',
  ('fkd/infra/config_check.py', 'kd'): 'the augmentation names of config.data.augment',
  ('fkd/serve/predict.py', 'kd'): 'config.data.augment values that mirror faces (flip averaging)',
  ('fkd/training/prestage.py', 'kd'): "options of augment='kd' that the pre-stage leaves out",
}


def method_names() -> dict[str, tuple[str, set[str]]]:
  """REGISTRY key -> (its package, relative to the repo; the names only it may use)."""
  out = {}
  for key, method in methods.REGISTRY.items():
    others = {s for k, m in methods.REGISTRY.items() if k != key for s in m.stages}
    names = {key, method.name} | {s for s in method.stages if s not in others and s not in ROLES}
    if method.published:
      names.add(method.published)
    module = pathlib.Path(sys.modules[type(method).__module__].__file__)
    out[key] = (module.parent.relative_to(REPO).as_posix(), names)
  return out


def _registry_keys(tree: ast.Module) -> set[int]:
  """ids of the key nodes of `REGISTRY = {...}` (the one place that names every method)."""
  keys = set()
  for node in ast.walk(tree):
    targets = getattr(node, 'targets', None) or [getattr(node, 'target', None)]
    if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
      if any(isinstance(t, ast.Name) and t.id == 'REGISTRY' for t in targets):
        keys |= {id(k) for k in node.value.keys}
  return keys


def violations(root: pathlib.Path) -> list[str]:
  """Every string literal under `root/fkd` that names a method outside its package."""
  names = method_names()
  found = []
  for path in sorted((root / 'fkd').rglob('*.py')):
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(), rel)
    allowed = _registry_keys(tree) if rel == 'fkd/methods/__init__.py' else set()
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        continue
      if id(node) in allowed or (rel, node.value) in HOMONYMS:
        continue
      for key, (package, owned) in names.items():
        if node.value in owned and not rel.startswith(package + '/'):
          found.append(f'{rel}:{node.lineno}: {node.value!r} names method {key!r}')
  return found


def test_no_module_names_a_method_outside_its_package():
  assert violations(REPO) == []


def test_every_method_has_names_to_check():
  names = method_names()
  assert set(names) == set(methods.REGISTRY)
  for key, (package, owned) in names.items():
    assert package.startswith('fkd/methods/') and key in owned, key
  # The names of the issue: KD-Loss's stages, output distillation's student, the published key.
  assert {'student_kd', 'teacher_tolerant', 'kd_loss'} <= names['kd'][1]
  assert 'student_output_kd' in names['output_kd'][1] and 'student_distill' in names['fan'][1]


def test_homonyms_are_still_there():
  """A homonym entry whose literal went away is stale: remove it rather than keep a hole."""
  for rel, literal in HOMONYMS:
    tree = ast.parse((REPO / rel).read_text())
    assert any(isinstance(n, ast.Constant) and n.value == literal for n in ast.walk(tree)), rel


def test_a_planted_name_is_caught(tmp_path):
  """The check fails on a copy of fkd with one method name planted outside its package."""
  shutil.copytree(REPO / 'fkd', tmp_path / 'fkd', ignore=shutil.ignore_patterns('*.so', '*.json'))
  assert violations(tmp_path) == []
  target = tmp_path / 'fkd' / 'evaluation' / 'evaluate.py'
  target.write_text(target.read_text() + "\nPUBLISHED_METHOD = 'kd_loss'\n")
  other = tmp_path / 'fkd' / 'methods' / 'fan' / 'method.py'  # another method's package
  other.write_text(other.read_text() + "\nSEED_LIKE = 'student_kd'\n")
  init = tmp_path / 'fkd' / 'methods' / '__init__.py'  # outside the REGISTRY dict
  init.write_text(init.read_text() + "\nDEFAULT = 'output_kd'\n")
  found = violations(tmp_path)
  assert [f.split(':')[0] for f in found] == [
    'fkd/evaluation/evaluate.py',
    'fkd/methods/__init__.py',
    'fkd/methods/fan/method.py',
  ], found
