"""Hugging Face weights into an llm_jax model: ``load_params(source, kind, fresh_params)``.

In this order, each failure one ``ConfigError`` line before any tensor is read:

1. ``source`` is a model directory or a Hub id (``hub.resolve``); its config.json names
   the architecture, whose family (``table.identify``) must convert to ``kind``'s model
   kind;
2. config.json is compared with ``kind.cfg``: every difference in one message, with the
   ``--config`` flags that fix it;
3. each rule of the family pairs a checkpoint key with a parameter (or, for a fused
   tensor such as GPT-2's c_attn, with several): the tensor's shape must be what the
   parameters need (the message names the key and both shapes), tied copies must be
   equal, and every tensor in the file must be consumed by a rule or be a known buffer
   (the count check: nothing is dropped silently), and every tensor of the body (all but
   the heads) must be there.

The result is ``(params, report)``: ``params`` has the tree of ``fresh_params`` (unboxed
arrays, scanned or unrolled), each leaf on the sharding of the fresh leaf it replaces;
``report`` lists '/'-joined paths: 'restored' (from the checkpoint), 'fresh' (parameters
the checkpoint lacks, such as a classifier over an MLM checkpoint: the fresh leaf is
kept), and 'unused' (checkpoint keys, as the file spells them, that this model does
without, such as an MLM head when it classifies).
"""

import os
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from llm_jax import errors
from llm_jax.convert import hf
from llm_jax.convert import hub
from llm_jax.convert import table

SCANNED = 'layers'  # blocks.stack_blocks' name for the stacked layers


def _scanned(path: str):
  """(stack prefix, rest) of a scanned leaf's path ('layers/x' -> ('', 'x'), 'decoder/layers/x' ->
  ('decoder/', 'x')), or None for a leaf outside a scanned stack."""
  parts = path.split('/')
  if SCANNED not in parts:
    return None
  at = parts.index(SCANNED)
  return ''.join(p + '/' for p in parts[:at]), '/'.join(parts[at + 1:])


def _path(keypath) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in keypath)


class Pretrained(NamedTuple):
  """A Hugging Face model in llm_jax: ``kind.module.apply({'params': params}, ids[B, T], ...)``.

  ``tokenizer`` is None when the directory holds none (no tokenizer.json or vocab.txt);
  code that needs one calls ``need_tokenizer(what)``, which raises a one-line ConfigError.
  ``eos_id`` is the token generation stops at: config.json's eos_token_id (the first of a
  list) when it names one, else the tokenizer's end-of-text token; None when neither does.
  """
  kind: Any                  # the ModelKind; kind.cfg is its TransformerConfig
  params: Any
  tokenizer: Optional[Any]   # llm_jax's 'pretrained' tokenizer of the directory (None if it has none)
  report: dict               # load_params' report: 'restored', 'fresh', 'unused'
  eos_id: Optional[int] = None
  source: str = ''           # the directory it was read from

  def need_tokenizer(self, what: str):
    """The tokenizer, or ConfigError: ``what`` ('generation from text') needs one."""
    if self.tokenizer is None:
      raise errors.ConfigError(f'{what} needs a tokenizer and {self.source} has no tokenizer.json or vocab.txt; '
                               'copy the model\'s tokenizer files into it.')
    return self.tokenizer


def from_pretrained(source: str, head: Optional[str] = None, seed: int = 0, **overrides) -> Pretrained:
  """A Hugging Face model directory or Hub id as an llm_jax model, its config taken from config.json:
  ``head`` defaults to the checkpoint's own ('mlm' for BertForMaskedLM, 'none' for BertModel,
  'classify' for BertForSequenceClassification, 'lm' for the decoders); a head the checkpoint
  lacks starts from ``seed``.
  ``overrides`` replace ``TransformerConfig`` fields (``dtype='bfloat16'``, ``attention_kernel``)."""
  from llm_jax.data import tokenizers
  from llm_jax.models import kinds
  from llm_jax.models.layers import TransformerConfig
  import flax.linen as nn
  directory = hub.resolve(source, 'from_pretrained')
  hf_config = hf.read_config(directory)
  architecture, family = table.identify(hf_config, directory)
  head = head or family.default_head(architecture)
  cfg = TransformerConfig(**{**family.model_fields(hf_config, head, directory), **overrides})
  kind = kinds.build(family.kind, cfg)
  fresh = nn.meta.unbox(jax.jit(kind.init)(jax.random.key(seed), kind.example_batch(1, 8))['params'])
  params, report = load_params(directory, kind, fresh, what='from_pretrained')
  tokenizer = None
  if any(os.path.exists(os.path.join(directory, f)) for f in (tokenizers.SPEC_FILE, tokenizers.VOCAB_FILE)):
    tokenizer = tokenizers.tokenizer_class('pretrained').train((), tokenizer_path=directory)
  eos = tokenizers.config_eos_id(hf_config)
  eos = eos if eos is not None else getattr(tokenizer, 'eos_id', None)
  return Pretrained(kind, params, tokenizer, report, eos, directory)


