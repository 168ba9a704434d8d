"""The Colab notebooks run top to bottom at the tiny size (FKD_TINY=1) and are stored clean."""

import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / 'colab').glob('*.ipynb'))


def test_there_are_notebooks():
  assert [p.name for p in NOTEBOOKS][:2] == ['01_quickstart.ipynb', '02_reproduce_paper.ipynb']


@pytest.mark.slow  # ~200 s for the three notebooks (issue 21); `pytest -m slow` and .ci/run run it
@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_tiny(path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:  # stored without outputs
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'{path.name} has outputs'
  monkeypatch.setenv('FKD_TINY', '1')
  monkeypatch.setenv('FKD_PROGRESS', '0')
  client = nbclient.NotebookClient(
    nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': str(REPO)}}
  )
  client.execute()  # raises CellExecutionError with the failing cell's traceback
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
  assert 'Traceback' not in text
  if path.stem == '01_quickstart':
    assert 'student_kd' in text and 'landmarks ->' in text
