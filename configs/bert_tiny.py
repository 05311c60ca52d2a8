"""A tiny BERT (masked-LM pretraining) on the embedded corpus: 600 steps in 4-8 minutes on 2 CPU cores.

BERT's layout at small shapes: 4 post-LN layers, width 128, 4 heads, exact GELU, token-type
embeddings and an embedding norm, but rotary positions (not exportable as a BertModel; with
--config.model.pos_encoding=learned it is, and learns context far more slowly: 0.83 nats below
the unigram entropy after 2000 steps, against 2.2 after 500 with rotary positions); a WordPiece
vocabulary trained on the corpus; 15% of the tokens chosen for prediction (80% [MASK], 10%
random, 10% kept).

  python -m llm_jax.main --config=configs/bert_tiny.py --workdir=runs/bert_tiny

Fine-tune it on the offline classification task: configs/bert_tiny_shuffled.py.
"""

from llm_jax.config import base_config
from llm_jax.models.encoder import BERT_LAYOUT


def get_config():
  config = base_config()
  config.model.update(BERT_LAYOUT)
  config.model.head = 'mlm'
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.emb_dim = 128
  config.model.pos_encoding = 'rope'   # rotary positions (as ModernBERT): learned ones take thousands of steps to be used
  config.model.dropout_rate = 0.0     # minutes of training on 2 MB of text: nothing to regularize yet
  config.data.dataset = 'embedded'
  config.data.tokenizer = 'wordpiece'
  config.data.vocab_size = 1000       # 2 MB of text: a small vocabulary learns its context sooner
  config.data.seq_len = 128
  config.train.steps = 600
  config.train.batch_size = 32
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 100
  config.train.schedule = 'linear'    # BERT's: linear warmup, then linear decay to 0
  config.train.end_learning_rate = 0.0
  config.train.weight_decay = 0.01
  config.train.b2 = 0.999
  config.eval.every_steps = 300
  config.eval.max_batches = 20
  config.checkpoint.every_steps = 300
  config.log_every_steps = 50
  return config