def load_params(source: str, kind, fresh_params, what: str = 'config.init_from') -> tuple[Any, dict]:
  """(params, report) of ``fresh_params``' tree from the Hugging Face model ``source`` (see the
  module docstring). ``kind`` is the model's ``ModelKind``; ``what`` names the setting in messages."""
  directory = hub.resolve(source, what)
  hf_config = hf.read_config(directory)
  architecture, family = table.identify(hf_config, directory)
  if family.kind != kind.name:
    raise errors.ConfigError(
        f'{what}={source!r} holds a {architecture} (model.kind {family.kind!r}) but this config trains '
        f'model.kind={kind.name!r}; set --config.model.kind={family.kind} (and a model.head of that kind) or start '
        f'from a {kind.name} checkpoint.')
  check_config(family, hf_config, kind.cfg, architecture, directory)
  weights = hf.open_weights(directory)
  leaves = {_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(fresh_params)[0]}
  targets = _unrolled_shapes(leaves)
  converted, unused = convert(family, weights, kind.cfg, targets)
  return _assemble(fresh_params, leaves, converted, unused)


def check_config(family: table.Family, hf_config: dict, cfg, architecture: str, directory: str) -> None:
  """ConfigError listing every field where ``cfg`` differs from config.json, with the fixing flags."""
  found = family.mismatches(hf_config, cfg, architecture, directory)
  if not found:
    return
  fixes = ' '.join(m.fix for m in found if m.fix)
  unfixable = [m.what for m in found if not m.fix]
  message = f'{directory} holds a {architecture} that differs from this model: ' + '; '.join(map(str, found)) + '.'
  if fixes:
    message += f' Set {fixes}.'
  if unfixable:
    message += f' llm_jax has no setting for {", ".join(unfixable)}: this checkpoint cannot be converted.'
  raise errors.ConfigError(message)


def _unrolled_shapes(leaves: dict) -> dict[str, tuple[int, ...]]:
  """{unrolled path: shape} of the model's parameters; a scanned leaf 'layers/x' [L, ...] is
  'layer_{i}/x' [...] for each layer."""
  out = {}
  for path, leaf in leaves.items():
    scanned = _scanned(path)
    if scanned:
      stack, rest = scanned
      out.update({f'{stack}layer_{i}/{rest}': tuple(leaf.shape[1:]) for i in range(leaf.shape[0])})
    else:
      out[path] = tuple(leaf.shape)
  return out


