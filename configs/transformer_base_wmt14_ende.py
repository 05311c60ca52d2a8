"""Vaswani et al. (2017)'s base Transformer on WMT14 en→de.

6+6 layers, width 512, 8 heads, FFN 2048, sinusoidal positions, post-LN, ReLU, dropout 0.1,
label smoothing 0.1, one embedding shared by both stacks and the output, Adam (b1 0.9, b2
0.98, eps 1e-9) with their schedule d^-0.5·min(step^-0.5, step·4000^-1.5) ('rsqrt' with
learning_rate = 512^-0.5 · 4000^-0.5), 100k steps. They batched about 25,000 source and
25,000 target tokens per step; 96 packed rows of 256 + 256 tokens is about that here. A shared
SentencePiece BPE vocabulary of 37000 (they used 37000 BPE tokens). Published: newstest2014
BLEU 27.3, newstest2013 dev PPL 4.92 / BLEU 25.8 (their Table 3).

  python -m llm_jax.main --config=configs/transformer_base_wmt14_ende.py --workdir=runs/transformer_base
"""

from llm_jax.config import base_config
from llm_jax.models.encoder_decoder import TRANSFORMER_LAYOUT


def get_config():
  config = base_config()
  config.model.update(TRANSFORMER_LAYOUT)
  config.model.num_layers = 6
  config.model.num_decoder_layers = 6
  config.model.emb_dim = 512
  config.model.num_heads = 8
  config.model.mlp_dim = 2048
  config.model.dropout_rate = 0.1
  config.data.dataset = 'wmt14_translate/de-en'
  config.data.source_key = 'en'
  config.data.target_key = 'de'
  config.data.tokenizer = 'sentencepiece'
  config.data.sp_model_type = 'bpe'
  config.data.vocab_size = 37000
  config.data.seq_len = 256
  config.data.target_len = 256
  config.train.steps = 100_000
  config.train.batch_size = 96
  config.train.learning_rate = 512 ** -0.5 * 4000 ** -0.5
  config.train.warmup_steps = 4000
  config.train.schedule = 'rsqrt'
  config.train.b1 = 0.9
  config.train.b2 = 0.98
  config.train.eps = 1e-9
  config.train.weight_decay = 0.0
  config.train.grad_clip = 0.0
  config.train.label_smoothing = 0.1
  config.eval.every_steps = 5000
  config.eval.max_batches = 20
  config.eval.bleu_examples = 512
  config.eval.num_beams = 4
  config.checkpoint.every_steps = 5000
  return config
