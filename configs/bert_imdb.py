"""Sequence classification of long reviews: bert-base-uncased on TFDS imdb_reviews (the [tfds] extra).

25,000 training reviews, positive/negative; reviews are longer than 256 tokens more often
than not, so they are truncated to seq_len (the count is logged).

  python -m llm_jax.main --config=configs/bert_imdb.py --workdir=runs/bert_imdb \\
      --config.init_from=DIR --config.data.tokenizer_path=DIR
"""

import os

from llm_jax.config import from_file


def get_config():
  config = from_file(os.path.join(os.path.dirname(__file__), 'bert_base.py'))
  config.model.head = 'classify'
  config.model.num_classes = 2
  config.data.dataset = 'imdb_reviews'
  config.data.text_key = 'text'
  config.data.label_key = 'label'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.seq_len = 256
  config.train.epochs = 2.0
  config.train.batch_size = 16
  config.train.learning_rate = 2e-5
  config.train.warmup_steps = 300
  config.eval.every_steps = 1000
  config.eval.max_batches = 0
  config.checkpoint.every_steps = 1000
  config.log_every_steps = 50
  return config
