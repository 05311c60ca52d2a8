"""bert-base-uncased: 12 layers, width 768, 12 heads, FFN 3072, 512 positions, WordPiece 30522.

Masked-LM head, starting from the published weights and tokenizer (a Hub id needs the
[hf] extra and a network; offline, pass a local model directory to both keys). Its
parameters (BertModel, pooler included: 109,482,240) are checked against Hugging Face's
count in the tests.

  python -m llm_jax.main --config=configs/bert_base.py --workdir=runs/bert_base \\
      --config.init_from=DIR --config.data.tokenizer_path=DIR
"""

from llm_jax.config import base_config
from llm_jax.models.encoder import BERT_LAYOUT


def get_config():
  config = base_config()
  config.model.update(BERT_LAYOUT)
  config.model.head = 'mlm'
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.emb_dim = 768
  config.model.mlp_dim = 3072
  config.model.max_len = 512
  config.init_from = 'bert-base-uncased'
  config.data.tokenizer = 'pretrained'
  config.data.tokenizer_path = 'bert-base-uncased'
  config.data.seq_len = 128
  config.train.batch_size = 16
  config.train.learning_rate = 5e-5
  config.train.warmup_steps = 500
  config.train.schedule = 'linear'
  config.train.end_learning_rate = 0.0
  config.train.weight_decay = 0.01
  config.train.b2 = 0.999
  config.train.eps = 1e-8
  return config
