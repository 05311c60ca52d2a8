"""Default: a small character-level GPT on the embedded corpus (Python's own documentation).

Needs no network and no file outside the package; trains on 2 CPU cores in a few minutes.

  python -m llm_jax.main --config=configs/default.py --workdir=/tmp/llm_jax/default
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.dataset = 'embedded'   # pydoc topics + stdlib docstrings, split train/validation
  config.data.tokenizer = 'char'
  config.data.seq_len = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.emb_dim = 128
  config.train.steps = 800
  config.train.batch_size = 32
  config.train.learning_rate = 2e-3
  config.train.end_learning_rate = 2e-4
  config.train.warmup_steps = 100
  config.eval.every_steps = 400
  config.eval.max_batches = 20
  config.checkpoint.every_steps = 400
  config.log_every_steps = 50
  config.sample.prompt = 'The '      # sampled at the end of training
  config.sample.max_new_tokens = 120  # prompt + new tokens must fit model.max_len
  return config
