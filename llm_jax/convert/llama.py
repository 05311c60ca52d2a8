"""Llama (``model_type`` 'llama') and Mistral ('mistral') as tables: Hugging Face's ``LlamaModel``,
``LlamaForCausalLM``, ``MistralModel`` and ``MistralForCausalLM`` <-> the 'decoder' kind with
rotary positions, RMSNorm and SwiGLU.

Pre-norm blocks without biases; grouped-query heads (``num_key_value_heads``) of
``head_dim`` (config.json's, else hidden_size / heads); rotary positions of base
``rope_theta`` (config.json's ``rope_parameters`` in transformers 5, ``rope_theta``
before). Hugging Face's Llama checkpoints rotate the pairs (x_i, x_{i+H/2}) as
``rotate_half`` does, the pairing ``layers.apply_rope`` uses, so q_proj and k_proj load
as they are. The MLP is down(silu(gate(x)) · up(x)): gate_proj is llm_jax's
``mlp/wi_gate``, up_proj ``mlp/wi``, down_proj ``mlp/wo``. The output projection is
untied unless ``tie_word_embeddings``.

Unconvertible: ``rope_scaling`` (any rope type but 'default'), ``attention_bias`` or
``mlp_bias`` true, a ``hidden_act`` other than silu, and for Mistral a ``sliding_window``
shorter than ``max_position_embeddings`` (llm_jax attends to every earlier token). Since
the rotation only needs positions, ``max_len`` (the KV cache) is free. An llm_jax model
of this layout exports as Llama.
"""

from llm_jax.convert import causal
from llm_jax.convert import table
from llm_jax.convert.table import HEADS_IN, HEADS_OUT, LINEAR, Mismatch, Rule
from llm_jax.models.layers import TransformerConfig

LAYOUT = (('pos_encoding', 'rope'), ('norm', 'rmsnorm'), ('norm_placement', 'pre'), ('use_bias', False),
          ('embed_norm', False), ('embed_scale', False), ('mlp_activation', 'swiglu'))
DEFAULT_THETA = 10000.0


def _theta(hf_config: dict) -> float:
  """The rotary base: rope_parameters' (transformers 5), else rope_theta (before), else 10000."""
  return float((hf_config.get('rope_parameters') or {}).get('rope_theta', hf_config.get('rope_theta', DEFAULT_THETA)))


def _scaling(hf_config: dict) -> list[dict]:
  """The rope scalings config.json asks for (rope_scaling, or rope_parameters of a type but 'default')."""
  out = []
  for key in ('rope_scaling', 'rope_parameters'):
    rope = hf_config.get(key) or {}
    if rope and rope.get('rope_type', rope.get('type', 'default')) != 'default':
      out.append({k: v for k, v in rope.items() if k != 'rope_theta'})
  return out


@table.register
class Llama(causal.CausalFamily):
  model_type = 'llama'
  prefix = 'model.'
  base_architecture = 'LlamaModel'
  lm_architecture = 'LlamaForCausalLM'
  buffers = ('layers.{i}.self_attn.rotary_emb.inv_freq', 'rotary_emb.inv_freq')
  LAYOUT = LAYOUT
  free = ('max_len',)

  def layer_rules(self) -> list[Rule]:
    hf, ours = 'layers.{i}', 'layer_{i}'
    return [
        Rule(f'{ours}/attention_norm/scale', f'{hf}.input_layernorm.weight'),
        *[Rule(f'{ours}/attention/{name}', f'{hf}.self_attn.{p}_proj.weight', HEADS_IN)
          for name, p in (('query', 'q'), ('key', 'k'), ('value', 'v'))],
        Rule(f'{ours}/attention/out', f'{hf}.self_attn.o_proj.weight', HEADS_OUT),
        Rule(f'{ours}/mlp_norm/scale', f'{hf}.post_attention_layernorm.weight'),
        Rule(f'{ours}/mlp/wi_gate', f'{hf}.mlp.gate_proj.weight', LINEAR),
        Rule(f'{ours}/mlp/wi', f'{hf}.mlp.up_proj.weight', LINEAR),
        Rule(f'{ours}/mlp/wo', f'{hf}.mlp.down_proj.weight', LINEAR),
    ]

  def other_rules(self, cfg: TransformerConfig) -> list[Rule]:
    return [*self.output_rules(cfg, 'embed_tokens.weight'), Rule('final_norm/scale', 'norm.weight')]

  def sizes(self, hf_config: dict, source: str) -> dict:
    get = lambda *keys: causal.get(hf_config, source, *keys)
    width, heads = get('hidden_size'), get('num_attention_heads')
    return dict(vocab_size=get('vocab_size'), num_layers=get('num_hidden_layers'), num_heads=heads,
                num_kv_heads=hf_config.get('num_key_value_heads') or heads, emb_dim=width,
                head_dim=hf_config.get('head_dim') or width // heads, mlp_dim=get('intermediate_size'),
                max_len=get('max_position_embeddings'), norm_eps=get('rms_norm_eps'),
                rope_theta=_theta(hf_config),
                tie_embeddings=hf_config.get('tie_word_embeddings', False))

  def unconvertible(self, hf_config: dict) -> list[Mismatch]:
    out = [Mismatch('rope_scaling', None, scaling, '') for scaling in _scaling(hf_config)[:1]]
    if hf_config.get('hidden_act', 'silu') != 'silu':
      out.append(Mismatch('hidden_act', 'silu', hf_config['hidden_act'], ''))
    return out + causal.flag(hf_config, 'attention_bias', True, False) + causal.flag(hf_config, 'mlp_bias', True, False)

  def limits(self, cfg: TransformerConfig) -> list[str]:
    return []

  def hf_config(self, cfg: TransformerConfig, architecture: str) -> dict:
    return {
        'architectures': [architecture], 'model_type': self.model_type, 'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.emb_dim, 'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
        'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim,
        'max_position_embeddings': cfg.max_len, 'rms_norm_eps': cfg.norm_eps, 'hidden_act': 'silu',
        'rope_parameters': {'rope_type': 'default', 'rope_theta': cfg.rope_theta},
        'attention_bias': False, 'mlp_bias': False, 'attention_dropout': cfg.attention_dropout_rate,
        'initializer_range': cfg.init_std, 'tie_word_embeddings': cfg.tie_embeddings, 'bos_token_id': None,
        'eos_token_id': None, 'dtype': 'float32',
    }


@table.register
class Mistral(Llama):
  """Llama's table under Mistral's names; import only (a model of this layout exports as Llama)."""
  model_type = 'mistral'
  base_architecture = 'MistralModel'
  lm_architecture = 'MistralForCausalLM'
  exports = False

  def unconvertible(self, hf_config: dict) -> list[Mismatch]:
    window, length = hf_config.get('sliding_window'), hf_config.get('max_position_embeddings')
    out = super().unconvertible(hf_config)
    if window is not None and length is not None and window < length:
      out.append(Mismatch('sliding_window', None, window, ''))
    return out
