"""Reference BERTs from ``transformers`` (PyTorch, CPU, float32) and the llm_jax model built by hand
to match them; shared by the convert tests.

Random reference weights are large (init std 0.5, and every norm scale and bias moved off
1 and 0) so that a wrong transpose, a swapped scale and bias or a wrong activation changes
the argmax, not just the fifth decimal.
"""

import flax.linen as nn
import jax
import numpy as np
import torch
import transformers

from llm_jax.models import kinds
from llm_jax.models.layers import TransformerConfig

VOCAB, WIDTH, LAYERS, HEADS, MLP, POSITIONS = 300, 64, 2, 4, 128, 64
TOLERANCE = 1e-4


def hf_config(**overrides) -> transformers.BertConfig:
  fields = dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=MLP, max_position_embeddings=POSITIONS, type_vocab_size=2,
                initializer_range=0.5, hidden_act='gelu', layer_norm_eps=1e-12)
  fields.update(overrides)
  return transformers.BertConfig(**fields)


def random_bert(cls, directory, seed: int = 0, **overrides):
  """A ``cls`` (BertForMaskedLM, ...) with large random weights, saved as safetensors to ``directory``."""
  torch.manual_seed(seed)
  model = cls(hf_config(**overrides)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'LayerNorm' in name or name.endswith('bias'):
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(str(directory), safe_serialization=True)
  return model


def bert_cfg(hf: transformers.BertConfig, head: str, **overrides) -> TransformerConfig:
  """The llm_jax encoder that ``hf`` is, written out field by field (not through llm_jax.convert)."""
  fields = dict(vocab_size=hf.vocab_size, num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
                num_kv_heads=hf.num_attention_heads, emb_dim=hf.hidden_size,
                head_dim=hf.hidden_size // hf.num_attention_heads, mlp_dim=hf.intermediate_size,
                max_len=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size, norm_eps=hf.layer_norm_eps,
                mlp_activation={'gelu': 'gelu_exact', 'gelu_new': 'gelu_tanh'}[hf.hidden_act],
                pos_encoding='learned', norm_placement='post', embed_norm=True, use_bias=True, tie_embeddings=True,
                causal=False, head=head, num_classes=hf.num_labels if head == 'classify' else 0,
                attention_kernel='xla')
  fields.update(overrides)
  return TransformerConfig(**fields)


def fresh(kind, length: int = 8):
  """The kind's freshly initialized parameters (unboxed, as the trainer holds them)."""
  return nn.meta.unbox(kind.init(jax.random.key(1), kind.example_batch(1, length))['params'])


def build(hf: transformers.BertConfig, head: str, **overrides):
  kind = kinds.build('encoder', bert_cfg(hf, head, **overrides))
  return kind, fresh(kind)


def padded_batch(seed: int = 0, batch: int = 4, length: int = 16, vocab: int = VOCAB):
  """(ids, attention_mask, token_types) [B, T]: rows of different lengths padded with 0 at the end,
  token types 0 then 1 (a sentence pair) on the real tokens."""
  rng = np.random.default_rng(seed)
  lengths = np.linspace(length, 3, batch).astype(int)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  ids = rng.integers(5, vocab, (batch, length)) * mask
  types = ((np.arange(length)[None] >= (lengths // 2)[:, None]) * mask).astype(np.int64)
  return ids, mask, types


def ours(kind, params, ids, mask, types):
  """llm_jax's output for a padded batch: segment ids 1 on real tokens and 0 on padding, positions 0..T-1."""
  b, t = ids.shape
  positions = np.broadcast_to(np.arange(t), (b, t))
  out = kind.module.apply({'params': params}, ids.astype(np.int32), positions.astype(np.int32),
                          mask.astype(np.int32), types.astype(np.int32))
  return jax.tree.map(np.asarray, out)


def theirs(model, ids, mask, types):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))


def tolerance(want) -> float:
  """TOLERANCE for values up to 5 in magnitude, 2e-5 of the largest beyond: float32 rounding of large
  logits differs by a few ulps between XLA:CPU builds and processors (seen: 1.05e-4 at logits of 10)."""
  return TOLERANCE * max(1.0, float(np.abs(want).max()) / 5)


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
