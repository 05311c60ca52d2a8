"""Tokenizers behind one protocol: 'char', 'byte' and 'sentencepiece', by name.

Every tokenizer reserves ``pad_id = 0`` (padding; its targets get weight 0),
``eos_id = 1`` (appended after each document when packing) and ``unk_id = 2``.
`encode` returns a 1-D int32 array without eos; `decode` skips pad and eos.

* 'char': the vocabulary is the sorted distinct characters (code points) of the
  training split after the three specials. A character never seen in training
  encodes to unk, which decodes to U+FFFD.
* 'byte': the UTF-8 bytes, byte b has id b + 3 (vocab 259); unk is never produced.
  Decoding replaces invalid UTF-8 (e.g. a cut multi-byte character) with U+FFFD.
* 'sentencepiece': a BPE or unigram model trained with the `sentencepiece` library
  on the training split's lines (the first `SP_MAX_TRAIN_CHARS` characters), with
  identity normalization, no dummy prefix and newline as a user-defined piece, so
  text round-trips exactly except for characters unseen in training (unk).

A tokenizer saves into a directory (``tokenizer.json`` plus its model file, the json
written last, atomically) and `load_tokenizer` reads it back; `build_tokenizer`
reuses what a directory already holds, which is how a resumed run keeps its ids.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Callable, Iterable, Protocol

import numpy as np

from llm_jax import errors

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SPECIAL = 3
SPEC_FILE = 'tokenizer.json'
SP_MODEL_FILE = 'sentencepiece.model'
SP_MAX_TRAIN_CHARS = 50_000_000


class Tokenizer(Protocol):
  """What the pipeline, the model and sampling need from a tokenizer."""

  kind: str
  vocab_size: int   # includes the special ids
  pad_id: int       # == 0
  eos_id: int

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids) -> str: ...
  def save(self, directory: str) -> None: ...


def _write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def _save_spec(directory: str, spec: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  _write_atomic(os.path.join(directory, SPEC_FILE), json.dumps(spec, indent=1).encode())


def _real_ids(ids) -> np.ndarray:
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  return ids[(ids != PAD_ID) & (ids != EOS_ID)]


_REGISTRY: dict[str, type] = {}


def register(kind: str) -> Callable[[type], type]:
  """Class decorator: makes a tokenizer class buildable and loadable as `kind`."""
  def wrap(cls):
    cls.kind = kind
    _REGISTRY[kind] = cls
    return cls
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


@register('char')
class CharTokenizer:
  """Characters of the training split; id = 3 + rank of the code point."""

  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def __init__(self, chars: str):
    self.chars = ''.join(sorted(set(chars)))
    self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
    self.vocab_size = NUM_SPECIAL + len(self.chars)

  @classmethod
  def train(cls, texts: Iterable[str], **unused) -> 'CharTokenizer':
    seen: set[str] = set()
    for text in texts:
      seen.update(text)
    return cls(''.join(seen))

  @classmethod
  def load(cls, directory: str, spec: dict) -> 'CharTokenizer':
    return cls(spec['chars'])

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), dtype='<u4')
    if not len(self._codes):
      return np.full(codes.shape, UNK_ID, np.int32)
    rank = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
    return np.where(self._codes[rank] == codes, rank + NUM_SPECIAL, UNK_ID).astype(np.int32)

  def decode(self, ids) -> str:
    ids = _real_ids(ids)
    return ''.join(self.chars[i - NUM_SPECIAL] if i >= NUM_SPECIAL else '\ufffd' for i in ids)

  def save(self, directory: str) -> None:
    _save_spec(directory, {'kind': self.kind, 'chars': self.chars})


@register('byte')
class ByteTokenizer:
  """UTF-8 bytes; id = 3 + byte value."""

  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID
  vocab_size = NUM_SPECIAL + 256

  @classmethod
  def train(cls, texts: Iterable[str], **unused) -> 'ByteTokenizer':
    return cls()

  @classmethod
  def load(cls, directory: str, spec: dict) -> 'ByteTokenizer':
    return cls()

  def encode(self, text: str) -> np.ndarray:
    data = np.frombuffer(text.encode('utf-8', 'surrogatepass'), dtype=np.uint8)
    return data.astype(np.int32) + NUM_SPECIAL

  def decode(self, ids) -> str:
    ids = _real_ids(ids)
    data = (ids[ids >= NUM_SPECIAL] - NUM_SPECIAL).astype(np.uint8)
    return data.tobytes().decode('utf-8', errors='replace')

  def save(self, directory: str) -> None:
    _save_spec(directory, {'kind': self.kind})


def _lines(texts: Iterable[str], max_chars: int) -> Iterable[str]:
  total = 0
  for text in texts:
    for line in text.split('\n'):
      if total >= max_chars:
        return
      total += len(line) + 1
      if line:
        yield line


@register('sentencepiece')
class SentencePieceTokenizer:
  """A trained SentencePiece model with pad=0, eos=1, unk=2 and no bos."""

  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def __init__(self, model_proto: bytes, vocab_size: int, model_type: str):
    import sentencepiece as spm
    self.model_proto = model_proto
    self.model_type = model_type
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.vocab_size()
    self.requested_vocab_size = vocab_size
    assert self._sp.pad_id() == PAD_ID and self._sp.eos_id() == EOS_ID

  @classmethod
  def train(cls, texts: Iterable[str], *, vocab_size: int, sp_model_type: str,
            **unused) -> 'SentencePieceTokenizer':
    import sentencepiece as spm
    if sp_model_type not in ('bpe', 'unigram'):
      raise errors.DataError(f"config.data.sp_model_type={sp_model_type!r}: use 'bpe' or 'unigram'.")
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(_lines(texts, SP_MAX_TRAIN_CHARS)), model_writer=model,
          vocab_size=vocab_size, model_type=sp_model_type,
          pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
          normalization_rule_name='identity', remove_extra_whitespaces=False,
          add_dummy_prefix=False, user_defined_symbols=['\n'], character_coverage=1.0,
          allow_whitespace_only_pieces=True, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
      raise errors.DataError(f'config.data.vocab_size={vocab_size} with sentencepiece '
                       f'{sp_model_type!r} failed: {e}. Lower config.data.vocab_size or use '
                       'more training text.') from e
    return cls(model.getvalue(), vocab_size, sp_model_type)

  @classmethod
  def load(cls, directory: str, spec: dict) -> 'SentencePieceTokenizer':
    with open(os.path.join(directory, spec['model_file']), 'rb') as f:
      return cls(f.read(), spec['vocab_size'], spec['model_type'])

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32).reshape(-1)

  def decode(self, ids) -> str:
    return self._sp.decode(_real_ids(ids).tolist())

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, SP_MODEL_FILE), self.model_proto)
    _save_spec(directory, {'kind': self.kind, 'model_file': SP_MODEL_FILE,
                           'vocab_size': self.requested_vocab_size,
                           'model_type': self.model_type})


def unknown_characters(tokenizer: Tokenizer, text: str) -> dict[str, int]:
  """{character: count} of the characters of ``text`` that ``tokenizer`` encodes as unk.

  Empty for tokenizers without an unk token in use ('byte' encodes everything).
  """
  unk = getattr(tokenizer, 'unk_id', None)
  if unk is None or not text or unk not in np.asarray(tokenizer.encode(text)):
    return {}
  counts: dict[str, int] = {}
  for char in text:
    counts[char] = counts.get(char, 0) + 1
  return {c: n for c, n in counts.items() if unk in np.asarray(tokenizer.encode(c))}


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer that `save(directory)` wrote (e.g. into a run's cache dir)."""
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    raise errors.DataError(f'no tokenizer in {directory!r} (missing {SPEC_FILE}); it is written '
                            'by the first training run into config.data.cache_dir '
                            '(default WORKDIR/data).')
  with open(path) as f:
    spec = json.load(f)
  if spec.get('kind') not in _REGISTRY:
    raise errors.DataError(f'{path} names tokenizer kind {spec.get("kind")!r}; known: {names()}.')
  return _REGISTRY[spec['kind']].load(directory, spec)


