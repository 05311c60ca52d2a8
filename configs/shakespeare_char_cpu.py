"""nanoGPT's CPU recipe for character-level Tiny Shakespeare (its README, "I only have a macbook").

shakespeare_char with 4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps
(cosine over 2000), dropout 0. nanoGPT's README gives val loss 1.88.

  python -m llm_jax.main --config=configs/shakespeare_char_cpu.py --workdir=/tmp/llm_jax/sh_cpu \
      --config.data.manual_dir=DIR_WITH_input.txt   # only where TFDS cannot download
"""

import os

from llm_jax.config import from_file


def get_config():
  config = from_file(os.path.join(os.path.dirname(__file__), 'shakespeare_char.py'))
  config.data.seq_len = 64
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.emb_dim = 128
  config.model.dropout_rate = 0.0
  config.train.batch_size = 12
  config.train.steps = 2000
  config.checkpoint.every_steps = 1000
  config.log_every_steps = 50
  return config
