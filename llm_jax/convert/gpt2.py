"""GPT-2 (``model_type`` 'gpt2') as a table: Hugging Face's ``GPT2Model`` and ``GPT2LMHeadModel``
<-> the 'decoder' kind (``llm_jax/models/decoder.py``).

A GPT-2 is llm_jax's default decoder layout: learned positions, pre-LN blocks with
biases and a final norm (ln_f), a tied output projection (``lm_head.weight`` is ``wte``),
activation 'gelu_new' (the tanh approximation, llm_jax's 'gelu_tanh'). Its Conv1D layers
keep weights as [in, out], llm_jax's own order; ``attn.c_attn`` fuses query, key and value
into one [D, 3D] weight (q | k | v, contiguous) and one [3D] bias, split here into three
parameters of [D, N, H] and [N, H].

Unconvertible: ``scale_attn_weights`` false and ``scale_attn_by_inverse_layer_idx`` true
(scores scaled other than by 1/sqrt(H)), ``add_cross_attention``. ``reorder_and_upcast_attn``
changes only the order of float32 operations and converts. The causal-mask buffers of old
checkpoints (``attn.bias``, ``attn.masked_bias``) are not parameters and are skipped.
"""

from llm_jax.convert import causal
from llm_jax.convert import table
from llm_jax.convert.table import ACTIVATIONS, EXPORTED_ACTIVATIONS, Mismatch, Rule, Transform
from llm_jax.models.layers import TransformerConfig


def _qkv_widths(cfg: TransformerConfig) -> tuple[int, int]:
  return cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim


def _split(a, cfg: TransformerConfig, shape):
  """The q | k | v blocks of ``a``'s last axis, each reshaped by ``shape(block)``."""
  q, kv = _qkv_widths(cfg)
  return tuple(shape(b) for b in (a[..., :q], a[..., q:q + kv], a[..., q + kv:]))


def _join(parts, flat):
  return table.xp(*parts).concatenate([flat(p) for p in parts], axis=-1)


# c_attn.weight [D, (N + 2K)·H] <-> (query [D, N, H], key [D, K, H], value [D, K, H]); the bias [(N + 2K)·H] <-> [N, H] ...
QKV_COLUMNS = Transform('qkv_columns', lambda a, cfg: _split(a, cfg, lambda b: b.reshape(a.shape[0], -1, cfg.head_dim)),
                        lambda parts, cfg: _join(parts, lambda p: p.reshape(p.shape[0], -1)))
QKV_COLUMNS_BIAS = Transform('qkv_columns_bias', lambda a, cfg: _split(a, cfg, lambda b: b.reshape(-1, cfg.head_dim)),
                             lambda parts, cfg: _join(parts, lambda p: p.reshape(-1)))
# c_proj.weight of attention [N·H, D] (already [in, out]) <-> out [N, H, D].
CONV_HEADS_OUT = Transform('conv_heads_out', lambda a, cfg: a.reshape(-1, cfg.head_dim, a.shape[-1]),
                           lambda a, cfg: a.reshape(-1, a.shape[-1]))
LAYOUT = (('pos_encoding', 'learned'), ('norm', 'layernorm'), ('norm_placement', 'pre'), ('use_bias', True),
          ('embed_norm', False), ('embed_scale', False))


_norm = table.norm_rules


