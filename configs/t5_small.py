"""t5-small's shapes (60.5 M parameters at its 32128-token vocabulary), trained from scratch on WMT14 en→fr.

T5's layout (Raffel et al. 2020): 6+6 layers, d_model 512, d_kv 64, 8 heads, d_ff 2048, ReLU,
32 relative buckets up to distance 128, dropout 0.1, tied output rescaled by d_model^-0.5,
T5's initialization. A SentencePiece vocabulary trained on both sides. T5 trained with
Adafactor; llm_jax has AdamW (optax), used here with an inverse-square-root schedule.

  python -m llm_jax.main --config=configs/t5_small.py --workdir=runs/t5_small
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import T5_LAYOUT


def get_config():
  config = base_config()
  config.model.update(T5_LAYOUT)
  config.model.num_layers = 6          # encoder blocks
  config.model.num_decoder_layers = 6
  config.model.emb_dim = 512
  config.model.num_heads = 8
  config.model.head_dim = 64
  config.model.mlp_dim = 2048
  config.model.dropout_rate = 0.1
  config.data.dataset = 'wmt14_translate/fr-en'
  config.data.source_key = 'en'
  config.data.target_key = 'fr'
  config.data.task_prefix = 'translate English to French: '
  config.data.tokenizer = 'sentencepiece'
  config.data.sp_model_type = 'unigram'
  config.data.vocab_size = 32000
  config.data.seq_len = 128            # source tokens per row
  config.data.target_len = 128
  config.train.steps = 100_000
  config.train.batch_size = 128
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 10_000
  config.train.schedule = 'rsqrt'
  config.train.weight_decay = 0.0
  config.eval.every_steps = 5000
  config.eval.max_batches = 20
  config.eval.bleu_examples = 512
  config.eval.num_beams = 4
  config.checkpoint.every_steps = 5000
  return config
