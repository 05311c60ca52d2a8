"""nanoGPT's "baby GPT" on character-level Tiny Shakespeare, setting for setting.

nanoGPT config/train_shakespeare_char.py: 6 layers, 6 heads, width 384, context 256,
batch 64, dropout 0.2, no biases, AdamW lr 1e-3 cosine to 1e-4 over 5000 steps with 100
warmup steps, beta2 0.99, weight decay 0.1, clip 1.0. nanoGPT reports val loss 1.4697.

  python -m llm_jax.main --config=configs/shakespeare_char.py --workdir=/tmp/llm_jax/shakespeare \
      --config.data.manual_dir=DIR_WITH_input.txt   # only where TFDS cannot download
"""

from llm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.dataset = 'tiny_shakespeare'   # TFDS; splits train / validation
  config.data.tokenizer = 'char'
  config.data.seq_len = 256
  config.model.num_layers = 6
  config.model.num_heads = 6
  config.model.emb_dim = 384
  config.model.dropout_rate = 0.2
  config.model.use_bias = False
  config.model.tie_embeddings = True
  config.train.steps = 5000
  config.train.batch_size = 64
  config.train.learning_rate = 1e-3
  config.train.end_learning_rate = 1e-4
  config.train.warmup_steps = 100
  config.train.b2 = 0.99
  config.train.weight_decay = 0.1
  config.train.grad_clip = 1.0
  config.eval.every_steps = 250
  config.checkpoint.every_steps = 1000
  config.log_every_steps = 10
  return config
