"""Fine-tune configs/bert_tiny.py on the offline classification task: is a sentence as written,
or are its words shuffled? (data source 'shuffled', built from the embedded corpus.)

A small labelled set (2,000 sentences), as GLUE's small tasks have, so pretraining shows:
start from a bert_tiny run's parameters and tokenizer (the classifier head starts fresh)

  python -m llm_jax.main --config=configs/bert_tiny_shuffled.py --workdir=runs/bert_tiny_cls \\
      --config.init_from=runs/bert_tiny --config.data.tokenizer_path=runs/bert_tiny

or from scratch with the same flags but no init_from, for comparison
(experiments/bert_tiny_finetune runs all of it).
"""

import os

from llm_jax.config import from_file


def get_config():
  config = from_file(os.path.join(os.path.dirname(__file__), 'bert_tiny.py'))
  config.model.head = 'classify'
  config.model.num_classes = 2
  config.model.dropout_rate = 0.1
  config.data.dataset = 'shuffled'
  config.data.max_documents = 2000     # labelled sentences for training (the eval split keeps its own)
  config.data.tokenizer = 'pretrained'  # the pretraining run's vocabulary: --config.data.tokenizer_path
  config.data.seq_len = 64
  config.model.max_len = 128           # bert_tiny's position table (it pretrains at seq_len 128)
  config.train.steps = 300
  config.train.batch_size = 32
  config.train.learning_rate = 5e-4
  config.train.warmup_steps = 30
  config.eval.every_steps = 100
  config.eval.max_batches = 0
  config.checkpoint.every_steps = 100
  config.log_every_steps = 25
  return config
