"""What a converter table is made of, and the registry of model families.

A ``Family`` is one Hugging Face model type (``config.json``'s ``model_type``, e.g.
'bert') written as data: the ``Rule`` rows that pair each llm_jax parameter path with
its Hugging Face key and the ``Transform`` between their layouts; the architectures
(``BertForMaskedLM`` ...) and which rule groups each one's checkpoints hold; the
tensors that are not parameters (buffers); and the comparison of config.json with
the model's ``TransformerConfig``. The plumbing that applies a table (``load.py``,
``export.py``) knows no family; a family knows no file format (``hf.py``).

Rules are written once per layer with ``{i}`` in both names; ``Family.rules(cfg)``
expands them for ``cfg.num_layers`` layers. Paths are llm_jax's unrolled layout
('layer_0/attention/query'); a scanned model ('layers', a leading layer axis) is
stacked and unstacked by the plumbing. A rule may pair one Hugging Face key with
several parameters (a fused tensor: GPT-2's c_attn holds query, key and value): its
``ours`` is then a tuple of paths and its transform maps one array to a tuple and back.
"""

import abc
import dataclasses
import importlib
import math
import re
from typing import Any, Callable, ClassVar, Optional, Union

import jax.numpy as jnp
import numpy as np

from llm_jax import errors
from llm_jax.models.layers import TransformerConfig

_FAMILIES: dict[str, 'Family'] = {}   # model_type -> family
_MODULES = ('llm_jax.convert.bert', 'llm_jax.convert.gpt2', 'llm_jax.convert.bloom',
            'llm_jax.convert.llama', 'llm_jax.convert.t5')  # each registers its families on import

# Hugging Face's activation names (hidden_act, activation_function) -> mlp_activation. 'gelu_new',
# 'gelu_fast' and 'gelu_pytorch_tanh' are all the tanh approximation, 'gelu' the erf form.
ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_python': 'gelu_exact', 'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
               'gelu_pytorch_tanh': 'gelu_tanh', 'relu': 'relu'}
EXPORTED_ACTIVATIONS = {'gelu_exact': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}


# ----------------------------------------------------------------------------- transforms

@dataclasses.dataclass(frozen=True)
class Transform:
  """How one tensor's layout differs: ``to_ours(theirs, cfg)`` and its inverse ``to_theirs``.

  Both take and return arrays (NumPy, or abstract values under ``jax.eval_shape``), so the
  shape a key must have is ``to_theirs`` of the parameter's shape, checked before any
  reshape can fail. For a rule with several paths (a fused tensor) ``to_ours`` returns a
  tuple in the order of the paths and ``to_theirs`` takes one.
  """
  name: str
  to_ours: Callable[[Any, TransformerConfig], Any]
  to_theirs: Callable[[Any, TransformerConfig], Any]


COPY = Transform('copy', lambda a, cfg: a, lambda a, cfg: a)
# torch.nn.Linear keeps weight [out, in]; llm_jax kernels are [in, out].
LINEAR = Transform('linear', lambda a, cfg: a.T, lambda a, cfg: a.T)
# A query/key/value Linear [N·H, D] is llm_jax's [D, N, H]; its bias [N·H] is [N, H].
HEADS_IN = Transform('heads_in', lambda a, cfg: a.T.reshape(a.shape[1], -1, cfg.head_dim),
                     lambda a, cfg: a.reshape(a.shape[0], -1).T)
HEADS_BIAS = Transform('heads_bias', lambda a, cfg: a.reshape(-1, cfg.head_dim), lambda a, cfg: a.reshape(-1))
# The attention output Linear [D, N·H] is llm_jax's [N, H, D].
HEADS_OUT = Transform('heads_out', lambda a, cfg: a.T.reshape(-1, cfg.head_dim, a.shape[0]),
                      lambda a, cfg: a.reshape(-1, a.shape[-1]).T)


def xp(*arrays):
  """NumPy for NumPy arrays (a checkpoint's tensors stay on the host), jax.numpy for the
  abstract values of a shape check; for transforms that stack or concatenate."""
  return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


