"""Every notebook runs top to bottom on the CPU, with small settings, in the llm_jax kernel.

Each notebook has a cell tagged ``parameters``; as papermill does, the test puts a cell of
small settings after it (SMALL below). The notebooks run in the ``llm_jax`` Jupyter kernel
(``python -m llm_jax.hostmem install-kernel``), installed into a temporary prefix, and a last
cell checks that the kernel had the command line's host-memory setup.
"""

import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from llm_jax import hostmem

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / 'notebooks').glob('*.ipynb'))
SMALL = {
    'quickstart': 'STEPS = 20',
    'explore_model': 'STEPS = 20',
    'finetune_bert': 'PRETRAIN_STEPS = 10\nFINETUNE_STEPS = 10',
    'translate_t5': 'STEPS = 30\nEXAMPLES = 8',
    'ablations': "STUDY = 'layer_norm'",
}
CHECK_HOST_MEMORY = '''\
from llm_jax import hostmem as _hostmem
_state = _hostmem.describe()
assert _state['cpu_computations_inline'] == _state['keeps_freed_memory'] == (not _hostmem.why_not_here()), _state'''


@pytest.fixture(scope='module')
def kernel(tmp_path_factory):
  prefix = tmp_path_factory.mktemp('jupyter')
  hostmem.install_kernel(prefix=str(prefix))
  old = os.environ.get('JUPYTER_PATH')
  os.environ['JUPYTER_PATH'] = str(prefix / 'share' / 'jupyter')
  yield hostmem.KERNEL_NAME
  if old is None:
    os.environ.pop('JUPYTER_PATH', None)
  else:
    os.environ['JUPYTER_PATH'] = old


def test_every_notebook_has_small_settings_a_parameters_cell_and_a_badge():
  assert {p.stem for p in NOTEBOOKS} == set(SMALL)
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(tagged) == 1, path.name
    assert f'colab.research.google.com/github/' in nb.cells[0].source and f'notebooks/{path.name}' in nb.cells[0].source
    assert any('hostmem.notebook()' in c.source for c in nb.cells if c.cell_type == 'code'), path.name
    assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code'), f'{path.name} is saved with outputs'


def test_the_kernel_spec_starts_python_with_the_tunables():
  spec = hostmem.kernel_json()
  assert spec['argv'][:3] == [sys.executable, '-m', 'ipykernel_launcher']
  if not hostmem.why_not_here():
    assert hostmem.keeps_freed_memory(spec['env']) and hostmem.TUNABLE in spec['env']['GLIBC_TUNABLES']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel):
  nb = nbformat.read(path, as_version=4)
  at = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
  nb.cells.insert(at + 1, nbformat.v4.new_code_cell(SMALL[path.stem], metadata={'tags': ['injected-parameters']}))
  nb.cells.append(nbformat.v4.new_code_cell(CHECK_HOST_MEMORY))
  NotebookClient(nb, timeout=900, kernel_name=kernel, resources={'metadata': {'path': str(path.parent)}}).execute()
