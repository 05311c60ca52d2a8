"""Xiong et al. (2020), On Layer Normalization in the Transformer Architecture: post-LN vs pre-LN,
with and without learning-rate warmup. See README.md."""

from llm_jax.experiments import Claim, Study
from llm_jax.experiments import presets


def get_study(scale):
  if scale == 'cpu':
    # deeper, and at a learning rate where post-LN trains with a warmup and stalls without one
    # (README: 2e-3 trains both ways, 5e-3 neither); width 64 keeps the 6-layer runs short
    steps = 600
    config = presets.CONFIG_CPU
    overrides = presets.cpu_char_lm(steps, **{'model.num_layers': 6, 'model.emb_dim': 64, 'model.num_heads': 4,
                                              'train.learning_rate': 3e-3, 'train.end_learning_rate': 3e-4})
    warmup = steps // 4
  else:  # their base Transformer setup on WMT14 en-de (they report IWSLT14 de-en and WMT14 en-de)
    config, overrides, warmup = presets.CONFIG_TRANSFORMER, {'train.schedule': 'linear',
                                                            'train.learning_rate': 1e-3}, 4000
  variants = {f'{place}_ln_{"warmup" if w else "no_warmup"}': {'model.norm_placement': place,
                                                                'train.warmup_steps': w}
              for place in ('post', 'pre') for w in (warmup, 0)}
  return Study(
      name='layer_norm',
      paper='Xiong et al. (2020), *On Layer Normalization in the Transformer Architecture*: post-LN needs '
            'learning-rate warmup (IWSLT14 BLEU 8.45 without it, about 34 with it); pre-LN trains without '
            'warmup (about 34).',
      config=config, overrides=overrides, variants=variants, seeds=(0, 1), metric='eval_loss',
      published={'post_ln_no_warmup': 'BLEU 8.45', 'post_ln_warmup': 'BLEU ~34', 'pre_ln_no_warmup': 'BLEU ~34'},
      claims=[Claim('post_ln_no_warmup', '>', 'pre_ln_no_warmup', 'post-LN without warmup worse than pre-LN without'),
              Claim('post_ln_no_warmup', '>', 'post_ln_warmup', 'post-LN worse without warmup than with')])
