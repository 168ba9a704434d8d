"""Every command the README and docs/ show is one the code accepts.

For each `python -m fkd.<tool> ...` in README.md and docs/**/*.md (code blocks and inline code):
the tool is a module with a `__main__` block, each `--flag` is one that tool defines, each
`--config.a.b=...` names a field of the command's config (or of some config when the command
names none), and each `configs/<x>.py[:args]` exists and loads with those args. docs/cli.md must
list every flag each tool defines. The flags come from the tools themselves: one child process
runs every tool's `__main__` with `--helpfull` (absl) or `--help` (argparse) and reports the flags
it registered, so a renamed or removed flag is caught without a list kept here.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from fkd import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = (
  'fkd.main',
  'fkd.evaluate',
  'fkd.predict',
  'fkd.export',
  'fkd.ablation',
  'fkd.data.build',
  'fkd.tools.import_weights',
  'fkd.tools.summary',
  'fkd.tools.calibrate_detector',
)

# Runs each tool's `__main__` in one process (JAX is imported once) and prints, per tool, the
# flags it registered: all of them (absl's included) and its own (defined by fkd code).
_PROBE = r"""
import contextlib, io, json, runpy, sys
from absl import flags
FLAGS = flags.FLAGS
out = {}
for tool in sys.argv[1:]:
  before = set(FLAGS)
  text = io.StringIO()
  sys.argv = [tool, '--helpfull' if tool != 'fkd.data.build' else '--help']
  with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
    try:
      runpy.run_module(tool, run_name='__main__', alter_sys=True)
    except SystemExit:
      pass
  if tool == 'fkd.data.build':  # argparse: the options of its --help
    import re
    names = sorted(set(re.findall(r'--(\w+)', text.getvalue())) - {'help'})
    out[tool] = {'all': names, 'own': names, 'bool': []}
    continue
  names = set(FLAGS)
  own = []
  for name in names - before:
    module = FLAGS.find_module_defining_flag(name) or ''
    if module.startswith('fkd') or module == '__main__' or '/fkd/' in module:
      own.append(name)
  booleans = [n for n in names if FLAGS[n].boolean]
  out[tool] = {'all': sorted(names), 'own': sorted(own), 'bool': sorted(booleans)}
  for name in names - before:  # the next tool defines its own (`--workdir` is in several)
    delattr(FLAGS, name)
  FLAGS.unparse_flags()
