"""The embedded corpus: English text that every CPython installation carries.

Why: a run, a test or a notebook must be able to train a language model with no
network and no file outside the interpreter. The corpus is

* the interpreter's bundled reference documentation, `pydoc_data.topics.topics`
  (about 79 topics, about 465 KB on CPython 3.11), one document per topic, named
  ``topics/<topic>``;
* the standard library's module, class and function docstrings, one document per
  module, named ``stdlib/<dotted.module>``. They are read with `ast.get_docstring`
  by *parsing* the sources (never importing them: `antigravity`, `this` and friends
  have side effects). Files are visited in sorted order; ``test/``, ``tests/``,
  ``idlelib/``, ``site-packages/`` and unreadable or unparsable files are skipped;
  documents stop being added once the corpus holds `MAX_CHARS` characters.

The corpus depends on the interpreter's version (its docs differ), so the TFDS
builder config is named after it (``py311``, ``py312``). Each document goes to
'validation' when the first 8 bytes of the SHA-256 of its name, mod 100, fall below
`VALIDATION_PERCENT`, else to 'train': stable across processes and machines.

Two readers give the same texts in the same order: `documents(split)` reads straight
from `corpus()` (no TensorFlow: what training uses), and `documents(split,
use_tfds=True)` through the TFDS builder `python_docs` (`llm_jax.data.embedded_tfds`,
which needs the `[tfds]` extra).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sys
import sysconfig
import warnings
from typing import Iterator

from llm_jax import errors

SPLITS = ('train', 'validation')
VALIDATION_PERCENT = 5
MAX_CHARS = 4_000_000
CONFIG_NAME = f'py{sys.version_info.major}{sys.version_info.minor}'
TFDS_NAME = 'python_docs'

_SKIP_DIRS = frozenset({'test', 'tests', 'idlelib', 'site-packages', 'dist-packages',
                        '__pycache__'})


def split_of(name: str) -> str:
  """The split ('train' or 'validation') of the document called `name`."""
  h = int.from_bytes(hashlib.sha256(name.encode('utf-8')).digest()[:8], 'big')
  return 'validation' if h % 100 < VALIDATION_PERCENT else 'train'


def _topics() -> Iterator[tuple[str, str]]:
  try:
    from pydoc_data.topics import topics
  except ImportError:
    return
  for key in sorted(topics):
    yield f'topics/{key}', topics[key]


def _docstrings(body: list[ast.stmt], prefix: str) -> Iterator[str]:
  for node in body:
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      qualname = f'{prefix}.{node.name}'
      doc = ast.get_docstring(node)
      if doc:
        yield f'{qualname}\n{doc}'
      yield from _docstrings(node.body, qualname)


def _stdlib_files(root: str) -> Iterator[tuple[str, str]]:
  """(dotted module name, path) of the stdlib's .py files in sorted order."""
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    rel = os.path.relpath(dirpath, root)
    package = [] if rel == '.' else rel.split(os.sep)
    for filename in sorted(f for f in filenames if f.endswith('.py')):
      parts = package + ([] if filename == '__init__.py' else [filename[:-3]])
      if parts:
        yield '.'.join(parts), os.path.join(dirpath, filename)


def _stdlib() -> Iterator[tuple[str, str]]:
  root = sysconfig.get_paths()['stdlib']
  for module, path in sorted(_stdlib_files(root)):
    try:
      with open(path, 'rb') as f:
        source = f.read()
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tree = ast.parse(source, filename=path)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
      continue
    doc = ast.get_docstring(tree)
    parts = ([f'{module}\n{doc}'] if doc else []) + list(_docstrings(tree.body, module))
    if parts:
      yield f'stdlib/{module}', '\n\n'.join(parts)


def _generate() -> Iterator[tuple[str, str]]:
  total = 0
  for name, text in (*_topics(), *_stdlib()):
    if not text.strip():
      continue
    if total + len(text) > MAX_CHARS:
      return
    total += len(text)
    yield name, text


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[tuple[str, str], ...]:
  """All (name, text) documents of the corpus in canonical order (cached)."""
  return tuple(_generate())


def split_documents(split: str) -> Iterator[tuple[str, str]]:
  """(name, text) of one split of `corpus()`, in canonical order."""
  if split not in SPLITS:
    raise errors.DataError(f'the embedded corpus has splits {SPLITS}, not {split!r}; '
                     'set config.data.train_split/eval_split accordingly')
  return ((n, t) for n, t in corpus() if split_of(n) == split)


def documents(split: str, *, data_dir: str | None = None, use_tfds: bool = False) -> Iterator[str]:
  """The texts of `split`, straight from `corpus()` or (`use_tfds`) through TFDS.

  The TFDS path prepares ``python_docs/<CONFIG_NAME>`` into `data_dir` (None: the
  TFDS default) on first use; both paths yield identical texts in identical order.
  """
  if not use_tfds:
    return (text for _, text in split_documents(split))
  if split not in SPLITS:
    split_documents(split)
  from llm_jax.data import embedded_tfds  # registers the builder
  tfds = embedded_tfds.tfds
  builder = tfds.builder(f'{TFDS_NAME}/{CONFIG_NAME}', data_dir=data_dir or None)
  builder.download_and_prepare()
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return (ex['text'].decode('utf-8') for ex in tfds.as_numpy(ds))
