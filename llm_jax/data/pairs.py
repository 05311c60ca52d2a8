"""'pairs': (source, target) pairs from local files, for sequence-to-sequence models.

Two layouts, chosen by whether `config.data.target_files` is set:

* TSV (``target_files=''``): `config.data.files` are comma-separated globs of TSV
  files; each non-blank line is ``source<TAB>target``. Columns after the second (the
  attribution column of the Tatoeba / ManyThings sentence files) are ignored. A
  non-blank line without a tab is a DataError naming the file and the line.
* aligned (``target_files`` set): `files` and `target_files` are globs of text files
  matching as many files each; the i-th file of each in sorted path order go
  together, line n of a source file with line n of its target file. Files with
  different line counts are a DataError naming both files and both counts.

Lines end at '\\n' alone (a '\\r' before it is dropped), never at the other breaks
`str.splitlines` knows (U+2028, form feed, ...), so aligned files stay aligned
whatever their sentences hold. Each side is stripped of surrounding whitespace.
Bytes that are not UTF-8 are replaced with U+FFFD, with a warning naming the file.
A pair with a source and an empty target is a DataError naming the file and the
line; an empty source is skipped (`sources.records`).

Splits: the pairs of all files in order (read into memory); the split named
`eval_split` gets the last ``ceil(eval_fraction * n)`` of them and `train_split`
the others, at least one (`local_files.held_out`). Records {'source', 'target'}.
"""

from __future__ import annotations

from typing import Iterator

from llm_jax import errors
from llm_jax.data import local_files, sources


def _lines(path: str) -> list[str]:
  """The lines of ``path``, split at '\\n' only, without the empty piece after a final newline."""
  with open(path, 'rb') as f:
    text = sources.decode(f.read(), path)
  lines = text.split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  return [line[:-1] if line.endswith('\r') else line for line in lines]


def _pair(source: str, target: str, path: str, number: int) -> dict:
  source, target = source.strip(), target.strip()
  if source and not target:
    raise errors.DataError(f'{path} line {number} has a source but an empty target; give every source '
                           'its target (or drop the line).')
  return {'source': source, 'target': target}


def _tsv(path: str) -> Iterator[dict]:
  for number, line in enumerate(_lines(path), 1):
    if not line.strip():
      continue
    if '\t' not in line:
      raise errors.DataError(f'{path} line {number} has no tab; each line of a pairs TSV file is '
                             'source<TAB>target (or set config.data.target_files for aligned text files).')
    source, target = line.split('\t')[:2]
    yield _pair(source, target, path, number)


def _aligned(source_path: str, target_path: str) -> Iterator[dict]:
  sources_, targets = _lines(source_path), _lines(target_path)
  if len(sources_) != len(targets):
    raise errors.DataError(f'{source_path} has {len(sources_)} lines but its aligned target file '
                           f'{target_path} has {len(targets)}; aligned files pair line n with line n, so '
                           'their line counts must agree.')
  for number, (source, target) in enumerate(zip(sources_, targets), 1):
    yield _pair(source, target, f'{source_path} (target {target_path})', number)


def _paths(globs: str, key: str) -> list[str]:
  paths = local_files.matching_files(globs)
  if not paths:
    raise errors.DataError(f'config.data.{key}={globs!r} matched no files; dataset pairs reads comma-separated '
                           'globs of TSV files (source<TAB>target per line), or of aligned text files with '
                           'config.data.target_files.')
  return paths


def _file_sets(data_cfg) -> list[tuple[str, str | None]]:
  """(source file, its aligned target file or None for TSV), in order."""
  paths = _paths(data_cfg.files, 'files')
  if not data_cfg.target_files:
    return [(path, None) for path in paths]
  target_paths = _paths(data_cfg.target_files, 'target_files')
  if len(paths) != len(target_paths):
    raise errors.DataError(f'config.data.files matched {len(paths)} files but config.data.target_files '
                           f'{len(target_paths)}; aligned files go together one for one, in sorted path order.')
  return list(zip(paths, target_paths))


@sources.register('pairs')
def records(data_cfg, split: str) -> Iterator[dict]:
  file_sets = _file_sets(data_cfg)
  is_train = local_files.local_split(data_cfg, split, 'pairs')

  def read() -> Iterator[dict]:
    items = [pair for path, target_path in file_sets
             for pair in (_tsv(path) if target_path is None else _aligned(path, target_path))]
    if items:
      yield from items[local_files.held_out(len(items), data_cfg.eval_fraction, is_train)]
  return read()
