"""BERT (``model_type`` 'bert') as a table: Hugging Face's ``BertModel`` and its heads <-> the
'encoder' kind (``llm_jax/models/encoder.py``).

The layouts agree one to one once a config fits (``mismatches``): post-LN blocks with
biases, learned absolute positions, token types, a norm after the embeddings. The MLM
decoder is the token embedding transposed in both (Hugging Face ties
``cls.predictions.decoder.weight`` to it and its bias to ``cls.predictions.bias``;
older checkpoints store both copies, which must then be equal). Hugging Face's
activation 'gelu' is the erf form, llm_jax's 'gelu_exact'.

Which groups each architecture's checkpoints hold:

  BertModel                        body, pooler
  BertForMaskedLM                  body, mlm
  BertForSequenceClassification    body, pooler, classifier
  BertForPreTraining               body, pooler, mlm, nsp (next-sentence head: no llm_jax counterpart)

An import accepts any of them whatever ``architectures`` says (bert-base-uncased is a
``BertForMaskedLM`` that still holds the pooler and next-sentence head of pretraining);
an export writes exactly its architecture's groups.
"""

from llm_jax import errors
from llm_jax.convert import table
from llm_jax.convert.table import ACTIVATIONS, COPY, EXPORTED_ACTIVATIONS, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR
from llm_jax.convert.table import Mismatch, Rule
from llm_jax.models.layers import TransformerConfig

# What every BERT is, whatever its size: (TransformerConfig field, value).
LAYOUT = (('norm', 'layernorm'), ('norm_placement', 'post'), ('embed_norm', True), ('use_bias', True),
          ('pos_encoding', 'learned'), ('embed_scale', False))
HEADS = {'mlm': 'BertForMaskedLM', 'classify': 'BertForSequenceClassification', 'none': 'BertModel'}


_norm = table.norm_rules


def _dense(ours: str, theirs: str, group: str = 'body', base: bool = True) -> list[Rule]:
  return table.dense_rules(f'{ours}/kernel', f'{ours}/bias', theirs, group, base)