def build_tokenizer(kind: str, train_texts: Iterable[str], *, vocab_size: int,
                    sp_model_type: str, directory: str) -> Tokenizer:
  """The `kind` tokenizer saved in `directory`, trained on `train_texts` if absent.

  `train_texts` is not iterated when `directory` already holds the tokenizer (resume).
  A saved tokenizer of another kind or other sentencepiece settings is an error, not
  silently replaced: a checkpoint's ids depend on it.
  """
  if kind not in _REGISTRY:
    raise errors.DataError(f'config.data.tokenizer={kind!r} is unknown; use one of {names()}.')
  if os.path.exists(os.path.join(directory, SPEC_FILE)):
    tokenizer = load_tokenizer(directory)
    saved = (tokenizer.kind, getattr(tokenizer, 'requested_vocab_size', None),
             getattr(tokenizer, 'model_type', None))
    wanted = (kind, vocab_size, sp_model_type) if kind == 'sentencepiece' else (kind, None, None)
    if saved != wanted:
      raise errors.DataError(
          f'{directory!r} holds a tokenizer {saved} but the config asks for {wanted} '
          '(config.data.tokenizer, vocab_size, sp_model_type); use a fresh --workdir or '
          'set --config.data.cache_dir to another directory.')
    return tokenizer
  tokenizer = _REGISTRY[kind].train(train_texts, vocab_size=vocab_size,
                                    sp_model_type=sp_model_type)
  tokenizer.save(directory)
  return tokenizer
