"""'pairs': TSV files and aligned text files of (source, target) pairs, split by eval_fraction."""

import logging

import pytest

from llm_jax import errors
from llm_jax.data import sources


def _records(cfg, split):
  return list(sources.records(cfg, split))


def _pairs(*items):
  return [{'source': s, 'target': t} for s, t in items]


def test_tsv_lines_are_pairs_and_the_last_are_held_out(make_cfg, tmp_path):
  (tmp_path / 'a.tsv').write_bytes(b'hello\tbonjour\n\n  cat \t chat \tCC-BY 2.0 (France) Attribution\r\n'
                                   b'\t\n')  # blank line skipped, third column ignored, empty source skipped
  (tmp_path / 'b.tsv').write_text(''.join(f'src {i}\ttgt {i}\n' for i in range(8)))
  cfg = make_cfg(dataset='pairs', files=str(tmp_path / '*.tsv'), eval_fraction=0.25)
  every = _pairs(('hello', 'bonjour'), ('cat', 'chat'), *((f'src {i}', f'tgt {i}') for i in range(8)))
  assert _records(cfg, 'train') == every[:7]  # 10 pairs (and one with an empty source): ceil(2.75) held out
  assert _records(cfg, 'validation') == every[7:]
  assert _records(make_cfg(dataset='pairs', files=str(tmp_path / '*.tsv'), eval_fraction=0.25, max_documents=2),
                  'train') == every[:2]


def test_a_tsv_line_without_a_tab_names_the_file_and_the_line(make_cfg, tmp_path):
  (tmp_path / 'a.tsv').write_text('one\tun\n\ntwo deux\n')
  with pytest.raises(errors.DataError) as info:
    _records(make_cfg(dataset='pairs', files=str(tmp_path / 'a.tsv'), eval_fraction=0.0), 'train')
  message = str(info.value)
  assert message.startswith(f'{tmp_path / "a.tsv"} line 3 has no tab') and 'source<TAB>target' in message


def test_a_source_without_its_target_names_the_file_and_the_line(make_cfg, tmp_path):
  (tmp_path / 'a.tsv').write_text('one\tun\ntwo\t \n')
  with pytest.raises(errors.DataError, match=f'{tmp_path / "a.tsv"} line 2 has a source but an empty target'):
    _records(make_cfg(dataset='pairs', files=str(tmp_path / 'a.tsv'), eval_fraction=0.0), 'train')


def test_aligned_files_pair_line_n_with_line_n(make_cfg, tmp_path):
  (tmp_path / 'src').mkdir()
  (tmp_path / 'tgt').mkdir()
  (tmp_path / 'src' / 'a.en').write_text('one\ntwo\u2028still two\n\nfour\n')  # U+2028 is no line break here
  (tmp_path / 'tgt' / 'a.fr').write_text('un\r\ndeux\r\ntrois\r\nquatre\r\n')
  (tmp_path / 'src' / 'b.en').write_text('five')
  (tmp_path / 'tgt' / 'b.fr').write_text('cinq')
  cfg = make_cfg(dataset='pairs', files=str(tmp_path / 'src' / '*'), target_files=str(tmp_path / 'tgt' / '*'),
                 eval_fraction=0.2)
  assert _records(cfg, 'train') == _pairs(('one', 'un'), ('two\u2028still two', 'deux'), ('four', 'quatre'))
  assert _records(cfg, 'validation') == _pairs(('five', 'cinq'))


def test_aligned_files_of_different_lengths_name_both_files_and_counts(make_cfg, tmp_path):
  (tmp_path / 'a.en').write_text('one\ntwo\nthree\n')
  (tmp_path / 'a.fr').write_text('un\ndeux\n')
  cfg = make_cfg(dataset='pairs', files=str(tmp_path / '*.en'), target_files=str(tmp_path / '*.fr'))
  with pytest.raises(errors.DataError) as info:
    _records(cfg, 'train')
  message = str(info.value)
  assert f'{tmp_path / "a.en"} has 3 lines' in message and f'{tmp_path / "a.fr"} has 2' in message
  (tmp_path / 'b.en').write_text('four\n')
  with pytest.raises(errors.DataError, match='config.data.files matched 2 files but config.data.target_files 1'):
    sources.records(cfg, 'train')


def test_no_matching_files_names_the_key(make_cfg, tmp_path):
  with pytest.raises(errors.DataError, match=r"config.data.files='.*nothing\*' matched no files.*source<TAB>target"):
    sources.records(make_cfg(dataset='pairs', files=str(tmp_path / 'nothing*')), 'train')
  (tmp_path / 'a.en').write_text('one\n')
  with pytest.raises(errors.DataError, match=r'config.data.target_files=.* matched no files'):
    sources.records(make_cfg(dataset='pairs', files=str(tmp_path / 'a.en'), target_files=str(tmp_path / 'x*')),
                    'train')


def test_invalid_utf8_is_replaced_with_a_warning_naming_the_file(make_cfg, tmp_path, caplog):
  (tmp_path / 'a.tsv').write_bytes(b'caf\xe9\tcoffee\nok\tbien\n')
  cfg = make_cfg(dataset='pairs', files=str(tmp_path / 'a.tsv'), eval_fraction=0.5)
  with caplog.at_level(logging.WARNING):
    assert _records(cfg, 'train') == _pairs(('caf\ufffd', 'coffee'))
  assert any(str(tmp_path / 'a.tsv') in r.getMessage() and ' 1 invalid' in r.getMessage() for r in caplog.records)


def test_other_split_names_are_an_error(make_cfg, tmp_path):
  (tmp_path / 'a.tsv').write_text('one\tun\n')
  with pytest.raises(errors.DataError, match="dataset pairs has the splits.*not 'test'"):
    sources.records(make_cfg(dataset='pairs', files=str(tmp_path / 'a.tsv')), 'test')