@dataclasses.dataclass(frozen=True)
class Rule:
  """One row of a table.

  ours:   llm_jax parameter path ('layer_{i}/mlp/wi'), or a tuple of them for a fused
          tensor; None for a tensor llm_jax has no place for (BERT's next-sentence
          head): consumed and reported unused
  theirs: the Hugging Face key inside the base model, without its prefix ('bert.')
  group:  'body', or the name of a head; an architecture's checkpoints hold some groups
  base:   the key belongs to the base model, so a model with a head prefixes it
  copies: other keys holding the same tensor (tied weights, a duplicated bias): consumed,
          and each one present must equal the tensor used
  """
  ours: Union[None, str, tuple[str, ...]]
  theirs: str
  transform: Transform = COPY
  group: str = 'body'
  base: bool = True
  copies: tuple[str, ...] = ()

  @property
  def paths(self) -> tuple[str, ...]:
    """The llm_jax paths of the rule: () for None, one for a plain tensor, several when fused."""
    return () if self.ours is None else (self.ours,) if isinstance(self.ours, str) else tuple(self.ours)

  def at(self, i: int) -> 'Rule':
    fill = lambda s: s.replace('{i}', str(i))
    ours = self.ours if self.ours is None else fill(self.ours) if isinstance(self.ours, str) else tuple(
        fill(p) for p in self.ours)
    return dataclasses.replace(self, ours=ours, theirs=fill(self.theirs), copies=tuple(fill(c) for c in self.copies))

  def to_ours(self, array, cfg) -> dict:
    """{path: array} of the checkpoint tensor ``array``."""
    out = self.transform.to_ours(array, cfg)
    return dict(zip(self.paths, out if isinstance(self.ours, tuple) else (out,)))

  def to_theirs(self, arrays: dict, cfg):
    """The checkpoint tensor of ``arrays`` ({path: array}, at least this rule's paths)."""
    parts = tuple(arrays[p] for p in self.paths)
    return self.transform.to_theirs(parts if isinstance(self.ours, tuple) else parts[0], cfg)


def norm_rules(ours: str, theirs: str, group: str = 'body', base: bool = True) -> list[Rule]:
  """A LayerNorm's two rules: ``ours``/scale and /bias <- ``theirs``.weight and .bias."""
  return [Rule(f'{ours}/scale', f'{theirs}.weight', group=group, base=base),
          Rule(f'{ours}/bias', f'{theirs}.bias', group=group, base=base)]


def dense_rules(kernel: str, bias: str, theirs: str, group: str = 'body', base: bool = True) -> list[Rule]:
  """A torch Linear's two rules: ``kernel`` [in, out] <- ``theirs``.weight [out, in], ``bias`` <- .bias."""
  return [Rule(kernel, f'{theirs}.weight', LINEAR, group=group, base=base),
          Rule(bias, f'{theirs}.bias', group=group, base=base)]


@dataclasses.dataclass(frozen=True)
class Mismatch:
  """A config field whose value differs: ``what`` ('config.model.num_layers'), ours, theirs
  (as the checkpoint says it), and ``fix`` (the flags that fix it; '' when none can)."""
  what: str
  ours: Any
  theirs: Any
  fix: str

  def __str__(self):
    return f'{self.what}={self.ours!r} (the checkpoint has {self.theirs!r})'


def field(key: str, ours, theirs, fix_value=None, close: bool = False) -> list[Mismatch]:
  """[Mismatch of config.model.``key``] when ours != theirs (``close``: float tolerance), else []."""
  same = math.isclose(ours, theirs, rel_tol=1e-6) if close else ours == theirs
  if same:
    return []
  value = theirs if fix_value is None else fix_value
  return [Mismatch(f'config.model.{key}', ours, theirs, f'--config.model.{key}={value}')]


def vocab(ours: int, theirs: int, source: str) -> list[Mismatch]:
  """[Mismatch] when the model's vocabulary rows differ from the checkpoint's: the fix is the
  checkpoint's tokenizer and its table size (which may exceed the tokenizer's ids: t5-base
  has 32128 rows for 32100 ids)."""
  if ours == theirs:
    return []
  return [Mismatch('the model\'s vocab_size (config.model.vocab_size, -1: the tokenizer\'s ids)', ours, theirs,
                   f'--config.data.tokenizer=pretrained --config.data.tokenizer_path={source} '
                   f'--config.model.vocab_size={theirs}')]


# ----------------------------------------------------------------------------- families

