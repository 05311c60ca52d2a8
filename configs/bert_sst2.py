"""Sequence classification: bert-base-uncased fine-tuned on GLUE SST-2 (TFDS glue/sst2; the [tfds] extra).

Sentences with a positive/negative label; eval reports accuracy, F1 and Matthews
correlation. The classifier head starts fresh (init_from lists it), the encoder from the
published weights:

  python -m llm_jax.main --config=configs/bert_sst2.py --workdir=runs/bert_sst2 \\
      --config.init_from=DIR --config.data.tokenizer_path=DIR
"""

import os

from llm_jax.config import from_file


def get_config():
  config = from_file(os.path.join(os.path.dirname(__file__), 'bert_base.py'))
  config.model.head = 'classify'
  config.model.num_classes = 2
  config.data.dataset = 'glue/sst2'
  config.data.text_key = 'sentence'
  config.data.label_key = 'label'
  config.data.eval_split = 'validation'
  config.data.seq_len = 64
  config.train.epochs = 3.0
  config.train.batch_size = 32
  config.train.learning_rate = 2e-5
  config.train.warmup_steps = 200
  config.eval.every_steps = 500
  config.eval.max_batches = 0
  config.checkpoint.every_steps = 500
  config.log_every_steps = 50
  return config
