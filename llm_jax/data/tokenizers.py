"""Tokenizers behind one protocol, by name: 'char', 'byte', 'sentencepiece', 'wordpiece', 'pretrained'.

`encode` returns a 1-D int32 array without special tokens (the featurizers add eos,
[CLS] and [SEP] themselves); `decode` skips the special ids. Every tokenizer has
``pad_id`` (padding; its targets get weight 0), ``eos_id`` (appended after each
document when packing for language modelling), ``unk_id``, ``cls_id``, ``sep_id`` and
``mask_id`` (None where it has none) and ``special_ids``, the sorted tuple of the ids
that are not text (never chosen for masked-LM prediction).

* 'char': pad 0, eos 1, unk 2; the vocabulary is the sorted distinct characters
  (code points) of the training split after them. A character never seen in
  training encodes to unk, which decodes to U+FFFD.
* 'byte': pad 0, eos 1, unk 2; byte b of the UTF-8 encoding has id b + 3 (vocab
  259); unk is never produced. Decoding replaces invalid UTF-8 (e.g. a cut multi-byte
  character) with U+FFFD.
* 'sentencepiece': pad 0, eos 1, unk 2; a BPE or unigram model trained with the
  `sentencepiece` library on the training split's lines (the first
  `SP_MAX_TRAIN_CHARS` characters), with identity normalization, no dummy prefix and
  newline as a user-defined piece, so text round-trips exactly except for characters
  unseen in training (unk).
* 'wordpiece': BERT's tokenizer trained here with the Hugging Face `tokenizers`
  library on the training split at ``vocab_size``: BERT's normalizer (lowercase,
  accents stripped) and pre-tokenizer, [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4,
  eos = [SEP] (so 'lm' packing works with it too). Decoding joins '##' pieces; text
  comes back lowercased, spaced around punctuation as BERT's decoder does.
* 'pretrained': a Hugging Face tokenizer from ``tokenizer_path``, a model directory
  or a Hub id (``convert.hub.resolve``) holding tokenizer.json, or vocab.txt (a BERT
  WordPiece vocabulary; lowercased when tokenizer_config.json's do_lower_case is
  true or absent), or a directory a run saved a 'wordpiece' or 'pretrained'
  tokenizer into, or a run's workdir (its WORKDIR/data). Its special tokens are named by special_tokens_map.json or
  tokenizer_config.json, else found by BERT's names ([CLS], [SEP], [MASK], [PAD],
  [UNK]) or RoBERTa's (<s>, </s>, <mask>, <pad>, <unk>); eos is the token of config.json's
  eos_token_id when the directory is a model's, else the named eos token, else the first of
  <|endoftext|> (GPT-2), <|end_of_text|> (Llama 3), </s> (Llama 1/2, BLOOM) in the
  vocabulary, else [SEP]; pad is 0 when the directory names none. A byte-level BPE
  (GPT-2, BLOOM) or a Metaspace / byte-fallback BPE (Llama) tokenizer.json works as it is. The tokenizer's own truncation and
  padding settings are switched off.

A tokenizer saves into a directory (``tokenizer.json``, llm_jax's spec, plus its
model files: sentencepiece.model; for the Hugging Face ones hf_tokenizer.json and,
for a WordPiece model, vocab.txt; the spec is written last, atomically) and
`load_tokenizer` reads it back; `build_tokenizer` reuses what a directory already
holds, which is how a resumed run and ``llm_jax.sample`` keep their ids (a
'pretrained' tokenizer is copied in, so the run no longer needs its source).
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
  """What the pipeline, the model and sampling need from a tokenizer.

  A class whose ``mask_id`` is None at class level never has one (the masked-LM
  featurizer refuses it before building anything).
  """

  kind: str
  vocab_size: int   # includes the special ids
  pad_id: int
  eos_id: int
  unk_id: int | None
  cls_id: int | None
  sep_id: int | None
  mask_id: int | None
  special_ids: tuple[int, ...]
  reads_texts: bool  # whether building it reads the training split

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


def _in_table(ids, vocab_size: int) -> np.ndarray:
  """``ids`` flattened, without those >= ``vocab_size``: rows of a padded embedding table
  (``config.model.vocab_size``) that no piece names."""
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  return ids[ids < vocab_size]


def _real_ids(ids, vocab_size: int) -> np.ndarray:
  """``_in_table(ids)`` without padding and eos."""
  ids = _in_table(ids, vocab_size)
  return ids[(ids != PAD_ID) & (ids != EOS_ID)]


_REGISTRY: dict[str, type] = {}


class _NoMarkers:
  """The attributes of a tokenizer with pad 0, eos 1, unk 2 and no BERT markers."""
  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID
  cls_id = sep_id = mask_id = None
  special_ids = (PAD_ID, EOS_ID, UNK_ID)
  reads_texts = True
  settings: dict = {}


def register(kind: str) -> Callable[[type], type]:
  """Class decorator: makes a tokenizer class buildable and loadable as `kind`.

  The class has ``train(texts, *, vocab_size, sp_model_type, tokenizer_path)`` (each
  takes what it needs), ``load(directory, spec)``, and ``wanted(**the same options)``,
  the settings a saved tokenizer must have to be reused (its ``settings``).
  """
  def wrap(cls):
    cls.kind = kind
    _REGISTRY[kind] = cls
    return cls
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def tokenizer_class(kind: str) -> type:
  if kind not in _REGISTRY:
    raise errors.DataError(f'config.data.tokenizer={kind!r} is unknown; use one of {names()}.')
  return _REGISTRY[kind]


@register('char')
class CharTokenizer(_NoMarkers):
  """Characters of the training split; id = 3 + rank of the code point."""

  def __init__(self, chars: str):
    self.chars = ''.join(sorted(set(chars)))
    self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
    self.vocab_size = NUM_SPECIAL + len(self.chars)

  @classmethod
  def wanted(cls, **unused) -> dict:
    return {}

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
    ids = _real_ids(ids, self.vocab_size)
    return ''.join(self.chars[i - NUM_SPECIAL] if i >= NUM_SPECIAL else '\ufffd' for i in ids)

  def save(self, directory: str) -> None:
    _save_spec(directory, {'kind': self.kind, 'chars': self.chars})


@register('byte')
class ByteTokenizer(_NoMarkers):
  """UTF-8 bytes; id = 3 + byte value."""

  vocab_size = NUM_SPECIAL + 256
  reads_texts = False

  @classmethod
  def wanted(cls, **unused) -> dict:
    return {}

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
    ids = _real_ids(ids, self.vocab_size)
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
class SentencePieceTokenizer(_NoMarkers):
  """A trained SentencePiece model with pad=0, eos=1, unk=2 and no bos."""

  def __init__(self, model_proto: bytes, vocab_size: int, model_type: str):
    import sentencepiece as spm
    self.model_proto = model_proto
    self.model_type = model_type
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.vocab_size()
    self.requested_vocab_size = vocab_size
    self.settings = self.wanted(vocab_size=vocab_size, sp_model_type=model_type)
    assert self._sp.pad_id() == PAD_ID and self._sp.eos_id() == EOS_ID

  @classmethod
  def wanted(cls, *, vocab_size: int, sp_model_type: str, **unused) -> dict:
    return {'vocab_size': vocab_size, 'sp_model_type': sp_model_type}

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
    return self._sp.decode(_real_ids(ids, self.vocab_size).tolist())

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, SP_MODEL_FILE), self.model_proto)
    _save_spec(directory, {'kind': self.kind, 'model_file': SP_MODEL_FILE,
                           'vocab_size': self.requested_vocab_size,
                           'model_type': self.model_type})


HF_FILE = 'hf_tokenizer.json'
VOCAB_FILE = 'vocab.txt'
_ROLES = ('pad', 'unk', 'cls', 'sep', 'mask', 'eos')
# Names tried, in order, for a role a directory does not name: BERT's, then RoBERTa's; the end of
# text of GPT-2, Llama 3 and Llama 1/2 / BLOOM.
_DEFAULT_NAMES = {'pad': ('[PAD]', '<pad>'), 'unk': ('[UNK]', '<unk>'), 'cls': ('[CLS]', '<s>'),
                  'sep': ('[SEP]', '</s>'), 'mask': ('[MASK]', '<mask>'),
                  'eos': ('<|endoftext|>', '<|end_of_text|>', '</s>')}


class _HuggingFace:
  """A Hugging Face `tokenizers.Tokenizer` and the names of its special tokens by role."""

  reads_texts = True

  def __init__(self, tokenizer, special_tokens: dict[str, str | None], origin: str):
    tokenizer.no_truncation()
    tokenizer.no_padding()
    self._tok = tokenizer
    self.special_tokens = {role: special_tokens.get(role) for role in _ROLES}
    ids = {role: None if name is None else tokenizer.token_to_id(name)
           for role, name in self.special_tokens.items()}
    missing = [f'{role} {self.special_tokens[role]!r}' for role in _ROLES
               if self.special_tokens[role] is not None and ids[role] is None]
    if missing:
      raise errors.ConfigError(f'{origin}: the special tokens {", ".join(missing)} are not in the vocabulary; '
                               'fix special_tokens_map.json or pass another config.data.tokenizer_path.')
    self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids['unk'], ids['cls'], ids['sep'], ids['mask']
    self.pad_id = ids['pad'] if ids['pad'] is not None else PAD_ID
    self.eos_id = ids['eos'] if ids['eos'] is not None else ids['sep']
    if self.eos_id is None:
      raise errors.ConfigError(f'{origin} names neither an eos nor a [SEP] token (special_tokens_map.json); '
                               'pass a tokenizer directory that has one in config.data.tokenizer_path.')
    self.special_ids = tuple(sorted({i for i in ids.values() if i is not None} | {self.eos_id}))
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode(_in_table(ids, self.vocab_size).tolist(), skip_special_tokens=True)

  def save(self, directory: str, **spec) -> None:
    os.makedirs(directory, exist_ok=True)
    _write_atomic(os.path.join(directory, HF_FILE), self._tok.to_str(pretty=True).encode())
    from tokenizers import models
    if isinstance(self._tok.model, models.WordPiece):  # vocab.txt: what BERT tooling reads
      vocab = self._tok.get_vocab(with_added_tokens=True)
      lines = ''.join(f'{token}\n' for token, _ in sorted(vocab.items(), key=lambda item: item[1]))
      _write_atomic(os.path.join(directory, VOCAB_FILE), lines.encode())
    _save_spec(directory, {'kind': self.kind, 'hf_file': HF_FILE, 'special_tokens': self.special_tokens,
                           **spec})

  @staticmethod
  def _read(directory: str, spec: dict):
    from tokenizers import Tokenizer as HFTokenizer
    return HFTokenizer.from_file(os.path.join(directory, spec['hf_file']))


@register('wordpiece')
class WordPieceTokenizer(_HuggingFace):
  """BERT's WordPiece trained on the training split: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""

  SPECIAL_TOKENS = {'pad': '[PAD]', 'unk': '[UNK]', 'cls': '[CLS]', 'sep': '[SEP]', 'mask': '[MASK]'}

  def __init__(self, tokenizer, vocab_size: int):
    super().__init__(tokenizer, self.SPECIAL_TOKENS, 'wordpiece')
    self.settings = self.wanted(vocab_size=vocab_size)

  @classmethod
  def wanted(cls, *, vocab_size: int, **unused) -> dict:
    return {'vocab_size': vocab_size}

  @classmethod
  def train(cls, texts: Iterable[str], *, vocab_size: int, **unused) -> 'WordPieceTokenizer':
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    specials = list(cls.SPECIAL_TOKENS.values())
    if vocab_size <= len(specials):
      raise errors.DataError(f'config.data.vocab_size={vocab_size} leaves no room beside the '
                             f'{len(specials)} special tokens of wordpiece; raise it (BERT: 30522).')
    tok = HFTokenizer(models.WordPiece(unk_token='[UNK]'))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(  # for users of the saved file; encode adds none
        single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1', special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(iter(texts), trainer)
    assert [tok.token_to_id(t) for t in specials] == list(range(len(specials)))
    return cls(tok, vocab_size)

  @classmethod
  def load(cls, directory: str, spec: dict) -> 'WordPieceTokenizer':
    return cls(cls._read(directory, spec), spec['vocab_size'])

  def save(self, directory: str) -> None:
    super().save(directory, vocab_size=self.settings['vocab_size'])


def _json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _named_tokens(directory: str) -> dict[str, str]:
  """{role: token} as special_tokens_map.json, then tokenizer_config.json, name them."""
  names = {}
  for file in ('tokenizer_config.json', 'special_tokens_map.json'):  # the second wins
    for role in _ROLES:
      value = _json(os.path.join(directory, file)).get(f'{role}_token')
      if isinstance(value, dict):
        value = value.get('content')
      if isinstance(value, str):
        names[role] = value
  return names


def config_eos_id(hf_config: dict):
  """config.json's eos_token_id (the first of a list), or None."""
  eos = hf_config.get('eos_token_id')
  eos = eos[0] if isinstance(eos, list) and eos else eos
  return eos if isinstance(eos, int) else None


def _pretrained_files(directory: str, what: str):
  """(Hugging Face tokenizer, {role: token}) from a model directory (module docstring)."""
  from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers
  run_data = os.path.join(directory, 'data')
  if (not any(os.path.exists(os.path.join(directory, f)) for f in (SPEC_FILE, VOCAB_FILE))
      and os.path.exists(os.path.join(run_data, SPEC_FILE))):
    directory = run_data  # an llm_jax workdir: the tokenizer its run trained on (WORKDIR/data)
  spec = _json(os.path.join(directory, SPEC_FILE))
  if spec.get('hf_file'):  # a directory llm_jax saved a wordpiece or pretrained tokenizer into
    return _HuggingFace._read(directory, spec), dict(spec['special_tokens'])
  named = _named_tokens(directory)
  if 'model' in spec:
    tok = HFTokenizer.from_file(os.path.join(directory, SPEC_FILE))
  elif os.path.exists(os.path.join(directory, VOCAB_FILE)):
    options = _json(os.path.join(directory, 'tokenizer_config.json'))
    vocab = models.WordPiece.read_file(os.path.join(directory, VOCAB_FILE))
    tok = HFTokenizer(models.WordPiece(vocab, unk_token=named.get('unk', '[UNK]')))
    tok.normalizer = normalizers.BertNormalizer(
        lowercase=options.get('do_lower_case', True), strip_accents=options.get('strip_accents'),
        handle_chinese_chars=options.get('tokenize_chinese_chars', True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
  else:
    raise errors.ConfigError(f'{what}: {directory!r} holds neither {SPEC_FILE} nor {VOCAB_FILE}; pass a model '
                             'directory (or Hub id) with a Hugging Face tokenizer, e.g. a BERT model\'s.')
  vocab = tok.get_vocab(with_added_tokens=True)
  eos = config_eos_id(_json(os.path.join(directory, 'config.json')))
  if eos is not None and tok.id_to_token(eos) is not None:  # the model's own word is the authority
    named['eos'] = tok.id_to_token(eos)
  for role in _ROLES:
    if role not in named:
      named[role] = next((n for n in _DEFAULT_NAMES[role] if n in vocab), None)
  # Marked special (their ids unchanged): kept whole in text and skipped by decode, as in
  # transformers; a vocab.txt alone marks nothing.
  tok.add_special_tokens([name for name in named.values() if name in vocab])
  return tok, named


@register('pretrained')
class PretrainedTokenizer(_HuggingFace):
  """A Hugging Face tokenizer from config.data.tokenizer_path (see the module docstring)."""

  reads_texts = False

  def __init__(self, tokenizer, special_tokens: dict, source: str):
    super().__init__(tokenizer, special_tokens, f'config.data.tokenizer_path={source!r}')
    self.settings = self.wanted(tokenizer_path=source)

  @classmethod
  def wanted(cls, *, tokenizer_path: str, **unused) -> dict:
    return {'tokenizer_path': tokenizer_path}

  @classmethod
  def train(cls, texts, *, tokenizer_path: str, **unused) -> 'PretrainedTokenizer':
    what = f'config.data.tokenizer_path={tokenizer_path!r}'
    if not tokenizer_path:
      raise errors.ConfigError("config.data.tokenizer='pretrained' needs config.data.tokenizer_path: a model "
                               'directory holding tokenizer.json or vocab.txt, or a Hub id.')
    looks_like_path = tokenizer_path.startswith(('/', '.', '~')) or os.path.exists(tokenizer_path)
    if looks_like_path and not os.path.isdir(os.path.expanduser(tokenizer_path)):
      raise errors.ConfigError(f'{what} is not a directory; pass a model directory holding tokenizer.json or '
                               'vocab.txt, or a Hugging Face Hub id.')
    from llm_jax.convert import hub
    directory = hub.resolve(os.path.expanduser(tokenizer_path), what='config.data.tokenizer_path')
    return cls(*_pretrained_files(directory, what), tokenizer_path)

  @classmethod
  def load(cls, directory: str, spec: dict) -> 'PretrainedTokenizer':
    return cls(cls._read(directory, spec), spec['special_tokens'], spec['tokenizer_path'])

  def save(self, directory: str) -> None:
    super().save(directory, tokenizer_path=self.settings['tokenizer_path'])


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
                    sp_model_type: str, directory: str, tokenizer_path: str = '') -> Tokenizer:
  """The `kind` tokenizer saved in `directory`, trained on `train_texts` if absent.

  `train_texts` is not iterated when `directory` already holds the tokenizer (resume),
  nor by the kinds that do not learn from text ('byte', 'pretrained'). A saved
  tokenizer of another kind or other settings is an error, not silently replaced: a
  checkpoint's ids depend on it.
  """
  cls = tokenizer_class(kind)
  options = dict(vocab_size=vocab_size, sp_model_type=sp_model_type, tokenizer_path=tokenizer_path)
  if os.path.exists(os.path.join(directory, SPEC_FILE)):
    tokenizer = load_tokenizer(directory)
    saved, wanted = (tokenizer.kind, tokenizer.settings), (kind, cls.wanted(**options))
    if saved != wanted:
      raise errors.DataError(
          f'{directory!r} holds a tokenizer {saved} but the config asks for {wanted} '
          '(config.data.tokenizer, vocab_size, sp_model_type, tokenizer_path); use a fresh --workdir or '
          'set --config.data.cache_dir to another directory.')
    return tokenizer
  tokenizer = cls.train(train_texts, **options)
  tokenizer.save(directory)
  return tokenizer
