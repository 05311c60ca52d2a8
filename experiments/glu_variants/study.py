"""Shazeer (2020), GLU Variants Improve Transformer, Table 1: feed-forward activations at a matched
parameter count (the gated forms' hidden width is 2/3 of the plain ones', so three matrices cost
what two did). See README.md."""

from llm_jax.experiments import Claim, Study
from llm_jax.experiments import presets

PLAIN = ('relu', 'gelu', 'swish')
GATED = ('glu', 'bilinear', 'geglu', 'swiglu', 'reglu')
ACTIVATION = {'gelu': 'gelu_tanh'}  # the paper's GELU is the tanh form (mesh-tensorflow)
# Table 1, heldout log-perplexity at 65,536 steps (T5-base, C4 span corruption)
PUBLISHED = {'relu': '1.997', 'gelu': '1.983', 'swish': '1.994', 'glu': '1.982', 'bilinear': '1.960',
             'geglu': '1.942', 'swiglu': '1.944', 'reglu': '1.953'}


def get_study(scale):
  if scale == 'cpu':  # width 128: plain hidden 512 (4x), gated 344 (2/3 of it, rounded to 8)
    config, overrides, plain, gated = presets.CONFIG_CPU, presets.cpu_char_lm(), 512, 344
    seeds = (0, 1)
  else:  # GPT-2 small on lm1b: 3072 plain, 2048 gated, as the paper's d_ff at width 768
    config, overrides, plain, gated = presets.CONFIG_GPT2, {'train.steps': 65536, 'sample.prompt': ''}, 3072, 2048
    seeds = (0, 1)
  variants = {name: {'model.mlp_activation': ACTIVATION.get(name, name),
                     'model.mlp_dim': gated if name in GATED else plain} for name in PLAIN + GATED}
  return Study(
      name='glu_variants',
      paper='Shazeer (2020), *GLU Variants Improve Transformer*, Table 1 (heldout log-perplexity, 65,536 steps): '
            'every gated variant beats ReLU; GEGLU and SwiGLU are best.',
      config=config, overrides=overrides, variants=variants, seeds=seeds, metric='eval_loss',
      published=PUBLISHED,
      claims=[Claim(v, '<=', 'relu', f'{v} <= relu') for v in variants if v != 'relu'])
