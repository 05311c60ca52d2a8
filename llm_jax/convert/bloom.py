"""BLOOM (``model_type`` 'bloom') as a table: Hugging Face's ``BloomModel`` and ``BloomForCausalLM``
<-> the 'decoder' kind with ALiBi (``pos_encoding='alibi'``).

BLOOM is pre-LN with biases, a LayerNorm right after the word embeddings (llm_jax's
``embed_norm``), no position table (ALiBi biases the attention scores), a final norm
(ln_f), a tied output projection, an MLP of 4·D with BLOOM's gelu (the tanh
approximation). ``self_attention.query_key_value`` is one Linear [3·N·H, D] whose output
modeling_bloom.py views as [N, 3, H]: query, key and value interleaved per head, split
here into three [D, N, H] parameters (and its bias [3·N·H] into three [N, H]).

Unconvertible: ``apply_residual_connection_post_layernorm`` true (the residual taken
after the norm). ``pretraining_tp`` with ``slow_but_exact`` only splits the same sums.
BLOOM has no position limit; ``max_len`` (the KV cache) is free, 2048 unless given.
"""

from llm_jax.convert import causal
from llm_jax.convert import table
from llm_jax.convert.table import HEADS_OUT, Mismatch, Rule, Transform
from llm_jax.models.layers import TransformerConfig

MAX_LEN = 2048  # from_pretrained's KV cache length when config.json names none (seq_length)


def _interleaved(a, cfg: TransformerConfig):
  """[D, 3·N·H] (output viewed as [N, 3, H]) -> query, key, value [D, N, H]."""
  w = a.reshape(a.shape[0], cfg.num_heads, 3, cfg.head_dim)
  return w[:, :, 0], w[:, :, 1], w[:, :, 2]


def _interleave(parts):
  return table.xp(*parts).stack(parts, axis=-2)


QKV_PER_HEAD = Transform('qkv_per_head', lambda a, cfg: _interleaved(a.T, cfg),
                         lambda parts, cfg: _interleave(parts).reshape(parts[0].shape[0], -1).T)
QKV_PER_HEAD_BIAS = Transform('qkv_per_head_bias', lambda a, cfg: tuple(p[0] for p in _interleaved(a[None], cfg)),
                              lambda parts, cfg: _interleave(parts).reshape(-1))
LAYOUT = (('pos_encoding', 'alibi'), ('norm', 'layernorm'), ('norm_placement', 'pre'), ('use_bias', True),
          ('embed_norm', True), ('embed_scale', False), ('mlp_activation', 'gelu_tanh'))


_norm = table.norm_rules


def _dense(ours: str, theirs: str) -> list[Rule]:
  return table.dense_rules(ours, f'{ours}_bias', theirs)


@table.register
class Bloom(causal.CausalFamily):
  model_type = 'bloom'
  prefix = 'transformer.'
  base_architecture = 'BloomModel'
  lm_architecture = 'BloomForCausalLM'
  LAYOUT = LAYOUT
  free = ('max_len',)

  def layer_rules(self) -> list[Rule]:
    hf, ours = 'h.{i}', 'layer_{i}'
    attention = tuple(f'{ours}/attention/{name}' for name in ('query', 'key', 'value'))
    return [
        *_norm(f'{ours}/attention_norm', f'{hf}.input_layernorm'),
        Rule(attention, f'{hf}.self_attention.query_key_value.weight', QKV_PER_HEAD),
        Rule(tuple(f'{p}_bias' for p in attention), f'{hf}.self_attention.query_key_value.bias', QKV_PER_HEAD_BIAS),
        Rule(f'{ours}/attention/out', f'{hf}.self_attention.dense.weight', HEADS_OUT),
        Rule(f'{ours}/attention/out_bias', f'{hf}.self_attention.dense.bias'),
        *_norm(f'{ours}/mlp_norm', f'{hf}.post_attention_layernorm'),
        *_dense(f'{ours}/mlp/wi', f'{hf}.mlp.dense_h_to_4h'),
        *_dense(f'{ours}/mlp/wo', f'{hf}.mlp.dense_4h_to_h'),
    ]

  def other_rules(self, cfg: TransformerConfig) -> list[Rule]:
    return [*self.output_rules(cfg, 'word_embeddings.weight'), *_norm('embed_norm', 'word_embeddings_layernorm'),
            *_norm('final_norm', 'ln_f')]

  def sizes(self, hf_config: dict, source: str) -> dict:
    get = lambda *keys: causal.get(hf_config, source, *keys)
    width, heads = get('hidden_size', 'n_embed'), get('n_head', 'num_attention_heads')
    return dict(vocab_size=get('vocab_size'), num_layers=get('n_layer', 'num_hidden_layers'), num_heads=heads,
                num_kv_heads=heads, emb_dim=width, head_dim=width // heads, mlp_dim=4 * width,
                max_len=hf_config.get('seq_length') or MAX_LEN, norm_eps=get('layer_norm_epsilon'),
                tie_embeddings=hf_config.get('tie_word_embeddings', True))

  def unconvertible(self, hf_config: dict) -> list[Mismatch]:
    return causal.flag(hf_config, 'apply_residual_connection_post_layernorm', True, False)

  def limits(self, cfg: TransformerConfig) -> list[str]:
    out = self.full_heads(cfg)
    if cfg.mlp_dim != 4 * cfg.emb_dim:
      out.append(f'config.model.mlp_dim={cfg.mlp_dim} (bloom has 4 * emb_dim = {4 * cfg.emb_dim})')
    return out

  def hf_config(self, cfg: TransformerConfig, architecture: str) -> dict:
    return {
        'architectures': [architecture], 'model_type': self.model_type, 'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.emb_dim, 'n_layer': cfg.num_layers, 'n_head': cfg.num_heads,
        'layer_norm_epsilon': cfg.norm_eps, 'hidden_dropout': cfg.dropout_rate,
        'attention_dropout': cfg.attention_dropout_rate, 'initializer_range': cfg.init_std,
        'apply_residual_connection_post_layernorm': False, 'pretraining_tp': 1, 'slow_but_exact': False,
        'seq_length': cfg.max_len, 'tie_word_embeddings': cfg.tie_embeddings, 'bos_token_id': None,
        'eos_token_id': None, 'dtype': 'float32',
    }