def convert(family: table.Family, weights: hf.Weights, cfg, targets: dict) -> tuple[dict, list[str]]:
  """({unrolled path: float32 array}, unused keys): every rule applied to ``weights``, with the
  shape, tied-copy and count checks (module docstring)."""
  keys: dict[str, str] = {}
  for key in weights.keys():
    name = family.normalize(key)
    if name in keys:
      raise errors.ConfigError(f'{weights.description} holds both {keys[name]} and {key}, the same tensor '
                               'spelt twice; keep one.')
    keys[name] = key
  rules = family.rules(cfg)
  known = {p for r in rules for p in r.paths}
  unknown = sorted(p for p in targets if p not in known)
  if unknown:
    raise errors.ConfigError(f'the model has parameters the {family.model_type} table has no rule for: '
                             f'{", ".join(unknown[:8])}; its config does not fit the {family.model_type} layout.')
  converted, unused, consumed = {}, [], set()
  for rule in rules:
    present = [name for name in (rule.theirs,) + rule.copies if name in keys]
    if not present:
      continue
    consumed.update(present)
    wanted = [p for p in rule.paths if p in targets]
    if not wanted:
      unused.append(keys[present[0]])
      continue
    if len(wanted) < len(rule.paths):
      lacks = ', '.join(p for p in rule.paths if p not in targets)
      raise errors.ConfigError(f'the model has {", ".join(wanted)} but not {lacks}, which {keys[present[0]]} '
                               f'holds together; its config does not fit the {family.model_type} layout.')
    array = _checked(weights, keys, present, rule, cfg, {p: targets[p] for p in rule.paths})
    converted.update({p: np.asarray(a, np.float32) for p, a in rule.to_ours(array, cfg).items()})
  lacking = [r.theirs for r in rules
             if r.group == 'body' and any(p in targets and p not in converted for p in r.paths)]
  if lacking:
    raise errors.ConfigError(f'{weights.description} lacks {", ".join(lacking[:8])}'
                             f'{" ..." if len(lacking) > 8 else ""}, which every {family.model_type} model holds; '
                             're-download the model.')
  left = sorted(keys[n] for n in keys if n not in consumed and not family.is_buffer(n))
  if left:
    raise errors.ConfigError(
        f'{weights.description} holds {len(left)} tensors the {family.model_type} table does not know: '
        f'{", ".join(left[:8])}{" ..." if len(left) > 8 else ""}; they would be dropped silently, so nothing was '
        f'loaded (a rule for them belongs in {type(family).__module__}).')
  return converted, sorted(unused)


def _checked(weights: hf.Weights, keys: dict, present: list[str], rule: table.Rule, cfg, shapes: dict) -> np.ndarray:
  """The tensor of ``rule`` after its shape check (``shapes``: {path: shape} of its parameters);
  tied copies must equal it."""
  abstract = {p: jax.ShapeDtypeStruct(shape, np.float32) for p, shape in shapes.items()}
  want = jax.eval_shape(lambda a: rule.to_theirs(a, cfg), abstract).shape
  ours = ', '.join(f'{p} {tuple(shape)}' for p, shape in shapes.items())
  for name in present:
    have = weights.shape(keys[name])
    if tuple(have) != tuple(want):
      raise errors.ConfigError(f'{weights.description}: {keys[name]} has shape {tuple(have)}, but {ours} '
                               f'need{"s" if len(shapes) == 1 else ""} {tuple(want)}; the weights do not match '
                               'their config.json.')
  array = weights.get(keys[present[0]])
  for name in present[1:]:
    if not np.array_equal(weights.get(keys[name]), array):
      raise errors.ConfigError(f'{weights.description}: {keys[name]} differs from {keys[present[0]]}; llm_jax '
                               f'holds one tensor for both ({rule.ours}), so this checkpoint cannot be loaded.')
  return array


def _assemble(fresh_params, leaves: dict, converted: dict, unused: list[str]):
  restored, fresh, placed = [], [], {}
  for path, leaf in leaves.items():
    scanned = _scanned(path)
    if scanned:
      stack, rest = scanned
      num_layers = leaf.shape[0]
      parts = [converted.get(f'{stack}layer_{i}/{rest}') for i in range(num_layers)]
      found = sum(p is not None for p in parts)
      if found not in (0, num_layers):
        raise errors.ConfigError(f'the checkpoint holds {path} for {found} of {num_layers} layers; give a '
                                 'complete checkpoint.')
      array = np.stack(parts) if found else None
    else:
      array = converted.get(path)
    if array is None:
      fresh.append(path)
      continue
    restored.append(path)
    sharding = getattr(leaf, 'sharding', None)
    array = array.astype(leaf.dtype)
    placed[path] = jax.device_put(array, sharding) if sharding is not None else jax.numpy.asarray(array)
  params = jax.tree_util.tree_map_with_path(lambda p, leaf: placed.get(_path(p), leaf), fresh_params)
  return params, {'restored': sorted(restored), 'fresh': sorted(fresh), 'unused': unused}