print('FLAGS-JSON', json.dumps(out))
"""


@functools.cache
def tool_flags() -> dict[str, dict[str, set[str]]]:
  """{tool: {'all', 'own', 'bool'}} from the tools themselves (one child process, cached)."""
  proc = subprocess.run(
    [sys.executable, '-c', _PROBE, *TOOLS],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
    env={**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu'},
  )
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith('FLAGS-JSON ')]
  assert line, f'flag probe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}'
  data = json.loads(line[-1][len('FLAGS-JSON ') :])
  return {t: {k: set(v) for k, v in d.items()} for t, d in data.items()}


# ---------------------------------------------------------------------------------------------
# Commands in markdown.

_FENCE = re.compile(r'^```[^\n]*\n(.*?)^```', re.S | re.M)
_INLINE = re.compile(r'`([^`\n]+(?:\n[^`\n]+)?)`')
_COMMAND = re.compile(r'python -m (fkd(?:\.\w+)+)')
# Where a command ends: a shell separator, a comment, or the next command.
_END = re.compile(r'&&|;|\s#|\s\|\s|\s&(\s|$)|python -m ')
_FLAG = re.compile(r'(?<![\w-])--(\[no\])?([A-Za-z_][\w]*)((?:\.[^\s=\]`]*)?)(=(\S*))?')
_CONFIG_FILE = re.compile(r'configs/(\w+)\.py(?::([\w,]+))?')


def doc_files() -> list[pathlib.Path]:
  return [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]


def snippets(text: str) -> list[str]:
  """Code blocks (backslash-continued lines joined, one snippet a line) and inline code spans."""
  out = []
  for block in _FENCE.findall(text):
    out += block.replace('\\\n', ' ').splitlines()
  prose = _FENCE.sub('', text)
  out += [' '.join(s.split()) for s in _INLINE.findall(prose)]
  return out


def commands(snippet: str) -> list[tuple[str, str]]:
  """(tool, its arguments) for each `python -m fkd.<tool>` of a snippet."""
  out = []
  for m in _COMMAND.finditer(snippet):
    rest = snippet[m.end() :]
    end = _END.search(rest)
    out.append((m.group(1), rest[: end.start()] if end else rest))
  return out


def _placeholder(text: str) -> bool:
  """`KEY`, `<stage>`, `X`, `*`: a name standing for one the reader picks."""
  return bool(re.search(r'[<>*]|(^|\.)[A-Z][A-Z_]*($|\.)', text))


@functools.cache
def load_config(name: str, arg: str | None) -> object:
  return config_lib.load(str(ROOT / 'configs' / f'{name}.py'), arg)


def has_field(config: object, path: str) -> bool:
  node = config
  for key in path.split('.'):
    try:
      if key not in node:
        return False
      node = node[key]
    except TypeError:  # a leaf value: no fields below it
      return False
  return True


# Args that add fields (e.g. `300w,cpu` adds `pretrain`): an override mentioned without its
# config may name a field of any of these.
_ARGS = (None, '300w', 'cofw', 'wflw', '300w,cpu', 'folder', 'baseline')


@functools.cache
def all_configs() -> list[object]:
  out = []
  for path in sorted((ROOT / 'configs').glob('[a-z]*.py')):
    for arg in _ARGS:
      try:
        out.append(load_config(path.stem, arg))
      except Exception:  # noqa: BLE001 - not every config takes every arg
        pass
  return out


def check_config_file(name: str, arg: str | None) -> str | None:
  if _placeholder(name):
    return None
  if not (ROOT / 'configs' / f'{name}.py').is_file():
    return f'configs/{name}.py does not exist'
  if arg and not _placeholder(arg):
    try:
      load_config(name, arg)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
      return f'configs/{name}.py:{arg} does not load: {e}'
  return None


def check_override(path: str, config: object | None) -> str | None:
  if not path or _placeholder(path):
    return None
  configs = [config] if config is not None else all_configs()
  if not any(has_field(c, path) for c in configs):
    where = 'its config' if config is not None else 'any config'
    return f'--config.{path} is not a field of {where}'
  return None


def check_command(tool: str, args: str, flags: dict[str, dict[str, set[str]]]) -> list[str]:
  """The problems of one command (empty when the code accepts it)."""
  if tool not in flags:
    module = ROOT / pathlib.Path(*tool.split('.'))
    if module.with_suffix('.py').is_file() or (module / '__main__.py').is_file():
      return [f'{tool} is not in TOOLS of tests/integration/docs_test.py: add it']
    return [f'{tool}: no such tool']
  known, booleans = flags[tool]['all'], flags[tool]['bool']
  problems, config = [], None
  for m in _FLAG.finditer(args):
    name, dotted, value = m.group(2), m.group(3), m.group(5)
    if name == 'config' and dotted:
      continue  # overrides: checked below, once the config is known
    if name == 'config' and value and tool != 'fkd.data.build':
      cfg = _CONFIG_FILE.match(value)
      if cfg and not _placeholder(cfg.group(1)):
        problem = check_config_file(cfg.group(1), cfg.group(2))
        if problem:
          problems.append(problem)
        elif not (cfg.group(2) and _placeholder(cfg.group(2))):
          config = load_config(cfg.group(1), cfg.group(2))
    ok = name in known or (m.group(1) is None and name.startswith('no') and name[2:] in booleans)
    if m.group(1) and name not in booleans:
      ok = False
    if not ok and not _placeholder(name):
      problems.append(f'{tool} has no flag --{name}')
  if tool != 'fkd.data.build':
    for m in _FLAG.finditer(args):
      if m.group(2) == 'config' and m.group(3):
        problem = check_override(m.group(3)[1:], config)
        if problem:
          problems.append(problem)
  return problems


def check_text(text: str, flags: dict[str, dict[str, set[str]]]) -> list[str]:
  """Every problem of the commands, overrides and config files a markdown text shows."""
  problems = []
  for snippet in snippets(text):
    found = commands(snippet)
    for tool, args in found:
      problems += [f'{p}: `{snippet.strip()}`' for p in check_command(tool, args, flags)]
    if not found:  # an override or a config file mentioned on its own
      for m in _FLAG.finditer(snippet):
        if m.group(2) == 'config' and m.group(3):
          problem = check_override(m.group(3)[1:], None)
          if problem:
            problems.append(f'{problem}: `{snippet.strip()}`')
  for m in _CONFIG_FILE.finditer(text):
    problem = check_config_file(m.group(1), m.group(2))
    if problem:
      problems.append(problem)
  return problems


# ---------------------------------------------------------------------------------------------
# Tests.


@pytest.mark.parametrize('path', doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_real_tools_flags_and_configs(path: pathlib.Path):
  problems = check_text(path.read_text(), tool_flags())
  assert not problems, '\n'.join(problems)


def test_every_doc_shows_commands_that_are_checked():
  """The scanner finds the commands it should (a scanner that finds nothing passes everything)."""
  readme = snippets((ROOT / 'README.md').read_text())
  found = {tool for s in readme for tool, _ in commands(s)}
  assert {'fkd.main', 'fkd.predict', 'fkd.export', 'fkd.ablation'} <= found
  cli = snippets((ROOT / 'docs' / 'cli.md').read_text())
  assert {tool for s in cli for tool, _ in commands(s)} == set(TOOLS)


def test_cli_reference_lists_every_flag():
  """docs/cli.md's section of each tool names every flag the tool defines."""
  text = (ROOT / 'docs' / 'cli.md').read_text()
  sections = dict(re.findall(r'^## `(fkd[\w.]*)`\n(.*?)(?=^## |\Z)', text, re.S | re.M))
  missing = []
  for tool, data in tool_flags().items():
    assert tool in sections, f'docs/cli.md has no section for {tool}'
    listed = set(re.findall(r'`--(\w+)', sections[tool]))
    missing += [f'{tool} --{f}' for f in sorted(data['own'] - listed)]
  assert not missing, 'not in docs/cli.md: ' + ', '.join(missing)