@table.register
class Bert(table.Family):
  model_type = 'bert'
  kind = 'encoder'
  prefix = 'bert.'
  base_architecture = 'BertModel'
  architectures = {'BertModel': ('pooler',), 'BertForMaskedLM': ('mlm',),
                   'BertForSequenceClassification': ('pooler', 'classifier'),
                   'BertForPreTraining': ('pooler', 'mlm', 'nsp')}
  buffers = ('embeddings.position_ids', 'embeddings.token_type_ids')
  tokenizer_class = 'BertTokenizer'
  renames = (('LayerNorm.gamma', 'LayerNorm.weight'), ('LayerNorm.beta', 'LayerNorm.bias'))

  def layer_rules(self) -> list[Rule]:
    hf, ours = 'encoder.layer.{i}', 'layer_{i}'
    rules = []
    for name in ('query', 'key', 'value'):
      rules += [Rule(f'{ours}/attention/{name}', f'{hf}.attention.self.{name}.weight', HEADS_IN),
                Rule(f'{ours}/attention/{name}_bias', f'{hf}.attention.self.{name}.bias', HEADS_BIAS)]
    return rules + [
        Rule(f'{ours}/attention/out', f'{hf}.attention.output.dense.weight', HEADS_OUT),
        Rule(f'{ours}/attention/out_bias', f'{hf}.attention.output.dense.bias'),
        *_norm(f'{ours}/attention_norm', f'{hf}.attention.output.LayerNorm'),
        Rule(f'{ours}/mlp/wi', f'{hf}.intermediate.dense.weight', LINEAR),
        Rule(f'{ours}/mlp/wi_bias', f'{hf}.intermediate.dense.bias'),
        Rule(f'{ours}/mlp/wo', f'{hf}.output.dense.weight', LINEAR),
        Rule(f'{ours}/mlp/wo_bias', f'{hf}.output.dense.bias'),
        *_norm(f'{ours}/mlp_norm', f'{hf}.output.LayerNorm'),
    ]

  def other_rules(self, cfg: TransformerConfig) -> list[Rule]:
    return [
        Rule('token_embed/embedding', 'embeddings.word_embeddings.weight', copies=('cls.predictions.decoder.weight',)),
        Rule('position_embed/embedding', 'embeddings.position_embeddings.weight'),
        Rule('type_embed/embedding', 'embeddings.token_type_embeddings.weight'),
        *_norm('embed_norm', 'embeddings.LayerNorm'),
        *_dense('pooler', 'pooler.dense', group='pooler'),
        *_dense('mlm_transform', 'cls.predictions.transform.dense', group='mlm', base=False),
        *_norm('mlm_norm', 'cls.predictions.transform.LayerNorm', group='mlm', base=False),
        Rule('mlm_bias', 'cls.predictions.bias', COPY, group='mlm', base=False, copies=('cls.predictions.decoder.bias',)),
        *_dense('classifier', 'classifier', group='classifier', base=False),
        Rule(None, 'cls.seq_relationship.weight', group='nsp', base=False),
        Rule(None, 'cls.seq_relationship.bias', group='nsp', base=False),
    ]

  def mismatches(self, hf_config: dict, cfg: TransformerConfig, architecture: str, source: str) -> list[Mismatch]:
    get = lambda key: _get(hf_config, key, source)
    heads, width = get('num_attention_heads'), get('hidden_size')
    act = get('hidden_act')
    out = []
    out += table.vocab(cfg.vocab_size, get('vocab_size'), source)
    out += table.field('num_layers', cfg.num_layers, get('num_hidden_layers'))
    out += table.field('emb_dim', cfg.emb_dim, width)
    out += table.field('num_heads', cfg.num_heads, heads)
    out += table.field('num_kv_heads', cfg.num_kv_heads, cfg.num_heads, fix_value=-1)
    if cfg.emb_dim == width and cfg.num_heads == heads:
      out += table.field('head_dim', cfg.head_dim, width // heads, fix_value=-1)
    out += table.field('mlp_dim', cfg.mlp_dim, get('intermediate_size'))
    out += table.field('max_len', cfg.max_len, get('max_position_embeddings'))
    out += table.field('type_vocab_size', cfg.type_vocab_size, get('type_vocab_size'))
    out += table.field('norm_eps', cfg.norm_eps, get('layer_norm_eps'), close=True)
    if act in ACTIVATIONS:
      out += table.field('mlp_activation', cfg.mlp_activation, ACTIVATIONS[act])
    else:
      out.append(Mismatch('hidden_act', cfg.mlp_activation, act, ''))
    for name, value in LAYOUT:
      out += table.field(name, getattr(cfg, name), value)
    position = hf_config.get('position_embedding_type', 'absolute')
    if position != 'absolute':
      out.append(Mismatch('position_embedding_type', 'absolute', position, ''))
    if hf_config.get('is_decoder') or hf_config.get('add_cross_attention'):
      out.append(Mismatch('is_decoder', False, True, ''))
    if 'classifier' in self.architectures[architecture] and cfg.head == 'classify':
      labels = len(hf_config['id2label']) if hf_config.get('id2label') else hf_config.get('num_labels', 2)
      out += table.field('num_classes', cfg.num_classes, labels)
    return out

  def unfit(self, cfg: TransformerConfig) -> list[str]:
    out = [f'config.model.{name}={getattr(cfg, name)!r} (BERT has {value!r})'
           for name, value in LAYOUT if getattr(cfg, name) != value]
    if cfg.mlp_activation not in EXPORTED_ACTIVATIONS:
      out.append(f'config.model.mlp_activation={cfg.mlp_activation!r} (BERT has one of '
                 f'{", ".join(EXPORTED_ACTIVATIONS)})')
    if cfg.num_kv_heads != cfg.num_heads:
      out.append(f'config.model.num_kv_heads={cfg.num_kv_heads} (BERT has one per query head, {cfg.num_heads})')
    if cfg.num_heads * cfg.head_dim != cfg.emb_dim:
      out.append(f'config.model.head_dim={cfg.head_dim} (BERT has emb_dim / num_heads = '
                 f'{cfg.emb_dim // cfg.num_heads})')
    if not cfg.type_vocab_size:
      out.append('config.model.type_vocab_size=0 (BERT has token-type embeddings)')
    if cfg.head not in HEADS:
      out.append(f'config.model.head={cfg.head!r} (BERT has {", ".join(HEADS)})')
    return out

  def hf_config(self, cfg: TransformerConfig, architecture: str) -> dict:
    config = {
        'architectures': [architecture], 'model_type': self.model_type,
        'vocab_size': cfg.vocab_size, 'hidden_size': cfg.emb_dim, 'num_hidden_layers': cfg.num_layers,
        'num_attention_heads': cfg.num_heads, 'intermediate_size': cfg.mlp_dim,
        'hidden_act': EXPORTED_ACTIVATIONS[cfg.mlp_activation], 'hidden_dropout_prob': cfg.dropout_rate,
        'attention_probs_dropout_prob': cfg.attention_dropout_rate, 'max_position_embeddings': cfg.max_len,
        'type_vocab_size': cfg.type_vocab_size, 'initializer_range': cfg.init_std, 'layer_norm_eps': cfg.norm_eps,
        'position_embedding_type': 'absolute', 'pad_token_id': 0, 'tie_word_embeddings': True,
        'dtype': 'float32',
    }
    if 'classifier' in self.architectures[architecture]:
      config['id2label'] = {str(i): f'LABEL_{i}' for i in range(cfg.num_classes)}
      config['label2id'] = {f'LABEL_{i}': i for i in range(cfg.num_classes)}
      config['problem_type'] = 'single_label_classification'
    return config

  def export_architecture(self, head: str) -> str:
    return HEADS[head]

  def default_head(self, architecture: str) -> str:
    return {'BertForSequenceClassification': 'classify', 'BertModel': 'none'}.get(architecture, 'mlm')

  def model_fields(self, hf_config: dict, head: str, source: str) -> dict:
    get = lambda key: _get(hf_config, key, source)
    act = get('hidden_act')
    if act not in ACTIVATIONS:
      raise errors.ConfigError(f'{source}: hidden_act {act!r} has no llm_jax counterpart (it has '
                               f'{", ".join(sorted(ACTIVATIONS))}); this checkpoint cannot be converted.')
    labels = len(hf_config['id2label']) if hf_config.get('id2label') else hf_config.get('num_labels', 2)
    return dict(dict(LAYOUT), vocab_size=get('vocab_size'), num_layers=get('num_hidden_layers'),
                num_heads=get('num_attention_heads'), num_kv_heads=get('num_attention_heads'),
                emb_dim=get('hidden_size'), head_dim=get('hidden_size') // get('num_attention_heads'),
                mlp_dim=get('intermediate_size'), max_len=get('max_position_embeddings'),
                type_vocab_size=get('type_vocab_size'), norm_eps=get('layer_norm_eps'),
                mlp_activation=ACTIVATIONS[act], tie_embeddings=True, causal=False, head=head,
                num_classes=labels if head == 'classify' else 0)


def _get(hf_config: dict, key: str, source: str):
  if key not in hf_config:
    raise errors.ConfigError(f'{source}: config.json has no {key!r}, which a BERT config holds; re-download '
                             'the model or add it.')
  return hf_config[key]