@table.register
class Gpt2(causal.CausalFamily):
  model_type = 'gpt2'
  prefix = 'transformer.'
  base_architecture = 'GPT2Model'
  lm_architecture = 'GPT2LMHeadModel'
  buffers = ('h.{i}.attn.bias', 'h.{i}.attn.masked_bias')
  LAYOUT = LAYOUT

  def layer_rules(self) -> list[Rule]:
    hf, ours = 'h.{i}', 'layer_{i}'
    attention = tuple(f'{ours}/attention/{name}' for name in ('query', 'key', 'value'))
    return [
        *_norm(f'{ours}/attention_norm', f'{hf}.ln_1'),
        Rule(attention, f'{hf}.attn.c_attn.weight', QKV_COLUMNS),
        Rule(tuple(f'{p}_bias' for p in attention), f'{hf}.attn.c_attn.bias', QKV_COLUMNS_BIAS),
        Rule(f'{ours}/attention/out', f'{hf}.attn.c_proj.weight', CONV_HEADS_OUT),
        Rule(f'{ours}/attention/out_bias', f'{hf}.attn.c_proj.bias'),
        *_norm(f'{ours}/mlp_norm', f'{hf}.ln_2'),
        Rule(f'{ours}/mlp/wi', f'{hf}.mlp.c_fc.weight'),
        Rule(f'{ours}/mlp/wi_bias', f'{hf}.mlp.c_fc.bias'),
        Rule(f'{ours}/mlp/wo', f'{hf}.mlp.c_proj.weight'),
        Rule(f'{ours}/mlp/wo_bias', f'{hf}.mlp.c_proj.bias'),
    ]

  def other_rules(self, cfg: TransformerConfig) -> list[Rule]:
    return [*self.output_rules(cfg, 'wte.weight'), Rule('position_embed/embedding', 'wpe.weight'),
            *_norm('final_norm', 'ln_f')]

  def sizes(self, hf_config: dict, source: str) -> dict:
    get = lambda *keys: causal.get(hf_config, source, *keys)
    width, heads = get('n_embd', 'hidden_size'), get('n_head', 'num_attention_heads')
    return dict(vocab_size=get('vocab_size'), num_layers=get('n_layer', 'num_hidden_layers'), num_heads=heads,
                num_kv_heads=heads, emb_dim=width, head_dim=width // heads, mlp_dim=hf_config.get('n_inner') or 4 * width,
                max_len=get('n_positions', 'max_position_embeddings'), norm_eps=get('layer_norm_epsilon'),
                mlp_activation=ACTIVATIONS.get(hf_config.get('activation_function', 'gelu_new')),
                tie_embeddings=hf_config.get('tie_word_embeddings', True))

  def unconvertible(self, hf_config: dict) -> list[Mismatch]:
    act = hf_config.get('activation_function', 'gelu_new')
    out = [] if act in ACTIVATIONS else [Mismatch('activation_function', 'gelu_new', act, '')]
    return (out + causal.flag(hf_config, 'scale_attn_weights', False, True)
            + causal.flag(hf_config, 'scale_attn_by_inverse_layer_idx', True, False)
            + causal.flag(hf_config, 'add_cross_attention', True, False))

  def limits(self, cfg: TransformerConfig) -> list[str]:
    out = self.full_heads(cfg)
    if cfg.mlp_activation not in EXPORTED_ACTIVATIONS:
      out.append(f'config.model.mlp_activation={cfg.mlp_activation!r} (gpt2 has one of '
                 f'{", ".join(EXPORTED_ACTIVATIONS)})')
    return out

  def hf_config(self, cfg: TransformerConfig, architecture: str) -> dict:
    return {
        'architectures': [architecture], 'model_type': self.model_type, 'vocab_size': cfg.vocab_size,
        'n_embd': cfg.emb_dim, 'n_layer': cfg.num_layers, 'n_head': cfg.num_heads, 'n_inner': cfg.mlp_dim,
        'n_positions': cfg.max_len, 'layer_norm_epsilon': cfg.norm_eps,
        'activation_function': EXPORTED_ACTIVATIONS.get(cfg.mlp_activation), 'resid_pdrop': cfg.dropout_rate,
        'embd_pdrop': cfg.dropout_rate, 'attn_pdrop': cfg.attention_dropout_rate, 'initializer_range': cfg.init_std,
        'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False, 'reorder_and_upcast_attn': False,
        'tie_word_embeddings': cfg.tie_embeddings, 'bos_token_id': None, 'eos_token_id': None, 'dtype': 'float32',
    }