@pytest.mark.parametrize(
  'text, problem',
  [
    ('```bash\npython -m fkd.predict --workdir=runs/kd --imagee=a.jpg\n```', '--imagee'),
    ('`python -m fkd.export --workdir=W --format=tflite --quantize`', '--quantize'),
    (
      '```bash\npython -m fkd.main --config=configs/kd.py --workdir=W \\\n'
      '    --config.train.num_epoch=3\n```',
      'num_epoch',
    ),
    ('`python -m fkd.main --config=configs/kd.py --workdir=W --config.fan.sigma=2`', 'fan.sigma'),
    ('`python -m fkd.main --config=configs/kdd.py --workdir=W`', 'configs/kdd.py'),
    ('`python -m fkd.main --config=configs/kd.py:300x --workdir=W`', '300x'),
    ('`python -m fkd.train --config=configs/kd.py`', 'fkd.train'),
    ('`python -m fkd.main --config=configs/kd.py --workdir=W --nosmooth`', 'nosmooth'),
    ('see `--config.train.learning_rate=0.1`', 'learning_rate'),
    ('`pip install -e . && python -m fkd.ablation --config=configs/kd.py --seed=3`', '--seed'),
  ],
)
def test_planted_mistakes_are_caught(text: str, problem: str):
  problems = check_text(text, tool_flags())
  assert any(problem in p for p in problems), problems


def test_correct_commands_pass():
  text = (
    '```bash\n'
    'python -m fkd.main --config=configs/mobilefan.py:300w --workdir=W \\\n'
    '    --config.fan.lambda_fa=0.02 --config.teacher.name=resnet50\n'
    'python -m fkd.predict --workdir=W --video=a.mp4 --smooth --nowhole_image --output=O\n'
    'python -m fkd.data.build --dataset=folder --manual_dir=D --allow_partial\n'
    '```\n'
  )
  assert check_text(text, tool_flags()) == []


def _slug(heading: str) -> str:
  """Python-Markdown's toc anchor of a heading (mkdocs uses the same)."""
  text = re.sub(r'[`*]', '', heading)
  text = re.sub(r'[^\w\s-]', '', text).strip().lower()
  return re.sub(r'[-\s]+', '-', text)


@pytest.mark.parametrize(
  'path',
  [ROOT / 'README.md', *sorted((ROOT / 'fkd' / 'methods').glob('*/README.md'))],
  ids=lambda p: str(p.relative_to(ROOT)),
)
def test_links_outside_the_site_resolve(path: pathlib.Path):
  """README and the method folders' READMEs are not built by mkdocs (whose strict build checks
  the site's links): their relative links must name files, and headings, that exist."""
  broken = []
  for target in re.findall(r'\]\(([^)\s]+)\)', path.read_text()):
    if re.match(r'[a-z]+:', target):
      continue  # a URL
    file, _, anchor = target.partition('#')
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
      broken.append(target)
    elif anchor and dest.suffix == '.md':
      headings = re.findall(r'^#+ (.+)$', _FENCE.sub('', dest.read_text()), re.M)
      if anchor not in {_slug(h) for h in headings}:
        broken.append(target)
  assert not broken, f'{path.name}: broken links {broken}'
