"""Vaswani et al. (2017), Attention Is All You Need, Table 3 rows (A): the number of attention heads
at a fixed width (head size = width / heads). See README.md."""

from llm_jax.experiments import Claim, Study
from llm_jax.experiments import presets

HEADS = (1, 4, 8, 16, 32)
# Table 3 (A), newstest2013 dev perplexity / BLEU; 8 heads is the base model
PUBLISHED = {'heads_1': '5.29 / 24.9', 'heads_4': '5.00 / 25.5', 'heads_8': '4.92 / 25.8',
             'heads_16': '4.91 / 25.8', 'heads_32': '5.01 / 25.4'}


def get_study(scale):
  if scale == 'cpu':  # width 128: head sizes 128, 32, 16, 8, 4
    config, overrides = presets.CONFIG_CPU, presets.cpu_char_lm()
  else:  # their base model on WMT14 en-de: width 512, head sizes 512 ... 16
    config, overrides = presets.CONFIG_TRANSFORMER, {}
  return Study(
      name='attention_heads',
      paper='Vaswani et al. (2017), *Attention Is All You Need*, Table 3 (A): single-head attention is 0.9 BLEU '
            'worse than the best setting; quality also drops off with too many heads.',
      config=config, overrides=overrides, seeds=(0, 1), metric='eval_loss',
      variants={f'heads_{n}': {'model.num_heads': n} for n in HEADS},
      published=PUBLISHED,
      claims=[Claim('heads_1', '>', 'heads_8', 'heads_1 worse than heads_8'),
              Claim('heads_32', '>', 'heads_8', 'heads_32 worse than heads_8'),
              Claim('heads_4', '>', 'heads_8', 'heads_4 worse than heads_8')])