class Family(abc.ABC):
  """One Hugging Face model type as a table (see the module docstring). Subclasses fill in
  the class attributes and the abstract methods below."""
  model_type: ClassVar[str]
  kind: ClassVar[str]                          # the llm_jax model kind it converts to and from
  prefix: ClassVar[str]                        # the base model's key prefix inside a model with a head
  base_architecture: ClassVar[str]             # the architecture without a head (no prefix)
  architectures: ClassVar[dict[str, tuple[str, ...]]]  # class name -> the rule groups its checkpoints hold
  buffers: ClassVar[tuple[str, ...]] = ()      # keys that are not parameters (position_ids), ignored; '{i}': a layer
  renames: ClassVar[tuple[tuple[str, str], ...]] = ()  # old key spellings -> the current ones
  tokenizer_class: ClassVar[str] = 'PreTrainedTokenizerFast'  # tokenizer_config.json's, when export writes one
  exports: ClassVar[bool] = True               # False: import only (Mistral; its models export as Llama)

  @abc.abstractmethod
  def layer_rules(self) -> list[Rule]:
    """Rules with '{i}', one set per layer."""

  @abc.abstractmethod
  def other_rules(self, cfg: TransformerConfig) -> list[Rule]:
    """Rules outside the layers: embeddings, final norms, heads (tied or not as ``cfg`` says)."""

  @abc.abstractmethod
  def mismatches(self, hf_config: dict, cfg: TransformerConfig, architecture: str,
                 source: str) -> list[Mismatch]:
    """How ``cfg`` differs from the checkpoint's config.json (empty: it fits)."""

  @abc.abstractmethod
  def unfit(self, cfg: TransformerConfig) -> list[str]:
    """What in ``cfg`` this family cannot express (export); empty when it can."""

  @abc.abstractmethod
  def hf_config(self, cfg: TransformerConfig, architecture: str) -> dict:
    """config.json for a model of ``cfg`` exported as ``architecture``."""

  @abc.abstractmethod
  def export_architecture(self, head: str) -> str:
    """The architecture an llm_jax model with ``head`` is written as."""

  @abc.abstractmethod
  def default_head(self, architecture: str) -> str:
    """The llm_jax head of an ``architecture`` checkpoint (``from_pretrained``'s default)."""

  @abc.abstractmethod
  def model_fields(self, hf_config: dict, head: str, source: str) -> dict:
    """The ``TransformerConfig`` fields of config.json's model with ``head`` (``from_pretrained``)."""

  # ---- derived ------------------------------------------------------------------------------

  def rules(self, cfg: TransformerConfig, groups: Optional[tuple[str, ...]] = None) -> list[Rule]:
    """The layer-expanded rules of ``groups`` (None: every group, what an import accepts)."""
    rules = [r.at(i) for i in range(cfg.num_layers) for r in self.layer_rules()] + self.other_rules(cfg)
    return [r for r in rules if groups is None or r.group in groups]

  def table(self, cfg: TransformerConfig, architecture: str) -> list[Rule]:
    """The rules an ``architecture`` checkpoint holds: the body plus its groups."""
    return self.rules(cfg, ('body',) + self.architectures[architecture])

  def normalize(self, key: str) -> str:
    """A checkpoint key as the rules spell it: the base prefix dropped, old spellings renamed."""
    if key.startswith(self.prefix):
      key = key[len(self.prefix):]
    for old, new in self.renames:
      if key.endswith(old):
        key = key[:-len(old)] + new
    return key

  def is_buffer(self, name: str) -> bool:
    """Whether the normalized key ``name`` is one of ``buffers`` (where '{i}' stands for any layer)."""
    return any(re.fullmatch(re.escape(b).replace(re.escape('{i}'), r'\d+'), name) for b in self.buffers)

  def key(self, rule: Rule, architecture: str) -> str:
    """The key ``rule`` is written under in an ``architecture`` checkpoint."""
    prefixed = rule.base and architecture != self.base_architecture
    return self.prefix + rule.theirs if prefixed else rule.theirs


def register(cls: type) -> type:
  _FAMILIES[cls.model_type] = cls()
  return cls


def families() -> list[Family]:
  for module in _MODULES:
    importlib.import_module(module)
  return list(_FAMILIES.values())


def supported() -> str:
  """'BertForMaskedLM, BertForSequenceClassification, ...' for messages."""
  return ', '.join(sorted(a for f in families() for a in f.architectures))


def identify(hf_config: dict, directory: str) -> tuple[str, Family]:
  """(architecture, family) of a config.json: its ``architectures`` entry, or the base
  architecture of its ``model_type``. ConfigError naming the supported ones otherwise."""
  by_architecture = {a: f for f in families() for a in f.architectures}
  named = hf_config.get('architectures') or []
  for name in named:
    if name in by_architecture:
      return name, by_architecture[name]
  model_type = hf_config.get('model_type')
  if not named and model_type in _FAMILIES:
    family = _FAMILIES[model_type]
    return family.base_architecture, family
  what = ', '.join(named) if named else f'model_type {model_type!r}'
  raise errors.ConfigError(f'{directory} holds a {what}, which llm_jax cannot convert; it converts '
                           f'{supported()}.')


def exporters(kind: str) -> list[Family]:
  """The families a model of ``kind`` may be exported as; ConfigError when there is none."""
  candidates = [f for f in families() if f.kind == kind and f.exports]
  if not candidates:
    kinds = sorted({f.kind for f in families() if f.exports})
    raise errors.ConfigError(f'model.kind={kind!r} cannot be exported to Hugging Face yet; llm_jax exports '
                             f'model.kind {", ".join(kinds)} ({supported()}).')
  return candidates


def for_export(kind: str, cfg: TransformerConfig) -> Family:
  """The family an llm_jax model of ``kind`` and ``cfg`` is exported as; ConfigError if none fits."""
  problems = []
  for family in exporters(kind):
    unfit = family.unfit(cfg)
    if not unfit:
      return family
    problems.append(f'as {family.model_type}: {"; ".join(unfit)}')
  raise errors.ConfigError('this model has no Hugging Face counterpart: ' + ' | '.join(problems) + '.')
