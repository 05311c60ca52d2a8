"""An llm_jax run written as a Hugging Face model directory: ``export(workdir, out_dir)``.

The run's newest finished checkpoint (or ``step``) becomes ``out_dir`` holding

  config.json          the family's config for the model (``Family.hf_config``): BERT's
                       BertForMaskedLM for head 'mlm', BertForSequenceClassification for
                       'classify', BertModel for 'none'; a decoder as GPT2LMHeadModel,
                       BloomForCausalLM or LlamaForCausalLM, whichever layout it has
                       (``table.for_export``), its bos/eos_token_id those of the tokenizer
  model.safetensors    every parameter through its table rule, in Hugging Face's layout
  tokenizer files      those the run's cache dir (``data.cache_dir(config, workdir)``) holds
                       in Hugging Face's formats: vocab.txt, a tokenizer JSON of the
                       ``tokenizers`` library (written as tokenizer.json), tokenizer_config.json
                       and special_tokens_map.json (tokenizer_config.json written when absent,
                       naming the special tokens the run's tokenizer uses)

so that ``transformers``' ``AutoModel*.from_pretrained(out_dir)`` loads it. A run whose
tokenizer has no Hugging Face form ('char', 'byte', 'sentencepiece') is exported without
one, and the result says so. ``out_dir`` is written whole or not at all (a temporary
sibling renamed into place) and must not exist or be empty.

Every mistake is one line: ``errors.ConfigError`` (not a run, a model kind or layout with
no Hugging Face counterpart, an ``out_dir`` in the way) or ``checkpoint.CheckpointError``
(no finished checkpoint, a corrupt one).
"""

import json
import os
import shutil
import tempfile
from typing import Optional

import jax
import numpy as np

from llm_jax import checkpoint as ckpt_lib
from llm_jax import errors
from llm_jax import workdir as workdir_lib
from llm_jax.convert import hf
from llm_jax.convert import table
from llm_jax.models import blocks

VOCAB = 'vocab.txt'
TOKENIZER_JSON = 'tokenizer.json'
SPEC_FILE = 'tokenizer.json'  # in a run's cache dir: llm_jax's spec of its tokenizer (data.tokenizers)
COPIED = ('tokenizer_config.json', 'special_tokens_map.json')
SPECIAL_TOKENS = {'unk_token': '[UNK]', 'sep_token': '[SEP]', 'pad_token': '[PAD]', 'cls_token': '[CLS]',
                  'mask_token': '[MASK]'}
_MAX_JSON_BYTES = 64 << 20  # a tokenizer JSON is a few MB; larger .json files in the cache are something else


def export(workdir: str, out_dir: str, step: Optional[int] = None) -> dict:
  """Writes ``workdir``'s checkpoint (newest, or ``step``) to ``out_dir``; returns
  {'directory', 'architecture', 'step', 'tokenizer': [files] ([] when not exported), 'note'}."""
  from llm_jax import data as data_lib
  from llm_jax.train import trainer as trainer_lib
  config = workdir_lib.load_config(workdir)
  table.exporters(config.model.kind)
  _check_out(out_dir)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint, read_only=True)
  try:
    step = ckpts.latest_step() if step is None else step
    if step is None:
      raise ckpt_lib.CheckpointError(f'no finished checkpoint in {ckpts.directory} yet; train until the first save '
                                     f'(checkpoint.every_steps={config.checkpoint.every_steps}), then export.')
    if step not in ckpts.all_steps():
      raise ckpt_lib.CheckpointError(f'{ckpts.directory} holds no step {step}; it holds {ckpts.all_steps()}.')
    ckpts.verify(step)
    kind = trainer_lib.make_kind(config, _vocab_size(ckpts, step))
    family = table.for_export(config.model.kind, kind.cfg)
    params = ckpts.restore_params(step, ckpt_lib.placed(kind.abstract_params()))
  finally:
    ckpts.close()
  architecture = family.export_architecture(kind.cfg.head)
  tensors = to_hf(family, architecture, kind.cfg, params)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.normpath(out_dir))}.tmp-',
                         dir=os.path.dirname(os.path.abspath(out_dir)))
  try:
    tokenizer = _tokenizer_files(data_lib.cache_dir(config, workdir), tmp, family, kind.cfg.max_len)
    hf_config = family.hf_config(kind.cfg, architecture)
    hf.write(tmp, {**hf_config, **_token_ids(tmp, hf_config)} if tokenizer else hf_config, tensors)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty (checked above)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  note = ('' if tokenizer else f'the tokenizer was not exported: the run\'s tokenizer '
          f'({config.data.tokenizer}) has no Hugging Face form in {data_lib.cache_dir(config, workdir)}')
  return {'directory': out_dir, 'architecture': architecture, 'step': step, 'tokenizer': tokenizer, 'note': note}


def to_hf(family: table.Family, architecture: str, cfg, params) -> dict[str, np.ndarray]:
  """{Hugging Face key: array} of ``params`` (scanned or unrolled) through ``architecture``'s table;
  every parameter must have a rule (nothing is left behind)."""
  params = blocks.to_unrolled(jax.device_get(params))
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  rules = [r for r in family.table(cfg, architecture) if r.paths]
  missing = [p for r in rules for p in r.paths if p not in flat]
  left = sorted(set(flat) - {p for r in rules for p in r.paths})
  if missing or left:
    raise errors.ConfigError(f'this model does not match the {architecture} table: '
                             + (f'it lacks {", ".join(missing[:8])}' if missing else '')
                             + ('; ' if missing and left else '')
                             + (f'{", ".join(left[:8])} have no Hugging Face key' if left else '') + '.')
  return {family.key(r, architecture): np.asarray(r.to_theirs(flat, cfg)) for r in rules}


