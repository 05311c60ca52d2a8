"""What the decoder families (``gpt2``, ``bloom``, ``llama``) share: ``CausalFamily``, a
``table.Family`` of the 'decoder' kind (head 'lm') whose config comparison comes from
the one description of a checkpoint's model that ``from_pretrained`` builds too.

A decoder family gives, beside its rules and ``hf_config``:

- ``LAYOUT``: the (TransformerConfig field, value) pairs every model of its type has;
- ``sizes(hf_config, source)``: the other fields, read from config.json (None where the
  file holds a value llm_jax cannot take; ``unconvertible`` then names it);
- ``unconvertible(hf_config)``: the settings llm_jax does not compute, one ``Mismatch``
  each with no fix ('scale_attn_by_inverse_layer_idx', 'rope_scaling', ...);
- ``limits(cfg)``: what of a model's sizes the type cannot express (export);
- ``free``: fields any value of which fits the checkpoint (``max_len`` of rotary and ALiBi
  models only sizes the KV cache).

From these: ``model_fields`` (LAYOUT + sizes, or one ConfigError line naming every
unconvertible setting), ``mismatches`` (the unconvertible settings, then each field that
differs from the model's config with the flag that fixes it), ``unfit`` (LAYOUT fields the
model has otherwise, then ``limits``), and ``output_rules``: the token embedding and,
when untied, ``lm_head`` [D, V] from ``lm_head.weight`` [V, D] (tied: a copy that must
equal the embedding where a checkpoint stores it).
"""

import abc
from typing import ClassVar

from llm_jax import errors
from llm_jax.convert import table
from llm_jax.convert.table import LINEAR, Mismatch, Rule
from llm_jax.models.layers import TransformerConfig

_DERIVED = ('head', 'causal', 'num_classes', 'type_vocab_size')  # set by the model kind, not from config.json


class CausalFamily(table.Family):
  """A Hugging Face causal LM type <-> model.kind 'decoder' (see the module docstring)."""
  kind = 'decoder'
  lm_architecture: ClassVar[str]                 # the class with the LM head (GPT2LMHeadModel)
  LAYOUT: ClassVar[tuple[tuple[str, object], ...]]
  free: ClassVar[tuple[str, ...]] = ()

  @abc.abstractmethod
  def sizes(self, hf_config: dict, source: str) -> dict:
    """The TransformerConfig fields config.json sets beside LAYOUT."""

  @abc.abstractmethod
  def unconvertible(self, hf_config: dict) -> list[Mismatch]:
    """config.json's settings that llm_jax does not compute (each a Mismatch without fix)."""

  @abc.abstractmethod
  def limits(self, cfg: TransformerConfig) -> list[str]:
    """What of ``cfg``'s sizes this type cannot express, as 'config.model.X=... (TYPE has ...)'."""

  # ---- derived ------------------------------------------------------------------------------

  @property
  def architectures(self) -> dict[str, tuple[str, ...]]:
    return {self.base_architecture: (), self.lm_architecture: ('lm',)}

  def output_rules(self, cfg: TransformerConfig, embedding: str) -> list[Rule]:
    """The token embedding (key ``embedding``) and the output projection, tied or not as ``cfg`` says."""
    if cfg.tie_embeddings:
      return [Rule('token_embed/embedding', embedding, copies=('lm_head.weight',))]
    return [Rule('token_embed/embedding', embedding), Rule('lm_head', 'lm_head.weight', LINEAR, group='lm', base=False)]

  def fields(self, hf_config: dict, source: str) -> dict:
    return {**dict(self.LAYOUT), **self.sizes(hf_config, source), 'type_vocab_size': 0}

  def model_fields(self, hf_config: dict, head: str, source: str) -> dict:
    problems = self.unconvertible(hf_config)
    if problems:
      raise errors.ConfigError(f'{source}: config.json sets {"; ".join(f"{m.what}={m.theirs!r}" for m in problems)}, '
                               f'which llm_jax does not compute; this {self.model_type} checkpoint cannot be converted.')
    return dict(self.fields(hf_config, source), head='lm', causal=True, num_classes=0)

  def mismatches(self, hf_config: dict, cfg: TransformerConfig, architecture: str, source: str) -> list[Mismatch]:
    found = self.unconvertible(hf_config)
    theirs = self.fields(hf_config, source)
    for name, value in theirs.items():
      if value is None or name in self.free or name in _DERIVED:
        continue
      ours = getattr(cfg, name)
      if name == 'vocab_size':
        found += table.vocab(ours, value, source)
      elif name == 'num_kv_heads':
        found += table.field(name, ours, value, fix_value=-1 if value == theirs['num_heads'] else None)
      elif name == 'head_dim':
        if cfg.emb_dim == theirs['emb_dim'] and cfg.num_heads == theirs['num_heads']:
          derived = theirs['emb_dim'] // theirs['num_heads']
          found += table.field(name, ours, value, fix_value=-1 if value == derived else None)
      else:
        found += table.field(name, ours, value, close=isinstance(value, float))
    return found

  def unfit(self, cfg: TransformerConfig) -> list[str]:
    out = [f'config.model.{name}={getattr(cfg, name)!r} ({self.model_type} has {value!r})'
           for name, value in self.LAYOUT if getattr(cfg, name) != value]
    if cfg.type_vocab_size:
      out.append(f'config.model.type_vocab_size={cfg.type_vocab_size} ({self.model_type} has no token types)')
    return out + self.limits(cfg)

  def full_heads(self, cfg: TransformerConfig) -> list[str]:
    """``limits`` of a type whose heads are emb_dim / num_heads wide, one key/value head per query head."""
    out = []
    if cfg.num_kv_heads != cfg.num_heads:
      out.append(f'config.model.num_kv_heads={cfg.num_kv_heads} ({self.model_type} has one per query head, '
                 f'{cfg.num_heads})')
    if cfg.num_heads * cfg.head_dim != cfg.emb_dim:
      out.append(f'config.model.head_dim={cfg.head_dim} ({self.model_type} has emb_dim / num_heads = '
                 f'{cfg.emb_dim // cfg.num_heads})')
    return out

  def export_architecture(self, head: str) -> str:
    return self.lm_architecture

  def default_head(self, architecture: str) -> str:
    return 'lm'


def get(hf_config: dict, source: str, *keys: str):
  """config.json's value under the first of ``keys`` it holds (old spellings after the current
  one); ConfigError naming the first when it holds none."""
  for key in keys:
    if key in hf_config:
      return hf_config[key]
  raise errors.ConfigError(f'{source}: config.json has no {keys[0]!r}, which the model needs; re-download the '
                           'model or add it.')


def flag(hf_config: dict, key: str, unsupported, default) -> list[Mismatch]:
  """[Mismatch] when config.json's ``key`` (``default`` when absent) is ``unsupported``."""
  value = hf_config.get(key, default)
  return [Mismatch(key, default, value, '')] if value == unsupported else []
