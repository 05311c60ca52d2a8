"""T5 (``model_type`` 't5') as a table: Hugging Face's ``T5Model`` / ``T5ForConditionalGeneration``
<-> the 'encoder_decoder' kind (``llm_jax/models/encoder_decoder.py``).

Both layouts convert: the original T5 (t5-small/base: ReLU feed-forward, tied output
rescaled by d_model^-0.5) and T5 v1.1 / flan-t5 (``feed_forward_proj='gated-gelu'``: a
gated tanh-GELU whose ``wi_0`` is llm_jax's ``wi_gate`` and ``wi_1`` its ``wi``; an untied
``lm_head``; no rescaling). config.json says both: ``tie_word_embeddings`` (false: an
untied ``lm_head``) and ``scale_decoder_outputs`` (transformers 5; older files imply it
from the tying, which is what the published v1.1 checkpoints do). Every T5 has RMS norms without bias before each sublayer and at the end of
each stack, no biases, no attention scaling, and one relative position table per stack,
which Hugging Face keeps in the stack's first layer. ``shared.weight`` is the token
embedding of both stacks (``encoder.embed_tokens`` / ``decoder.embed_tokens`` are copies)
and, tied, the output projection (``lm_head.weight`` a copy too).

  T5Model                       body
  T5ForConditionalGeneration    body, lm (the untied lm_head; tied models hold a copy)
"""

from llm_jax import errors
from llm_jax.convert import table
from llm_jax.convert.table import COPY, HEADS_IN, HEADS_OUT, LINEAR, Mismatch, Rule
from llm_jax.models.layers import TransformerConfig

# What every T5 is, whatever its size: (TransformerConfig field, value).
LAYOUT = (('norm', 'rmsnorm'), ('norm_placement', 'pre'), ('use_bias', False), ('pos_encoding', 't5_relative'),
          ('attention_scale', False), ('embed_norm', False), ('embed_scale', False),
          ('type_vocab_size', 0))
# feed_forward_proj -> mlp_activation (Hugging Face: 'gated-gelu' is gelu_new, the tanh form; 'gelu' the erf form).
FEED_FORWARD = {'relu': 'relu', 'gated-gelu': 'geglu', 'gated-silu': 'swiglu', 'gelu': 'gelu_exact'}
EXPORTED_FEED_FORWARD = {v: k for k, v in FEED_FORWARD.items()}
ARCHITECTURE = 'T5ForConditionalGeneration'


def _attention(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f'{ours}/query', f'{theirs}.q.weight', HEADS_IN), Rule(f'{ours}/key', f'{theirs}.k.weight', HEADS_IN),
          Rule(f'{ours}/value', f'{theirs}.v.weight', HEADS_IN), Rule(f'{ours}/out', f'{theirs}.o.weight', HEADS_OUT)]


def _feed_forward(ours: str, theirs: str, gated: bool) -> list[Rule]:
  up = ([Rule(f'{ours}/wi_gate', f'{theirs}.wi_0.weight', LINEAR), Rule(f'{ours}/wi', f'{theirs}.wi_1.weight', LINEAR)]
        if gated else [Rule(f'{ours}/wi', f'{theirs}.wi.weight', LINEAR)])
  return up + [Rule(f'{ours}/wo', f'{theirs}.wo.weight', LINEAR)]


def _norm(ours: str, theirs: str) -> Rule:
  return Rule(f'{ours}/scale', f'{theirs}.weight')