def _check_out(out_dir: str) -> None:
  if os.path.isfile(out_dir) or (os.path.isdir(out_dir) and os.listdir(out_dir)):
    raise errors.ConfigError(f'--out={out_dir} exists and is not empty; give a new directory (nothing was written).')
  parent = os.path.dirname(os.path.abspath(out_dir))
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise errors.ConfigError(f'--out={out_dir}: its parent directory {parent} does not exist or cannot be written.')


def _vocab_size(ckpts: ckpt_lib.Checkpoints, step: int) -> int:
  """The vocabulary the checkpoint was trained with: the rows of its token embedding."""
  try:
    meta = ckpts.manager.item_metadata(step)['params']
    return int(meta['token_embed']['embedding'].shape[0])
  except (KeyError, TypeError) as e:
    raise ckpt_lib.CheckpointError(f'checkpoint step {step} in {ckpts.directory} has no token_embed/embedding '
                                   f'({type(e).__name__}); it is not a model llm_jax can export.') from None


def _hf_tokenizer_json(cache: str) -> Optional[str]:
  """The first .json file in ``cache`` that is a ``tokenizers`` library tokenizer (has 'model'
  and 'added_tokens'), or None. llm_jax's own tokenizer.json there is a spec, not this."""
  for name in sorted(os.listdir(cache)):
    path = os.path.join(cache, name)
    if not name.endswith('.json') or not os.path.isfile(path) or os.path.getsize(path) > _MAX_JSON_BYTES:
      continue
    try:
      with open(path, encoding='utf-8') as f:
        spec = json.load(f)
    except (ValueError, UnicodeDecodeError, OSError):
      continue
    if isinstance(spec, dict) and isinstance(spec.get('model'), dict) and 'added_tokens' in spec:
      return path
  return None


def _tokenizer_files(cache: str, out: str, family: table.Family, max_len: int) -> list[str]:
  """Copies the Hugging Face tokenizer files of ``cache`` into ``out``; returns their names there."""
  if not os.path.isdir(cache):
    return []
  written = []
  vocab = os.path.join(cache, VOCAB)
  if os.path.isfile(vocab):
    shutil.copyfile(vocab, os.path.join(out, VOCAB))
    written.append(VOCAB)
  spec = _hf_tokenizer_json(cache)
  if spec:
    shutil.copyfile(spec, os.path.join(out, TOKENIZER_JSON))
    written.append(TOKENIZER_JSON)
  if not written:
    return []
  for name in COPIED:
    if os.path.isfile(os.path.join(cache, name)):
      shutil.copyfile(os.path.join(cache, name), os.path.join(out, name))
      written.append(name)
  if COPIED[0] not in written:
    tokens = _vocabulary(out)
    specials = {k: v for k, v in SPECIAL_TOKENS.items() if v in tokens}
    roles = _json(os.path.join(cache, SPEC_FILE)).get('special_tokens') or {}  # llm_jax's saved tokenizer's
    specials.update({f'{role}_token': name for role, name in roles.items() if name in tokens})
    settings = {'tokenizer_class': family.tokenizer_class, 'do_lower_case': _lowercase(out, tokens),
                'model_max_length': max_len, **specials}
    with open(os.path.join(out, COPIED[0]), 'w', encoding='utf-8') as f:
      json.dump(settings, f, indent=2, sort_keys=True)
    written.append(COPIED[0])
  return sorted(written)


def _json(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError, UnicodeDecodeError):
    return {}
  return value if isinstance(value, dict) else {}


def _token_ids(out: str, hf_config: dict) -> dict:
  """{'bos_token_id': id, 'eos_token_id': id, ...} of the exported tokenizer, for the fields
  ``hf_config`` has (the decoders': generation stops at eos)."""
  settings = _json(os.path.join(out, COPIED[0]))
  vocab = {}
  if os.path.isfile(os.path.join(out, TOKENIZER_JSON)):
    spec = _json(os.path.join(out, TOKENIZER_JSON))
    model = spec.get('model') or {}
    vocab = dict(model['vocab']) if isinstance(model.get('vocab'), dict) else {}
    vocab.update({t['content']: t['id'] for t in spec.get('added_tokens', [])})
  out_ids = {}
  for role in ('bos', 'eos', 'pad'):
    name = settings.get(f'{role}_token') or (settings.get('cls_token') if role == 'bos' else None)
    if f'{role}_token_id' in hf_config and name in vocab:
      out_ids[f'{role}_token_id'] = vocab[name]
  return out_ids


def _vocabulary(out: str) -> set[str]:
  if os.path.isfile(os.path.join(out, VOCAB)):
    with open(os.path.join(out, VOCAB), encoding='utf-8') as f:
      return {line.rstrip('\n') for line in f}
  with open(os.path.join(out, TOKENIZER_JSON), encoding='utf-8') as f:
    spec = json.load(f)
  vocab = spec['model'].get('vocab', {})
  return set(vocab) if isinstance(vocab, dict) else {str(v[0]) for v in vocab}


def _lowercase(out: str, tokens: set[str]) -> bool:
  """Whether the tokenizer lowercases: its normalizer says so, or (vocab.txt alone) no ordinary
  token has an upper-case letter."""
  if os.path.isfile(os.path.join(out, TOKENIZER_JSON)):
    with open(os.path.join(out, TOKENIZER_JSON), encoding='utf-8') as f:
      normalizer = json.load(f).get('normalizer') or {}
    if 'lowercase' in normalizer:
      return bool(normalizer['lowercase'])
  return not any(t != t.lower() for t in tokens if not (t.startswith('[') and t.endswith(']')))
