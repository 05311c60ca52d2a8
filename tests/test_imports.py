"""The package's module-level imports form no cycle (a cycle makes import order matter and
hides which module owns what)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'llm_jax'


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path, modules: set) -> set:
  """Modules of the package this file imports at its top level (imports inside functions are lazy)."""
  out = set()
  for node in ast.parse(path.read_text()).body:
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # 'from pkg import sub' depends on the module pkg.sub; 'from mod import name' on mod
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules else node.module
               for a in node.names]
    out.update(n for n in names if n in modules)
  return out


def test_no_import_cycles():
  files = {_module(p): p for p in PACKAGE.rglob('*.py')}
  graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in graph[m]:
      if state.get(n) == 'open':
        raise AssertionError('import cycle: ' + ' -> '.join(stack[stack.index(n):] + [n]))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m)
