"""Su et al. (2021), RoFormer: rotary position embeddings against learned and sinusoidal absolute
positions, and T5's relative buckets. See README.md."""

from llm_jax.experiments import Claim, Study
from llm_jax.experiments import presets

ENCODINGS = ('rope', 'learned', 'sinusoidal', 't5_relative')
# EleutherAI's 125M model on OpenWebText2 after 55k steps, validation loss (the RoFormer blog/paper
# cites these); sinusoidal was not in that comparison
PUBLISHED = {'learned': '2.809', 't5_relative': '2.801', 'rope': '2.759'}


def get_study(scale):
  if scale == 'cpu':
    config, overrides = presets.CONFIG_CPU, presets.cpu_char_lm()
  else:
    config, overrides = presets.CONFIG_GPT2, {'train.steps': 55000, 'sample.prompt': ''}
  return Study(
      name='positions',
      paper='Su et al. (2021), *RoFormer*, with EleutherAI\'s 125M OpenWebText2 comparison at 55k steps: rotary '
            'beats learned absolute positions and T5\'s relative buckets.',
      config=config, overrides=overrides, seeds=(0, 1), metric='eval_loss',
      # sinusoidal as Vaswani et al. use it, token embeddings times sqrt(d_model) (their 3.4): without it the
      # unit-sized sinusoids drown the 0.02-sized embeddings and the model stays at the unigram loss (README)
      variants={e: {'model.pos_encoding': e, **({'model.embed_scale': True} if e == 'sinusoidal' else {})}
                for e in ENCODINGS},
      published=PUBLISHED,
      claims=[Claim('rope', '<=', 'learned', 'rope <= learned'), Claim('rope', '<=', 't5_relative', 'rope <= t5_relative'),
              Claim('t5_relative', '<=', 'learned', 't5_relative <= learned')])