@table.register
class T5(table.Family):
  model_type = 't5'
  kind = 'encoder_decoder'
  prefix = ''
  base_architecture = 'T5Model'
  architectures = {'T5Model': (), ARCHITECTURE: ('lm',)}
  tokenizer_class = 'T5TokenizerFast'

  def layer_rules(self) -> list[Rule]:
    """Unused: a T5's two stacks differ in depth and layout, so ``rules`` expands each itself."""
    return []

  def _stack_rules(self, side: str, layers: int, cfg: TransformerConfig) -> list[Rule]:
    gated = cfg.mlp_activation in ('geglu', 'swiglu')
    rules = [Rule(f'{side}/relative_bias/embedding', f'{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'),
             _norm(f'{side}/final_norm', f'{side}.final_layer_norm')]
    for i in range(layers):
      ours, hf = f'{side}/layer_{i}', f'{side}.block.{i}.layer'
      rules += _attention(f'{ours}/attention', f'{hf}.0.SelfAttention') + [_norm(f'{ours}/attention_norm', f'{hf}.0.layer_norm')]
      ff = 1
      if side == 'decoder':
        rules += _attention(f'{ours}/cross_attention', f'{hf}.1.EncDecAttention')
        rules.append(_norm(f'{ours}/cross_attention_norm', f'{hf}.1.layer_norm'))
        ff = 2
      rules += _feed_forward(f'{ours}/mlp', f'{hf}.{ff}.DenseReluDense', gated)
      rules.append(_norm(f'{ours}/mlp_norm', f'{hf}.{ff}.layer_norm'))
    return rules

  def other_rules(self, cfg: TransformerConfig) -> list[Rule]:
    copies = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
    if cfg.tie_embeddings:
      return [Rule('token_embed/embedding', 'shared.weight', COPY, copies=copies + ('lm_head.weight',))]
    return [Rule('token_embed/embedding', 'shared.weight', COPY, copies=copies),
            Rule('lm_head', 'lm_head.weight', LINEAR, group='lm')]

  def rules(self, cfg: TransformerConfig, groups=None) -> list[Rule]:
    rules = (self._stack_rules('encoder', cfg.num_layers, cfg)
             + self._stack_rules('decoder', cfg.num_decoder_layers or cfg.num_layers, cfg) + self.other_rules(cfg))
    return [r for r in rules if groups is None or r.group in groups]

  def mismatches(self, hf_config: dict, cfg: TransformerConfig, architecture: str, source: str) -> list[Mismatch]:
    fields = self.model_fields(hf_config, cfg.head, source)
    out = []
    out += table.vocab(cfg.vocab_size, fields['vocab_size'], source)
    flags = {'num_decoder_layers': cfg.num_decoder_layers or cfg.num_layers}
    for name in ('num_layers', 'num_decoder_layers', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                 'relative_buckets', 'relative_max_distance', 'mlp_activation', 'tie_embeddings', 'rescale_output'):
      out += table.field(name, flags.get(name, getattr(cfg, name)), fields[name])
    out += table.field('num_kv_heads', cfg.num_kv_heads, cfg.num_heads, fix_value=-1)
    out += table.field('norm_eps', cfg.norm_eps, fields['norm_eps'], close=True)
    for name, value in LAYOUT:
      out += table.field(name, getattr(cfg, name), value)
    return out

  def unfit(self, cfg: TransformerConfig) -> list[str]:
    out = [f'config.model.{name}={getattr(cfg, name)!r} (T5 has {value!r})'
           for name, value in LAYOUT if getattr(cfg, name) != value]
    if cfg.mlp_activation not in EXPORTED_FEED_FORWARD:
      out.append(f'config.model.mlp_activation={cfg.mlp_activation!r} (T5 has one of '
                 f'{", ".join(EXPORTED_FEED_FORWARD)})')
    if cfg.num_kv_heads != cfg.num_heads:
      out.append(f'config.model.num_kv_heads={cfg.num_kv_heads} (T5 has one per query head, {cfg.num_heads})')
    return out

  def hf_config(self, cfg: TransformerConfig, architecture: str) -> dict:
    return {
        'architectures': [architecture], 'model_type': self.model_type, 'is_encoder_decoder': True,
        'vocab_size': cfg.vocab_size, 'd_model': cfg.emb_dim, 'd_kv': cfg.head_dim, 'd_ff': cfg.mlp_dim,
        'num_layers': cfg.num_layers, 'num_decoder_layers': cfg.num_decoder_layers or cfg.num_layers,
        'num_heads': cfg.num_heads, 'relative_attention_num_buckets': cfg.relative_buckets,
        'relative_attention_max_distance': cfg.relative_max_distance, 'dropout_rate': cfg.dropout_rate,
        'layer_norm_epsilon': cfg.norm_eps, 'feed_forward_proj': EXPORTED_FEED_FORWARD[cfg.mlp_activation],
        'tie_word_embeddings': cfg.tie_embeddings, 'scale_decoder_outputs': cfg.rescale_output,
        'initializer_factor': 1.0, 'n_positions': cfg.max_len,
        'pad_token_id': 0, 'eos_token_id': 1, 'decoder_start_token_id': 0, 'dtype': 'float32',
    }

  def export_architecture(self, head: str) -> str:
    return ARCHITECTURE

  def default_head(self, architecture: str) -> str:
    return 'lm'

  def model_fields(self, hf_config: dict, head: str, source: str) -> dict:
    get = lambda key, default=None: _get(hf_config, key, source, default)
    proj = get('feed_forward_proj', 'relu')
    if proj not in FEED_FORWARD:
      raise errors.ConfigError(f'{source}: feed_forward_proj {proj!r} has no llm_jax counterpart (it has '
                               f'{", ".join(FEED_FORWARD)}); this checkpoint cannot be converted.')
    heads = get('num_heads')
    tied = hf_config.get('tie_word_embeddings', True) is not False
    return dict(dict(LAYOUT), vocab_size=get('vocab_size'), num_layers=get('num_layers'),
                num_decoder_layers=hf_config.get('num_decoder_layers') or get('num_layers'), num_heads=heads,
                num_kv_heads=heads, emb_dim=get('d_model'), head_dim=get('d_kv'), mlp_dim=get('d_ff'),
                relative_buckets=get('relative_attention_num_buckets', 32),
                relative_max_distance=get('relative_attention_max_distance', 128),
                norm_eps=get('layer_norm_epsilon', 1e-6), mlp_activation=FEED_FORWARD[proj],
                tie_embeddings=tied, rescale_output=bool(hf_config.get('scale_decoder_outputs', tied)),
                max_len=int(hf_config.get('n_positions') or 512), causal=False, head=head)


def _get(hf_config: dict, key: str, source: str, default=None):
  if key in hf_config:
    return hf_config[key]
  if default is not None:
    return default
  raise errors.ConfigError(f'{source}: config.json has no {key!r}, which a T5 config holds; re-download the model '
                           'or add it.')
