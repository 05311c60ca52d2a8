"""Vaswani et al. (2017), Attention Is All You Need, Table 3 rows (B), (C) and (D): key size, depth,
width, feed-forward width, dropout and label smoothing around the base model. Rows (A) (heads) and
(E) (learned positions) are the attention_heads and positions studies. See README.md."""

from llm_jax.experiments import Claim, Study
from llm_jax.experiments import presets

# Table 3, newstest2013 dev perplexity / BLEU (base: 4.92 / 25.8, dropout 0.1, label smoothing 0.1)
PUBLISHED = {'base': '4.92 / 25.8', 'key_size_small': '5.16 / 25.1 (d_k 16)', 'key_size_half': '5.01 / 25.4 (d_k 32)',
             'layers_fewer': '6.11 / 23.7 (N 2)', 'layers_more': '4.88 / 25.5 (N 8)',
             'width_half': '5.75 / 24.5 (d_model 256)', 'width_double': '4.66 / 26.0 (d_model 1024)',
             'ff_half': '5.12 / 25.4 (d_ff 1024)', 'ff_double': '4.75 / 26.2 (d_ff 4096)',
             'dropout_none': '5.77 / 24.6 (0.0)', 'dropout_more': '4.95 / 25.5 (0.2)',
             'smoothing_none': '4.67 / 25.3 (0.0)', 'smoothing_more': '5.47 / 25.7 (0.2)'}


def get_study(scale):
  if scale == 'cpu':  # base: the CPU preset (2 layers, width 128, 8 heads of 16, FFN 512, no dropout or smoothing)
    config, overrides = presets.CONFIG_CPU, presets.cpu_char_lm()
    # the base has no dropout or smoothing, so those rows go up from it where the paper's go down to 0
    variants = {
        'base': {}, 'key_size_small': {'model.head_dim': 4}, 'key_size_half': {'model.head_dim': 8},
        'layers_fewer': {'model.num_layers': 1}, 'layers_more': {'model.num_layers': 4},
        'width_half': {'model.emb_dim': 64, 'model.mlp_dim': 256}, 'width_double': {'model.emb_dim': 256, 'model.mlp_dim': 1024},
        'ff_half': {'model.mlp_dim': 256}, 'ff_double': {'model.mlp_dim': 1024},
        'dropout_base': {'model.dropout_rate': 0.1}, 'dropout_more': {'model.dropout_rate': 0.2},
        'smoothing_base': {'train.label_smoothing': 0.1}, 'smoothing_more': {'train.label_smoothing': 0.2}}
    published = {**{k: v for k, v in PUBLISHED.items() if not k.startswith(('dropout_none', 'smoothing_none'))},
                 'dropout_base': '4.92 / 25.8 (0.1; 0.0: 5.77)', 'smoothing_base': '4.92 / 25.8 (0.1; 0.0: 4.67)'}
    no_dropout, no_smoothing, dropout, smoothing = 'base', 'base', 'dropout_base', 'smoothing_base'
  else:  # their base model on WMT14 en-de: width 512, 6+6 layers, 8 heads of 64, FFN 2048, dropout 0.1, smoothing 0.1
    config, overrides = presets.CONFIG_TRANSFORMER, {}
    layers = lambda n: {'model.num_layers': n, 'model.num_decoder_layers': n}
    variants = {
        'base': {}, 'key_size_small': {'model.head_dim': 16}, 'key_size_half': {'model.head_dim': 32},
        'layers_fewer': layers(2), 'layers_more': layers(8),
        'width_half': {'model.emb_dim': 256, 'model.mlp_dim': 1024}, 'width_double': {'model.emb_dim': 1024, 'model.mlp_dim': 4096},
        'ff_half': {'model.mlp_dim': 1024}, 'ff_double': {'model.mlp_dim': 4096},
        'dropout_none': {'model.dropout_rate': 0.0}, 'dropout_more': {'model.dropout_rate': 0.2},
        'smoothing_none': {'train.label_smoothing': 0.0}, 'smoothing_more': {'train.label_smoothing': 0.2}}
    published = PUBLISHED
    no_dropout, no_smoothing, dropout, smoothing = 'dropout_none', 'smoothing_none', 'base', 'base'
  return Study(
      name='transformer_table3',
      paper='Vaswani et al. (2017), *Attention Is All You Need*, Table 3 (B)-(D): smaller keys hurt; bigger models '
            'are better; dropout helps; label smoothing raises perplexity.',
      config=config, overrides=overrides, variants=variants, seeds=(0, 1), metric='eval_loss', published=published,
      claims=[Claim('key_size_small', '>', 'base', '(B) smaller key size worse'),
              Claim('key_size_small', '>', 'key_size_half', '(B) the smallest key size worst'),
              Claim('layers_fewer', '>', 'base', '(C) fewer layers worse'),
              Claim('layers_more', '<', 'base', '(C) more layers better'),
              Claim('width_half', '>', 'base', '(C) narrower worse'),
              Claim('width_double', '<', 'base', '(C) wider better'),
              Claim('ff_half', '>', 'base', '(C) smaller FFN worse'),
              Claim('ff_double', '<', 'base', '(C) bigger FFN better'),
              Claim(no_dropout, '>', dropout, '(D) no dropout worse than 0.1'),
              Claim(smoothing, '>', no_smoothing, '(D) label smoothing 0.1 raises perplexity'),
              Claim('smoothing_more', '>', smoothing, '(D) 0.2 raises it more')])
